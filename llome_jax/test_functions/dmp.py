"""Discrete Markov processes (DMPs): the sparse ergodic chains that Ehrlich functions are built on.

Follows pytorch-holo's `sample_sparse_ergodic_transition_matrix`, `dmp_stationary_dist` and `sample_dmp`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray


def banded_mask(num_states: int, bandwidth: int) -> np.ndarray:
  """Cyclic band of half-width `bandwidth`: row i allows states i-b .. i+b (mod v)."""
  offsets_VxV = (np.arange(num_states)[None, :] - np.arange(num_states)[:, None]) % num_states
  return (offsets_VxV <= bandwidth) | (offsets_VxV >= num_states - bandwidth)


@functools.partial(jax.jit, static_argnums=(1, 2), static_argnames=('softmax_temp',))
def sample_transition_matrix(
  key: PRNGKeyArray, num_states: int, bandwidth: int, *, softmax_temp: float = 0.5
) -> Float[Array, 'V V']:
  """Samples a banded, row-shuffled transition matrix whose diagonal is always allowed.

  dense = softmax(N(0, 1) / softmax_temp) per row; mask = cyclic band with its rows permuted, diagonal
  forced on; the result is mask * dense with rows renormalised. Ergodicity is not checked here (see
  `check_ergodic`), because the check needs concrete values.
  """
  if softmax_temp <= 0:
    raise ValueError(f'softmax_temp must be > 0, got {softmax_temp}.')
  dense_key, perm_key = jax.random.split(key)
  logits_VxV = jax.random.normal(dense_key, (num_states, num_states)) / softmax_temp
  dense_VxV = jax.nn.softmax(logits_VxV, axis=-1)
  mask_VxV = jnp.asarray(banded_mask(num_states, bandwidth))
  mask_VxV = mask_VxV[jax.random.permutation(perm_key, num_states)] | jnp.eye(num_states, dtype=bool)
  sparse_VxV = jnp.where(mask_VxV, dense_VxV, 0.0)
  return sparse_VxV / sparse_VxV.sum(axis=-1, keepdims=True)


def is_ergodic(transition_matrix) -> bool:
  """Perron-Frobenius test: every entry of A^((v-1)^2 + 1) is positive.

  Computed on the zero pattern with boolean matrix products (exact; no float underflow), by repeated
  squaring, so it costs O(v^3 log v) instead of holo's (v-1)^2 float matmuls.
  """
  support_VxV = np.asarray(transition_matrix) > 0
  power = (support_VxV.shape[0] - 1) ** 2 + 1
  result_VxV = None
  base_VxV = support_VxV.astype(np.int64)
  while power:
    if power & 1:
      result_VxV = base_VxV if result_VxV is None else np.minimum(result_VxV @ base_VxV, 1)
    base_VxV = np.minimum(base_VxV @ base_VxV, 1)
    power >>= 1
  return bool(np.all(result_VxV > 0))


@jax.jit
def stationary_distribution(transition_matrix: Float[Array, 'V V']) -> Float[Array, ' V']:
  """Solves pi = pi A with sum(pi) = 1 by least squares on the stacked system, as holo does."""
  num_states = transition_matrix.shape[0]
  system_XxV = jnp.concatenate(
    [(jnp.eye(num_states) - transition_matrix).T, jnp.ones((1, num_states))], axis=0
  )
  target = jnp.zeros(num_states + 1).at[-1].set(1.0)
  pi, *_ = jnp.linalg.lstsq(system_XxV, target)
  # Least squares can leave -1e-9 style residue on tiny entries; probabilities must be >= 0.
  pi = jnp.clip(pi, 0.0, None)
  return pi / pi.sum()


@functools.partial(jax.jit, static_argnames=('num_steps', 'num_samples'))
def sample_paths(
  key: PRNGKeyArray,
  initial_probs: Float[Array, ' V'],
  transition_matrix: Float[Array, 'V V'],
  *,
  num_steps: int,
  num_samples: int,
) -> Int[Array, 'N L']:
  """Samples `num_samples` DMP paths of length `num_steps` (int32 states)."""
  first_key, rest_key = jax.random.split(key)
  log_initial = jnp.log(initial_probs)
  log_transition_VxV = jnp.log(transition_matrix)
  first_N = jax.random.categorical(first_key, log_initial, shape=(num_samples,))

  def step(state_N, step_index):
    step_key = jax.random.fold_in(rest_key, step_index)
    next_N = jax.random.categorical(step_key, log_transition_VxV[state_N])
    return next_N, next_N

  _, rest_TxN = jax.lax.scan(step, first_N, jnp.arange(num_steps - 1))
  paths_NxL = jnp.concatenate([first_N[:, None], rest_TxN.T], axis=1)
  return paths_NxL.astype(jnp.int32)
