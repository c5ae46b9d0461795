"""Edit distances and farthest-first traversal against brute-force Python references."""

import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax.lambo2 import selection


def _levenshtein(a, b) -> int:
  previous = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    current = [i]
    for j, y in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
    previous = current
  return previous[-1]


def _farthest_first(seqs, scores, where, n, distance):
  """The traversal written out: start at the best score; take the largest distance to the nearest
  taken row, ties to the higher score, then the lower index."""
  open_rows = [i for i in range(len(seqs)) if where[i]]
  nearest = {i: float('inf') for i in open_rows}
  chosen = []
  for _ in range(min(n, len(open_rows))):
    best = max(open_rows, key=lambda i: (nearest[i], scores[i], -i))
    chosen.append(best)
    open_rows.remove(best)
    for i in open_rows:
      nearest[i] = min(nearest[i], distance(seqs[best], seqs[i]))
  return chosen


def test_edit_distances_match_the_textbook_recurrence():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 3, 9)
  ys = rng.integers(0, 3, (200, 9))
  ys[0] = x
  ys[1] = np.roll(x, 1)  # A shift: edit distance 2 at most, Hamming up to 9.
  got = np.asarray(selection.edit_distances(jnp.asarray(x), jnp.asarray(ys)))
  np.testing.assert_array_equal(got, [_levenshtein(x, y) for y in ys])
  assert got[0] == 0 and got[1] <= 2


@pytest.mark.parametrize('distance', ['edit', 'hamming'])
def test_farthest_first_matches_brute_force(distance):
  rng = np.random.default_rng(1)
  seqs = rng.integers(0, 3, (40, 6))
  scores = np.round(rng.normal(size=40), 1)  # Ties in score, and many ties in distance.
  scores[[3, 7]] = -np.inf
  where = np.ones(40, bool)
  where[[5, 11]] = False
  measure = _levenshtein if distance == 'edit' else (lambda a, b: int(np.sum(a != b)))
  want = _farthest_first(seqs, scores, where, 12, measure)
  chosen, real = selection.farthest_first(
    jnp.asarray(seqs), jnp.asarray(scores, jnp.float32), jnp.asarray(where), 12, distance=distance
  )
  assert np.all(real)
  np.testing.assert_array_equal(chosen, want)


def test_farthest_first_marks_missing_rows_when_too_few_are_real():
  seqs = jnp.asarray(np.arange(12).reshape(4, 3))
  chosen, real = selection.farthest_first(seqs, jnp.zeros(4), jnp.asarray([True, False, True, False]), 3)
  np.testing.assert_array_equal(real, [True, True, False])
  assert set(np.asarray(chosen)[:2].tolist()) == {0, 2}


def test_starting_pool_thins_the_best_rows():
  rng = np.random.default_rng(2)
  seqs = rng.integers(0, 4, (30, 5))
  values = rng.normal(size=30).astype(np.float32)
  values[0] = -np.inf
  where = np.arange(30) < 25
  starts, start_values, real = selection.starting_pool(
    jnp.asarray(seqs), jnp.asarray(values), jnp.asarray(where), 4, expansion=2
  )
  top = np.argsort(-np.where(where, values, -np.inf), kind='stable')[:8]
  want = top[_farthest_first(seqs[top], values[top], np.ones(8, bool), 4, _levenshtein)]
  np.testing.assert_array_equal(starts, seqs[want])
  np.testing.assert_array_equal(start_values, values[want])
  assert np.all(real)
  with pytest.raises(ValueError, match='distance must be one of'):
    selection.farthest_first(
      jnp.asarray(seqs), jnp.asarray(values), jnp.asarray(where), 2, distance='jaccard'
    )
