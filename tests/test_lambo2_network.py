"""LaMBO-2's network and its training: head shapes, the corruption schedule, and that training on a toy
Ehrlich function lowers the loss on sequences it never saw."""

import chex
import jax
import jax.numpy as jnp
import lambo2_problem
import numpy as np
import pytest

from llome_jax.lambo2 import network, training


def test_heads_have_ensemble_shapes_and_members_differ():
  cfg = network.NetworkConfig(
    num_states=5, length=7, embed_dim=8, channels=12, ensemble_size=3, branch_channels=4
  )
  graphdef, params = network.init(cfg, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (6, 7), 0, 5)
  heads = network.merge(graphdef, params)(tokens)
  chex.assert_shape(heads['denoiser_BxLxV'], (6, 7, 6))  # v + the mask token.
  chex.assert_shape(heads['feasibility_BxMx2'], (6, 3, 2))
  chex.assert_shape(heads['value_BxMx2'], (6, 3, 2))
  mean, variance = network.gaussian(heads['value_BxMx2'])
  assert np.all(variance >= 1e-4) and np.all(np.isfinite(mean))
  assert np.ptp(np.asarray(mean), axis=1).min() > 0  # Members are initialised independently.
  with pytest.raises(ValueError, match='embed_dim must be even'):
    network.NetworkConfig(num_states=5, length=7, embed_dim=7)


def test_corruption_fractions_follow_the_cosine_schedule_at_beta_3_1_times():
  fractions = np.asarray(training.corruption_fractions(jax.random.key(0), 200_000))
  assert fractions.min() >= 0 and fractions.max() <= 1
  # sqrt(alpha_bar(round(1000 u))), u ~ Beta(3, 1), computed here in float64.
  u = np.random.default_rng(0).beta(3.0, 1.0, 400_000)
  t = np.clip(np.round(1000 * u), 1, 1000)

  def f(step):
    return np.cos((step / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2

  want = np.sqrt(f(t) / f(0.0))
  np.testing.assert_allclose(fractions.mean(), want.mean(), atol=3e-3)
  np.testing.assert_allclose(np.median(fractions), np.median(want), atol=5e-3)


def test_standardise_uses_feasible_real_rows_only():
  values = jnp.asarray([1.0, 3.0, -jnp.inf, 100.0])
  standard, mean, std = training.standardise(values, jnp.asarray([True, True, True, False]))
  np.testing.assert_allclose([mean, std], [2.0, 1.0])
  np.testing.assert_allclose(standard[:2], [-1.0, 1.0])
  assert np.isneginf(standard[2]) and np.isneginf(standard[3])


def test_training_lowers_the_held_out_loss_of_every_head():
  problem = lambo2_problem.toy()
  graphdef, params = network.init(problem['network'], jax.random.key(0))
  train_set, held_out = problem['train_set'], problem['held_out']
  before = training.losses(params, held_out, jax.random.key(9), graphdef=graphdef)
  trained, last = jax.jit(
    lambda p: training.fit(jax.random.key(1), p, train_set, graphdef=graphdef, cfg=problem['train'])
  )(params)
  after = training.losses(trained, held_out, jax.random.key(9), graphdef=graphdef)
  for head in ('value', 'feasibility', 'denoiser', 'total'):
    assert after[head] < 0.9 * before[head], (head, before[head], after[head])
    assert np.isfinite(last[head])
  # The value members rank unseen sequences: their mean prediction correlates with the truth.
  feasible = np.isfinite(np.asarray(held_out.values_B))
  mean, _ = network.gaussian(network.merge(graphdef, trained)(held_out.tokens_BxL)['value_BxMx2'])
  rho = np.corrcoef(np.mean(mean, axis=1)[feasible], np.asarray(held_out.values_B)[feasible])[0, 1]
  assert rho > 0.3, rho
