"""log EI against the closed form, in the tail where the naive formula underflows, and its gradient."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from llome_jax.lambo2 import acquisition


def _log_h_float64(z: float) -> float:
  """log(phi(z) + z Phi(z)) in float64: directly above -9 (at most 2 of 16 digits cancel), else the
  asymptotic series h(z) = phi(z) / z^2 (1 - 3/z^2 + 15/z^4 - ...), whose error is below 1e-9 there."""
  if z > -9:
    return float(np.log(stats.norm.pdf(z) + z * stats.norm.cdf(z)))
  series = sum((-1) ** n * float(np.prod(np.arange(1, 2 * n + 2, 2))) / z ** (2 * n) for n in range(1, 7))
  return -0.5 * z * z - 0.5 * np.log(2 * np.pi) - 2 * np.log(abs(z)) + np.log1p(series)


def test_log_h_matches_the_closed_form_from_the_body_to_far_tail():
  z = np.concatenate([np.linspace(-12, 8, 201), -np.logspace(1.1, 6, 50)])
  got = np.asarray(acquisition.log_h(jnp.asarray(z, jnp.float32)), np.float64)
  want = np.array([_log_h_float64(x) for x in z.astype(np.float32).astype(np.float64)])
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_log_ei_is_finite_where_the_naive_formula_underflows():
  mean, variance, best = jnp.float32(-40.0), jnp.float32(1.0), jnp.float32(0.0)
  naive = jnp.log(
    jnp.sqrt(variance) * (jax.scipy.stats.norm.pdf(mean) + mean * jax.scipy.stats.norm.cdf(mean))
  )
  assert not np.isfinite(naive)
  got = acquisition.log_ei(mean, variance, best)
  assert np.isfinite(got)
  np.testing.assert_allclose(got, _log_h_float64(-40.0), rtol=1e-6)


def test_log_ei_scales_with_sigma_and_its_gradient_is_finite_everywhere():
  z_N = jnp.asarray(np.concatenate([np.linspace(-30, 5, 71), [-1e3, -1e5]]), jnp.float32)
  sigma = 0.3
  got = acquisition.log_ei(z_N * sigma + 1.0, jnp.full_like(z_N, sigma**2), 1.0)
  np.testing.assert_allclose(got, np.log(sigma) + acquisition.log_h(z_N), rtol=1e-5, atol=1e-5)
  grads = jax.vmap(jax.grad(lambda m: acquisition.log_ei(m, 1.0, 0.0)))(z_N)
  assert np.all(np.isfinite(grads)) and np.all(grads > 0)
  # d/dz log h(z) = Phi(z) / h(z), which tends to -z in the tail.
  np.testing.assert_allclose(grads[-2:], -z_N[-2:], rtol=1e-3)


def test_reference_log_improvement_is_botorchs_fat_softplus():
  diff = np.array([-1e-4, -1e-6, 0.0, 1e-6, 1e-3, 0.5])
  x = diff / 1e-6
  want = np.log(1e-6 * (np.logaddexp(0.0, x) + 0.1 / (1 + x * x)))
  got = acquisition.reference_log_improvement(jnp.asarray(diff, jnp.float32), 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize('kind', ['log_ei', 'reference'])
def test_acquisition_averages_logs_over_members_and_adds_log_mean_feasibility(kind):
  key_v, key_f = jax.random.split(jax.random.key(0))
  heads = {
    'value_BxMx2': jax.random.normal(key_v, (5, 4, 2)),
    'feasibility_BxMx2': jax.random.normal(key_f, (5, 4, 2)),
  }
  best_M = acquisition.incumbents(heads)
  chex.assert_shape(best_M, (4,))
  plain = acquisition.acquisition(heads, best_M, kind=kind, use_feasibility=False)
  both = acquisition.acquisition(heads, best_M, kind=kind, use_feasibility=True)
  p_feasible_B = np.mean(jax.nn.softmax(heads['feasibility_BxMx2'], axis=-1)[..., 1], axis=1)
  np.testing.assert_allclose(both - plain, np.log(p_feasible_B), rtol=1e-5, atol=1e-6)
  from llome_jax.lambo2 import network

  mean, var = network.gaussian(heads['value_BxMx2'])
  per_member = (
    acquisition.log_ei(mean, var, best_M)
    if kind == 'log_ei'
    else acquisition.reference_log_improvement(mean, best_M)
  )
  np.testing.assert_allclose(plain, np.mean(per_member, axis=1), rtol=1e-6)
  with pytest.raises(ValueError, match="'log_ei' or 'reference'"):
    acquisition.acquisition(heads, best_M, kind='ucb')
