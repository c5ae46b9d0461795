"""LaMBO-2's acquisition: log expected improvement under each value-ensemble member's Gaussian,
averaged over the members, plus the log of the predicted feasibility (SPEC 7).

EI of a Gaussian N(mu, sigma^2) over an incumbent `best` is sigma h(z), z = (mu - best) / sigma,
h(z) = phi(z) + z Phi(z). In float32 h underflows to 0 from z ~ -13 (and loses all digits well before),
so log EI turns -inf exactly where guidance needs a gradient: far below the incumbent. `log_h` follows
Ament et al. 2023 ("Unexpected improvements to expected improvement", eq. 9): direct for z > -1, the
scaled complementary error function erfcx in the tail, and the asymptotic series beyond z = -10.

The reference (cortex `GraphNEI` under bbo-bench's Ehrlich configs) ignores the predicted variance and
takes log fatplus(mu_m - best_m), a smoothed log of the improvement of each member's mean, and does not
use the feasibility classifier. `reference_log_improvement` is that function, kept for the paper config.
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from llome_jax.lambo2 import network

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_LOG_SQRT_PI_OVER_2 = 0.5 * math.log(math.pi / 2)
_SERIES_BELOW = -10.0


def _log1mexp(x: Array) -> Array:
  """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012). Each branch sees only inputs of
  its own range, so the other's infinities cannot turn the gradient into NaN."""
  cut = -math.log(2.0)
  near = jnp.log(-jnp.expm1(jnp.maximum(x, cut)))
  far = jnp.log1p(-jnp.exp(jnp.minimum(x, cut)))
  return jnp.where(x > cut, near, far)


def log_h(z: Float[Array, '...']) -> Float[Array, '...']:
  """log(phi(z) + z Phi(z)), finite for every finite z (about -z^2 / 2 - 2 log|z| far in the tail),
  with a gradient accurate to float32 rounding throughout."""
  z = jnp.asarray(z, jnp.float32)
  # Each branch is evaluated on a z inside its own range, so no branch produces a NaN whose gradient
  # would leak through jnp.where.
  z_direct = jnp.maximum(z, -1.0)
  direct = jnp.log(
    jnp.exp(-0.5 * z_direct**2 - _LOG_SQRT_2PI) + z_direct * jax.scipy.stats.norm.cdf(z_direct)
  )
  z_mid = jnp.clip(z, _SERIES_BELOW, -1.0)
  w = jnp.log(jax.scipy.special.erfcx(-z_mid / math.sqrt(2.0)) * jnp.abs(z_mid)) + _LOG_SQRT_PI_OVER_2
  middle = -0.5 * z_mid**2 - _LOG_SQRT_2PI + _log1mexp(jnp.minimum(w, -1e-30))
  # Below -10, the asymptotic series h(z) = phi(z) / z^2 (1 - 3/z^2 + 15/z^4 - ...) to 5 terms (error
  # under 2e-7): erfcx's form would take log(1 - exp(w)) at w ~ -1/z^2, whose float32 rounding
  # costs the gradient 5% at z = -1000 (Ament et al. switch only at -1/sqrt(eps)).
  z_far = jnp.minimum(z, _SERIES_BELOW)
  inv_z2 = 1.0 / z_far**2
  series = inv_z2 * (-3.0 + inv_z2 * (15.0 + inv_z2 * (-105.0 + inv_z2 * (945.0 - 10395.0 * inv_z2))))
  far = -0.5 * z_far**2 - _LOG_SQRT_2PI + jnp.log(inv_z2) + jnp.log1p(series)
  return jnp.where(z > -1.0, direct, jnp.where(z > _SERIES_BELOW, middle, far))


def log_ei(mean: Array, variance: Array, best: Array) -> Array:
  """log E[max(Y - best, 0)] for Y ~ N(mean, variance), elementwise (broadcasting)."""
  sigma = jnp.sqrt(variance)
  return jnp.log(sigma) + log_h((mean - best) / sigma)


def reference_log_improvement(mean: Array, best: Array, *, tau: float = 1e-6) -> Array:
  """log fatplus_tau(mean - best), fatplus_tau(x) = tau (softplus(x / tau) + 0.1 / (1 + (x / tau)^2))
  (botorch's fat log-improvement, as cortex applies it to ensemble means)."""
  x = (mean - best) / tau
  return jnp.log(tau) + jnp.log(jax.nn.softplus(x) + 0.1 / (1.0 + x * x))


def incumbents(heads: dict[str, Array]) -> Float[Array, ' M']:
  """Each member's incumbent: the largest mean it predicts over a pool (the starting sequences), as
  cortex sets `best_f` per member, so that members with different offsets compare like with like."""
  mean_BxM, _ = network.gaussian(heads['value_BxMx2'])
  return jnp.max(mean_BxM, axis=0)


def acquisition(
  heads: dict[str, Array], best_M: Float[Array, ' M'], *, kind: str = 'log_ei', use_feasibility: bool = True
) -> Float[Array, ' B']:
  """The acquisition of each row from the network's heads.

  Args:
    heads: `Network.heads` of the rows' features.
    best_M: each value member's incumbent (`incumbents` of the pool).
    kind: 'log_ei' (each member's Gaussian, this package's default) or 'reference' (cortex's log
      fat-plus improvement of the members' means).
    use_feasibility: add log of the feasibility ensemble's mean probability of feasibility (EI times
      the probability of being feasible, i.e. constrained EI).

  Returns:
    mean over members of the member's log improvement (+ log p(feasible)), float32 [B].
  """
  mean_BxM, variance_BxM = network.gaussian(heads['value_BxMx2'])
  if kind == 'log_ei':
    per_member_BxM = log_ei(mean_BxM, variance_BxM, best_M)
  elif kind == 'reference':
    per_member_BxM = reference_log_improvement(mean_BxM, best_M)
  else:
    raise ValueError(f"acquisition kind must be 'log_ei' or 'reference', got {kind!r}.")
  value_B = jnp.mean(per_member_BxM, axis=1)
  if not use_feasibility:
    return value_B
  log_p_BxM = jax.nn.log_softmax(heads['feasibility_BxMx2'], axis=-1)[..., 1]
  return value_B + jax.nn.logsumexp(log_p_BxM, axis=1) - math.log(log_p_BxM.shape[1])
