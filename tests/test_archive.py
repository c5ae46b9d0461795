"""Tests for llome_jax.archive: deduplication, capacity, hashing, jit, and a dict-based reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax import archive

_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77)
_POSITION_MULTIPLIER = 0x27D4EB2F

# One jitted `add` for the module; its compilations are cached per (capacity, batch, length, dtype).
_add = jax.jit(archive.add)


def _mix32(h: int) -> int:
  h = ((h ^ (h >> 16)) * 0x7FEB352D) % 2**32
  h = ((h ^ (h >> 15)) * 0x846CA68B) % 2**32
  return h ^ (h >> 16)


def _reference_hash(row) -> tuple[int, int]:
  """The documented hash in Python integers: per lane, sum_i mix(mix(x_i m + i m' + lane)) mod 2^32."""
  return tuple(
    sum(_mix32(_mix32((int(x) * m + i * _POSITION_MULTIPLIER + lane) % 2**32)) for i, x in enumerate(row))
    % 2**32
    for lane, m in enumerate(_MULTIPLIERS)
  )


def _thue_morse(length: int) -> np.ndarray:
  return np.array([bin(i).count('1') % 2 for i in range(length)])


class _Reference:
  """Dict-based archive: first occurrence wins, in arrival order; when full, an unseen row counts as
  dropped once per batch it arrives in (the archive keeps no record of the rows it dropped)."""

  def __init__(self, capacity: int):
    self.capacity = capacity
    self.stored: dict[tuple[int, ...], float] = {}
    self.num_dropped = 0

  def add(self, rows, values):
    seen_in_batch = set()
    for row, value in zip(map(tuple, np.asarray(rows).tolist()), np.asarray(values).tolist(), strict=True):
      if row in self.stored or row in seen_in_batch:
        continue
      seen_in_batch.add(row)
      if len(self.stored) < self.capacity:
        self.stored[row] = value
      else:
        self.num_dropped += 1


def _assert_matches(state: archive.Archive, reference: _Reference, length: int):
  rows, values = archive.contents(state)
  expected_rows = np.array(list(reference.stored), dtype=np.int64).reshape(-1, length)
  np.testing.assert_array_equal(rows, expected_rows)
  np.testing.assert_array_equal(values, np.array(list(reference.stored.values()), np.float32))
  assert int(state.count) == len(reference.stored)
  assert int(state.num_dropped) == reference.num_dropped


def test_init_is_empty():
  state = archive.init(5, 3, jnp.int8)
  assert state.capacity == 5
  chex.assert_shape(state.sequences_CxL, (5, 3))
  chex.assert_type(state.sequences_CxL, jnp.int8)
  assert int(state.count) == 0 and int(state.num_dropped) == 0
  rows, values = archive.contents(state)
  assert rows.shape == (0, 3) and values.shape == (0,)


def test_add_stores_each_distinct_row_once_with_first_value():
  rows = jnp.array([[1, 2, 3], [4, 5, 6], [1, 2, 3], [0, 0, 0], [4, 5, 6], [1, 2, 3], [3, 2, 1]])
  values = jnp.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0])
  state = _add(archive.init(10, 3), rows, values)
  stored_rows, stored_values = archive.contents(state)
  np.testing.assert_array_equal(stored_rows, [[1, 2, 3], [4, 5, 6], [0, 0, 0], [3, 2, 1]])
  np.testing.assert_array_equal(stored_values, [10.0, 20.0, 40.0, 70.0])
  assert int(state.count) == len({tuple(r) for r in np.asarray(rows).tolist()})
  assert int(state.num_dropped) == 0
  # Unused capacity is untouched.
  np.testing.assert_array_equal(state.sequences_CxL[4:], 0)
  np.testing.assert_array_equal(state.values_C[4:], -np.inf)


def test_overlapping_second_batch_adds_only_new_rows():
  first = jnp.array([[1, 2, 3], [4, 5, 6], [1, 2, 3], [0, 0, 0], [4, 5, 6], [1, 2, 3], [3, 2, 1]])
  second = jnp.array([[4, 5, 6], [7, 7, 7], [1, 2, 3], [7, 7, 7], [9, 8, 7], [0, 0, 0], [3, 2, 1]])
  state = _add(archive.init(10, 3), first, jnp.arange(7.0))
  state = _add(state, second, 100.0 + jnp.arange(7.0))
  stored_rows, stored_values = archive.contents(state)
  np.testing.assert_array_equal(
    stored_rows, [[1, 2, 3], [4, 5, 6], [0, 0, 0], [3, 2, 1], [7, 7, 7], [9, 8, 7]]
  )
  # Stored values keep their first occurrence; the new rows take their first value in the new batch.
  np.testing.assert_array_equal(stored_values, [0.0, 1.0, 3.0, 6.0, 101.0, 104.0])
  all_rows = np.concatenate([first, second]).tolist()
  assert int(state.count) == len({tuple(r) for r in all_rows})
  assert int(state.num_dropped) == 0


def test_capacity_keeps_first_rows_and_counts_drops():
  capacity = 4
  batch = jnp.array([[0, 1], [2, 3], [0, 1], [4, 5], [6, 7], [8, 9], [4, 5], [10, 11], [8, 9]])
  state = _add(archive.init(capacity, 2), batch, jnp.arange(9.0))
  stored_rows, stored_values = archive.contents(state)
  np.testing.assert_array_equal(stored_rows, [[0, 1], [2, 3], [4, 5], [6, 7]])
  np.testing.assert_array_equal(stored_values, [0.0, 1.0, 3.0, 4.0])
  assert int(state.count) == capacity
  assert int(state.num_dropped) == 2  # [8, 9] and [10, 11]; the repeat of [8, 9] is not new.
  snapshot = jax.tree.map(np.asarray, state)
  # A later batch of stored rows and unseen rows: stored rows stay as they were, the unseen are dropped.
  later = jnp.array([[6, 7], [20, 21], [0, 1], [22, 23], [20, 21], [24, 25], [2, 3], [6, 7], [4, 5]])
  state = _add(state, later, 50.0 + jnp.arange(9.0))
  np.testing.assert_array_equal(state.sequences_CxL, snapshot.sequences_CxL)
  np.testing.assert_array_equal(state.values_C, snapshot.values_C)
  np.testing.assert_array_equal(state.hashes_Cx2, snapshot.hashes_Cx2)
  assert int(state.count) == capacity
  assert int(state.num_dropped) == 2 + 3
  # A batch of stored rows only drops nothing.
  state = _add(state, jnp.tile(batch[:2], (5, 1))[:9], jnp.zeros(9))
  assert int(state.num_dropped) == 5
  np.testing.assert_array_equal(state.values_C, snapshot.values_C)


def test_partially_full_archive_keeps_the_first_rows_that_fit():
  # Batches of 9 rows, like the test above, to reuse its compilation.
  first = jnp.array([[1, 1], [2, 2], [1, 1], [2, 2], [1, 1], [1, 1], [2, 2], [2, 2], [1, 1]])
  state = _add(archive.init(4, 2), first, 1.0 + jnp.arange(9.0))
  batch = jnp.array([[3, 3], [1, 1], [4, 4], [5, 5], [3, 3], [6, 6], [2, 2], [5, 5], [4, 4]])
  state = _add(state, batch, 10.0 + jnp.arange(9.0))
  stored_rows, stored_values = archive.contents(state)
  np.testing.assert_array_equal(stored_rows, [[1, 1], [2, 2], [3, 3], [4, 4]])
  np.testing.assert_array_equal(stored_values, [1.0, 2.0, 10.0, 12.0])
  assert int(state.num_dropped) == 2  # [5, 5] and [6, 6].


def test_contents_returns_exactly_the_stored_rows_and_values():
  # The shapes of the int8 case of the randomized test below, to reuse its compilation.
  rows = np.zeros((24, 4), np.int32)
  rows[:3] = [[1, 2, 3, 4], [4, 3, 2, 1], [1, 2, 3, 4]]  # Rows 3.. repeat [0, 0, 0, 0].
  values = np.arange(24, dtype=np.float32) - 0.5
  state = _add(archive.init(200, 4, jnp.int8), jnp.asarray(rows), jnp.asarray(values))
  stored_rows, stored_values = archive.contents(state)
  assert isinstance(stored_rows, np.ndarray) and isinstance(stored_values, np.ndarray)
  assert stored_rows.dtype == np.int8 and stored_values.dtype == np.float32
  np.testing.assert_array_equal(stored_rows, np.asarray(state.sequences_CxL)[:3])
  np.testing.assert_array_equal(stored_rows, [[1, 2, 3, 4], [4, 3, 2, 1], [0, 0, 0, 0]])
  np.testing.assert_array_equal(stored_values, [-0.5, 0.5, 2.5])


def test_sequence_hash_matches_python_reference():
  rows = np.random.default_rng(0).integers(-3, 25, size=(20, 37))
  rows[0] = 0
  hashes = np.asarray(archive.sequence_hash(jnp.asarray(rows, jnp.int32)))
  chex.assert_shape(hashes, (20, 2))
  assert hashes.dtype == np.uint32
  np.testing.assert_array_equal(hashes, np.array([_reference_hash(row) for row in rows], np.uint32))


def test_sequence_hash_separates_single_position_changes():
  rng = np.random.default_rng(1)
  num, length, vocab = 2000, 64, 20
  rows = rng.integers(0, vocab, size=(num, length))
  mutated = rows.copy()
  positions = rng.integers(0, length, size=num)
  mutated[np.arange(num), positions] = (
    rows[np.arange(num), positions] + rng.integers(1, vocab, size=num)
  ) % vocab
  assert np.all((mutated != rows).sum(axis=1) == 1)
  hash_rows = np.asarray(archive.sequence_hash(jnp.asarray(rows)))
  hash_mutated = np.asarray(archive.sequence_hash(jnp.asarray(mutated)))
  assert np.all(hash_rows != hash_mutated)
  # And all 4000 distinct rows get distinct 64-bit hashes.
  all_hashes = np.concatenate([hash_rows, hash_mutated])
  assert len({tuple(h) for h in all_hashes.tolist()}) == 2 * num


def test_sequence_hash_equal_rows_and_dtypes_agree():
  rng = np.random.default_rng(2)
  rows = rng.integers(-128, 128, size=(24, 33))
  rows[1] = rows[0]
  hash_int8 = np.asarray(archive.sequence_hash(jnp.asarray(rows, jnp.int8)))
  hash_int32 = np.asarray(archive.sequence_hash(jnp.asarray(rows, jnp.int32)))
  np.testing.assert_array_equal(hash_int8, hash_int32)
  np.testing.assert_array_equal(hash_int8[0], hash_int8[1])
  # An int8 archive dedups int8 and int32 batches of the same rows against each other.
  rows = rows[:, :4]
  state = _add(archive.init(200, 4, jnp.int8), jnp.asarray(rows, jnp.int8), jnp.zeros(24))
  state = _add(state, jnp.asarray(rows, jnp.int32), jnp.ones(24))
  assert int(state.count) == len({tuple(r) for r in rows.tolist()}) == 23  # rows[1] == rows[0]
  np.testing.assert_array_equal(archive.contents(state)[1], 0.0)


def test_row_whose_hash_sits_in_an_empty_slot_is_stored_once():
  """Empty slots keep stale hashes; a row with an empty slot's hash must still count as unseen."""
  row = np.arange(16) % 5
  other = np.zeros(16, np.int64)
  state = archive.init(4, 16)
  state = state.replace(hashes_Cx2=jnp.tile(archive.sequence_hash(jnp.asarray(row[None])), (4, 1)))
  state = _add(state, jnp.asarray(np.stack([row, other, row])), jnp.array([1.0, 2.0, 3.0]))
  rows, values = archive.contents(state)
  np.testing.assert_array_equal(rows, np.stack([row, other]))
  np.testing.assert_array_equal(values, [1.0, 2.0])
  state = _add(state, jnp.asarray(np.stack([other, row, row])), jnp.array([4.0, 5.0, 6.0]))
  assert int(state.count) == 2 and int(state.num_dropped) == 0


def test_structured_distinct_rows_are_not_merged():
  pattern = _thue_morse(128)
  rows = np.stack([np.where(pattern == 1, 3, 7), np.where(pattern == 1, 7, 3), np.zeros(128, np.int64)])
  state = _add(archive.init(4, 128), jnp.asarray(rows), jnp.array([1.0, 2.0, 3.0]))
  assert int(state.count) == 3


def test_jit_equals_eager_and_traces_once():
  rng = np.random.default_rng(3)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def add_once(state, rows, values):
    return archive.add(state, rows, values)

  eager = jitted = archive.init(10, 4)
  for step in range(4):
    rows = jnp.asarray(rng.integers(0, 2, size=(8, 4)), jnp.int32)
    values = jnp.asarray(rng.normal(size=8), jnp.float32) + step
    eager = archive.add(eager, rows, values)
    jitted = add_once(jitted, rows, values)
    chex.assert_trees_all_equal(eager, jitted)
  assert int(eager.count) == 10 and int(eager.num_dropped) > 0  # 32 draws of 16 binary rows fill it.


@pytest.mark.parametrize('capacity, dtype', [(25, jnp.int32), (200, jnp.int8)])
def test_random_batches_match_dict_reference(capacity, dtype):
  rng = np.random.default_rng(capacity)
  length, vocab, batch = 4, 3, 24  # 81 possible rows: many duplicates within and across batches.
  state = archive.init(capacity, length, dtype)
  reference = _Reference(capacity)
  for _ in range(8):
    rows = rng.integers(0, vocab, size=(batch, length))
    values = rng.normal(size=batch).astype(np.float32)
    state = _add(state, jnp.asarray(rows, jnp.int32), jnp.asarray(values))
    reference.add(rows, values)
    _assert_matches(state, reference, length)
  # The run exercises what it should: the small archive fills and drops, the large one never does.
  if capacity < 81:
    assert len(reference.stored) == capacity and reference.num_dropped > capacity
  else:
    assert len(reference.stored) > 50 and reference.num_dropped == 0


def test_contains_matches_dict_reference_including_stale_empty_slots():
  rng = np.random.default_rng(7)
  length, vocab = 4, 3
  state = archive.init(30, length)
  stored = set()
  contains = jax.jit(archive.contains)
  for _ in range(4):
    rows = rng.integers(0, vocab, size=(16, length))
    # Before adding: held iff stored earlier; duplicates within the batch do not count as held.
    expected = [tuple(r) in stored for r in rows.tolist()]
    np.testing.assert_array_equal(np.asarray(contains(state, jnp.asarray(rows, jnp.int32))), expected)
    state = _add(state, jnp.asarray(rows, jnp.int32), jnp.zeros(16))
    stored |= {tuple(r) for r in archive.contents(state)[0].tolist()}
  assert 0 < sum(expected) < 16
  # An empty slot's stale hash is not a stored row.
  row = np.arange(length) % vocab
  stale = archive.init(4, length).replace(
    hashes_Cx2=jnp.tile(archive.sequence_hash(jnp.asarray(row[None])), (4, 1))
  )
  assert not bool(archive.contains(stale, jnp.asarray(row[None], jnp.int32))[0])


def test_add_ignores_unreal_rows_even_when_they_come_first():
  rows = jnp.asarray([[1, 2, 3], [1, 2, 3], [4, 5, 6], [0, 0, 0]], jnp.int32)
  state = _add(
    archive.init(8, 3), rows, jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([False, True, True, False])
  )
  stored, values = archive.contents(state)
  np.testing.assert_array_equal(stored, [[1, 2, 3], [4, 5, 6]])
  np.testing.assert_array_equal(values, [2.0, 3.0])
  assert int(state.num_dropped) == 0


def test_resized_archive_holds_and_adds_as_one_built_larger():
  rng = np.random.default_rng(5)
  batches = [jnp.asarray(rng.integers(0, 3, (40, 6)), jnp.int32) for _ in range(3)]
  values = [jnp.asarray(rng.normal(size=40), jnp.float32) for _ in range(3)]
  small = archive.add(archive.init(64, 6), batches[0], values[0])
  large = archive.add(archive.init(200, 6), batches[0], values[0])
  grown = archive.resized(small, 200)
  chex.assert_trees_all_equal(grown, large)
  for x, v in zip(batches[1:], values[1:], strict=True):
    grown, large = archive.add(grown, x, v), archive.add(large, x, v)
    chex.assert_trees_all_equal(grown, large)
    np.testing.assert_array_equal(archive.contains(grown, x), archive.contains(large, x))
  # Shrinking keeps every held row (the first batch holds fewer than 40 distinct rows of 3 tokens).
  first = archive.add(archive.init(200, 6), batches[0], values[0])
  shrunk = archive.resized(first, 40)
  assert shrunk.capacity == 40
  chex.assert_trees_all_equal(archive.resized(shrunk, 200), first)
  with pytest.raises(ValueError, match='cannot shrink'):
    archive.resized(small, int(small.count) - 1)
