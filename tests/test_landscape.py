"""Tests for llome_jax.landscape: substitution enumeration, improving edits against brute force, and the
teacher-forced likelihood of an edit against the sampler's."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax import codec, inner_loop, landscape, model, sampling
from llome_jax.test_functions import ehrlich


@pytest.mark.parametrize('num_sites', [1, 2])
def test_substitutions_are_every_edit_at_exactly_k_sites(num_sites):
  x = np.array([0, 3, 1, 1, 2, 0], np.int32)
  edits, sites = landscape.substitutions(x, 4, num_sites)
  assert edits.shape == (math.comb(6, num_sites) * 3**num_sites, 6) and sites.shape == (len(edits), num_sites)
  assert len({tuple(e) for e in edits.tolist()}) == len(edits)
  changed = edits != x
  np.testing.assert_array_equal(changed.sum(axis=1), num_sites)
  np.testing.assert_array_equal(np.sort(np.nonzero(changed)[1].reshape(-1, num_sites), axis=1), sites)
  assert edits.min() >= 0 and edits.max() < 4


def test_motif_arrangements_against_brute_force():
  params = ehrlich.sample_params(
    jax.random.key(7),
    num_states=6,
    dim=16,
    num_motifs=2,
    motif_length=3,
    quantization=3,
    epistasis_factor=0.0,
  )
  optimum = np.asarray(ehrlich.optimal_solution(params, 16))
  rng = np.random.default_rng(0)
  seqs = np.concatenate([optimum[None], rng.integers(0, 6, (50, 16))]).astype(np.int32)
  got = landscape.motif_arrangements(params, seqs)
  for x, arrangement in zip(seqs, got, strict=True):
    for (motif, gaps), (present, start) in zip(
      zip(params.motifs, params.spacings, strict=True), arrangement, strict=True
    ):
      offsets = np.concatenate([[0], np.cumsum(gaps)])
      counts = [int((x[s + offsets] == motif).sum()) for s in range(16 - offsets[-1])]
      assert present == max(counts) and start == counts.index(max(counts))
  # The optimum holds every motif whole where optimal_solution wrote it, one after another.
  spans = [0] + np.cumsum([sum(g) + 1 for g in params.spacings]).tolist()[:-1]
  np.testing.assert_array_equal(got[0], [[3, start] for start in spans])


def _brute_force_improving(params, x, num_sites):
  value = float(ehrlich.evaluate(params, x[None])[0])
  found = set()
  for positions in itertools.combinations(range(len(x)), num_sites):
    for tokens in itertools.product(range(params.num_states), repeat=num_sites):
      if any(x[p] == t for p, t in zip(positions, tokens, strict=True)):
        continue
      y = x.copy()
      y[list(positions)] = tokens
      if float(ehrlich.evaluate(params, y[None])[0]) > value:
        found.add(tuple(y.tolist()))
  return found


@pytest.mark.parametrize('num_sites', [1, 2])
def test_improving_edits_equal_brute_force(num_sites):
  key = jax.random.key(3)
  params = ehrlich.sample_params(key, num_states=8, dim=10, num_motifs=2, motif_length=3)
  x = np.asarray(ehrlich.initial_solution(jax.random.fold_in(key, 1), params, 10)[0])
  around = landscape.neighbourhood(params, x, num_sites)
  expected = _brute_force_improving(params, x, num_sites)
  assert expected, 'pick an instance where something improves'
  assert {tuple(e) for e in around.improving_NxL.tolist()} == expected
  assert np.all(around.improving_values_N > around.value)
  np.testing.assert_array_equal(around.improving_values_N, ehrlich.evaluate(params, around.improving_NxL))
  for edit, sites in zip(around.improving_NxL, around.improving_sites_NxK, strict=True):
    np.testing.assert_array_equal(np.nonzero(edit != x)[0], sites)
  edits, _ = landscape.substitutions(x, 8, num_sites)
  assert around.num_edits == len(edits) == math.comb(10, num_sites) * 7**num_sites
  assert around.num_feasible == int(np.sum(ehrlich.is_feasible(params, edits))) < around.num_edits


def test_edit_likelihood_is_the_samplers_mean_logp():
  """Label selection ranks a generation by the sampler's mean token log-likelihood; the diagnostic
  ranks given edits by teacher forcing. They must be the same number for the same edit."""
  pair_codec = codec.CompactCodec(num_states=6, length=8)
  graphdef, params = model.init(model.preset('tiny', vocab_size=pair_codec.vocab_size), jax.random.key(0))
  seeds = jax.random.randint(jax.random.key(1), (3, 8), 0, 6)
  cfg = inner_loop.InnerLoopConfig(num_iterations=1, temperatures=(1.0,), samples_per_temperature=2)
  gens = inner_loop.run(
    jax.random.key(2), graphdef, params, seeds, jnp.ones(3, bool), jnp.float32(0.0), codec=pair_codec, cfg=cfg
  )
  x, y = gens.inputs_IxRxL[0], gens.outputs_IxRxL[0]
  got = landscape.edit_mean_logps(graphdef, params, pair_codec, x, y, rows=4)
  np.testing.assert_allclose(np.asarray(got), np.asarray(gens.mean_logp_IxR[0]), atol=1e-5)


@pytest.mark.parametrize('temperature, top_k', [(1.3, 0), (0.7, 3)])
def test_proposal_logp_is_the_samplers_tempered_logp(temperature, top_k):
  """The chance the sampler proposes a given edit: with logprobs='tempered' the sampler reports each
  drawn token's log-probability under the distribution it drew from; their sum over a generation must
  equal the teacher-forced proposal log-probability, constraints, top-k and temperature included."""
  pair_codec = codec.CompactCodec(num_states=6, length=8)
  graphdef, params = model.init(model.preset('tiny', vocab_size=pair_codec.vocab_size), jax.random.key(0))
  x = jax.random.randint(jax.random.key(1), (16, 8), 0, 6)
  prompts = pair_codec.encode_prompts(x)
  cfg = sampling.SampleConfig(
    pair_codec.max_target_len, pair_codec.eos_id, pair_codec.pad_id, top_k=top_k, logprobs='tempered'
  )
  out = sampling.sample(
    jax.random.key(2),
    graphdef,
    params,
    prompts.tokens_BxT,
    prompts.mask_BxT,
    jnp.full(16, temperature),
    cfg=cfg,
    allowed_GxV=pair_codec.allowed_tokens_GxV(pair_codec.max_target_len),
  )
  y, _ = pair_codec.decode(out.tokens_BxG)
  got = landscape.proposal_logps(graphdef, params, pair_codec, x, y, temperature, top_k=top_k, rows=5)
  np.testing.assert_allclose(
    np.asarray(got), np.asarray(jnp.sum(out.logps_BxG * out.mask_BxG, axis=1)), atol=1e-4
  )
  assert np.all(np.asarray(got) < 0)


def test_segment_copies_are_every_copy_of_a_piece_of_the_sequence():
  x = np.array([0, 3, 1, 1, 2, 0, 4], np.int32)
  expected = set()
  for size in range(2, 5):
    for source in range(7 - size + 1):
      for dest in range(7 - size + 1):
        y = x.copy()
        y[dest : dest + size] = x[source : source + size]
        expected.add(tuple(y.tolist()))
  expected.discard(tuple(x.tolist()))
  copies = landscape.segment_copies(x, 4)
  assert len(copies) == len(expected) and {tuple(c) for c in copies.tolist()} == expected
  # max_length past L - 1 is clipped: a whole-sequence copy would only be the sequence itself.
  assert len(landscape.segment_copies(x, 50)) == len(landscape.segment_copies(x, 6))


def test_openings_equal_brute_force():
  """The neutral neighbours and which of them have an improving single substitution, against
  evaluating each one and enumerating its substitutions by hand."""
  key = jax.random.key(6)  # f = 2/3 there: 42 neutral copies, 36 of them opening.
  params = ehrlich.sample_params(key, num_states=6, dim=10, num_motifs=2, motif_length=3)
  x = np.asarray(ehrlich.initial_solution(jax.random.fold_in(key, 1), params, 10)[0])
  value = float(ehrlich.evaluate(params, x[None])[0])
  copies = landscape.segment_copies(x, 5)
  found = landscape.openings(params, x, copies, len(copies), np.random.default_rng(0))
  values = np.asarray([float(ehrlich.evaluate(params, c[None])[0]) for c in copies])
  neutral = copies[values == value]
  expected_opening = sum(bool(_brute_force_improving(params, y, 1)) for y in neutral)
  assert found.value == value and found.num_steps == len(copies)
  assert found.num_feasible == int(np.isfinite(values).sum()) and found.num_improving == int(
    (values > value).sum()
  )
  assert found.num_neutral == found.num_checked == len(neutral) > 0
  assert 0 < found.num_opening == expected_opening < found.num_neutral
  sampled = landscape.openings(params, x, copies, 3, np.random.default_rng(0))
  assert sampled.num_neutral == len(neutral) and sampled.num_checked == 3 and sampled.num_opening <= 3
