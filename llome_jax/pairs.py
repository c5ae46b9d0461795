"""Training pairs (x worse, y better) and DPO triples among labelled sequences' Hamming neighbours.

Static shapes throughout: a fixed-capacity buffer of C rows with a validity mask goes in, and
fixed-capacity index arrays with a validity mask come out, so the whole thing runs inside `lax.scan`.
"""

import dataclasses
import fractions

import flax.struct
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class PairConfig:
  """Static settings. Defaults are the reference's f2 settings (`dist_x_threshold`, `n_neighbors`,
  `max_proportion_infeasible` in llome's config/pipeline_*_f2.yaml).

  Attributes:
    capacity: most pairs (or triples) kept; the static size of the output.
    max_distance: largest normalised Hamming distance (differing positions / L) of a pair.
    num_neighbors: K, the nearest other valid rows each row considers.
    max_infeasible_fraction: cap on the fraction of kept pairs whose worse member is infeasible.
    block_size: rows per chunk of the distance computation (memory ~ block_size x C x L bytes).
  """

  capacity: int
  max_distance: float = 0.25
  num_neighbors: int = 30
  max_infeasible_fraction: float = 0.1
  block_size: int = 128

  def __post_init__(self):
    if self.capacity < 1:
      raise ValueError(f'capacity must be positive, got {self.capacity}.')
    if not 0.0 <= self.max_distance <= 1.0:
      raise ValueError(f'max_distance must lie in [0, 1], got {self.max_distance}.')
    if self.num_neighbors < 1:
      raise ValueError(f'num_neighbors must be positive, got {self.num_neighbors}.')
    if not 0.0 <= self.max_infeasible_fraction <= 1.0:
      raise ValueError(f'max_infeasible_fraction must lie in [0, 1], got {self.max_infeasible_fraction}.')
    if self.block_size < 1:
      raise ValueError(f'block_size must be positive, got {self.block_size}.')

  @property
  def infeasible_ratio(self) -> tuple[int, int] | None:
    """p / (1 - p) as an exact (numerator, denominator), p rounded to a denominator <= 1000; None if p = 1.

    Integer arithmetic makes the cap exact: floor(F * p / (1 - p)) has no float rounding at integers.
    """
    p = fractions.Fraction(self.max_infeasible_fraction).limit_denominator(1000)
    if p == 1:
      return None
    return p.numerator, p.denominator - p.numerator

  def max_count(self, length: int) -> int:
    """Most differing positions a pair may have: floor(max_distance * L), robust to float rounding."""
    return int(self.max_distance * length + 1e-9)


@flax.struct.dataclass
class Pairs:
  x_idx_P: Int[Array, ' P']  # Worse member (row of the C buffer).
  y_idx_P: Int[Array, ' P']  # Better member.
  where_P: Bool[Array, ' P']  # Real pairs; unreal slots hold index 0 and reward 0.
  rewards_P: Float[Array, ' P']  # max(0, f~(y) - f~(x)), f~ = f or 0 if infeasible.
  num_candidates: Array  # int32: qualifying pairs before the infeasible cap and capacity.
  num_infeasible_candidates: Array  # int32: those of them whose worse member is infeasible.

  @property
  def better_idx_P(self) -> Int[Array, ' P']:
    return self.y_idx_P


@flax.struct.dataclass
class Triples:
  x_idx_P: Int[Array, ' P']  # Prompt.
  yw_idx_P: Int[Array, ' P']  # Chosen: strictly better than x.
  yl_idx_P: Int[Array, ' P']  # Rejected: not better than x (may be x itself).
  where_P: Bool[Array, ' P']
  num_candidates: Array  # int32: qualifying triples before capacity.

  @property
  def better_idx_P(self) -> Int[Array, ' P']:
    return self.yw_idx_P


def hamming_counts_BxC(a_BxL: Int[Array, 'B L'], b_CxL: Int[Array, 'C L'], *, block_size: int = 128) -> Array:
  """Number of differing positions of every (a, b) row pair, int32 [B, C], block_size rows of a at a time."""

  def row(a_L):
    return jnp.sum(a_L[None, :] != b_CxL, axis=-1, dtype=jnp.int32)

  return jax.lax.map(row, a_BxL, batch_size=min(block_size, a_BxL.shape[0]))


def hamming_BxC(a_BxL: Int[Array, 'B L'], b_CxL: Int[Array, 'C L'], *, block_size: int = 128) -> Array:
  """Normalised Hamming distance (fraction of differing positions, scipy's `hamming`), float32 [B, C]."""
  counts_BxC = hamming_counts_BxC(a_BxL, b_CxL, block_size=block_size)
  return counts_BxC.astype(jnp.float32) / a_BxL.shape[-1]


def nearest_neighbors(
  seqs_CxL: Int[Array, 'C L'], valid_C: Bool[Array, ' C'], *, num_neighbors: int, block_size: int = 128
) -> tuple[Int[Array, 'C K'], Int[Array, 'C K'], Bool[Array, 'C K']]:
  """Each valid row's `num_neighbors` nearest other valid rows, exactly, ordered by (distance, index).

  Never materialises the C x C distance matrix: rows are processed block_size at a time, each block
  reduced to its top K at once. Ties in distance go to the lower index, so the result is deterministic.

  Returns:
    (neighbour rows [C, K], their Hamming counts [C, K], validity [C, K]). A slot is invalid when its
    row is invalid or fewer than K other valid rows exist.
  """
  capacity, length = seqs_CxL.shape
  sentinel = (length + 1) * capacity  # Above every real key count * C + j.
  if sentinel + capacity >= _INT32_MAX:
    raise ValueError(f'C = {capacity} and L = {length} overflow the int32 neighbour keys.')
  top = min(num_neighbors, capacity)
  index_C = jnp.arange(capacity, dtype=jnp.int32)

  def row(args):
    i, x_L = args
    counts_C = jnp.sum(x_L[None, :] != seqs_CxL, axis=-1, dtype=jnp.int32)
    # One unique int32 key per candidate: sorting by it sorts by (count, index).
    keys_C = jnp.where(valid_C & (index_C != i), counts_C * capacity + index_C, sentinel)
    neg_keys_K, _ = jax.lax.top_k(-keys_C, top)
    return -neg_keys_K

  keys_CxK = jax.lax.map(row, (index_C, seqs_CxL), batch_size=min(block_size, capacity))
  if top < num_neighbors:
    keys_CxK = jnp.pad(keys_CxK, ((0, 0), (0, num_neighbors - top)), constant_values=sentinel)
  ok_CxK = (keys_CxK < sentinel) & valid_C[:, None]
  return (
    jnp.where(ok_CxK, keys_CxK % capacity, 0),
    jnp.where(ok_CxK, keys_CxK // capacity, length + 1),
    ok_CxK,
  )


def _sanitise(values_C: Float[Array, ' C']) -> Array:
  """float32 values with NaN read as infeasible (-inf), as the reference reads a NaN score as inf."""
  values_C = values_C.astype(jnp.float32)
  return jnp.where(jnp.isnan(values_C), -jnp.inf, values_C)


def candidate_pairs(
  seqs_CxL: Int[Array, 'C L'], values_C: Float[Array, ' C'], valid_C: Bool[Array, ' C'], *, cfg: PairConfig
) -> tuple[Int[Array, ' N'], Int[Array, ' N'], Bool[Array, ' N']]:
  """Every qualifying pair once, oriented worse -> better, in N = C * K static slots.

  {i, j} qualifies iff both rows are valid, j is among i's K nearest or i among j's, their normalised
  Hamming distance is <= max_distance, and their values differ. Order: f ascending with infeasible
  (-inf) below every feasible value, so two infeasible rows never pair and an infeasible row is always
  the worse member. A pair found from both ends is kept in the slot of its lower-indexed row.

  Returns:
    (x = worse rows [N], y = better rows [N], qualifies [N]).
  """
  capacity, length = seqs_CxL.shape
  values_C = _sanitise(values_C)
  nbr_CxK, count_CxK, ok_CxK = nearest_neighbors(
    seqs_CxL, valid_C, num_neighbors=cfg.num_neighbors, block_size=cfg.block_size
  )
  i_CxK = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32)[:, None], nbr_CxK.shape)
  v_i, v_j = values_C[i_CxK], values_C[nbr_CxK]
  qualifies_CxK = ok_CxK & (count_CxK <= cfg.max_count(length)) & (v_i != v_j)
  # Is i also in j's list? Then the pair is found twice; the lower-indexed row's slot keeps it.
  mutual_CxK = jnp.any((nbr_CxK[nbr_CxK] == i_CxK[..., None]) & ok_CxK[nbr_CxK], axis=-1)
  qualifies_CxK &= ~(mutual_CxK & (nbr_CxK < i_CxK))
  i_worse_CxK = v_i < v_j
  x_CxK = jnp.where(i_worse_CxK, i_CxK, nbr_CxK)
  y_CxK = jnp.where(i_worse_CxK, nbr_CxK, i_CxK)
  return x_CxK.reshape(-1), y_CxK.reshape(-1), qualifies_CxK.reshape(-1)


def _take_uniform(key: PRNGKeyArray, groups: list[tuple[Array, Array]], capacity: int):
  """Keeps `count` slots chosen uniformly at random from each (mask, count) group, in random order.

  Returns:
    (source slots [capacity], validity [capacity]); kept slots first.
  """
  perm_N = jax.random.permutation(key, groups[0][0].shape[0])
  keep_N = jnp.zeros(perm_N.shape, bool)
  for mask_N, count in groups:
    in_group_N = mask_N[perm_N]
    keep_N |= in_group_N & (jnp.cumsum(in_group_N, dtype=jnp.int32) <= count)
  (slots_P,) = jnp.nonzero(keep_N, size=capacity, fill_value=0)
  where_P = jnp.arange(capacity) < jnp.sum(keep_N, dtype=jnp.int32)
  return jnp.where(where_P, perm_N[slots_P], 0), where_P


def _infeasible_quota(num_feasible: Array, num_infeasible: Array, max_items: int, cfg: PairConfig) -> Array:
  """Most infeasible items that keep their fraction <= p beside num_feasible: floor(F * p / (1 - p))."""
  ratio = cfg.infeasible_ratio
  if ratio is None:
    return num_infeasible
  numerator, denominator = ratio
  if max_items * numerator >= _INT32_MAX:
    raise ValueError(
      f'{max_items} items overflow the int32 infeasible cap for p = {cfg.max_infeasible_fraction}.'
    )
  return jnp.minimum(num_infeasible, (num_feasible * numerator) // denominator)


def make_pairs(
  key: PRNGKeyArray,
  seqs_CxL: Int[Array, 'C L'],
  values_C: Float[Array, ' C'],
  valid_C: Bool[Array, ' C'],
  *,
  cfg: PairConfig,
) -> Pairs:
  """Training pairs among labelled rows (see `candidate_pairs`), capped and subsampled to capacity.

  Infeasible cap (as the reference's `filter_infeasible_examples`, with floor for its round so the cap
  always holds): with F candidates whose worse member is feasible and I whose worse member is not, keep
  a = min(I, floor(F p / (1 - p))) random infeasible ones. If F + a > capacity, keep a stratified uniform
  subset of capacity: floor(capacity * a / (F + a)) infeasible (never above floor(capacity * p)) and
  the rest feasible. Each stratum is a uniform random subset; the output order is random.

  Args:
    key: randomness for the cap and the subsample.
    seqs_CxL: token rows of the buffer.
    values_C: f of each row; -inf (or NaN) is infeasible.
    valid_C: real rows of the buffer.
    cfg: static settings.

  Returns:
    `Pairs` with cfg.capacity slots.
  """
  x_N, y_N, qualifies_N = candidate_pairs(seqs_CxL, values_C, valid_C, cfg=cfg)
  values_C = _sanitise(values_C)
  infeasible_N = qualifies_N & (values_C[x_N] == -jnp.inf)
  feasible_N = qualifies_N & ~infeasible_N
  num_infeasible = jnp.sum(infeasible_N, dtype=jnp.int32)
  num_feasible = jnp.sum(feasible_N, dtype=jnp.int32)
  quota = _infeasible_quota(num_feasible, num_infeasible, x_N.shape[0], cfg)
  total = num_feasible + quota
  # Float only sets the proportional share; the integer clamps below keep the cap exact regardless.
  share = jnp.floor(cfg.capacity * quota.astype(jnp.float32) / jnp.maximum(total, 1)).astype(jnp.int32)
  share = jnp.minimum(share, int(cfg.capacity * cfg.max_infeasible_fraction + 1e-9))
  num_kept_infeasible = jnp.where(total > cfg.capacity, jnp.minimum(quota, share), quota)
  num_kept_feasible = jnp.minimum(num_feasible, cfg.capacity - num_kept_infeasible)
  slots_P, where_P = _take_uniform(
    key, [(infeasible_N, num_kept_infeasible), (feasible_N, num_kept_feasible)], cfg.capacity
  )
  x_P, y_P = jnp.where(where_P, x_N[slots_P], 0), jnp.where(where_P, y_N[slots_P], 0)
  reward_values_C = jnp.maximum(values_C, 0.0)  # f~: infeasible counts as 0.
  rewards_P = jnp.maximum(0.0, reward_values_C[y_P] - reward_values_C[x_P])
  return Pairs(
    x_idx_P=x_P,
    y_idx_P=y_P,
    where_P=where_P,
    rewards_P=jnp.where(where_P, rewards_P, 0.0),
    num_candidates=num_feasible + num_infeasible,
    num_infeasible_candidates=num_infeasible,
  )


def best_pairs(
  pairs: 'Pairs | Triples', values_C: Float[Array, ' C'], num: int
) -> tuple[Int[Array, ' N'], Bool[Array, ' N']]:
  """The `num` real pairs with the highest f(y), best first (the reference's "best_scoring" seeds).

  For triples y is the chosen member y_w. Ties go to the earlier slot, which is random as `make_pairs`
  and `make_triples` shuffle their output. Seeds are not deduplicated (nor are they in the reference):
  `pairs.y_idx_P[idx]` (`yw_idx_P` for triples).

  Returns:
    (slots into the pairs [num], validity [num]; fewer than num real pairs leave unreal slots).
  """
  if num > pairs.where_P.shape[0]:
    raise ValueError(f'num = {num} exceeds the pair capacity {pairs.where_P.shape[0]}.')
  score_P = jnp.where(pairs.where_P, _sanitise(values_C)[pairs.better_idx_P], -jnp.inf)
  _, idx_N = jax.lax.top_k(score_P, num)
  return idx_N, pairs.where_P[idx_N]


def cap_infeasible_rows(
  key: PRNGKeyArray, values_C: Float[Array, ' C'], valid_C: Bool[Array, ' C'], *, cfg: PairConfig
) -> Bool[Array, ' C']:
  """Drops random infeasible rows so they are at most max_infeasible_fraction of the valid rows left.

  The reference applies this to sequences (not triples) before building DPO triples.
  """
  infeasible_C = valid_C & (_sanitise(values_C) == -jnp.inf)
  feasible_C = valid_C & ~infeasible_C
  quota = _infeasible_quota(
    jnp.sum(feasible_C, dtype=jnp.int32), jnp.sum(infeasible_C, dtype=jnp.int32), values_C.shape[0], cfg
  )
  rank_C = jnp.zeros(values_C.shape, jnp.int32)
  perm_C = jax.random.permutation(key, values_C.shape[0])
  rank_C = rank_C.at[perm_C].set(jnp.cumsum(infeasible_C[perm_C], dtype=jnp.int32))
  return feasible_C | (infeasible_C & (rank_C <= quota))


def make_triples(
  key: PRNGKeyArray,
  seqs_CxL: Int[Array, 'C L'],
  values_C: Float[Array, ' C'],
  valid_C: Bool[Array, ' C'],
  *,
  cfg: PairConfig,
  include_self_rejected: bool = True,
) -> Triples:
  """DPO triples (x, y_w, y_l) as the reference's `find_preference_pairs`, subsampled to capacity.

  First infeasible rows are capped at max_infeasible_fraction of the rows (`cap_infeasible_rows`).
  Then for each valid x, with N(x) its K nearest rows within max_distance: y_w in N(x) with
  f(y_w) > f(x), and y_l in N(x) with f(y_l) <= f(x), or y_l = x itself when include_self_rejected
  (the reference adds (x, k) to its candidate pairs, so x is its own rejected answer). Triples are
  unique by construction; if more than capacity qualify, a uniform random subset is kept.
  """
  rows_key, take_key = jax.random.split(key)
  capacity, length = seqs_CxL.shape
  values_C = _sanitise(values_C)
  valid_C = cap_infeasible_rows(rows_key, values_C, valid_C, cfg=cfg)
  nbr_CxK, count_CxK, ok_CxK = nearest_neighbors(
    seqs_CxL, valid_C, num_neighbors=cfg.num_neighbors, block_size=cfg.block_size
  )
  near_CxK = ok_CxK & (count_CxK <= cfg.max_count(length))
  v_i, v_j = values_C[:, None], values_C[nbr_CxK]
  chosen_CxK = near_CxK & (v_j > v_i)
  index_C = jnp.arange(capacity, dtype=jnp.int32)
  rejected_ids_CxR = jnp.concatenate([nbr_CxK, index_C[:, None]], axis=1)
  rejected_CxR = jnp.concatenate(
    [near_CxK & (v_j <= v_i), (valid_C & include_self_rejected)[:, None]], axis=1
  )
  grid_CxKxR = chosen_CxK[:, :, None] & rejected_CxR[:, None, :]
  qualifies_N = grid_CxKxR.reshape(-1)
  num_candidates = jnp.sum(qualifies_N, dtype=jnp.int32)
  slots_P, where_P = _take_uniform(take_key, [(qualifies_N, num_candidates)], cfg.capacity)
  num_k, num_r = grid_CxKxR.shape[1:]
  x_P, k_P, r_P = slots_P // (num_k * num_r), (slots_P // num_r) % num_k, slots_P % num_r
  return Triples(
    x_idx_P=jnp.where(where_P, x_P, 0),
    yw_idx_P=jnp.where(where_P, nbr_CxK[x_P, k_P], 0),
    yl_idx_P=jnp.where(where_P, rejected_ids_CxR[x_P, r_P], 0),
    where_P=where_P,
    num_candidates=num_candidates,
  )
