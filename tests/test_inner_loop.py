"""Tests of the inner loop: configuration, the collapse shift, the trajectory rule against a reference
rebuilt from the returned generations, greedy determinism, likelihoods by teacher forcing, jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax import codec, inner_loop, model, sharding, train

CODEC = codec.CompactCodec(num_states=6, length=8)
CFG = inner_loop.InnerLoopConfig(num_iterations=3, temperatures=(0.7, 1.3), samples_per_temperature=2)
CHUNKED = inner_loop.InnerLoopConfig(
  num_iterations=3, temperatures=(0.7, 1.3), samples_per_temperature=2, chunk_rows=4
)
NUM_SEEDS = 3
SEED_WHERE = jnp.array([True, False, True])


def _jit(graphdef, cfg):
  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(key, params, seeds_SxL, seed_where_S, shift):
    return inner_loop.run(key, graphdef, params, seeds_SxL, seed_where_S, shift, codec=CODEC, cfg=cfg)

  return run


@pytest.fixture(scope='module')
def setup():
  """The policy, the seeds, the jitted loop and its generations for two keys; computed once."""
  graphdef, params = model.init(model.preset('tiny', vocab_size=CODEC.vocab_size), jax.random.key(0))
  seeds = jax.random.randint(jax.random.key(1), (NUM_SEEDS, CODEC.length), 0, CODEC.num_states)
  run = _jit(graphdef, CFG)
  first = run(jax.random.key(2), params, seeds, SEED_WHERE, jnp.float32(0.0))
  second = run(jax.random.key(3), params, seeds, SEED_WHERE, jnp.float32(0.2))
  return dict(graphdef=graphdef, params=params, seeds=seeds, run=run, first=first, second=second)


def _host(gens):
  return jax.tree.map(np.asarray, gens)


def _greedy_rows():
  return np.arange(NUM_SEEDS) * CFG.rows_per_seed


# Configuration and temperatures


def test_config_validation_and_rows_per_seed():
  for kwargs in (
    {'temperatures': (0.5, 0.0)},
    {'temperatures': (-1.0,)},
    {'greedy': False, 'samples_per_temperature': 0},
    {'greedy': False, 'temperatures': ()},
    {'samples_per_temperature': -1},
    {'chunk_rows': 0},
    {'num_iterations': 0},
  ):
    with pytest.raises(ValueError):
      inner_loop.InnerLoopConfig(**kwargs)
  assert inner_loop.InnerLoopConfig().rows_per_seed == 1 + 6 * 10
  assert CFG.rows_per_seed == 5
  assert (
    inner_loop.InnerLoopConfig(greedy=False, temperatures=(1.0,), samples_per_temperature=3).rows_per_seed
    == 3
  )
  assert inner_loop.InnerLoopConfig(samples_per_temperature=0).rows_per_seed == 1


def test_collapse_shift_thresholds():
  hamming = [0.0, 0.05, 0.0749, 0.075, 0.08, 0.0999, 0.1, 0.12, 0.1499, 0.15, 0.16, 0.5, 1.0]
  expected = [0.6, 0.6, 0.6, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.0, 0.0, 0.0, 0.0]
  shift = jax.jit(jax.vmap(inner_loop.collapse_shift))(jnp.asarray(hamming, jnp.float32))
  np.testing.assert_allclose(shift, expected, atol=1e-7)
  assert all(
    float(inner_loop.collapse_shift(jnp.float32(h))) == pytest.approx(e)
    for h, e in zip(hamming, expected, strict=True)
  )


def test_seed_temperatures_layout():
  np.testing.assert_allclose(inner_loop.seed_temperatures(CFG, jnp.float32(0.0)), [0, 0.7, 0.7, 1.3, 1.3])
  # The shift moves the sampled temperatures only; greedy stays 0.
  shifted = jax.jit(inner_loop.seed_temperatures, static_argnums=0)(CFG, jnp.float32(0.2))
  np.testing.assert_allclose(shifted, [0, 0.9, 0.9, 1.5, 1.5], rtol=1e-6)
  no_greedy = inner_loop.InnerLoopConfig(
    greedy=False, temperatures=(0.6, 1.0, 1.4), samples_per_temperature=1
  )
  np.testing.assert_allclose(
    inner_loop.seed_temperatures(no_greedy, jnp.float32(0.4)), [1.0, 1.4, 1.8], rtol=1e-6
  )


# The loop


def test_shapes_temperatures_and_seed_mask(setup):
  for gens, shift in ((setup['first'], 0.0), (setup['second'], 0.2)):
    gens = _host(gens)
    i, r, length = CFG.num_iterations, NUM_SEEDS * CFG.rows_per_seed, CODEC.length
    chex.assert_shape([gens.inputs_IxRxL, gens.outputs_IxRxL], (i, r, length))
    chex.assert_shape([gens.valid_IxR, gens.mean_logp_IxR], (i, r))
    chex.assert_shape([gens.temperature_R, gens.where_R], (r,))
    np.testing.assert_allclose(
      gens.temperature_R, np.tile([0, 0.7 + shift, 0.7 + shift, 1.3 + shift, 1.3 + shift], 3), rtol=1e-6
    )
    np.testing.assert_array_equal(gens.where_R, np.repeat(np.asarray(SEED_WHERE), CFG.rows_per_seed))
    # A masked seed's rows are never valid; with constrained decoding every live row is valid, in range.
    assert not gens.valid_IxR[:, ~gens.where_R].any()
    assert gens.valid_IxR[:, gens.where_R].all()
    assert ((gens.outputs_IxRxL >= 0) & (gens.outputs_IxRxL < CODEC.num_states)).all()
    assert np.isfinite(gens.mean_logp_IxR).all() and (gens.mean_logp_IxR < 0).all()


def _reference_inputs(gens, seeds_RxL):
  """Each trajectory's inputs by the rule: the seed first, then the valid output of highest mean_logp so
  far (strictly higher replaces, so ties keep the earlier)."""
  inputs = np.zeros_like(gens.inputs_IxRxL)
  for r in range(seeds_RxL.shape[0]):
    current, best = seeds_RxL[r], -np.inf
    for i in range(gens.valid_IxR.shape[0]):
      inputs[i, r] = current
      if gens.valid_IxR[i, r] and gens.mean_logp_IxR[i, r] > best:
        current, best = gens.outputs_IxRxL[i, r], gens.mean_logp_IxR[i, r]
  return inputs


@pytest.mark.parametrize('which', ['first', 'second'])
def test_trajectory_rule(setup, which):
  gens = _host(setup[which])
  seeds_RxL = np.repeat(np.asarray(setup['seeds']), CFG.rows_per_seed, axis=0)
  np.testing.assert_array_equal(gens.inputs_IxRxL, _reference_inputs(gens, seeds_RxL))
  # The rule is exercised both ways: some trajectories moved on, some kept an earlier input.
  moved = (gens.inputs_IxRxL[1:] != gens.inputs_IxRxL[:-1]).any(-1)
  live = gens.where_R
  assert moved[:, live].any() and not moved[:, live].all()
  np.testing.assert_array_equal(
    gens.inputs_IxRxL[:, ~live], np.broadcast_to(seeds_RxL[~live], gens.inputs_IxRxL[:, ~live].shape)
  )


def test_greedy_ignores_the_key_and_sampling_does_not(setup):
  first, second = _host(setup['first']), _host(setup['second'])
  greedy = _greedy_rows()
  for field in ('inputs_IxRxL', 'outputs_IxRxL', 'valid_IxR', 'mean_logp_IxR'):
    np.testing.assert_array_equal(getattr(first, field)[:, greedy], getattr(second, field)[:, greedy])
  sampled = first.where_R.copy()
  sampled[greedy] = False
  assert (first.outputs_IxRxL[:, sampled] != second.outputs_IxRxL[:, sampled]).any(-1).mean() > 0.5


def test_mean_logp_is_the_models_by_teacher_forcing(setup):
  # logprobs='model': every row, greedy or sampled, reports the untempered model's mean token log-prob.
  gens = _host(setup['first'])
  live = gens.where_R
  x = gens.inputs_IxRxL[:, live].reshape(-1, CODEC.length)
  y = gens.outputs_IxRxL[:, live].reshape(-1, CODEC.length)
  score = jax.jit(train.sequence_logps, static_argnums=0)
  summed, counts = score(setup['graphdef'], setup['params'], CODEC.encode_pairs(x, y))
  np.testing.assert_array_equal(counts, CODEC.length + 1)
  np.testing.assert_allclose(gens.mean_logp_IxR[:, live].reshape(-1), summed / (CODEC.length + 1), atol=1e-5)


def test_chunking_keeps_greedy_rows(setup):
  assert CHUNKED.chunk_rows < NUM_SEEDS * CHUNKED.rows_per_seed  # Four chunks, the last one padded.
  run = _jit(setup['graphdef'], CHUNKED)
  chunked = _host(run(jax.random.key(2), setup['params'], setup['seeds'], SEED_WHERE, jnp.float32(0.0)))
  first, greedy = _host(setup['first']), _greedy_rows()
  np.testing.assert_array_equal(chunked.inputs_IxRxL[:, greedy], first.inputs_IxRxL[:, greedy])
  np.testing.assert_array_equal(chunked.outputs_IxRxL[:, greedy], first.outputs_IxRxL[:, greedy])
  np.testing.assert_allclose(chunked.mean_logp_IxR[:, greedy], first.mean_logp_IxR[:, greedy], atol=1e-6)
  seeds_RxL = np.repeat(np.asarray(setup['seeds']), CFG.rows_per_seed, axis=0)
  np.testing.assert_array_equal(chunked.inputs_IxRxL, _reference_inputs(chunked, seeds_RxL))
  assert not chunked.valid_IxR[:, ~chunked.where_R].any() and chunked.valid_IxR[:, chunked.where_R].all()


def test_jit_equals_eager(setup):
  eager = inner_loop.run(
    jax.random.key(2),
    setup['graphdef'],
    setup['params'],
    setup['seeds'],
    SEED_WHERE,
    jnp.float32(0.0),
    codec=CODEC,
    cfg=CFG,
  )
  chex.assert_trees_all_close(eager, setup['first'], atol=1e-5)


def test_jit_traces_once(setup):
  # The fixture already called it twice (different keys and shifts); new seeds of the same shape too.
  seeds = jax.random.randint(jax.random.key(9), (NUM_SEEDS, CODEC.length), 0, CODEC.num_states)
  gens = setup['run'](jax.random.key(4), setup['params'], seeds, jnp.ones(NUM_SEEDS, bool), jnp.float32(0.4))
  np.testing.assert_array_equal(gens.inputs_IxRxL[0], np.repeat(np.asarray(seeds), CFG.rows_per_seed, axis=0))


def test_rows_split_across_a_mesh_decode_as_on_one_device(setup):
  # 15 rows of 4 chunk rows on a (4 data x 2 model) mesh: padded rows, each device its own row.
  mesh = sharding.make_mesh(8, model_parallel=2)
  params = jax.device_put(setup['params'], sharding.param_shardings(setup['params'], mesh))

  @jax.jit
  def split(key, params, seeds_SxL, seed_where_S, shift):
    return inner_loop.run(
      key, setup['graphdef'], params, seeds_SxL, seed_where_S, shift, codec=CODEC, cfg=CHUNKED, mesh=mesh
    )

  whole = _host(
    _jit(setup['graphdef'], CHUNKED)(
      jax.random.key(2), setup['params'], setup['seeds'], SEED_WHERE, jnp.float32(0.0)
    )
  )
  parts = _host(split(jax.random.key(2), params, setup['seeds'], SEED_WHERE, jnp.float32(0.0)))
  np.testing.assert_array_equal(parts.outputs_IxRxL, whole.outputs_IxRxL)
  np.testing.assert_array_equal(parts.inputs_IxRxL, whole.inputs_IxRxL)
  np.testing.assert_array_equal(parts.valid_IxR, whole.valid_IxR)
  np.testing.assert_allclose(parts.mean_logp_IxR, whole.mean_logp_IxR, atol=1e-5)


def test_bad_row_groups_fail_at_config_time():
  with pytest.raises(ValueError, match='row_groups must be positive'):
    inner_loop.InnerLoopConfig(row_groups=0)
