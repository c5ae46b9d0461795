"""Fixed-capacity archive of the unique sequences an optimiser evaluated, with their values.

The GA fills it; the LLOME loop reads it as round-0 seed data. Static shapes throughout: storage of
`capacity` rows plus a count. Sequences are deduplicated by a 64-bit hash (two 32-bit lanes of
mixed position-keyed terms), so two distinct sequences are merged with probability ~n^2 / 2^65
(below 1e-9 for n = 1e5).
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

_MULTIPLIERS = (0x9E3779B1, 0x85EBCA77)  # Odd constants (golden-ratio and xxHash primes).
_TAG_STORED, _TAG_NEW, _TAG_EMPTY, _TAG_UNREAL = 0, 1, 2, 3


@flax.struct.dataclass
class Archive:
  sequences_CxL: Int[Array, 'C L']
  values_C: Float[Array, ' C']
  hashes_Cx2: Array  # uint32 lanes of each stored row's hash.
  count: Array  # int32 scalar: rows in use.
  num_dropped: Array  # int32 scalar: new unique rows that arrived when the archive was full.

  @property
  def capacity(self) -> int:
    return self.values_C.shape[0]

  def held(self) -> Bool[Array, ' C']:
    """Which rows are in use: the first `count`."""
    return jnp.arange(self.capacity) < self.count

  def held_values(self) -> Float[Array, ' C']:
    """The stored values, -inf outside the rows in use."""
    return jnp.where(self.held(), self.values_C, -jnp.inf)


def init(capacity: int, length: int, dtype=jnp.int32) -> Archive:
  return Archive(
    sequences_CxL=jnp.zeros((capacity, length), dtype),
    values_C=jnp.full((capacity,), -jnp.inf, jnp.float32),
    hashes_Cx2=jnp.zeros((capacity, 2), jnp.uint32),
    count=jnp.zeros((), jnp.int32),
    num_dropped=jnp.zeros((), jnp.int32),
  )


def resized(archive: Archive, capacity: int) -> Archive:
  """The same archive with room for `capacity` rows: what it holds, and what `add` and `contains` do
  with it, are unchanged (a run resumed with another budget resizes its archive to the new budget's).
  Shrinking below the rows held is an error; this runs on the host, between jitted calls."""
  held = int(archive.count)
  if capacity < held:
    raise ValueError(f'an archive holding {held} rows cannot shrink to capacity {capacity}.')
  if capacity <= archive.capacity:
    return jax.tree.map(lambda x: x[:capacity] if x.ndim else x, archive)
  pad = capacity - archive.capacity
  return Archive(
    sequences_CxL=jnp.pad(archive.sequences_CxL, ((0, pad), (0, 0))),
    values_C=jnp.pad(archive.values_C, (0, pad), constant_values=-jnp.inf),
    hashes_Cx2=jnp.pad(archive.hashes_Cx2, ((0, pad), (0, 0))),
    count=archive.count,
    num_dropped=archive.num_dropped,
  )


def _mix32(h):
  """A bijective 32-bit finaliser (lowbias32 constants): every input bit affects every output bit."""
  h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
  h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
  return h ^ (h >> 16)


def sequence_hash(x_BxL: Int[Array, 'B L']) -> Array:
  """Two independent 32-bit hashes of each row, uint32 [B, 2].

  Each lane sums mix(token * m + position * m' + lane) over positions. The non-linear mix matters: a
  plain polynomial hash mod 2^32 is linear in the tokens, and swapping two tokens along a Thue-Morse
  pattern (length >= 128) collides in every such lane.
  """
  length = x_BxL.shape[-1]
  tokens_BxL = x_BxL.astype(jnp.uint32)
  positions_L = jnp.arange(length, dtype=jnp.uint32)
  lanes = []
  for lane, multiplier in enumerate(_MULTIPLIERS):
    keyed_BxL = tokens_BxL * jnp.uint32(multiplier) + positions_L * jnp.uint32(0x27D4EB2F) + jnp.uint32(lane)
    lanes.append(jnp.sum(_mix32(_mix32(keyed_BxL)), axis=-1, dtype=jnp.uint32))
  return jnp.stack(lanes, axis=-1)


def add(
  archive: Archive, x_BxL: Int[Array, 'B L'], values_B: Float[Array, ' B'], where_B: Array | None = None
) -> Archive:
  """Stores the rows of `x_BxL` not seen before (first occurrence in the batch wins), in batch order.

  `where_B` (optional) marks the real rows of a fixed-capacity batch; the others are ignored.
  """
  capacity, batch = archive.capacity, x_BxL.shape[0]
  hashes_Bx2 = sequence_hash(x_BxL)
  stored_C = archive.held()
  real_B = jnp.ones((batch,), bool) if where_B is None else jnp.asarray(where_B, bool)
  new_tags_B = jnp.where(real_B, _TAG_NEW, _TAG_UNREAL)
  tags = jnp.concatenate([jnp.where(stored_C, _TAG_STORED, _TAG_EMPTY), new_tags_B])
  all_hashes_Xx2 = jnp.concatenate([archive.hashes_Cx2, hashes_Bx2])
  # Sort by (hash, tag, index): a new row is unseen iff the entry sorted just before it differs in hash
  # (stored rows sort first, then batch rows in order, then empty slots and unreal rows).
  order_X = jnp.lexsort((jnp.arange(capacity + batch), tags, all_hashes_Xx2[:, 1], all_hashes_Xx2[:, 0]))
  sorted_Xx2 = all_hashes_Xx2[order_X]
  differs_X = jnp.concatenate([jnp.ones(1, bool), jnp.any(sorted_Xx2[1:] != sorted_Xx2[:-1], axis=-1)])
  unseen_X = jnp.zeros(capacity + batch, bool).at[order_X].set(differs_X)
  is_new_B = unseen_X[capacity:] & real_B
  slot_B = archive.count + jnp.cumsum(is_new_B) - 1
  slot_B = jnp.where(is_new_B & (slot_B < capacity), slot_B, capacity)  # `capacity` is dropped.
  num_new = jnp.sum(is_new_B, dtype=jnp.int32)
  num_kept = jnp.minimum(num_new, capacity - archive.count)
  return Archive(
    sequences_CxL=archive.sequences_CxL.at[slot_B].set(
      x_BxL.astype(archive.sequences_CxL.dtype), mode='drop'
    ),
    values_C=archive.values_C.at[slot_B].set(values_B.astype(jnp.float32), mode='drop'),
    hashes_Cx2=archive.hashes_Cx2.at[slot_B].set(hashes_Bx2, mode='drop'),
    count=archive.count + num_kept,
    num_dropped=archive.num_dropped + num_new - num_kept,
  )


def contains(archive: Archive, x_BxL: Int[Array, 'B L']) -> Array:
  """Which rows of `x_BxL` the archive already holds (bool [B]), by the same 64-bit hash as `add`."""
  capacity, batch = archive.capacity, x_BxL.shape[0]
  stored_C = archive.held()
  tags = jnp.concatenate([jnp.where(stored_C, _TAG_STORED, _TAG_EMPTY), jnp.full((batch,), _TAG_NEW)])
  all_hashes_Xx2 = jnp.concatenate([archive.hashes_Cx2, sequence_hash(x_BxL)])
  order_X = jnp.lexsort((tags, all_hashes_Xx2[:, 1], all_hashes_Xx2[:, 0]))
  sorted_Xx2 = all_hashes_Xx2[order_X]
  # Within a run of equal hashes a stored row sorts first, so a row is held iff its run starts stored.
  starts_X = jnp.concatenate([jnp.ones(1, bool), jnp.any(sorted_Xx2[1:] != sorted_Xx2[:-1], axis=-1)])
  position_X = jnp.arange(capacity + batch)
  run_start_X = jax.lax.cummax(jnp.where(starts_X, position_X, 0))
  held_X = tags[order_X][run_start_X] == _TAG_STORED
  return jnp.zeros(capacity + batch, bool).at[order_X].set(held_X)[capacity:]


def contents(archive: Archive) -> tuple[np.ndarray, np.ndarray]:
  """Host copy of the stored rows and values (drops the unused capacity)."""
  count = int(archive.count)
  return np.asarray(archive.sequences_CxL[:count]), np.asarray(archive.values_C[:count])
