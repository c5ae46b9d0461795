"""Tests for the losses: NumPy references, finite-difference gradients, masking and sharded MargE."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jax_test_util

from llome_jax import losses, sharding

# ---------------------------------------------------------------------------------------------------
# Independent float64 NumPy references, written plainly.


def _np_per_token_logps(logits, targets):
  batch, length, _ = logits.shape
  out = np.zeros((batch, length))
  for b in range(batch):
    for t in range(length):
      row = logits[b, t].astype(np.float64)
      top = row.max()
      out[b, t] = row[targets[b, t]] - (top + np.log(np.sum(np.exp(row - top))))
  return out


def _np_token_logps(logits, targets, mask):
  batch, length, _ = logits.shape
  summed, counts = np.zeros(batch), np.zeros(batch, np.int64)
  for b in range(batch):
    for t in range(length):
      if mask[b, t]:
        row = logits[b, t].astype(np.float64)
        summed[b] += np.log(np.exp(row[targets[b, t]]) / np.sum(np.exp(row)))
        counts[b] += 1
  return summed, counts


def _np_sft(token_logps, mask):
  out = np.zeros(token_logps.shape[0])
  for b in range(token_logps.shape[0]):
    n = mask[b].sum()
    out[b] = 0.0 if n == 0 else -np.sum(token_logps[b][mask[b] > 0]) / n
  return out


def _np_dpo(chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing):
  x = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
  sigmoid = 1.0 / (1.0 + np.exp(-x))
  return -(1 - label_smoothing) * np.log(sigmoid) - label_smoothing * np.log(1 - sigmoid)


def _np_marge(policy, ref, rewards, lengths, alpha, beta, self_normalize, where):
  valid = [i for i in range(policy.shape[0]) if where[i]]
  w = {i: np.exp(policy[i] - ref[i]) for i in valid}
  total = sum(w.values())
  out = np.zeros(policy.shape[0])
  for i in valid:
    weight = w[i] * len(valid) / total if self_normalize else w[i]
    lbar = policy[i] / max(lengths[i], 1)
    out[i] = alpha * weight * (lbar - rewards[i]) - beta * lbar
  return out


# ---------------------------------------------------------------------------------------------------
# Inputs.


def _logits_inputs(seed=0, batch=3, length=5, vocab=7):
  rng = np.random.default_rng(seed)
  logits = 3.0 * rng.normal(size=(batch, length, vocab))
  targets = rng.integers(0, vocab, size=(batch, length))
  mask = rng.random((batch, length)) < 0.7
  mask[1] = False  # A row without target tokens.
  mask[0, 0] = True
  return logits, targets, mask


def _marge_inputs(seed=0, batch=6):
  rng = np.random.default_rng(seed)
  policy = -rng.uniform(5.0, 30.0, batch)
  ref = policy + rng.normal(0.0, 1.0, batch)
  rewards = np.maximum(0.0, rng.normal(0.0, 0.5, batch))
  lengths = rng.integers(1, 20, batch).astype(np.float64)
  return policy, ref, rewards, lengths


def _dpo_inputs(seed=0, batch=5):
  rng = np.random.default_rng(seed)
  return tuple(-rng.uniform(5.0, 30.0, batch) for _ in range(4))


def _f32(*arrays):
  return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


# ---------------------------------------------------------------------------------------------------
# Token log-probabilities and SFT.


def test_per_token_logps_matches_numpy():
  logits, targets, _ = _logits_inputs()
  got = losses.per_token_logps(jnp.asarray(logits, jnp.float32), jnp.asarray(targets))
  chex.assert_type(got, jnp.float32)
  np.testing.assert_allclose(got, _np_per_token_logps(logits, targets), rtol=1e-5, atol=1e-5)


def test_per_token_logps_computes_bf16_logits_in_float32():
  logits, targets, _ = _logits_inputs()
  logits_bf16 = jnp.asarray(logits, jnp.bfloat16)
  got = losses.per_token_logps(logits_bf16, jnp.asarray(targets))
  chex.assert_type(got, jnp.float32)
  expected = _np_per_token_logps(np.asarray(logits_bf16.astype(jnp.float32)), targets)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_token_logps_matches_numpy_and_ignores_masked_positions():
  logits, targets, mask = _logits_inputs()
  expected_sum, expected_count = _np_token_logps(logits, targets, mask)
  junk_targets = np.where(mask, targets, -100)  # Padding ids outside the vocabulary.
  summed, counts = losses.token_logps(jnp.asarray(logits, jnp.float32), jnp.asarray(junk_targets), mask)
  chex.assert_type(counts, jnp.int32)
  np.testing.assert_allclose(summed, expected_sum, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(counts, expected_count)
  assert float(summed[1]) == 0.0

  # Other logits at masked positions change neither the value nor the gradient elsewhere.
  other_logits = np.where(mask[..., None], logits, 50.0 * np.ones_like(logits))

  def total(logits_BxTxV):
    return jnp.sum(losses.token_logps(logits_BxTxV, jnp.asarray(junk_targets), mask)[0])

  grad = jax.grad(total)(jnp.asarray(logits, jnp.float32))
  other_grad = jax.grad(total)(jnp.asarray(other_logits, jnp.float32))
  chex.assert_trees_all_equal(
    total(jnp.asarray(logits, jnp.float32)), total(jnp.asarray(other_logits, jnp.float32))
  )
  chex.assert_trees_all_equal(grad, other_grad)
  np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)


def test_sft_loss_matches_numpy_and_empty_rows_give_zero():
  logits, targets, mask = _logits_inputs()
  token_logps = _np_per_token_logps(logits, targets)
  got = losses.sft_loss(jnp.asarray(token_logps, jnp.float32), mask.astype(np.float32))
  np.testing.assert_allclose(got, _np_sft(token_logps, mask), rtol=1e-6, atol=1e-6)
  chex.assert_tree_all_finite(jax.grad(lambda x: jnp.sum(losses.sft_loss(x, mask)))(jnp.asarray(token_logps)))
  assert float(got[1]) == 0.0


def test_shape_mismatch_fails_at_trace_time():
  with pytest.raises(ValueError, match='targets shape'):
    losses.per_token_logps(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4), jnp.int32))
  with pytest.raises(AssertionError):
    losses.sft_loss(jnp.zeros((2, 3)), jnp.ones((2, 4)))
  with pytest.raises(AssertionError):
    losses.dpo_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(3), jnp.zeros(2))
  with pytest.raises(AssertionError):
    losses.marge_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.ones(2), where=jnp.ones(3, bool))


# ---------------------------------------------------------------------------------------------------
# DPO.


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1, 0.5])
def test_dpo_loss_matches_numpy(label_smoothing):
  inputs = _dpo_inputs()
  got = losses.dpo_loss(*_f32(*inputs), beta=0.4, label_smoothing=label_smoothing)
  np.testing.assert_allclose(got, _np_dpo(*inputs, 0.4, label_smoothing), rtol=1e-5, atol=1e-5)


def test_dpo_without_smoothing_is_negative_log_sigmoid():
  chosen, rejected, ref_chosen, ref_rejected = _dpo_inputs()
  margin = (chosen - ref_chosen) - (rejected - ref_rejected)
  got = losses.dpo_loss(*_f32(chosen, rejected, ref_chosen, ref_rejected), beta=0.1)
  np.testing.assert_allclose(got, np.log1p(np.exp(-0.1 * margin)), rtol=1e-5, atol=1e-6)


def test_dpo_is_symmetric_under_swapping_chosen_and_rejected():
  chosen, rejected, ref_chosen, ref_rejected = _f32(*_dpo_inputs())
  margin = (chosen - ref_chosen) - (rejected - ref_rejected)
  for eps in [0.0, 0.2, 0.5]:
    forward = losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.3, label_smoothing=eps)
    swapped = losses.dpo_loss(rejected, chosen, ref_rejected, ref_chosen, beta=0.3, label_smoothing=1 - eps)
    chex.assert_trees_all_close(forward, swapped, rtol=1e-6)
  # softplus(-x) - softplus(x) = -x.
  forward = losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.3)
  swapped = losses.dpo_loss(rejected, chosen, ref_rejected, ref_chosen, beta=0.3)
  chex.assert_trees_all_close(forward - swapped, -0.3 * margin, rtol=1e-5, atol=1e-5)


def test_dpo_is_finite_for_large_margins():
  chosen = jnp.array([1e5, -1e5, 3e4, -3e4], jnp.float32)
  zeros = jnp.zeros_like(chosen)

  def total(*args):
    return jnp.sum(losses.dpo_loss(*args, beta=0.5, label_smoothing=0.1))

  value = losses.dpo_loss(chosen, zeros, zeros, zeros, beta=0.5)
  chex.assert_tree_all_finite(value)
  np.testing.assert_allclose(value, [0.0, 5e4, 0.0, 1.5e4], rtol=1e-6)
  chex.assert_tree_all_finite(jax.grad(total, argnums=(0, 1, 2, 3))(chosen, zeros, zeros, zeros))


# ---------------------------------------------------------------------------------------------------
# MargE.

WHERE = np.array([True, True, False, True, False, True])


@pytest.mark.parametrize('self_normalize', [True, False])
@pytest.mark.parametrize('where', [None, WHERE])
def test_marge_loss_matches_numpy(self_normalize, where):
  inputs = _marge_inputs()
  got = losses.marge_loss(*_f32(*inputs), alpha=1.5, beta=10.0, self_normalize=self_normalize, where=where)
  mask = np.ones(6, bool) if where is None else where
  expected = _np_marge(*inputs, 1.5, 10.0, self_normalize, mask)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_marge_self_normalized_is_stable_for_large_log_ratios():
  policy, ref, rewards, lengths = _f32(*_marge_inputs())
  got = losses.marge_loss(policy, ref, rewards, lengths)
  shifted = losses.marge_loss(policy, ref - 1000.0, rewards, lengths)  # exp(log-ratio) overflows.
  chex.assert_tree_all_finite(shifted)
  chex.assert_trees_all_close(shifted, got, rtol=1e-5)


def _marge_total(policy, ref, rewards, lengths, where):
  return jnp.sum(losses.marge_loss(policy, ref, rewards, lengths, alpha=1.0, beta=10.0, where=where))


@pytest.mark.parametrize('self_normalize', [True, False])
def test_marge_masked_rows_contribute_nothing(self_normalize):
  inputs = _f32(*_marge_inputs())
  garbage = [
    np.array([0, 0, np.inf, 0, np.nan, 0]),
    np.array([0, 0, -np.inf, 0, np.inf, 0]),
    np.array([0, 0, np.nan, 0, -np.inf, 0]),
    np.array([0, 0, 0.0, 0, np.nan, 0]),  # Lengths 0 and NaN.
  ]
  dirty = tuple(
    jnp.where(WHERE, x, jnp.asarray(g, jnp.float32)) for x, g in zip(inputs, garbage, strict=True)
  )

  def per_row(*args):
    return losses.marge_loss(*args, self_normalize=self_normalize, where=WHERE)

  def grads(*args):
    return jax.grad(lambda *a: jnp.sum(per_row(*a)), argnums=(0, 1, 2, 3))(*args)

  clean_loss, dirty_loss = per_row(*inputs), per_row(*dirty)
  clean_grads, dirty_grads = grads(*inputs), grads(*dirty)
  chex.assert_tree_all_finite((dirty_loss, dirty_grads))
  chex.assert_trees_all_close(clean_loss, dirty_loss, rtol=1e-7)
  chex.assert_trees_all_close(clean_grads, dirty_grads, rtol=1e-7)
  np.testing.assert_array_equal(np.asarray(dirty_loss)[~WHERE], 0.0)
  for grad in dirty_grads:
    np.testing.assert_array_equal(np.asarray(grad)[~WHERE], 0.0)
  # The excluded rows equal a batch without them.
  kept = tuple(x[WHERE] for x in inputs)
  chex.assert_trees_all_close(dirty_loss[WHERE], losses.marge_loss(*kept, self_normalize=self_normalize))

  # A batch with no rows at all: zeros, with finite (zero) gradients.
  nothing = np.zeros(6, bool)
  empty_loss = losses.marge_loss(*dirty, where=nothing)
  empty_grads = jax.grad(_marge_total, argnums=(0, 1))(*dirty, nothing)
  chex.assert_trees_all_equal(empty_loss, jnp.zeros(6))
  chex.assert_trees_all_equal(empty_grads, (jnp.zeros(6), jnp.zeros(6)))


def test_marge_reward_enters_the_gradient_only_through_the_normaliser():
  policy, ref, rewards, lengths = _f32(*_marge_inputs())
  grad_fn = jax.grad(_marge_total)
  # A batch of several: the self-normalised weights depend on the policy, so rewards matter.
  grad = grad_fn(policy, ref, rewards, lengths, None)
  other_grad = grad_fn(policy, ref, rewards + jnp.arange(6.0), lengths, None)
  assert np.max(np.abs(np.asarray(grad - other_grad))) > 1e-3
  # A batch of one (the reference's released config: per-device batch 1): w~ == 1, so the
  # gradient is (alpha - beta) / n whatever the reward.
  one = tuple(x[:1] for x in (policy, ref, rewards, lengths))
  grad_one = grad_fn(*one, None)
  other_grad_one = grad_fn(one[0], one[1], one[2] + 5.0, one[3], None)
  chex.assert_trees_all_equal(grad_one, other_grad_one)
  chex.assert_trees_all_close(grad_one, (1.0 - 10.0) / one[3], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Gradients against finite differences (float64, scoped to this test), and jit.


def test_gradients_match_finite_differences():
  logits, targets, mask = _logits_inputs(batch=2, length=3, vocab=4)
  policy, ref, rewards, lengths = _marge_inputs()
  dpo_inputs = _dpo_inputs()
  check = jax_test_util.check_grads
  with jax.enable_x64(True):
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    check(lambda x: losses.per_token_logps(x, targets), (logits,), order=1, modes=['fwd', 'rev'])
    check(lambda x: losses.token_logps(x, targets, mask)[0], (logits,), order=1, modes=['fwd', 'rev'])
    token_logps = losses.per_token_logps(logits, targets)
    check(lambda x: losses.sft_loss(x, mask), (token_logps,), order=1, modes=['fwd', 'rev'])
    dpo = lambda *a: losses.dpo_loss(*a, beta=0.4, label_smoothing=0.1)  # noqa: E731
    check(dpo, tuple(jnp.asarray(x) for x in dpo_inputs), order=1, modes=['fwd', 'rev'])
    lengths = jnp.asarray(lengths)
    for self_normalize in [True, False]:
      for where in [None, WHERE]:

        def marge(p, r, rw, self_normalize=self_normalize, where=where):
          return losses.marge_loss(p, r, rw, lengths, self_normalize=self_normalize, where=where)

        args = (jnp.asarray(policy), jnp.asarray(ref), jnp.asarray(rewards))
        check(marge, args, order=1, modes=['fwd', 'rev'])


def test_jit_equals_eager():
  logits, targets, mask = _logits_inputs()
  logits, targets = jnp.asarray(logits, jnp.float32), jnp.asarray(targets)
  marge_inputs = _f32(*_marge_inputs())
  dpo_inputs = _f32(*_dpo_inputs())
  cases = [
    (losses.per_token_logps, (logits, targets), {}),
    (losses.token_logps, (logits, targets, mask), {}),
    (losses.sft_loss, (losses.per_token_logps(logits, targets), mask), {}),
    (losses.dpo_loss, dpo_inputs, dict(beta=0.4, label_smoothing=0.1)),
    (losses.marge_loss, marge_inputs, dict(alpha=1.0, beta=10.0, where=jnp.asarray(WHERE))),
    (losses.marge_loss, marge_inputs, dict(self_normalize=False)),
  ]
  for fn, args, kwargs in cases:
    eager = fn(*args, **kwargs)
    jitted = jax.jit(lambda *a, fn=fn, kwargs=kwargs: fn(*a, **kwargs))(*args)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Sharding: the MargE normaliser is global over the batch, not per device.


def test_marge_sharded_batch_normalises_over_the_global_batch():
  mesh = sharding.make_mesh(8)
  inputs = _f32(*_marge_inputs(seed=1, batch=16))
  where = jnp.arange(16) % 5 != 3
  expected = losses.marge_loss(*inputs, where=where)
  expected_grad = jax.grad(_marge_total, argnums=(0, 1))(*inputs, where)

  sharded = jax.device_put((*inputs, where), sharding.leading_axis(mesh))
  assert len(sharded[0].sharding.device_set) == 8
  got = jax.jit(losses.marge_loss)(*sharded[:4], where=sharded[4])
  got_grad = jax.jit(jax.grad(_marge_total, argnums=(0, 1)))(*sharded)
  chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(got_grad, expected_grad, rtol=1e-6, atol=1e-6)

  # Normalising within each device's 2 rows instead gives different losses.
  per_shard = jax.vmap(lambda *a: losses.marge_loss(*a[:4], where=a[4]))(
    *(x.reshape(8, 2) for x in (*inputs, where))
  )
  assert np.max(np.abs(np.asarray(per_shard.reshape(16) - expected))) > 1e-2
