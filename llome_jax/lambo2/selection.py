"""LaMBO-2's starting pool (SPEC 7): the best 2n labelled sequences, thinned to n by farthest-first
traversal on edit distance, so that the guided rounds start from diverse sequences."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

DISTANCES = ('edit', 'hamming')


def edit_distances(x_L: Int[Array, ' L'], ys_NxL: Int[Array, 'N L']) -> Int[Array, ' N']:
  """Levenshtein distance (unit insertions, deletions and substitutions) from `x_L` to each row.

  The dynamic programme runs over x's positions (a `lax.scan` of L steps); inside a row the insertion
  recurrence D[i, j] = min(E[j], D[i, j - 1] + 1) is a running minimum, D[i, j] = j + cummin(E - j), so
  each step is a few vector operations over all N rows.
  """

  def running_min(x_NxJ):
    # log2(L + 1) shifted minimums (Hillis-Steele): XLA:CPU lowers lax.cummin to a window reduction of
    # O(L^2) work per row, which made a farthest-first round on f2 take minutes.
    shift = 1
    while shift < x_NxJ.shape[1]:
      shifted = jnp.pad(x_NxJ[:, :-shift], ((0, 0), (shift, 0)), constant_values=jnp.iinfo(jnp.int32).max)
      x_NxJ = jnp.minimum(x_NxJ, shifted)
      shift *= 2
    return x_NxJ

  n, length = ys_NxL.shape
  columns = jnp.arange(length + 1, dtype=jnp.int32)
  first = jnp.broadcast_to(columns, (n, length + 1))

  def row(previous_NxJ, i_and_token):
    i, token = i_and_token
    substitute = previous_NxJ[:, :-1] + (ys_NxL != token).astype(jnp.int32)
    delete = previous_NxJ[:, 1:] + 1
    e_NxJ = jnp.concatenate([jnp.full((n, 1), i + 1, jnp.int32), jnp.minimum(substitute, delete)], axis=1)
    return columns + running_min(e_NxJ - columns), None

  last, _ = jax.lax.scan(row, first, (jnp.arange(x_L.shape[0], dtype=jnp.int32), x_L))
  return last[:, -1]


def hamming_distances(x_L: Int[Array, ' L'], ys_NxL: Int[Array, 'N L']) -> Int[Array, ' N']:
  return jnp.sum(ys_NxL != x_L, axis=1, dtype=jnp.int32)


def farthest_first(
  seqs_NxL: Int[Array, 'N L'],
  scores_N: Float[Array, ' N'],
  where_N: Bool[Array, ' N'],
  num_chosen: int,
  *,
  distance: str = 'edit',
) -> tuple[Int[Array, ' S'], Bool[Array, ' S']]:
  """Farthest-first traversal: start from the best-scoring row, then repeatedly take the row whose
  distance to the nearest row taken is largest, ties to the higher score, then to the lower index.

  Args:
    seqs_NxL: candidates.
    scores_N: their scores (higher is better; -inf allowed).
    where_N: the real candidates.
    num_chosen: S, rows to take.
    distance: 'edit' (Levenshtein, as the reference) or 'hamming' (equal for substitution-only edits
      of equal-length sequences when they differ in few places; always an upper bound).

  Returns:
    (indices into the candidates in the order taken, which of them are real): fewer real candidates
    than S leave the tail unreal.
  """
  if distance not in DISTANCES:
    raise ValueError(f'distance must be one of {DISTANCES}, got {distance!r}.')
  measure = edit_distances if distance == 'edit' else hamming_distances
  n = scores_N.shape[0]
  # Rank by (score descending, index ascending): rank 0 is the start, and ranks break distance ties.
  rank_N = jnp.zeros(n, jnp.int32).at[jnp.lexsort((jnp.arange(n), -scores_N, ~where_N))].set(jnp.arange(n))
  big = jnp.iinfo(jnp.int32).max

  def take(carry, _):
    nearest_N, open_N = carry
    farthest = jnp.max(jnp.where(open_N, nearest_N, -1))
    candidates_N = open_N & (nearest_N == farthest)
    chosen = jnp.argmin(jnp.where(candidates_N, rank_N, big))
    real = jnp.any(open_N)
    nearest_N = jnp.minimum(nearest_N, measure(seqs_NxL[chosen], seqs_NxL))
    return (nearest_N, open_N.at[chosen].set(False)), (chosen.astype(jnp.int32), real)

  start = (jnp.full(n, big, jnp.int32), jnp.asarray(where_N, bool))
  _, (chosen_S, real_S) = jax.lax.scan(take, start, None, length=num_chosen)
  return chosen_S, real_S


def starting_pool(
  seqs_CxL: Int[Array, 'C L'],
  values_C: Float[Array, ' C'],
  where_C: Bool[Array, ' C'],
  num_starts: int,
  *,
  expansion: int = 2,
  distance: str = 'edit',
) -> tuple[Int[Array, 'S L'], Float[Array, ' S'], Bool[Array, ' S']]:
  """The best `expansion` x S labelled rows by value (infeasible ones last), thinned to S by
  `farthest_first`. Returns the starts, their values and which are real."""
  top = min(expansion * num_starts, values_C.shape[0])
  ranked_C = jnp.where(where_C, values_C, -jnp.inf)
  # Real rows before padding at equal (-inf) value: top_k keeps the lower index among ties.
  order_C = jnp.lexsort((jnp.arange(values_C.shape[0]), -ranked_C, ~where_C))[:top]
  chosen_S, real_S = farthest_first(
    seqs_CxL[order_C], ranked_C[order_C], where_C[order_C], num_starts, distance=distance
  )
  index_S = order_C[chosen_S]
  return seqs_CxL[index_S], values_C[index_S], real_S & where_C[index_S]
