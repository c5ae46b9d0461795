"""Per-round diagnostics of the LLOME loop (SPEC section 5), jittable over fixed-capacity masked arrays.

Every function takes arrays of a static capacity N plus a boolean mask `where_N` of the entries that
count. Rules for degenerate masks, shared by all functions, so outputs never raise or turn infinite:
  - a mean or fraction over an empty set is 0 (the count is returned alongside so it can be told
    apart from a true 0);
  - an undefined correlation (fewer than 2 entries, a constant side, or a NaN among the masked
    entries) is NaN.
Values follow the Ehrlich convention: f in [0, 1] when feasible, -inf when infeasible.

Oracle accounting: `edit_stats` and `calibration` need f of the generations, which only labelled
sequences may pay for. They are diagnostics: log them, never feed them back into the algorithm.
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray


def _masked_mean(x_N: Array, where_N: Array) -> Array:
  """Mean over `where_N`, 0 when it is empty."""
  count = jnp.sum(where_N)
  return jnp.sum(jnp.where(where_N, x_N, 0), dtype=jnp.float32) / jnp.maximum(count, 1).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------
# Rank correlation.


def average_ranks(x_N: Float[Array, ' N'], where_N: Bool[Array, ' N']) -> Float[Array, ' N']:
  """1-based ranks of the masked entries among themselves, ties sharing their average rank.

  Matches `scipy.stats.rankdata(x[where], method='average')` on the masked entries; unmasked entries
  get 0. -inf and +inf rank as the extremes; NaNs are not ranked meaningfully (callers check for them).
  """
  size = x_N.shape[0]
  # Sort by (unmasked, x): the masked entries take sorted positions 0 .. count - 1.
  order_N = jnp.lexsort((x_N, ~where_N))
  sorted_x_N, sorted_where_N = x_N[order_N], where_N[order_N]
  position_N = jnp.arange(size)
  differs_N = (sorted_x_N[1:] != sorted_x_N[:-1]) | (sorted_where_N[1:] != sorted_where_N[:-1])
  starts_N = jnp.concatenate([jnp.ones(1, bool), differs_N])
  ends_N = jnp.concatenate([differs_N, jnp.ones(1, bool)])
  first_N = jax.lax.cummax(jnp.where(starts_N, position_N, 0))
  last_N = jax.lax.cummin(jnp.where(ends_N, position_N, size - 1), reverse=True)
  # (first + last) / 2 + 1 is exact in float32 for N < 2^24.
  sorted_rank_N = (first_N + last_N).astype(jnp.float32) / 2 + 1
  rank_N = jnp.zeros(size, jnp.float32).at[order_N].set(sorted_rank_N)
  return jnp.where(where_N, rank_N, 0.0)


def _pearson(x_N: Array, y_N: Array, where_N: Array) -> Array:
  """Pearson correlation over the masked entries; NaN when fewer than 2 or either side is constant."""
  count = jnp.sum(where_N)
  x_mean, y_mean = _masked_mean(x_N, where_N), _masked_mean(y_N, where_N)
  dx_N = jnp.where(where_N, x_N - x_mean, 0.0)
  dy_N = jnp.where(where_N, y_N - y_mean, 0.0)
  sxx, syy, sxy = jnp.sum(dx_N * dx_N), jnp.sum(dy_N * dy_N), jnp.sum(dx_N * dy_N)
  defined = (count >= 2) & (sxx > 0) & (syy > 0)
  r = sxy / jnp.sqrt(jnp.where(defined, sxx * syy, 1.0))
  return jnp.where(defined, jnp.clip(r, -1.0, 1.0), jnp.nan)


def spearman(x_N: Float[Array, ' N'], y_N: Float[Array, ' N'], where_N: Bool[Array, ' N']) -> Array:
  """Spearman rank correlation of the masked entries, as `scipy.stats.spearmanr` (average ranks for ties).

  rho = pearson(rank(x), rank(y)) over {i : where_N[i]}. Infinite values rank as extremes (all -inf
  values tie). NaN when undefined: fewer than 2 masked entries, a constant side, or a masked NaN.

  Returns:
    A float32 scalar in [-1, 1], or NaN.
  """
  x_N, y_N, where_N = jnp.asarray(x_N), jnp.asarray(y_N), jnp.asarray(where_N, bool)
  has_nan = jnp.any(where_N & (jnp.isnan(x_N) | jnp.isnan(y_N)))
  rho = _pearson(average_ranks(x_N, where_N), average_ranks(y_N, where_N), where_N)
  return jnp.where(has_nan, jnp.nan, rho)


# ----------------------------------------------------------------------------------------------------
# Likelihood-reward calibration.


@flax.struct.dataclass
class Calibration:
  spearman: Array  # Spearman(likelihood, reward) over the masked entries; NaN when undefined.
  bin_mean_likelihood: Array  # [num_bins] mean likelihood per bin, lowest-likelihood bin first.
  bin_mean_reward: Array  # [num_bins] mean reward per bin (infeasible counted as 0); 0 when empty.
  bin_count: Array  # [num_bins] int32 entries per bin.


def calibration(
  likelihood_N: Float[Array, ' N'],
  reward_N: Float[Array, ' N'],
  where_N: Bool[Array, ' N'],
  *,
  num_bins: int = 10,
) -> Calibration:
  """Mean reward per likelihood bin, and the rank correlation of likelihood and reward.

  Bins hold equal counts of the masked entries: the entry at position i (0-based) of the masked
  entries sorted by likelihood (ties broken by index) falls in bin floor(i * num_bins / n), so bin
  sizes differ by at most one and bins are empty only when n < num_bins. In the bin means a -inf
  (infeasible) reward counts as 0, as in the regrets; the Spearman correlation uses the raw rewards,
  where -inf ranks below every feasible value.

  Args:
    likelihood_N: e.g. the mean token log-likelihood of each generation under the policy.
    reward_N: f of each generation (a diagnostic when the generations are not labelled).
    where_N: entries to use.
    num_bins: static number of bins.

  Returns:
    A `Calibration`.
  """
  likelihood_N, reward_N = jnp.asarray(likelihood_N), jnp.asarray(reward_N)
  where_N = jnp.asarray(where_N, bool)
  size = likelihood_N.shape[0]
  count = jnp.sum(where_N, dtype=jnp.int32)
  order_N = jnp.lexsort((likelihood_N, ~where_N))
  position_N = jnp.zeros(size, jnp.int32).at[order_N].set(jnp.arange(size, dtype=jnp.int32))
  # int32 product is safe for N * num_bins < 2^31.
  bin_N = jnp.where(where_N, position_N * num_bins // jnp.maximum(count, 1), num_bins)
  bin_count = jnp.zeros(num_bins, jnp.int32).at[bin_N].add(1, mode='drop')
  feasible_reward_N = jnp.where(jnp.isneginf(reward_N), 0.0, reward_N)

  def bin_mean(x_N):
    total = jnp.zeros(num_bins, jnp.float32).at[bin_N].add(jnp.where(where_N, x_N, 0.0), mode='drop')
    return total / jnp.maximum(bin_count, 1).astype(jnp.float32)

  return Calibration(
    spearman=spearman(likelihood_N, reward_N, where_N),
    bin_mean_likelihood=bin_mean(likelihood_N),
    bin_mean_reward=bin_mean(feasible_reward_N),
    bin_count=bin_count,
  )


# ----------------------------------------------------------------------------------------------------
# Edits made by the generator.


@flax.struct.dataclass
class EditStats:
  mean_hamming: Array  # Mean normalised Hamming distance input -> output.
  copy_fraction: Array  # Fraction of outputs equal to their input.
  improved_fraction: Array  # Fraction with f(output) > f(input).
  count: Array  # int32: edits counted.


def edit_stats(
  inputs_NxL: Int[Array, 'N L'],
  outputs_NxL: Int[Array, 'N L'],
  input_values_N: Float[Array, ' N'],
  output_values_N: Float[Array, ' N'],
  where_N: Bool[Array, ' N'],
) -> EditStats:
  """How far the generator moves, how often it copies, and how often it improves (diagnostics).

  Hamming distances are normalised by L. An output improves on its input iff f(out) > f(in), where
  -inf (infeasible) is below every feasible value, so feasible -> infeasible is a loss, infeasible ->
  feasible a gain and infeasible -> infeasible not an improvement. f of unlabelled generations costs
  oracle calls the algorithm may not spend: never feed `improved_fraction` back into the loop (the
  Hamming distance needs no oracle, and drives the temperature shift of SPEC 3.5).

  Returns:
    An `EditStats`; the fractions and mean are 0 when `where_N` is empty.
  """
  where_N = jnp.asarray(where_N, bool)
  differ_NxL = jnp.asarray(inputs_NxL) != jnp.asarray(outputs_NxL)
  hamming_N = jnp.mean(differ_NxL, axis=-1, dtype=jnp.float32)
  improved_N = jnp.asarray(output_values_N) > jnp.asarray(input_values_N)  # -inf > -inf is False.
  return EditStats(
    mean_hamming=_masked_mean(hamming_N, where_N),
    copy_fraction=_masked_mean(~jnp.any(differ_NxL, axis=-1), where_N),
    improved_fraction=_masked_mean(improved_N, where_N),
    count=jnp.sum(where_N, dtype=jnp.int32),
  )


# ----------------------------------------------------------------------------------------------------
# Diversity of a pool.


def first_occurrences(seqs_NxL: Int[Array, 'N L'], where_N: Bool[Array, ' N']) -> Bool[Array, ' N']:
  """True on the first masked occurrence (lowest index) of each distinct row; exact, by sorting rows."""
  seqs_NxL, where_N = jnp.asarray(seqs_NxL), jnp.asarray(where_N, bool)
  n = where_N.shape[0]
  # jnp.lexsort's last key is the primary one: masked rows first, then columns 0, 1, ..., then index
  # (stable), so each run of equal rows starts at its lowest index.
  keys = (jnp.arange(n),) + tuple(seqs_NxL[:, i] for i in reversed(range(seqs_NxL.shape[1]))) + (~where_N,)
  order_N = jnp.lexsort(keys)
  sorted_NxL, sorted_where_N = seqs_NxL[order_N], where_N[order_N]
  differs_N = jnp.concatenate([jnp.ones(1, bool), jnp.any(sorted_NxL[1:] != sorted_NxL[:-1], axis=-1)])
  return jnp.zeros(n, bool).at[order_N].set(differs_N & sorted_where_N)


def num_unique(seqs_NxL: Int[Array, 'N L'], where_N: Bool[Array, ' N']) -> Array:
  """Number of distinct rows among the masked rows (exact: a lexicographic sort over whole rows)."""
  return jnp.sum(first_occurrences(seqs_NxL, where_N), dtype=jnp.int32)


def _max_exact_count(num_pairs: int) -> int:
  """Largest n with n (n - 1) / 2 <= num_pairs."""
  n = int((1 + np.sqrt(1 + 8 * num_pairs)) // 2)
  while n * (n - 1) // 2 > num_pairs:
    n -= 1
  while (n + 1) * n // 2 <= num_pairs:
    n += 1
  return n


def _all_pairs(count: Array, num_pairs: int) -> tuple[Array, Array, Array]:
  """Pair k -> (i, j), i > j, enumerating all count (count - 1) / 2 pairs of 0 .. count - 1 in order."""
  k_P = jnp.arange(num_pairs, dtype=jnp.int32)
  i_P = jnp.floor((1 + jnp.sqrt(1 + 8 * k_P.astype(jnp.float32))) / 2).astype(jnp.int32)
  # Correct float rounding of the triangular root by one step either way.
  i_P = jnp.where(i_P * (i_P - 1) // 2 > k_P, i_P - 1, i_P)
  i_P = jnp.where((i_P + 1) * i_P // 2 <= k_P, i_P + 1, i_P)
  j_P = k_P - i_P * (i_P - 1) // 2
  return i_P, j_P, i_P < count


@flax.struct.dataclass
class Diversity:
  mean_pairwise_hamming: Array  # Mean normalised Hamming distance over pairs of distinct valid rows.
  num_unique: Array  # int32: distinct valid rows.
  exact: Array  # bool: the mean is over all pairs (True) or estimated from `num_pairs` random pairs.
  count: Array  # int32: valid rows.


def diversity(
  seqs_NxL: Int[Array, 'N L'],
  where_N: Bool[Array, ' N'],
  key: PRNGKeyArray,
  *,
  num_pairs: int = 4096,
) -> Diversity:
  """Mean normalised pairwise Hamming distance of a pool, and its number of distinct rows.

  The mean is over unordered pairs of distinct valid rows (different indices; equal contents count
  as distance 0). With n valid rows it is exact when n (n - 1) / 2 <= num_pairs (all pairs are
  enumerated), and otherwise the unbiased estimate from `num_pairs` pairs drawn uniformly with
  replacement. 0 when n < 2. Cost O(num_pairs L) plus a row sort for `num_unique`.

  Returns:
    A `Diversity`.
  """
  seqs_NxL, where_N = jnp.asarray(seqs_NxL), jnp.asarray(where_N, bool)
  count = jnp.sum(where_N, dtype=jnp.int32)
  valid_index_N = jnp.argsort(~where_N, stable=True)  # Valid rows' indices first, in order.
  key_i, key_j = jax.random.split(key)
  random_i_P = jax.random.randint(key_i, (num_pairs,), 0, jnp.maximum(count, 1))
  random_j_P = jax.random.randint(key_j, (num_pairs,), 0, jnp.maximum(count - 1, 1))
  random_j_P = jnp.where(random_j_P >= random_i_P, random_j_P + 1, random_j_P)
  all_i_P, all_j_P, all_valid_P = _all_pairs(count, num_pairs)
  exact = count <= _max_exact_count(num_pairs)
  i_P = jnp.where(exact, all_i_P, random_i_P)
  j_P = jnp.where(exact, all_j_P, random_j_P)
  pair_valid_P = jnp.where(exact, all_valid_P, True) & (count >= 2)
  rows_i_PxL = seqs_NxL[valid_index_N[jnp.clip(i_P, 0, seqs_NxL.shape[0] - 1)]]
  rows_j_PxL = seqs_NxL[valid_index_N[jnp.clip(j_P, 0, seqs_NxL.shape[0] - 1)]]
  hamming_P = jnp.mean(rows_i_PxL != rows_j_PxL, axis=-1, dtype=jnp.float32)
  return Diversity(
    mean_pairwise_hamming=_masked_mean(hamming_P, pair_valid_P),
    num_unique=num_unique(seqs_NxL, where_N),
    exact=exact,
    count=count,
  )


# ----------------------------------------------------------------------------------------------------
# Regret and feasibility.


def regrets(
  values_N: Float[Array, ' N'],
  where_N: Bool[Array, ' N'],
  best_so_far_regret: Float[Array, ''],
  *,
  optimal_value: float = 1.0,
  value_floor: float = 0.0,
) -> tuple[Array, Array]:
  """Simple regret of this round and the updated best-so-far regret.

  round = optimal_value - max(value_floor, max f over the masked values). With the Ehrlich floor 0,
  infeasible (-inf) counts as f = 0, so an empty or all-infeasible round has regret `optimal_value`;
  a user's scorer has floor -inf (its values may be negative) and, with its optimum unknown, NaN
  regrets. best = min(best_so_far_regret, round); start from `optimal_value` (or +inf) before the
  first round. Only labelled values may be passed here for the reported (oracle-call) regret.

  Returns:
    (round_regret, best_so_far_regret), float32 scalars.
  """
  values_N, where_N = jnp.asarray(values_N), jnp.asarray(where_N, bool)
  best_value = jnp.max(
    jnp.where(where_N & jnp.isfinite(values_N), values_N, value_floor), initial=value_floor
  )
  round_regret = (optimal_value - best_value).astype(jnp.float32)
  return round_regret, jnp.minimum(jnp.asarray(best_so_far_regret, jnp.float32), round_regret)


def feasible_fraction(values_N: Float[Array, ' N'], where_N: Bool[Array, ' N']) -> Array:
  """Fraction of the masked values that are feasible (finite); 0 when the mask is empty."""
  return _masked_mean(jnp.isfinite(jnp.asarray(values_N)), jnp.asarray(where_N, bool))
