"""Tests for dmp: banded masks, sampled transition matrices, ergodicity, stationary law, path sampling."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax.test_functions import dmp

# Eager sample_paths recompiles its scan on every call; the statistical tests share one compilation.
sample_paths_jit = jax.jit(dmp.sample_paths, static_argnames=('num_steps', 'num_samples'))
sample_transition_matrix_jit = jax.jit(dmp.sample_transition_matrix, static_argnums=(1, 2))


def _wielandt_matrix(num_states: int) -> np.ndarray:
  """The cycle 0 -> 1 -> ... -> v-1 -> 0 plus v-1 -> 1: primitive with exponent exactly (v-1)^2 + 1."""
  support_VxV = np.zeros((num_states, num_states))
  support_VxV[np.arange(num_states - 1), np.arange(1, num_states)] = 1.0
  support_VxV[num_states - 1, [0, 1]] = 1.0
  return support_VxV / support_VxV.sum(-1, keepdims=True)


@pytest.mark.parametrize('num_states, bandwidth', [(8, 3), (20, 8), (32, 12), (5, 0), (7, 3), (6, 1)])
def test_banded_mask_is_a_cyclic_band(num_states, bandwidth):
  mask_VxV = dmp.banded_mask(num_states, bandwidth)
  chex.assert_shape(mask_VxV, (num_states, num_states))
  assert mask_VxV.dtype == bool
  width = min(2 * bandwidth + 1, num_states)
  np.testing.assert_array_equal(mask_VxV.sum(-1), width)
  np.testing.assert_array_equal(mask_VxV.sum(0), width)
  np.testing.assert_array_equal(mask_VxV, mask_VxV.T)
  rows = np.arange(num_states)
  for delta in range(-bandwidth, bandwidth + 1):
    assert np.all(mask_VxV[rows, (rows + delta) % num_states])
  if width < num_states:
    assert not np.any(mask_VxV[rows, (rows + bandwidth + 1) % num_states])
    assert not np.any(mask_VxV[rows, (rows - bandwidth - 1) % num_states])


@pytest.mark.parametrize('num_states', [8, 20, 32])
def test_sample_transition_matrix_is_sparse_stochastic_and_mostly_ergodic(num_states):
  bandwidth = int(0.4 * num_states)
  num_ergodic = 0
  for seed in range(25):
    matrix_VxV = np.asarray(sample_transition_matrix_jit(jax.random.key(seed), num_states, bandwidth))
    nonzero_VxV = matrix_VxV > 0
    assert set(nonzero_VxV.sum(-1).tolist()) <= {2 * bandwidth + 1, 2 * bandwidth + 2}
    assert np.all(np.diag(matrix_VxV) > 0)
    assert np.all(matrix_VxV >= 0)
    np.testing.assert_allclose(matrix_VxV.sum(-1), 1.0, atol=1e-5)
    num_ergodic += dmp.is_ergodic(matrix_VxV)
  assert num_ergodic >= 22


def test_sample_transition_matrix_depends_only_on_key():
  first_VxV = dmp.sample_transition_matrix(jax.random.key(0), 8, 3)
  chex.assert_trees_all_equal(first_VxV, dmp.sample_transition_matrix(jax.random.key(0), 8, 3))
  assert not np.array_equal(first_VxV, dmp.sample_transition_matrix(jax.random.key(1), 8, 3))
  # Jitted sampling (used by the sweep above) draws the same matrix, up to float rounding.
  jitted_VxV = sample_transition_matrix_jit(jax.random.key(0), 8, 3)
  np.testing.assert_array_equal(np.asarray(jitted_VxV) > 0, np.asarray(first_VxV) > 0)
  np.testing.assert_allclose(jitted_VxV, first_VxV, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('softmax_temp', [0.0, -1.0])
def test_sample_transition_matrix_rejects_bad_temperature(softmax_temp):
  with pytest.raises(ValueError, match='softmax_temp must be > 0'):
    dmp.sample_transition_matrix(jax.random.key(0), 8, 3, softmax_temp=softmax_temp)


@pytest.mark.parametrize(
  'matrix',
  [
    np.full((3, 3), 1 / 3),
    [[0.5, 0.5], [1.0, 0.0]],
    _wielandt_matrix(4),
    _wielandt_matrix(6),
    # Positive entries far below float32 resolution still count as allowed transitions.
    [[1.0 - 1e-30, 1e-30], [1e-30, 1.0 - 1e-30]],
  ],
  ids=['uniform', 'golden_mean', 'wielandt4', 'wielandt6', 'tiny_entries'],
)
def test_is_ergodic_accepts_primitive_matrices(matrix):
  assert dmp.is_ergodic(np.asarray(matrix))


@pytest.mark.parametrize(
  'matrix',
  [
    [[0.0, 1.0], [1.0, 0.0]],
    [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
    [[1.0, 0.0], [0.5, 0.5]],
    [[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5]],
    # Bipartite: irreducible but period 2.
    [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]],
  ],
  ids=['swap', 'three_cycle', 'absorbing', 'block_diagonal', 'bipartite'],
)
def test_is_ergodic_rejects_periodic_and_reducible_matrices(matrix):
  assert not dmp.is_ergodic(np.asarray(matrix))


def test_is_ergodic_uses_the_wielandt_exponent():
  # The Wielandt matrix's (v-1)^2-th power still has a zero; only the ((v-1)^2 + 1)-th is positive, so a
  # test with a smaller power would reject this primitive matrix.
  num_states = 5
  support_VxV = (_wielandt_matrix(num_states) > 0).astype(np.int64)
  power_VxV = np.linalg.matrix_power(support_VxV, (num_states - 1) ** 2)
  assert np.any(power_VxV == 0)
  assert np.all(power_VxV @ support_VxV > 0)
  assert dmp.is_ergodic(_wielandt_matrix(num_states))


@pytest.mark.parametrize('num_states, seed', [(8, 0), (32, 1)])
def test_stationary_distribution_matches_numpy_eigenvector(num_states, seed):
  matrix_VxV = sample_transition_matrix_jit(jax.random.key(seed), num_states, int(0.4 * num_states))
  assert dmp.is_ergodic(matrix_VxV)
  pi_V = dmp.stationary_distribution(matrix_VxV)
  chex.assert_shape(pi_V, (num_states,))
  pi_V = np.asarray(pi_V)
  assert np.all(pi_V >= 0)
  np.testing.assert_allclose(pi_V.sum(), 1.0, atol=1e-6)
  np.testing.assert_allclose(pi_V @ np.asarray(matrix_VxV), pi_V, atol=1e-5)

  eigenvalues_V, eigenvectors_VxV = np.linalg.eig(np.asarray(matrix_VxV, np.float64).T)
  reference_V = np.real(eigenvectors_VxV[:, np.argmin(np.abs(eigenvalues_V - 1.0))])
  reference_V = reference_V / reference_V.sum()
  np.testing.assert_allclose(pi_V, reference_V, atol=1e-5)


@pytest.fixture(scope='module')
def chain():
  """A 6-state ergodic chain with banned transitions and a non-uniform initial law with a zero entry."""
  matrix_VxV = np.asarray(sample_transition_matrix_jit(jax.random.key(3), 6, 1), np.float64)
  matrix_VxV = matrix_VxV / matrix_VxV.sum(-1, keepdims=True)
  assert dmp.is_ergodic(matrix_VxV) and np.any(matrix_VxV == 0)
  initial_V = np.array([0.4, 0.0, 0.3, 0.15, 0.1, 0.05])
  return jnp.asarray(initial_V, jnp.float32), jnp.asarray(matrix_VxV, jnp.float32)


def test_sample_paths_shape_dtype_and_allowed_transitions(chain):
  initial_V, matrix_VxV = chain
  paths_NxL = sample_paths_jit(jax.random.key(0), initial_V, matrix_VxV, num_steps=40, num_samples=256)
  chex.assert_shape(paths_NxL, (256, 40))
  chex.assert_type(paths_NxL, jnp.int32)
  paths_NxL = np.asarray(paths_NxL)
  assert paths_NxL.min() >= 0 and paths_NxL.max() < 6
  assert np.all(np.asarray(matrix_VxV)[paths_NxL[:, :-1], paths_NxL[:, 1:]] > 0)
  # Every state is visited, so the check above is not vacuous.
  assert set(np.unique(paths_NxL).tolist()) == set(range(6))


def test_sample_paths_follows_initial_and_transition_laws(chain):
  initial_V, matrix_VxV = chain
  num_samples = 20000
  paths_NxL = np.asarray(
    sample_paths_jit(jax.random.key(1), initial_V, matrix_VxV, num_steps=2, num_samples=num_samples)
  )
  first_V = np.bincount(paths_NxL[:, 0], minlength=6) / num_samples
  # Standard errors are below 0.0035; 0.02 is a loose bound that a wrong law would still break.
  np.testing.assert_allclose(first_V, np.asarray(initial_V), atol=0.02)
  assert first_V[1] == 0.0
  for state in (0, 2):
    next_states = paths_NxL[paths_NxL[:, 0] == state, 1]
    next_V = np.bincount(next_states, minlength=6) / next_states.size
    np.testing.assert_allclose(next_V, np.asarray(matrix_VxV)[state], atol=0.03)


def test_sample_paths_single_step_and_key_dependence(chain):
  initial_V, matrix_VxV = chain
  single_Nx1 = sample_paths_jit(jax.random.key(2), initial_V, matrix_VxV, num_steps=1, num_samples=5)
  chex.assert_shape(single_Nx1, (5, 1))
  first_NxL = sample_paths_jit(jax.random.key(2), initial_V, matrix_VxV, num_steps=40, num_samples=256)
  again_NxL = sample_paths_jit(jax.random.key(2), initial_V, matrix_VxV, num_steps=40, num_samples=256)
  other_NxL = sample_paths_jit(jax.random.key(3), initial_V, matrix_VxV, num_steps=40, num_samples=256)
  chex.assert_trees_all_equal(first_NxL, again_NxL)
  assert not np.array_equal(first_NxL, other_NxL)
  # Eager and jitted sampling draw the same paths from the same key.
  eager_NxL = dmp.sample_paths(jax.random.key(2), initial_V, matrix_VxV, num_steps=40, num_samples=256)
  chex.assert_trees_all_equal(eager_NxL, first_NxL)
