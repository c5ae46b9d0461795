"""Tests for llome_jax.bernoulli: the capacity bound, the success positions and `replace` on both paths.

Statistical checks use fixed keys (so they are deterministic) and 5-sigma tolerances from exact standard
errors: for a correct implementation, a random key would fail a check with probability ~1e-6.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax import bernoulli

SENTINEL = 7
SIGMAS = 5.0


def _sentinel_values(key, idx_C):
  del key
  return jnp.full(idx_C.shape, SENTINEL, jnp.int32)


def _index_values(key, idx_C):
  del key
  return idx_C


def _keys(seed: int, num: int):
  return jax.random.split(jax.random.key(seed), num)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draw(keys_K, prob, size):
  """Per key: success positions (sparse probs only) and which elements `replace` replaced.

  `replace` runs on an int8 base of zeros with SENTINEL replacements, so the mask also checks the dtype.
  """
  base_N = jnp.zeros((size,), jnp.int8)
  out_KxN = jax.vmap(lambda key: bernoulli.replace(key, prob, base_N, _sentinel_values))(keys_K)
  chex.assert_type(out_KxN, jnp.int8)
  positions_KxC = None
  if bernoulli.is_sparse(prob):
    positions_KxC = jax.vmap(bernoulli.success_positions, in_axes=(0, None, None))(keys_K, prob, size)
  only_base_or_sentinel = jnp.all((out_KxN == 0) | (out_KxN == SENTINEL))
  return positions_KxC, out_KxN == SENTINEL, only_base_or_sentinel


@functools.cache
def _fields(prob: float, size: int, num_keys: int, seed: int) -> tuple[np.ndarray | None, np.ndarray]:
  positions_KxC, mask_KxN, only_base_or_sentinel = _draw(_keys(seed, num_keys), prob, size)
  assert bool(only_base_or_sentinel), 'replace wrote something other than base or values_at'
  return (None if positions_KxC is None else np.asarray(positions_KxC)), np.asarray(mask_KxN)


# One compilation of `_draw` per configuration: (prob, size, number of keys, seed).
SPARSE = (0.004, 4000, 2000, 2)
DENSE = (0.3, 4000, 2000, 3)
BOUNDARY = [(1 / 32, 61, 20_000, 4), (1 / 32, 1, 20_000, 6)]

# `replace` jitted with (prob, values_at) static; tests reuse these few specialisations.
_replace = jax.jit(bernoulli.replace, static_argnums=(1, 3))


def _log_binomial_pmf(n: int, p: float, k: int) -> float:
  log_choose = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
  return log_choose + k * math.log(p) + (n - k) * math.log1p(-p)


def _binomial_tail(n: int, p: float, c: int) -> float:
  """P(Binomial(n, p) > c) in float64 for c >= n * p, summing terms in log space until negligible."""
  assert c >= n * p
  if c >= n:
    return 0.0
  first = _log_binomial_pmf(n, p, c + 1)
  total = 0.0
  for k in range(c + 1, n + 1):
    ratio = _log_binomial_pmf(n, p, k) - first
    total += math.exp(ratio)
    if ratio < -60.0:  # Terms decrease past the mean, so the rest is below e^-60 relative.
      break
  return math.exp(first) * total


def test_binomial_tail_reference_matches_direct_sum():
  n, p = 40, 0.05
  for c in (2, 5, 10, 39, 40):
    direct = sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(c + 1, n + 1))
    assert _binomial_tail(n, p, c) == pytest.approx(direct, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(
  'prob, size',
  [(1.1 / 256, 256 * 100_000), (0.005, 32_000), (1 / 32, 1000), (1e-6, 10**7), (1 / 32, 64), (0.01, 37)],
)
def test_sparse_capacity_overflow_probability_below_bound(prob, size):
  capacity = bernoulli.sparse_capacity(prob, size)
  assert isinstance(capacity, int)
  assert prob * size < capacity <= size
  assert _binomial_tail(size, prob, capacity) < bernoulli.OVERFLOW_PROB


@pytest.mark.parametrize('prob, size', [(1 / 32, 5), (1 / 32, 1), (0.02, 100), (0.9, 10)])
def test_sparse_capacity_never_exceeds_size(prob, size):
  assert 1 <= bernoulli.sparse_capacity(prob, size) <= size


def test_is_sparse_boundaries():
  assert bernoulli.is_sparse(bernoulli.SPARSE_MAX_PROB)
  assert bernoulli.is_sparse(1e-9)
  assert not bernoulli.is_sparse(0.0)
  assert not bernoulli.is_sparse(math.nextafter(bernoulli.SPARSE_MAX_PROB, 1.0))
  assert not bernoulli.is_sparse(0.5)


def test_success_positions_rejects_huge_size():
  with pytest.raises(ValueError, match='2\\*\\*30'):
    bernoulli.success_positions(jax.random.key(0), 1e-9, 2**30)


@pytest.mark.parametrize('config', [SPARSE, *BOUNDARY], ids=lambda c: f'p={c[0]:.4g},size={c[1]}')
def test_success_positions_sorted_distinct_and_padded(config):
  prob, size, num_keys, _ = config
  positions_KxC, mask_KxN = _fields(*config)
  assert positions_KxC.shape == (num_keys, bernoulli.sparse_capacity(prob, size))
  assert positions_KxC.dtype == np.int32
  assert positions_KxC.min() >= 0 and positions_KxC.max() <= size
  steps = np.diff(positions_KxC, axis=1)
  assert np.all(steps >= 0)
  both_valid = (positions_KxC[:, 1:] < size) & (positions_KxC[:, :-1] < size)
  assert np.all(steps[both_valid] > 0)
  # Some keys have successes; where capacity < size, every key ends in padding (overflow is < 1e-12).
  assert np.any(positions_KxC < size)
  if positions_KxC.shape[1] < size:
    assert np.all(positions_KxC[:, -1] == size)
  else:
    assert np.any(positions_KxC[:, -1] == size)
  # The number of successes has the same distribution as replace's: compare pooled means.
  counts_K = (positions_KxC < size).sum(axis=1)
  sd = math.sqrt(size * prob * (1 - prob) / num_keys)
  assert abs(counts_K.mean() - size * prob) < SIGMAS * sd
  assert abs(mask_KxN.sum(axis=1).mean() - size * prob) < SIGMAS * sd


def _assert_bernoulli_field(mask_KxN: np.ndarray, prob: float):
  """Counts, per-position marginals and gaps of K independent Bernoulli(prob) fields of length N."""
  num_keys, size = mask_KxN.shape
  q = 1.0 - prob
  # Number of successes per key: Binomial(N, p) mean and variance.
  counts_K = mask_KxN.sum(axis=1).astype(np.float64)
  mean, var = size * prob, size * prob * q
  assert abs(counts_K.mean() - mean) < SIGMAS * math.sqrt(var / num_keys)
  kurtosis_excess = (1 - 6 * prob * q) / var
  var_of_sample_var = var**2 * (2.0 / (num_keys - 1) + kurtosis_excess / num_keys)
  assert abs(counts_K.var(ddof=1) - var) < SIGMAS * math.sqrt(var_of_sample_var)
  # Per-position marginals: each pooled count is Binomial(K, p), independent across positions.
  per_position_N = mask_KxN.sum(axis=0).astype(np.float64)
  expected, sd = num_keys * prob, math.sqrt(num_keys * prob * q)
  chi2 = np.sum(((per_position_N - expected) / sd) ** 2)
  chi2_var = size * (2.0 + (1 - 6 * prob * q) / (num_keys * prob * q))
  assert abs(chi2 - size) < SIGMAS * math.sqrt(chi2_var), chi2
  for name, cols in [('first half', slice(0, size // 2)), ('second half', slice(size // 2, size))]:
    trials = num_keys * (cols.stop - cols.start)
    rate = mask_KxN[:, cols].sum() / trials
    assert abs(rate - prob) < SIGMAS * math.sqrt(prob * q / trials), (name, rate)
  for position in (0, size - 1):
    rate = per_position_N[position] / num_keys
    assert abs(rate - prob) < SIGMAS * sd / num_keys, (position, rate)
  # Gaps: after a success at j, the next success is Geometric(p) away, independent of the past, so
  # P(no success in (j, j + k]) = q^k for every success with j + k < N.
  big = 4 * size
  index_KxN = np.where(mask_KxN, np.arange(size), big)
  next_KxN = np.minimum.accumulate(index_KxN[:, ::-1], axis=1)[:, ::-1]  # first success at >= j
  next_after_KxN = np.concatenate([next_KxN[:, 1:], np.full((num_keys, 1), big)], axis=1)
  gap_KxN = next_after_KxN - np.arange(size)
  for k in sorted({1, 2, int(round(1 / prob)), int(round(3 / prob))}):
    if k >= size:
      continue
    sel = mask_KxN[:, : size - k]
    n = int(sel.sum())
    survival = np.mean(gap_KxN[:, : size - k][sel] > k)
    expected_survival = q**k
    assert abs(survival - expected_survival) < SIGMAS * math.sqrt(
      expected_survival * (1 - expected_survival) / n
    ), (k, survival, expected_survival)
  # Mean gap, truncated at T = N // 2 so that every success in the first half has its window in range:
  # E[min(G, T)] = (1 - q^T) / p, which is ~1 / p here.
  horizon = size // 2
  sel = mask_KxN[:, : size - horizon]
  truncated = np.minimum(gap_KxN[:, : size - horizon][sel], horizon)
  expected_mean_gap = (1 - q**horizon) / prob
  assert abs(truncated.mean() - expected_mean_gap) < SIGMAS * math.sqrt(q) / prob / math.sqrt(len(truncated))


def test_sparse_path_is_a_bernoulli_field():
  assert bernoulli.is_sparse(SPARSE[0])
  _assert_bernoulli_field(_fields(*SPARSE)[1], SPARSE[0])


def test_dense_path_is_a_bernoulli_field():
  assert not bernoulli.is_sparse(DENSE[0])
  _assert_bernoulli_field(_fields(*DENSE)[1], DENSE[0])


@pytest.mark.parametrize('config', BOUNDARY, ids=lambda c: f'p={c[0]:.4g},size={c[1]}')
def test_every_position_hit_at_rate_p(config):
  """Boundary positions (0 and size - 1) are where off-by-one bugs show; check each position."""
  prob, _, num_keys, _ = config
  rates_N = _fields(*config)[1].mean(axis=0)
  np.testing.assert_array_less(np.abs(rates_N - prob), SIGMAS * math.sqrt(prob * (1 - prob) / num_keys))


def test_sparse_counts_match_binomial_histogram():
  """Beyond mean and variance: the count histogram matches Binomial(N, p) (chi-square over bins)."""
  prob, size, num_keys, _ = SPARSE
  counts_K = _fields(*SPARSE)[1].sum(axis=1)
  edges = [0, 10, 12, 14, 16, 18, 20, 22, 24, size + 1]  # >= ~80 expected keys per bin.
  pmf = np.exp([_log_binomial_pmf(size, prob, k) for k in range(size + 1)])
  expected_bins = num_keys * np.array(
    [pmf[lo:hi].sum() for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
  )
  observed_bins = np.histogram(counts_K, bins=edges)[0]
  assert expected_bins.min() > 50
  chi2 = np.sum((observed_bins - expected_bins) ** 2 / expected_bins)
  dof = len(expected_bins) - 1
  assert chi2 < dof + SIGMAS * math.sqrt(2 * dof), (observed_bins, expected_bins)


def _negative_base(size: int, dtype=jnp.int32):
  """Base values in [-5, -1], so that replaced elements (flat indices >= 0) stand out."""
  return jax.random.randint(jax.random.key(99), (size,), -5, 0).astype(dtype)


@pytest.mark.parametrize('prob', [0.004, 0.3, 1.0])
def test_replace_gives_values_at_the_replaced_flat_indices(prob):
  """With values_at(k, idx) = idx, replaced element i holds i and every other element holds base."""
  size = 4000
  base_N = _negative_base(size)
  out_N = np.asarray(_replace(jax.random.key(5), prob, base_N, _index_values))
  replaced_N = out_N >= 0
  np.testing.assert_array_equal(out_N[~replaced_N], np.asarray(base_N)[~replaced_N])
  np.testing.assert_array_equal(out_N[replaced_N], np.flatnonzero(replaced_N))
  assert abs(replaced_N.sum() - size * prob) <= SIGMAS * math.sqrt(size * prob * (1 - prob)) + 1
  if prob == 1.0:
    assert replaced_N.all()


@pytest.mark.parametrize('config', [SPARSE, DENSE], ids=['sparse', 'dense'])
def test_replace_keeps_int8_dtype(config):
  prob, size, _, _ = config
  base_N = jnp.zeros((size,), jnp.int8)
  out_N = jax.eval_shape(lambda key: bernoulli.replace(key, prob, base_N, _index_values), jax.random.key(0))
  assert out_N.dtype == jnp.int8 and out_N.shape == (size,)
  # The values: `_draw` replaces on an int8 base with int32 values_at, and `_fields` checks that every
  # element is the base 0 or SENTINEL; the replaced count is right for int8 too.
  mask_KxN = _fields(*config)[1]
  assert abs(mask_KxN.mean() - prob) < SIGMAS * math.sqrt(prob * (1 - prob) / mask_KxN.size)


@pytest.mark.parametrize('prob', [0.004])
def test_replace_passes_a_usable_key_to_values_at(prob):
  """Replacement values drawn from the key that values_at gets are random, not constant or base."""

  def random_values(key, idx_C):
    return jax.random.randint(key, idx_C.shape, 100, 1_000_000)

  out_N = np.asarray(_replace(jax.random.key(8), prob, jnp.zeros((4000,), jnp.int32), random_values))
  replaced = out_N[out_N != 0]
  assert len(replaced) > 5
  assert replaced.min() >= 100
  assert len(np.unique(replaced)) > len(replaced) // 2


def test_replace_with_zero_prob_returns_base():
  base_N = _negative_base(1000)
  calls = []

  def values_at(key, idx_C):
    calls.append(idx_C.shape)
    return idx_C

  out_N = bernoulli.replace(jax.random.key(0), 0.0, base_N, values_at)
  chex.assert_trees_all_equal(out_N, base_N)
  chex.assert_type(out_N, jnp.int32)
  assert not calls


@pytest.mark.parametrize('prob', [0.004, 0.3])
def test_replace_jit_equals_eager(prob):
  base_N = _negative_base(4000)
  key = jax.random.key(11)
  eager_N = bernoulli.replace(key, prob, base_N, _index_values)
  jitted_N = _replace(key, prob, base_N, _index_values)
  chex.assert_trees_all_equal(eager_N, jitted_N)
  assert np.any(np.asarray(eager_N) >= 0)


@pytest.mark.parametrize('prob', [0.004, 0.3])
def test_replace_is_deterministic_in_the_key(prob):
  base_N = _negative_base(4000)
  first_N = _replace(jax.random.key(20), prob, base_N, _index_values)
  again_N = _replace(jax.random.key(20), prob, base_N, _index_values)
  other_N = _replace(jax.random.key(21), prob, base_N, _index_values)
  chex.assert_trees_all_equal(first_N, again_N)
  assert not np.array_equal(np.asarray(first_N), np.asarray(other_N))


def test_same_keys_same_fields_and_distinct_keys_distinct_fields():
  prob, size, num_keys, seed = SPARSE
  positions_KxC, mask_KxN = _fields(*SPARSE)
  again_positions_KxC, again_mask_KxN, _ = _draw(_keys(seed, num_keys), prob, size)
  np.testing.assert_array_equal(positions_KxC, np.asarray(again_positions_KxC))
  np.testing.assert_array_equal(mask_KxN, np.asarray(again_mask_KxN))
  # 2000 keys: no two give the same successes (a collision has probability below 1e-7 here).
  assert len({row.tobytes() for row in positions_KxC}) == num_keys
  assert len({row.tobytes() for row in np.packbits(mask_KxN, axis=1)}) == num_keys


_positions_K = jax.jit(jax.vmap(bernoulli.success_positions, in_axes=(0, None, None)), static_argnums=(1, 2))


@pytest.mark.parametrize(
  'size',
  [
    pytest.param(2**24 - 2, id='size=2^24-2'),
    pytest.param(2**24, id='size=2^24'),  # float32 cannot hold size + 1 here: the cap must be integer.
  ],
)
def test_large_nearly_empty_field_has_no_spurious_success(size):
  """With size * p ~ 0.017, almost every field is empty; the last position is hit at rate p = 1e-9."""
  prob, num_keys = 1e-9, 1000
  positions_KxC = np.asarray(_positions_K(_keys(7, num_keys), prob, size))
  assert not np.any(positions_KxC == size - 1)
  has_success_K = (positions_KxC < size).any(axis=1)
  expected = 1.0 - (1.0 - prob) ** size
  assert abs(has_success_K.mean() - expected) < SIGMAS * math.sqrt(expected * (1 - expected) / num_keys)


def test_replace_leaves_an_empty_large_field_unchanged():
  """size = 25.6M is the GA's P * L from the module docstring; with p = 1e-9 the field is ~97% empty."""
  size = 25_600_000
  out_N = np.asarray(_replace(jax.random.key(0), 1e-9, jnp.zeros((size,), jnp.int8), _sentinel_values))
  assert out_N[-1] == 0  # Replaced with probability 1e-9.
  assert np.count_nonzero(out_N) <= 2  # Poisson(0.0256) successes.
