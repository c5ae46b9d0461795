"""Independent Bernoulli(p) replacement of array elements, sparse when p is small.

A GA mutates each of P*L positions with p ~ 1/L. Drawing P*L uniforms costs ~200 ms per 25.6M on a
2-core CPU; the positions of successes in a Bernoulli process are instead spaced by Geometric(p) gaps,
so drawing ~p*P*L gaps gives the same distribution at ~1% of the cost.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray

# Above this probability dense draws are cheaper than gaps + scatter.
SPARSE_MAX_PROB = 1.0 / 32.0
# The capacity of the sparse path is exceeded with probability below this (Bernstein bound).
OVERFLOW_PROB = 1e-12


def sparse_capacity(prob: float, size: int) -> int:
  """Number of gaps to draw so that P(Binomial(size, prob) > capacity) < OVERFLOW_PROB."""
  mean = prob * size
  # Bernstein: P(X >= mean + t) <= exp(-t^2 / (2 (var + t / 3))), var <= mean; solve for t.
  a = math.log(1.0 / OVERFLOW_PROB)
  t = a / 3.0 + math.sqrt((a / 3.0) ** 2 + 2.0 * a * mean)
  return int(min(size, math.ceil(mean + t) + 1))


def is_sparse(prob: float) -> bool:
  return 0.0 < prob <= SPARSE_MAX_PROB


def success_positions(key: PRNGKeyArray, prob: float, size: int) -> Int[Array, ' C']:
  """Sorted flat indices of the successes of `size` Bernoulli(prob) trials, padded with `size`.

  Gap g = floor(E / -log(1 - p)) + 1 with E ~ Exp(1) is Geometric(p). E = -log1p(-u) with u built from
  32 random bits, so E is resolved to ~2^-32 where gaps are decided (small E) even for p ~ 1e-7; u
  rounds to 1 with probability ~2^-25, which ends the field early (no further successes).
  """
  if size >= 2**30:
    raise ValueError(f'sparse Bernoulli fields need size < 2**30, got {size}.')
  capacity = sparse_capacity(prob, size)
  bits = jax.random.bits(key, (capacity,), jnp.uint32)
  u = (bits.astype(jnp.float32) + 0.5) * jnp.float32(2.0**-32)
  gaps = jnp.floor(-jnp.log1p(-u) / -jnp.log1p(-jnp.float32(prob))) + 1.0
  # Cap in float first (inf and huge gaps), then exactly in int32: float32 cannot hold size + 1 > 2^24.
  gaps = jnp.minimum(jnp.minimum(gaps, 2.0**30).astype(jnp.int32), size + 1)
  # Saturating prefix sum: gaps <= size + 1 and partial sums are capped at size + 1, so no int32 overflow.
  ends = jax.lax.associative_scan(lambda a, b: jnp.minimum(a + b, size + 1), gaps)
  return jnp.minimum(ends - 1, size)


def replace(
  key: PRNGKeyArray,
  prob: float,
  base_N: Int[Array, ' N'],
  values_at: Callable[[PRNGKeyArray, Int[Array, ' C']], Int[Array, ' C']],
) -> Int[Array, ' N']:
  """Replaces each element of flat `base_N` independently with probability `prob`.

  Args:
    key: randomness for the positions and for `values_at`.
    prob: replacement probability (static).
    base_N: flat array.
    values_at: `values_at(key, flat_indices)` gives the replacement values at those indices.

  Returns:
    The array with its selected elements replaced.
  """
  size = base_N.shape[0]
  position_key, value_key = jax.random.split(key)
  if prob <= 0.0:
    return base_N
  if not is_sparse(prob):
    mask_N = jax.random.bernoulli(position_key, prob, (size,))
    return jnp.where(mask_N, values_at(value_key, jnp.arange(size)).astype(base_N.dtype), base_N)
  positions_C = success_positions(position_key, prob, size)
  values_C = values_at(value_key, jnp.minimum(positions_C, size - 1)).astype(base_N.dtype)
  return base_N.at[positions_C].set(values_C, mode='drop', indices_are_sorted=True)
