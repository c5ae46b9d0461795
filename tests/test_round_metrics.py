"""Tests for llome_jax.round_metrics against NumPy / scipy references, incl. ties and degenerate masks."""

import functools
import itertools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from llome_jax import round_metrics

_spearman = jax.jit(round_metrics.spearman)
_calibration = jax.jit(round_metrics.calibration, static_argnames='num_bins')
_edit_stats = jax.jit(round_metrics.edit_stats)
_diversity = jax.jit(round_metrics.diversity, static_argnames='num_pairs')
_regrets = jax.jit(round_metrics.regrets, static_argnames='optimal_value')
_feasible_fraction = jax.jit(round_metrics.feasible_fraction)


def _reference_spearman(x, y, where):
  x, y = np.asarray(x, np.float64)[where], np.asarray(y, np.float64)[where]
  if x.size < 2 or np.isnan(x).any() or np.isnan(y).any() or np.ptp(x) == 0 or np.ptp(y) == 0:
    return np.nan
  # scipy ranks +-inf as extremes only via rankdata; spearmanr on raw infs would give NaN moments.
  return scipy.stats.pearsonr(scipy.stats.rankdata(x), scipy.stats.rankdata(y)).statistic


def _random_case(rng, size, *, ties, neg_inf=False, mask_prob=0.7):
  if ties:
    x, y = rng.integers(0, 4, size).astype(np.float32), rng.integers(0, 3, size).astype(np.float32)
  else:
    x, y = rng.normal(size=size).astype(np.float32), rng.normal(size=size).astype(np.float32)
  if neg_inf:
    y[rng.random(size) < 0.3] = -np.inf
  return x, y, rng.random(size) < mask_prob


# --- spearman ---------------------------------------------------------------------------------------


@pytest.mark.parametrize('ties', [False, True])
@pytest.mark.parametrize('neg_inf', [False, True])
def test_spearman_matches_scipy(ties, neg_inf):
  rng = np.random.default_rng(int(ties) + 2 * int(neg_inf))
  for size in (2, 7, 129):
    x, y, where = _random_case(rng, size, ties=ties, neg_inf=neg_inf)
    expected = _reference_spearman(x, y, where)
    np.testing.assert_allclose(_spearman(x, y, where), expected, rtol=1e-5, atol=1e-6)


def test_spearman_equals_scipy_spearmanr_on_finite_ties():
  rng = np.random.default_rng(7)
  x, y, where = _random_case(rng, 129, ties=True)
  expected = scipy.stats.spearmanr(x[where], y[where]).statistic
  np.testing.assert_allclose(_spearman(x, y, where), expected, rtol=1e-5)


def test_average_ranks_match_rankdata_and_zero_unmasked():
  rng = np.random.default_rng(3)
  x = rng.integers(0, 5, 50).astype(np.float32)
  x[:5] = -np.inf
  where = rng.random(50) < 0.6
  ranks = np.asarray(jax.jit(round_metrics.average_ranks)(x, where))
  np.testing.assert_array_equal(ranks[where], scipy.stats.rankdata(x[where]))
  np.testing.assert_array_equal(ranks[~where], 0.0)


@pytest.mark.parametrize(
  'x, y, where',
  [
    ([1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [False, False, False]),  # Empty mask.
    ([1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [False, True, False]),  # One entry.
    ([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [True, True, True]),  # Constant side.
    ([1.0, 2.0, 3.0], [-np.inf, -np.inf, -np.inf], [True, True, True]),  # All infeasible.
    ([1.0, np.nan, 3.0], [3.0, 1.0, 2.0], [True, True, True]),  # A masked NaN.
  ],
)
def test_spearman_is_nan_when_undefined(x, y, where):
  assert np.isnan(_spearman(jnp.array(x), jnp.array(y), jnp.array(where)))


def test_spearman_ignores_unmasked_nan_and_golden_value():
  x = jnp.array([1.0, 2.0, 3.0, 4.0, np.nan])
  y = jnp.array([1.0, 3.0, 2.0, 4.0, 0.0])
  where = jnp.array([True, True, True, True, False])
  # Ranks (1,2,3,4) vs (1,3,2,4): rho = 1 - 6 * 2 / (4 * 15) = 0.8.
  np.testing.assert_allclose(_spearman(x, y, where), 0.8, rtol=1e-6)


# --- calibration ------------------------------------------------------------------------------------


def _reference_calibration(likelihood, reward, where, num_bins):
  idx = np.flatnonzero(where)
  idx = idx[np.argsort(likelihood[idx], kind='stable')]
  n = idx.size
  counts, mean_l, mean_r = np.zeros(num_bins, int), np.zeros(num_bins), np.zeros(num_bins)
  for position, i in enumerate(idx):
    b = position * num_bins // n
    counts[b] += 1
    mean_l[b] += likelihood[i]
    mean_r[b] += 0.0 if np.isneginf(reward[i]) else reward[i]
  nonzero = counts > 0
  mean_l[nonzero] /= counts[nonzero]
  mean_r[nonzero] /= counts[nonzero]
  return counts, mean_l, mean_r


@pytest.mark.parametrize('size, num_bins', [(37, 10), (5, 10), (64, 3)])
def test_calibration_matches_reference(size, num_bins):
  rng = np.random.default_rng(size + num_bins)
  likelihood, reward, where = _random_case(rng, size, ties=True, neg_inf=True)
  likelihood += rng.normal(size=size).astype(np.float32) * (size % 2)  # Ties in half the cases.
  got = _calibration(likelihood, reward, where, num_bins=num_bins)
  counts, mean_l, mean_r = _reference_calibration(likelihood, reward, where, num_bins)
  np.testing.assert_array_equal(got.bin_count, counts)
  np.testing.assert_allclose(got.bin_mean_likelihood, mean_l, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.bin_mean_reward, mean_r, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.spearman, _reference_spearman(likelihood, reward, where), rtol=1e-5)
  assert int(np.sum(got.bin_count)) == int(where.sum())
  assert np.ptp(counts[: min(num_bins, where.sum())]) <= 1  # Equal-count bins.


def test_calibration_empty_and_all_infeasible():
  likelihood = jnp.linspace(-2.0, 0.0, 20)
  empty = _calibration(likelihood, jnp.zeros(20), jnp.zeros(20, bool), num_bins=4)
  assert np.isnan(empty.spearman)
  np.testing.assert_array_equal(empty.bin_count, 0)
  np.testing.assert_array_equal(empty.bin_mean_reward, 0.0)
  infeasible = _calibration(likelihood, jnp.full(20, -jnp.inf), jnp.ones(20, bool), num_bins=4)
  assert np.isnan(infeasible.spearman)
  np.testing.assert_array_equal(infeasible.bin_count, 5)
  np.testing.assert_array_equal(infeasible.bin_mean_reward, 0.0)
  assert np.all(np.isfinite(infeasible.bin_mean_likelihood))


# --- edit_stats -------------------------------------------------------------------------------------


def test_edit_stats_matches_reference():
  rng = np.random.default_rng(11)
  n, length = 300, 16
  inputs = rng.integers(0, 4, (n, length))
  outputs = np.where(rng.random((n, length)) < 0.1, rng.integers(0, 4, (n, length)), inputs)
  outputs[:40] = inputs[:40]
  in_values = rng.choice([-np.inf, 0.0, 0.25, 0.5, 1.0], n).astype(np.float32)
  out_values = rng.choice([-np.inf, 0.0, 0.25, 0.5, 1.0], n).astype(np.float32)
  where = rng.random(n) < 0.8
  got = _edit_stats(inputs, outputs, in_values, out_values, where)
  hamming = (inputs != outputs).mean(-1)
  improved = [
    (o > i) if np.isfinite(i) and np.isfinite(o) else (np.isinf(i) and np.isfinite(o))
    for i, o in zip(in_values, out_values, strict=True)
  ]
  np.testing.assert_allclose(got.mean_hamming, hamming[where].mean(), rtol=1e-5)
  np.testing.assert_allclose(got.copy_fraction, (hamming[where] == 0).mean(), rtol=1e-6)
  np.testing.assert_allclose(got.improved_fraction, np.asarray(improved)[where].mean(), rtol=1e-6)
  assert int(got.count) == where.sum()


def test_edit_stats_infeasible_rules_and_empty_mask():
  inputs = jnp.zeros((4, 3), jnp.int32)
  outputs = jnp.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
  in_values = jnp.array([-jnp.inf, -jnp.inf, 0.5, 0.5])
  out_values = jnp.array([-jnp.inf, 0.0, -jnp.inf, 0.75])
  got = _edit_stats(inputs, outputs, in_values, out_values, jnp.ones(4, bool))
  np.testing.assert_allclose(got.mean_hamming, (0 + 1 / 3 + 2 / 3 + 1) / 4, rtol=1e-6)
  np.testing.assert_allclose(got.copy_fraction, 0.25)
  np.testing.assert_allclose(got.improved_fraction, 0.5)  # -inf -> 0.0 and 0.5 -> 0.75.
  empty = _edit_stats(inputs, outputs, in_values, out_values, jnp.zeros(4, bool))
  for value in (empty.mean_hamming, empty.copy_fraction, empty.improved_fraction, empty.count):
    assert float(value) == 0.0


# --- diversity --------------------------------------------------------------------------------------


def _reference_mean_pairwise(rows):
  pairs = list(itertools.combinations(range(len(rows)), 2))
  if not pairs:
    return 0.0
  return np.mean([(rows[i] != rows[j]).mean() for i, j in pairs])


@pytest.mark.parametrize('n', [40, 12, 1, 0])  # 40 * 39 / 2 = 780 pairs: the boundary.
def test_diversity_exact_when_pairs_fit(n):
  rng = np.random.default_rng(n)
  seqs = rng.integers(0, 3, (45, 6))
  seqs[3] = seqs[0]  # Duplicate rows.
  where = np.zeros(45, bool)
  where[rng.permutation(45)[:n]] = True
  got = _diversity(seqs, where, jax.random.key(0), num_pairs=780)
  assert bool(got.exact)
  np.testing.assert_allclose(got.mean_pairwise_hamming, _reference_mean_pairwise(seqs[where]), rtol=1e-5)
  assert int(got.num_unique) == len({tuple(r) for r in seqs[where].tolist()})
  assert int(got.count) == n


def test_all_pairs_enumerates_each_pair_once():
  num_pairs = 30 * 29 // 2
  all_pairs = jax.jit(round_metrics._all_pairs, static_argnums=1)
  for count in (2, 3, 17, 30):
    i, j, valid = map(np.asarray, all_pairs(jnp.array(count), num_pairs))
    assert valid.sum() == count * (count - 1) // 2
    got = sorted(zip(i[valid].tolist(), j[valid].tolist(), strict=True))
    assert got == sorted((a, b) for a in range(count) for b in range(a))


def test_diversity_estimate_is_close_when_sampled():
  rng = np.random.default_rng(5)
  seqs = rng.integers(0, 4, (500, 32))
  seqs[250:] = seqs[0]  # Half copies of one row: mean distance is far from the uniform 0.75.
  where = rng.random(500) < 0.9
  got = _diversity(seqs, where, jax.random.key(1), num_pairs=4096)
  assert not bool(got.exact)
  expected = _reference_mean_pairwise(seqs[where])
  np.testing.assert_allclose(got.mean_pairwise_hamming, expected, atol=0.02)
  assert int(got.num_unique) == len({tuple(r) for r in seqs[where].tolist()})


def test_num_unique_wide_rows():
  rng = np.random.default_rng(9)
  seqs = rng.integers(0, 2, (64, 64)).astype(np.int8)
  seqs[10:20] = seqs[0]
  seqs[30] = seqs[31]
  where = np.ones(64, bool)
  where[31] = False  # A masked-out duplicate does not count; row 30 still does.
  assert int(jax.jit(round_metrics.num_unique)(seqs, where)) == len({tuple(r) for r in seqs[where].tolist()})


# --- regrets and feasibility --------------------------------------------------------------------------


def test_regrets_and_feasible_fraction():
  values = jnp.array([0.25, -jnp.inf, 0.75, 0.9])
  where = jnp.array([True, True, True, False])
  round_regret, best = _regrets(values, where, jnp.array(0.5))
  np.testing.assert_allclose([round_regret, best], [0.25, 0.25])
  round_regret, best = _regrets(values, where, jnp.array(0.1))
  np.testing.assert_allclose([round_regret, best], [0.25, 0.1])
  np.testing.assert_allclose(_feasible_fraction(values, where), 2 / 3, rtol=1e-6)
  # All infeasible or empty: f counts as 0.
  for mask in (jnp.zeros(4, bool), jnp.array([False, True, False, False])):
    round_regret, best = _regrets(values, mask, jnp.array(jnp.inf))
    np.testing.assert_allclose([round_regret, best], [1.0, 1.0])
  assert float(_feasible_fraction(values, jnp.zeros(4, bool))) == 0.0
  np.testing.assert_allclose(_regrets(values, where, 1.0, optimal_value=2.0)[0], 1.25)


# --- jit --------------------------------------------------------------------------------------------


def test_jit_equals_eager_and_traces_once():
  rng = np.random.default_rng(0)
  n, length = 50, 8
  seqs = rng.integers(0, 4, (n, length))
  outputs = rng.integers(0, 4, (n, length))
  x, y, where = _random_case(rng, n, ties=True, neg_inf=True)
  key = jax.random.key(3)
  calls = [
    (round_metrics.spearman, (x, y, where), {}),
    (round_metrics.calibration, (x, y, where), {'num_bins': 4}),
    (round_metrics.edit_stats, (seqs, outputs, x, y, where), {}),
    (round_metrics.diversity, (seqs, where, key), {'num_pairs': 64}),
    (round_metrics.regrets, (y, where, jnp.array(1.0)), {}),
    (round_metrics.feasible_fraction, (y, where), {}),
  ]
  for fn, args, kwargs in calls:
    eager = fn(*args, **kwargs)
    jitted = jax.jit(functools.partial(fn, **kwargs))(*args)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-6)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(x, y, where):
    return round_metrics.calibration(x, y, where, num_bins=4)

  with warnings.catch_warnings():
    warnings.simplefilter('error')
    for seed in range(3):
      x, y, where = _random_case(np.random.default_rng(seed), n, ties=False)
      step(x, y, where)
