"""Guided discrete diffusion on a trained toy model: steps raise the model's acquisition, edits stay at
masked positions, and the tracked acquisition is that of the proposals."""

import dataclasses

import jax
import jax.numpy as jnp
import lambo2_problem
import numpy as np
import pytest

from llome_jax.lambo2 import acquisition, guidance, network, training


@pytest.fixture(scope='module')
def trained():
  problem = lambo2_problem.toy()
  graphdef, params = network.init(problem['network'], jax.random.key(0))
  params, _ = jax.jit(
    lambda p: training.fit(
      jax.random.key(1), p, problem['train_set'], graphdef=graphdef, cfg=problem['train']
    )
  )(params)
  starts = problem['held_out'].tokens_BxL[:32]
  net = network.merge(graphdef, params)
  return problem, graphdef, params, starts, acquisition.incumbents(net(starts))


def _acquire(graphdef, params, tokens, best_M, cfg):
  heads = network.merge(graphdef, params)(tokens)
  return acquisition.acquisition(heads, best_M, kind=cfg.acquisition, use_feasibility=cfg.use_feasibility)


def test_guided_steps_never_lower_a_rows_acquisition_and_raise_the_mean(trained):
  problem, graphdef, params, starts, best_M = trained
  cfg = problem['guide']
  proposals, metrics = jax.jit(
    lambda p, s: guidance.guide(jax.random.key(2), graphdef, p, s, best_M, cfg=cfg)
  )(params, starts)
  before = _acquire(graphdef, params, starts, best_M, cfg)
  after = _acquire(graphdef, params, proposals, best_M, cfg)
  np.testing.assert_allclose(metrics['acquisition_start'], np.mean(before), rtol=1e-5)
  np.testing.assert_allclose(metrics['acquisition_proposal'], np.mean(after), rtol=1e-5)
  assert np.all(after >= before - 1e-5)
  assert np.mean(after) > np.mean(before) + 0.05
  assert np.mean(np.any(proposals != starts, axis=1)) > 0.5
  assert 0 < metrics['frac_decodes_accepted'] <= 1


def test_one_step_edits_only_masked_positions_and_raises_the_mean_from_any_first_sample(trained):
  """With cortex's exclude_initial_solution (accept_first), the first decode replaces every row, so a
  step can lower some rows; on average the step must still raise the acquisition."""
  problem, graphdef, params, starts, best_M = trained
  cfg = dataclasses.replace(problem['guide'], accept_first=True, num_mutations=3)
  net = network.merge(graphdef, params)
  acq = jnp.full(starts.shape[0], -jnp.inf)
  carry = (starts, acq, jnp.zeros(starts.shape[0], jnp.int32))
  (tokens, new_acq, accepted), step_metrics = jax.jit(
    lambda c: guidance.guided_step(jax.random.key(5), c, jnp.int32(0), net=net, best_M=best_M, cfg=cfg)
  )(carry)
  assert np.all(np.sum(tokens != starts, axis=1) <= 3)  # At most num_mutations positions change.
  assert np.all(accepted >= 1)
  np.testing.assert_allclose(new_acq, _acquire(graphdef, params, tokens, best_M, cfg), rtol=1e-5, atol=1e-5)
  # Step 0 masks every drawn position: 3 of 12.
  np.testing.assert_allclose(step_metrics['frac_masked'], 3 / 12)
  before = _acquire(graphdef, params, starts, best_M, cfg)
  random_edits = np.asarray(starts).copy()
  rng = np.random.default_rng(0)
  for row in random_edits:
    row[rng.choice(12, 3, replace=False)] = rng.integers(0, 6, 3)
  blind = _acquire(graphdef, params, jnp.asarray(random_edits), best_M, cfg)
  assert np.mean(new_acq) > np.mean(blind), (np.mean(new_acq), np.mean(blind), np.mean(before))


def test_guide_config_rejects_meaningless_settings():
  with pytest.raises(ValueError, match="'log_ei' or 'reference'"):
    guidance.GuideConfig(acquisition='ucb')
  with pytest.raises(ValueError, match='num_steps'):
    guidance.GuideConfig(num_steps=0)
