"""Tests of KV-cache decoding: greedy against full passes, constrained outputs, log-probs, sampling law."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax import codec, model, sampling, train

CODEC = codec.CompactCodec(num_states=8, length=6)


@pytest.fixture(scope='module')
def policy():
  cfg = model.preset('tiny', vocab_size=CODEC.vocab_size)
  return model.init(cfg, jax.random.key(0))


def _prompts(batch=4, seed=0):
  x = jax.random.randint(jax.random.key(seed), (batch, CODEC.length), 0, CODEC.num_states)
  return x, CODEC.encode_prompts(x)


def _sampler(graphdef, **kwargs):
  cfg = sampling.SampleConfig(
    **{'max_new_tokens': CODEC.max_target_len, 'eos_id': CODEC.eos_id, 'pad_id': CODEC.pad_id, **kwargs}
  )

  @jax.jit
  def run(key, params, prompts, mask, temperature, allowed=None):
    return sampling.sample(key, graphdef, params, prompts, mask, temperature, cfg=cfg, allowed_GxV=allowed)

  return run


def test_sampler_traces_once(policy):
  graphdef, params = policy
  cfg = sampling.SampleConfig(CODEC.max_target_len, CODEC.eos_id, CODEC.pad_id, top_k=3)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key, params, prompts, mask, temperature):
    return sampling.sample(key, graphdef, params, prompts, mask, temperature, cfg=cfg)

  for seed in range(3):
    _, prompts = _prompts(seed=seed)
    run(jax.random.key(seed), params, prompts.tokens_BxT, prompts.mask_BxT, jnp.full(4, 0.5 * seed))


def test_greedy_equals_argmax_of_full_passes(policy):
  graphdef, params = policy
  _, prompts = _prompts()
  out = _sampler(graphdef)(jax.random.key(1), params, prompts.tokens_BxT, prompts.mask_BxT, jnp.zeros(4))
  tokens, mask = prompts.tokens_BxT, prompts.mask_BxT
  forward = jax.jit(model.apply, static_argnums=0)
  for g in range(CODEC.max_target_len):
    logits, _ = forward(graphdef, params, tokens, mask)
    following = jnp.argmax(logits[:, -1], axis=-1)
    live = out.mask_BxG[:, g]
    chex.assert_trees_all_equal(jnp.where(live, following, CODEC.pad_id), out.tokens_BxG[:, g])
    tokens = jnp.concatenate([tokens, out.tokens_BxG[:, g : g + 1]], axis=1)
    mask = jnp.concatenate([mask, live[:, None]], axis=1)


def test_constrained_outputs_are_always_valid_and_logps_are_the_models(policy):
  graphdef, params = policy
  x, prompts = _prompts(batch=16)
  temperature = jnp.array([0.0, 0.6, 1.0, 2.0] * 4)
  allowed = CODEC.allowed_tokens_GxV(CODEC.max_target_len)
  run = _sampler(graphdef)
  out = run(jax.random.key(2), params, prompts.tokens_BxT, prompts.mask_BxT, temperature, allowed)
  seqs, funnel = CODEC.decode(out.tokens_BxG)
  assert bool(jnp.all(funnel.valid_B))
  assert bool(jnp.all(out.mask_BxG))  # Exactly L states then EOS: every position generated.
  # The reported log-probs are the untempered model's: rescoring the pairs gives the same sums.
  pairs = CODEC.encode_pairs(x, seqs)
  summed, counts = jax.jit(train.sequence_logps, static_argnums=0)(graphdef, params, pairs)
  chex.assert_trees_all_close(jnp.sum(out.logps_BxG, axis=1), summed, atol=1e-4)
  chex.assert_trees_all_equal(counts, jnp.full(16, CODEC.length + 1))
  chex.assert_trees_all_close(out.mean_logp(), summed / counts, atol=1e-5)


def test_unconstrained_rows_stop_after_eos(policy):
  graphdef, params = policy
  _, prompts = _prompts(batch=64)
  # A high temperature makes early EOS likely in an untrained model over 13 tokens.
  run = _sampler(graphdef, max_new_tokens=12)
  out = run(jax.random.key(3), params, prompts.tokens_BxT, prompts.mask_BxT, jnp.full(64, 5.0))
  tokens, mask, logps = (np.asarray(a) for a in (out.tokens_BxG, out.mask_BxG, out.logps_BxG))
  is_eos = tokens == CODEC.eos_id
  assert is_eos.any(axis=1).sum() >= 5
  for row in range(64):
    stop = np.argmax(is_eos[row]) if is_eos[row].any() else 12
    assert mask[row, : stop + 1].all() and not mask[row, stop + 1 :].any()
    assert (tokens[row, stop + 1 :] == CODEC.pad_id).all() and (logps[row, stop + 1 :] == 0).all()
    assert (logps[row, : stop + 1] < 0).all()
  _, funnel = CODEC.decode(out.tokens_BxG)
  assert 0 < int(jnp.sum(funnel.terminated_B)) and not bool(jnp.all(funnel.valid_B))


def test_first_token_follows_the_tempered_top_k_law(policy):
  graphdef, params = policy
  n, temperature, top_k = 8192, 1.5, 5
  x = jnp.tile(_prompts(batch=1)[0], (n, 1))
  prompts = CODEC.encode_prompts(x)
  run = _sampler(graphdef, max_new_tokens=1, top_k=top_k)
  out = run(jax.random.key(4), params, prompts.tokens_BxT, prompts.mask_BxT, jnp.full(n, temperature))
  logits, _ = model.apply(graphdef, params, prompts.tokens_BxT[:1], prompts.mask_BxT[:1])
  logits = np.asarray(logits[0, -1], np.float64)
  top = np.argsort(logits)[-top_k:]
  expected = np.zeros_like(logits)
  expected[top] = np.exp(logits[top] / temperature - np.max(logits[top] / temperature))
  expected /= expected.sum()
  counts = np.bincount(np.asarray(out.tokens_BxG[:, 0]), minlength=logits.size)
  assert counts[expected == 0].sum() == 0
  # Each count within 5 binomial standard deviations.
  sd = np.sqrt(n * expected * (1 - expected))
  assert np.all(np.abs(counts - n * expected) <= 5 * sd + 1)
  # 'model' log-probs are the untempered log-softmax of the chosen token.
  log_softmax = logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
  np.testing.assert_allclose(
    np.asarray(out.logps_BxG[:, 0]), log_softmax[np.asarray(out.tokens_BxG[:, 0])], atol=1e-5
  )


def test_tempered_logps_are_those_of_the_sampling_distribution(policy):
  graphdef, params = policy
  _, prompts = _prompts(batch=8)
  temperature = jnp.array([0.0, 0.5, 1.0, 2.0] * 2)
  args = (jax.random.key(5), params, prompts.tokens_BxT, prompts.mask_BxT, temperature)
  untempered = _sampler(graphdef, top_k=4)(*args)
  tempered = _sampler(graphdef, top_k=4, logprobs='tempered')(*args)
  chex.assert_trees_all_equal(tempered.tokens_BxG, untempered.tokens_BxG)
  for row in (0, 4):  # Greedy rows report the model's log-probs either way.
    chex.assert_trees_all_equal(tempered.logps_BxG[row], untempered.logps_BxG[row])
  # At temperature 0.5 with top-k the sampled token is likelier under the sharpened distribution.
  assert bool(jnp.all(tempered.logps_BxG[1] > untempered.logps_BxG[1]))


def test_a_mixed_batch_equals_its_rows_run_alone(policy):
  graphdef, params = policy
  _, prompts = _prompts(batch=4)
  run = _sampler(graphdef)
  mixed = run(
    jax.random.key(6), params, prompts.tokens_BxT, prompts.mask_BxT, jnp.array([0.0, 1.0, 0.0, 1.0])
  )
  greedy = run(jax.random.key(7), params, prompts.tokens_BxT, prompts.mask_BxT, jnp.zeros(4))
  chex.assert_trees_all_equal(mixed.tokens_BxG[::2], greedy.tokens_BxG[::2])
  chex.assert_trees_all_close(mixed.logps_BxG[::2], greedy.logps_BxG[::2], atol=1e-6)


def test_left_padded_prompts_decode_as_unpadded(policy):
  graphdef, params = policy
  _, prompts = _prompts(batch=2)
  pad = jnp.full((2, 3), CODEC.pad_id)
  padded_tokens = jnp.concatenate([pad, prompts.tokens_BxT], axis=1)
  padded_mask = jnp.concatenate([jnp.zeros((2, 3), bool), prompts.mask_BxT], axis=1)
  run = functools.partial(sampling.sample, cfg=sampling.SampleConfig(7, CODEC.eos_id, CODEC.pad_id))
  plain = jax.jit(run, static_argnums=1)(
    jax.random.key(8), graphdef, params, prompts.tokens_BxT, prompts.mask_BxT, 0.0
  )
  padded = jax.jit(run, static_argnums=1)(
    jax.random.key(8), graphdef, params, padded_tokens, padded_mask, 0.0
  )
  chex.assert_trees_all_equal(padded.tokens_BxG, plain.tokens_BxG)
  chex.assert_trees_all_close(padded.logps_BxG, plain.logps_BxG, atol=2e-5)


def test_bad_settings_are_clear_errors(policy):
  graphdef, params = policy
  with pytest.raises(ValueError, match='logprobs'):
    sampling.SampleConfig(4, 1, 0, logprobs='reference')
  with pytest.raises(ValueError, match='max_new_tokens'):
    sampling.SampleConfig(0, 1, 0)
  _, prompts = _prompts(batch=2)
  cfg = sampling.SampleConfig(200, CODEC.eos_id, CODEC.pad_id)
  with pytest.raises(ValueError, match='max_len'):
    sampling.sample(jax.random.key(0), graphdef, params, prompts.tokens_BxT, prompts.mask_BxT, 1.0, cfg=cfg)
  cfg = sampling.SampleConfig(5, CODEC.eos_id, CODEC.pad_id)
  with pytest.raises(ValueError, match='allowed_GxV'):
    sampling.sample(
      jax.random.key(0),
      graphdef,
      params,
      prompts.tokens_BxT,
      prompts.mask_BxT,
      1.0,
      cfg=cfg,
      allowed_GxV=jnp.ones((3, 3), bool),
    )


def test_golden_samples(policy):
  graphdef, params = policy
  _, prompts = _prompts(batch=2)
  out = _sampler(graphdef, top_k=50)(
    jax.random.key(9), params, prompts.tokens_BxT, prompts.mask_BxT, jnp.array([0.0, 1.0])
  )
  chex.assert_trees_all_equal(np.asarray(out.tokens_BxG), np.array(GOLDEN_TOKENS))
  np.testing.assert_allclose(float(jnp.sum(out.logps_BxG)), GOLDEN_LOGP_SUM, rtol=1e-5)


# Row 0 greedy, row 1 sampled at temperature 1 with top-k 50, from key 9.
GOLDEN_TOKENS = [[2, 1, 3, 8, 2, 1, 3], [6, 10, 9, 0, 0, 8, 9]]
GOLDEN_LOGP_SUM = -34.897178649902344


@pytest.mark.parametrize('k', [1, 2, 50, 1999, 2000])
def test_kth_largest_by_bisection_equals_top_k(k):
  # 2000 tokens: above the size where bisection replaces lax.top_k. Ties, -inf and rounding included.
  x = 5.0 * jax.random.normal(jax.random.key(0), (6, 2000))
  x = x.at[0, :100].set(1.5).at[1].set(-jnp.inf).at[1, :3].set(-2.0).at[2, :10].set(-jnp.inf)
  x = x.at[3].set(jnp.round(x[3])).at[4].set(-jnp.abs(x[4]))
  got = jax.jit(sampling._kth_largest, static_argnums=1)(x, k)
  chex.assert_trees_all_equal(got, jax.lax.top_k(x, k)[0][:, -1:])


def test_row_groups_decode_the_same_rows(policy):
  # Groups change the schedule, not the numbers: every row's tokens and log-probs match one group's,
  # with left-padded prompts, mixed greedy and sampled rows, and a count that does not divide the batch.
  graphdef, params = policy
  _, prompts = _prompts(batch=12, seed=3)
  mask = prompts.mask_BxT.at[::3, :2].set(False)
  temperature = jnp.tile(jnp.array([0.0, 0.7, 1.3]), 4)
  outs = {
    groups: _sampler(graphdef, row_groups=groups, top_k=5)(
      jax.random.key(2), params, prompts.tokens_BxT, mask, temperature
    )
    for groups in (1, 2, 4, 5)
  }
  for groups in (2, 4, 5):
    chex.assert_trees_all_equal(outs[groups].tokens_BxG, outs[1].tokens_BxG)
    chex.assert_trees_all_equal(outs[groups].mask_BxG, outs[1].mask_BxG)
    chex.assert_trees_all_close(outs[groups].logps_BxG, outs[1].logps_BxG, atol=1e-6)
  with pytest.raises(ValueError, match='row_groups'):
    sampling.SampleConfig(4, 1, 0, row_groups=0)
