"""Tests of the sharding rules: parameter specs, and the policy on a (4 data x 2 model) mesh of 8 fake CPU
devices giving the same numbers as on one device (forward pass, train step, sampling)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from llome_jax import codec, model, sampling, sharding, train
from llome_jax.test_functions import ehrlich

CODEC = codec.CompactCodec(num_states=8, length=6)
# Widths divisible by 4 and 2 so that FSDP and tensor parallelism really split every matrix.
CFG = model.ModelConfig(
  vocab_size=CODEC.vocab_size, num_layers=2, num_heads=4, width=32, ff_width=64, max_len=64
)


def test_make_mesh_shapes_and_errors():
  mesh = sharding.make_mesh(8, model_parallel=2)
  assert dict(mesh.shape) == {'data': 4, 'model': 2}
  assert dict(sharding.make_mesh(1).shape) == {'data': 1, 'model': 1}
  with pytest.raises(ValueError, match='model_parallel=3 must divide'):
    sharding.make_mesh(8, model_parallel=3)
  with pytest.raises(ValueError, match='num_devices'):
    sharding.make_mesh(9)


def test_param_specs_follow_megatron_and_fsdp():
  mesh = sharding.make_mesh(8, model_parallel=2)
  _, params = model.abstract_params(CFG)
  specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(params, mesh))
  layer = specs['layers'][0]
  assert layer['query_key_value']['kernel'] == P('data', 'model')
  assert layer['query_key_value']['bias'] == P('model')
  assert layer['dense']['kernel'] == P('model', 'data')
  assert layer['dense_4h_to_h']['kernel'] == P('model', 'data')
  assert layer['input_layernorm']['scale'] == P(None)
  # vocab 13 divides by neither axis: that dimension stays whole.
  assert specs['embed_out']['kernel'] == P('data', None)
  no_fsdp = jax.tree.map(lambda s: s.spec, sharding.param_shardings(params, mesh, fsdp=False))
  assert no_fsdp['layers'][0]['query_key_value']['kernel'] == P(None, 'model')


def _data(num=16, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(0, CODEC.num_states, (num, CODEC.length)))
  y = jnp.asarray(rng.integers(0, CODEC.num_states, (num, CODEC.length)))
  return x, CODEC.encode_pairs(x, y)


def _run_on(mesh):
  """Forward pass, two MargE train steps and sampling, all jitted at the edge with mesh shardings."""
  graphdef, params = model.init(CFG, jax.random.key(0))
  optimizer = train.make_optimizer(train.OptimConfig(learning_rate=1e-2))
  state = train.init_state(params, optimizer)
  state_sh = train.state_shardings(state, optimizer, mesh)
  state = jax.device_put(state, state_sh)
  x, pairs = _data()
  rows = sharding.leading_axis(mesh)
  pairs = jax.device_put(pairs, rows)

  logps_fn = train.jit_sequence_logps(graphdef, state_sh.params, jax.tree.map(lambda _: rows, pairs), mesh)
  ref_logps, _ = logps_fn(state.params, pairs)
  batch = train.Batch(
    pairs=pairs, where_B=jnp.arange(16) < 14, rewards_B=jnp.linspace(0.0, 1.0, 16), ref_logps_B=ref_logps
  )
  step = functools.partial(
    train.train_step, graphdef=graphdef, optimizer=optimizer, objective=train.ObjectiveConfig('marge')
  )
  step = train.jit_train_step(step, state_sh, train.batch_shardings(batch, mesh), mesh)
  batch = jax.device_put(batch, train.batch_shardings(batch, mesh))
  for i in range(2):
    state, metrics = step(state, batch, jax.random.key(i))

  prompts = CODEC.encode_prompts(x)
  cfg = sampling.SampleConfig(CODEC.max_target_len, CODEC.eos_id, CODEC.pad_id, top_k=5)
  sample = sampling.jit_sample(graphdef, state_sh.params, mesh, cfg=cfg)
  temperature = jnp.tile(jnp.array([0.0, 0.8, 1.0, 1.6]), 4)
  out = sample(
    jax.random.key(7),
    state.params,
    prompts.tokens_BxT,
    prompts.mask_BxT,
    temperature,
    CODEC.allowed_tokens_GxV(CODEC.max_target_len),
  )
  return ref_logps, state, metrics, out


def test_policy_on_4x2_mesh_equals_one_device():
  ref_1, state_1, metrics_1, out_1 = _run_on(sharding.make_mesh(1))
  ref_8, state_8, metrics_8, out_8 = _run_on(sharding.make_mesh(8, model_parallel=2))
  qkv = state_8.params['layers'][0]['query_key_value']['kernel']
  assert qkv.sharding.spec == P('data', 'model') and len(qkv.sharding.device_set) == 8
  # Sharded matmuls sum in another order, so agreement is to float32 rounding, not bitwise.
  chex.assert_trees_all_close(ref_8, ref_1, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(metrics_8, metrics_1, rtol=1e-4, atol=1e-5)
  # atol: the key bias's true gradient is 0 (softmax ignores it), so Adam scales rounding noise.
  chex.assert_trees_all_close(state_8.params, state_1.params, rtol=1e-4, atol=2e-5)
  chex.assert_trees_all_equal(out_8.tokens_BxG, out_1.tokens_BxG)
  chex.assert_trees_all_close(out_8.logps_BxG, out_1.logps_BxG, atol=1e-4)


def test_chunked_map_matches_one_pass_and_drops_padding():
  x = jnp.arange(10 * 3, dtype=jnp.float32).reshape(10, 3)
  out_x, out_i = sharding.chunked_map(lambda i, c: (c * 2.0, jnp.full(c.shape[:1], i)), x, rows=4)
  np.testing.assert_array_equal(out_x, x * 2.0)
  np.testing.assert_array_equal(out_i, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])  # 3 chunks, 2 padded rows dropped.


def test_chunked_map_splits_each_chunk_over_the_data_axis():
  w = jax.random.normal(jax.random.key(0), (64, 64))
  x = jax.random.normal(jax.random.key(1), (100, 64))

  def apply(mesh):
    fn = jax.jit(lambda x: sharding.chunked_map(lambda _, c: jnp.tanh(c @ w) @ w, x, rows=30, mesh=mesh))
    return fn(x), fn.lower(x).compile().cost_analysis()['flops']

  mesh = sharding.make_mesh(8)
  (one, flops_one), (eight, flops_eight) = apply(None), apply(mesh)
  np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-5)
  # 30 rows round up to 32 = 4 per device: each device does ~1/8 of the chunk's matmuls.
  assert flops_eight < flops_one / 6


def test_rows_split_only_what_divides_evenly():
  mesh = sharding.make_mesh(8)
  assert sharding.rows(mesh, 1000).spec == P('data')
  assert sharding.rows(mesh, 999).spec == P()
  assert sharding.rows(sharding.make_mesh(1), 999).spec == P('data')


@pytest.mark.parametrize('num_rows', [4096, 1000, 999])
def test_per_shard_evaluation_on_1_and_8_devices_equals_one_pass(num_rows, monkeypatch):
  """Each shard loops over chunks of its own rows (the chunked Ehrlich evaluation): on 1 device 4,096
  rows are several chunks, which is the loop that failed to trace under shard_map's varying-axes types;
  999 rows are padded to a multiple of 8 and the padding dropped."""
  from llome_jax.test_functions import ehrlich_kernels, instances

  monkeypatch.setattr(ehrlich_kernels, 'CPU_CHUNK_ROWS', 200)  # Several chunks per shard on 8 devices too.
  f2 = instances.load_instance('f2')
  x = jax.random.randint(jax.random.key(num_rows), (num_rows, f2.dim), 0, f2.params.num_states)
  x = x.at[::7].set(f2.initial_solution)  # Some feasible rows, so the values are not all -inf.
  expected = ehrlich.evaluate(f2.params, x)
  assert np.isfinite(np.asarray(expected)).any()
  for num_devices in (1, 8):
    mesh = sharding.make_mesh(num_devices)
    fn = jax.jit(sharding.per_shard(mesh, functools.partial(ehrlich.evaluate, f2.params)))
    out = fn(jax.device_put(x, sharding.rows(mesh, num_rows)))
    assert out.shape == (num_rows,)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


@pytest.mark.parametrize('num_rows', [4096, 1000, 999])
def test_sampling_batches_of_any_size_decode_alike_on_1_and_8_devices(num_rows):
  graphdef, params = model.init(CFG, jax.random.key(0))
  x = jax.random.randint(jax.random.key(1), (num_rows, CODEC.length), 0, CODEC.num_states)
  prompts = CODEC.encode_prompts(x)
  temperature = jnp.tile(jnp.array([0.0, 0.7, 1.0, 1.5]), num_rows // 4 + 1)[:num_rows]
  cfg = sampling.SampleConfig(CODEC.max_target_len, CODEC.eos_id, CODEC.pad_id, top_k=5)
  outs = []
  for num_devices in (1, 8):
    mesh = sharding.make_mesh(num_devices)
    params_sh = sharding.param_shardings(params, mesh, fsdp=False)
    sample = sampling.jit_sample(graphdef, params_sh, mesh, cfg=cfg)
    outs.append(
      sample(
        jax.random.key(7),
        jax.device_put(params, params_sh),
        prompts.tokens_BxT,
        prompts.mask_BxT,
        temperature,
        CODEC.allowed_tokens_GxV(CODEC.max_target_len),
      )
    )
  chex.assert_trees_all_equal(outs[0].tokens_BxG, outs[1].tokens_BxG)
  chex.assert_trees_all_close(outs[0].logps_BxG, outs[1].logps_BxG, atol=1e-5)


@pytest.mark.parametrize('num_rows', [pytest.param(4096, marks=pytest.mark.slow), 1000, 999])
def test_training_batches_of_any_size_on_1_and_8_devices(num_rows):
  """One epoch of SFT in two batches (the second padded with unreal rows), data-parallel on 8 devices:
  the same steps and, to float32 rounding (the batch mean becomes a cross-device sum), the same model."""
  graphdef, params = model.init(CFG, jax.random.key(0))
  optimizer = train.make_optimizer(train.OptimConfig(learning_rate=1e-2))
  step = functools.partial(
    train.train_step, graphdef=graphdef, optimizer=optimizer, objective=train.ObjectiveConfig('sft')
  )
  x = jax.random.randint(jax.random.key(1), (num_rows, CODEC.length), 0, CODEC.num_states)
  dataset = train.Batch(pairs=CODEC.encode_pairs(x, jnp.roll(x, 1, axis=1)), where_B=jnp.ones(num_rows, bool))
  results = []
  for num_devices in (1, 8):
    mesh = sharding.make_mesh(num_devices)
    state = train.init_state(jax.tree.map(jnp.copy, params), optimizer)  # The epoch donates its state.
    state_sh = train.state_shardings(state, optimizer, mesh, fsdp=False)
    dataset_sh = train.batch_shardings(dataset, mesh)
    fit = train.jit_fit_epoch(step, -(-num_rows // 2), state_sh, dataset_sh, mesh)
    state, metrics = fit(
      jax.device_put(state, state_sh), jax.device_put(dataset, dataset_sh), jax.random.key(3)
    )
    results.append((jax.device_get(state), jax.device_get(metrics)))
  (state_1, metrics_1), (state_8, metrics_8) = results
  assert int(state_1.step) == int(state_8.step) == 2
  chex.assert_trees_all_close(metrics_8, metrics_1, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(state_8.params, state_1.params, rtol=1e-4, atol=2e-5)
