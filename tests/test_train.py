"""Tests of the train step and the epoch loop: SFT overfits, MargE and DPO losses, NaN guard, schedule."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llome_jax import checkpoint, codec, losses, model, sharding, train

CODEC = codec.CompactCodec(num_states=8, length=8)
CFG = model.preset('tiny', vocab_size=CODEC.vocab_size)
# Op-by-op dispatch is slow on CPU (an eager train step of the tiny model takes ~45 s): helpers run jitted.
_sequence_logps = jax.jit(train.sequence_logps, static_argnums=0)
_apply = jax.jit(model.apply, static_argnums=0)


def _pairs(num, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(0, CODEC.num_states, (num, CODEC.length)))
  y = jnp.asarray(rng.integers(0, CODEC.num_states, (num, CODEC.length)))
  return CODEC.encode_pairs(x, y)


def _setup(objective='sft', learning_rate=3e-3, **objective_kwargs):
  graphdef, params = model.init(CFG, jax.random.key(0))
  optimizer = train.make_optimizer(train.OptimConfig(learning_rate=learning_rate))
  step = functools.partial(
    train.train_step,
    graphdef=graphdef,
    optimizer=optimizer,
    objective=train.ObjectiveConfig(objective, **objective_kwargs),
  )
  return graphdef, train.init_state(params, optimizer), step


def test_sft_overfits_a_tiny_dataset():
  _, state, step = _setup()
  where = jnp.arange(40) < 32  # 32 real pairs in a capacity of 40.
  dataset = train.Batch(pairs=_pairs(40), where_B=where)
  fit = jax.jit(functools.partial(train.fit_epoch, step_fn=step, batch_size=16))
  first = None
  for epoch in range(150):
    state, metrics = fit(state, dataset, jax.random.key(epoch))
    first = metrics['loss'][0] if first is None else first
  # 2 real batches per epoch; the third holds only padding rows and is skipped.
  chex.assert_trees_all_equal(metrics['skipped'], jnp.array([False, False, True]))
  assert int(state.step) == 300
  assert float(first) > 2.0 and float(jnp.max(metrics['loss'][:2])) < 0.1


def test_fit_epoch_on_a_mesh_splits_each_batch_across_devices():
  """A dataset built inside a larger program is replicated; with `mesh` the epoch still trains
  data-parallel (each device takes 1/8 of every batch and the gradients are summed across devices),
  and it trains the same as one device up to float rounding."""
  _, state, step = _setup()
  dataset = train.Batch(pairs=_pairs(40), where_B=jnp.arange(40) < 32)
  mesh = sharding.make_mesh(8)
  state_sh = jax.tree.map(lambda _: sharding.replicated(mesh), state)
  dataset = jax.device_put(dataset, sharding.replicated(mesh))
  key = jax.random.key(3)
  plain = jax.jit(functools.partial(train.fit_epoch, step_fn=step, batch_size=16))
  split = jax.jit(
    functools.partial(train.fit_epoch, step_fn=step, batch_size=16, mesh=mesh),
    in_shardings=(state_sh, sharding.replicated(mesh), sharding.replicated(mesh)),
  )
  placed = jax.device_put(state, state_sh)
  split_exe = split.lower(placed, dataset, key).compile()  # Run below too: each program compiles once.
  plain_exe = plain.lower(placed, dataset, key).compile()
  compiled, unsplit = split_exe.as_text(), plain_exe.as_text()
  # The attention scores of a batch: 16 rows on one device, 2 per device when split.
  length = dataset.pairs.inputs_BxT.shape[1]
  scores = f'[{{}},{CFG.num_heads},{length},{length}]'
  assert scores.format(2) in compiled and scores.format(16) not in compiled
  assert scores.format(16) in unsplit and 'all-reduce' in compiled
  (state_a, m_a), (state_b, m_b) = split_exe(placed, dataset, key), plain_exe(placed, dataset, key)
  np.testing.assert_allclose(m_a['loss'], m_b['loss'], rtol=1e-5)
  chex.assert_trees_all_close(state_a.params, state_b.params, atol=1e-5)


def test_epoch_visits_every_real_row_once():
  where = jnp.array([True, False, True, True, False, True, True])
  order = train._epoch_order(jax.random.key(0), where)
  assert sorted(np.asarray(order).tolist()) == list(range(7))
  assert set(np.asarray(order[:5]).tolist()) == {0, 2, 3, 5, 6}


def test_step_traces_once_across_iterations():
  _, state, step = _setup()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def jitted(state, batch, key):
    return step(state, batch, key)

  losses_seen = []
  for seed in range(3):
    batch = train.Batch(pairs=_pairs(8, seed), where_B=jnp.ones(8, bool))
    state, metrics = jitted(state, batch, jax.random.key(seed))
    losses_seen.append(float(metrics['loss']))
  assert int(state.step) == 3 and all(np.isfinite(losses_seen))


def test_sft_step_loss_is_the_mean_token_nll_of_real_rows():
  graphdef, state, step = _setup()
  pairs = _pairs(6)
  where = jnp.array([True, True, False, True, False, True])
  _, metrics = jax.jit(step)(state, train.Batch(pairs=pairs, where_B=where), jax.random.key(0))
  logits, _ = _apply(graphdef, state.params, pairs.inputs_BxT, pairs.input_mask_BxT)
  nll = losses.sft_loss(losses.per_token_logps(logits, pairs.targets_BxT), pairs.loss_mask_BxT)
  np.testing.assert_allclose(float(metrics['loss']), float(jnp.mean(nll[where])), rtol=1e-5)
  assert int(metrics['num_rows']) == 4


def test_marge_step_with_the_policy_as_reference():
  graphdef, state, step = _setup('marge', marge_alpha=2.0, marge_beta=3.0)
  pairs = _pairs(6)
  ref_logps, lengths = _sequence_logps(graphdef, state.params, pairs)
  rewards = jnp.linspace(0.0, 0.5, 6)
  batch = train.Batch(pairs=pairs, where_B=jnp.ones(6, bool), rewards_B=rewards, ref_logps_B=ref_logps)
  new_state, metrics = jax.jit(step)(state, batch, jax.random.key(0))
  # Reference == policy, so every w~ is 1: the loss is mean(alpha (lbar - r) - beta lbar).
  lbar = ref_logps / lengths
  np.testing.assert_allclose(
    float(metrics['loss']), float(jnp.mean(2.0 * (lbar - rewards) - 3.0 * lbar)), rtol=1e-5
  )
  np.testing.assert_allclose(float(metrics['marge_ess']), 6.0, rtol=1e-5)
  assert int(new_state.step) == 1


def test_marge_raises_the_likelihood_of_rewarded_pairs():
  graphdef, state, step = _setup('marge', learning_rate=1e-2, marge_alpha=1.0, marge_beta=0.1)
  pairs = _pairs(16)
  ref_logps, lengths = _sequence_logps(graphdef, state.params, pairs)
  rewards = jnp.where(jnp.arange(16) < 8, 1.0, 0.0)
  batch = train.Batch(pairs=pairs, where_B=jnp.ones(16, bool), rewards_B=rewards, ref_logps_B=ref_logps)
  jitted = jax.jit(step)
  for i in range(20):
    state, _ = jitted(state, batch, jax.random.key(i))
  logps, _ = _sequence_logps(graphdef, state.params, pairs)
  gain = (logps - ref_logps) / lengths
  assert float(jnp.mean(gain[:8])) > float(jnp.mean(gain[8:])) + 0.05


def test_dpo_step_prefers_chosen_over_rejected():
  graphdef, state, step = _setup('dpo', learning_rate=1e-2, dpo_beta=0.4)
  chosen, rejected = _pairs(8, seed=1), _pairs(8, seed=2)
  ref_chosen, _ = _sequence_logps(graphdef, state.params, chosen)
  ref_rejected, _ = _sequence_logps(graphdef, state.params, rejected)
  batch = train.Batch(
    pairs=chosen,
    where_B=jnp.ones(8, bool),
    ref_logps_B=ref_chosen,
    rejected=rejected,
    ref_rejected_logps_B=ref_rejected,
  )
  jitted = jax.jit(step)
  state, metrics = jitted(state, batch, jax.random.key(0))
  np.testing.assert_allclose(float(metrics['loss']), np.log(2.0), rtol=1e-5)  # Zero margin at the start.
  for i in range(10):
    state, metrics = jitted(state, batch, jax.random.key(i))
  assert float(metrics['dpo_accuracy']) == 1.0 and float(metrics['loss']) < 0.5


def test_a_nan_step_changes_nothing_and_is_reported():
  graphdef, state, step = _setup('marge')
  pairs = _pairs(4)
  ref_logps, _ = _sequence_logps(graphdef, state.params, pairs)
  rewards = jnp.array([0.0, jnp.nan, 0.1, 0.2])
  batch = train.Batch(pairs=pairs, where_B=jnp.ones(4, bool), rewards_B=rewards, ref_logps_B=ref_logps)
  new_state, metrics = jax.jit(step)(state, batch, jax.random.key(0))
  assert int(metrics['nonfinite']) == 1
  chex.assert_trees_all_equal(new_state, state)
  with pytest.raises(FloatingPointError, match='marge.*batch 0'):
    train.check_finite(jax.tree.map(lambda x: x[None], metrics), 'marge')
  train.check_finite({'nonfinite': jnp.zeros(3, jnp.int32)}, 'fine')


def test_schedule_and_weight_decay_mask():
  cfg = train.OptimConfig(
    learning_rate=1.0, warmup_steps=10, decay_steps=100, schedule='cosine', end_fraction=0.1
  )
  lr = train.schedule(cfg)
  np.testing.assert_allclose(
    [float(lr(0)), float(lr(5)), float(lr(10)), float(lr(110))], [0.0, 0.5, 1.0, 0.1], atol=1e-6
  )
  # Decoupled weight decay shrinks matrices and leaves biases and LayerNorm scales alone.
  optimizer = train.make_optimizer(train.OptimConfig(learning_rate=0.1, weight_decay=0.5))
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = optimizer.update(zero, optimizer.init(params), params)
  new = optax.apply_updates(params, updates)
  chex.assert_trees_all_close(new, {'kernel': jnp.full((2, 2), 0.95), 'bias': jnp.ones(2)})


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (dict(learning_rate=0.0), 'learning_rate'),
    (dict(schedule='exp'), 'schedule'),
    (dict(schedule='cosine'), 'decay_steps'),
    (dict(grad_clip=-1.0), 'grad_clip'),
  ],
)
def test_bad_optimiser_settings_are_clear_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    train.OptimConfig(**kwargs)
  with pytest.raises(ValueError, match='objective'):
    train.ObjectiveConfig('ppo')


def test_golden_sft_steps():
  _, state, step = _setup()
  jitted = jax.jit(step)
  batch = train.Batch(pairs=_pairs(8), where_B=jnp.ones(8, bool))
  for i in range(3):
    state, metrics = jitted(state, batch, jax.random.key(i))
  np.testing.assert_allclose(
    [float(metrics['loss']), float(metrics['grad_norm'])], GOLDEN_LOSS_GRAD, rtol=1e-4
  )


# Loss and gradient norm at the third SFT step of the tiny preset from key 0 on pairs of seed 0.
GOLDEN_LOSS_GRAD = [2.35715389251709, 0.9193732738494873]


def test_train_state_checkpoint_resumes_exactly_and_moves_from_8_devices_to_1(tmp_path):
  _, state, step = _setup()
  optimizer = step.keywords['optimizer']
  batches = [train.Batch(pairs=_pairs(8, seed), where_B=jnp.ones(8, bool)) for seed in range(4)]
  mesh_8, mesh_1 = sharding.make_mesh(8, model_parallel=2), sharding.make_mesh(1)
  shardings_8 = train.state_shardings(state, optimizer, mesh_8)
  jitted = jax.jit(step)

  def run(state, start, stop):
    for i in range(start, stop):
      state, _ = jitted(state, batches[i], jax.random.key(i))
    return state

  uninterrupted = run(jax.device_put(state, shardings_8), 0, 4)
  halfway = run(jax.device_put(state, shardings_8), 0, 2)
  checkpoint.save(tmp_path, 2, halfway, metadata={'epoch': 0})
  abstract = jax.eval_shape(lambda: state)
  resumed, metadata = checkpoint.restore(tmp_path, checkpoint.abstract_like(abstract, shardings_8))
  assert metadata == {'epoch': 0} and int(resumed.step) == 2
  # Resume equals uninterrupted, bit for bit, on the same mesh.
  chex.assert_trees_all_equal(run(resumed, 2, 4), uninterrupted)
  # The state saved on 8 devices restores onto 1 with the same values.
  on_one, _ = checkpoint.restore(
    tmp_path, checkpoint.abstract_like(abstract, train.state_shardings(state, optimizer, mesh_1))
  )
  assert on_one.params['embed_in']['embedding'].sharding.mesh.size == 1
  chex.assert_trees_all_equal(on_one, halfway)
