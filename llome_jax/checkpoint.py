"""All Orbax use: the whole loop state saved as numbered steps under one directory, restored onto any
mesh. A step holds the state pytree (Orbax's PyTree format) and a small JSON metadata dict.
"""

import contextlib
import gc
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jaxtyping import PyTree

_STATE = 'state'
_METADATA = 'metadata'


class _OrbaxInfo(logging.Filter):
  """Orbax logs a dozen INFO lines per save through absl; its warnings and errors still pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's PyTree handler, with each shard of a jax.Array written by its replica 0.

  Orbax's default on CPU and TPU (`use_replica_parallel`) splits a replicated array between its
  replicas, each writing a slice. In one process that is an eager slice per array, replica and shape,
  each compiled: 72 compiles, 6.6 s, of a 40 s smoke run on 8 devices, for a state of a few MB.
  """
  array_handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
  others = [ty for ty in ocp.type_handlers.supported_types() if ty is not jax.Array]
  registry = ocp.type_handlers.create_type_handler_registry(
    (jax.Array, array_handler), *((ty, ocp.type_handlers.get_type_handler(ty)) for ty in others)
  )
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


@contextlib.contextmanager
def _manager(path: str, *, writer: bool = False, keep: int | None = None):
  """A reader creates and deletes nothing (Orbax's `read_only` would do the same, with warnings)."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    create=writer,
    # A save blocks until it is on disk: simpler than async, and a round of the loop dwarfs it.
    enable_async_checkpointing=False,
    # Temporary directories of a crashed save are never steps; a writer removes them.
    cleanup_tmp_directories=writer,
  )
  logger, quiet = logging.getLogger('absl'), _OrbaxInfo()
  logger.addFilter(quiet)
  try:
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler = _state_handler()
    registry.add(_STATE, ocp.args.PyTreeSave, state_handler)
    registry.add(_STATE, ocp.args.PyTreeRestore, state_handler)
    json_handler = ocp.JsonCheckpointHandler()
    registry.add(_METADATA, ocp.args.JsonSave, json_handler)
    registry.add(_METADATA, ocp.args.JsonRestore, json_handler)
    with ocp.CheckpointManager(path, options=options, handler_registry=registry) as manager:
      yield manager
  finally:
    logger.removeFilter(quiet)


def _is_typed_key(leaf) -> bool:
  return isinstance(leaf, jax.Array | jax.ShapeDtypeStruct) and jax.dtypes.issubdtype(
    leaf.dtype, jax.dtypes.prng_key
  )


def _key_data(leaf):
  """Typed PRNG keys are stored as their raw key data; the abstract state says how to rewrap them.

  (Orbax would otherwise restore a saved typed key as a typed key whatever the target asks for.)
  """
  if not _is_typed_key(leaf):
    return leaf
  if isinstance(leaf, jax.Array):
    return jax.random.key_data(leaf)
  data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
  # A partition spec names leading axes only, so it also fits the trailing key-data axes.
  return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=leaf.sharding)


def _stored(leaf):
  """What Orbax stores for a leaf: typed keys as key data (`_key_data`), and nothing (None) for an
  array with no elements, which Orbax refuses to save; restore rebuilds those from the target's shape."""
  if isinstance(leaf, jax.Array | jax.ShapeDtypeStruct | np.ndarray) and 0 in leaf.shape:
    return None
  return _key_data(leaf)


def _rebuilt(leaf, value):
  """A restored leaf in the target's form: key data rewrapped as typed keys, empty arrays recreated."""
  if isinstance(leaf, jax.ShapeDtypeStruct) and 0 in leaf.shape:
    return jax.device_put(np.zeros(leaf.shape, leaf.dtype), leaf.sharding)
  if isinstance(leaf, np.ndarray) and 0 in leaf.shape:
    return np.zeros(leaf.shape, leaf.dtype)
  if _is_typed_key(leaf):
    return jax.random.wrap_key_data(value, dtype=leaf.dtype)
  return value


def save(
  directory: str | os.PathLike,
  step: int,
  state: PyTree,
  *,
  metadata: Mapping[str, Any] | None = None,
  keep: int | None = None,
) -> None:
  """Writes `state` and `metadata` as checkpoint `step`, blocking until it is on disk.

  Orbax writes the step to a temporary directory and renames it into place, so a crash mid-save
  leaves no step that `latest_step` or `restore` would see (the next save removes the debris). Earlier
  steps are never touched, except that with `keep` only the `keep` newest steps survive.

  Args:
    directory: where the numbered step directories live; created if missing.
    step: the step number, greater than every step already in `directory`.
    state: a pytree of jax arrays (any sharding; raw or typed PRNG keys), NumPy arrays and Python
      scalars, e.g. a `flax.struct.dataclass` of the whole loop state.
    metadata: a small JSON-serialisable dict (round, config hash, ...).
    keep: if given, delete all but the `keep` newest steps (this one included) after saving.
  """
  metadata = dict(metadata or {})
  json.dumps(metadata)  # A value JSON cannot hold fails here, before anything is written.
  if step < 0:
    raise ValueError(f'step must be >= 0, got {step}.')
  if keep is not None and keep < 1:
    raise ValueError(f'keep must be None or >= 1, got {keep}.')
  path = os.path.abspath(directory)
  # Checked on the file system before a writer opens: a writer starts removing a crashed save's debris
  # in a background thread that only its save() waits for, so a writer opened just to refuse would race
  # the next writer's removal. (No manager here: managers synchronise processes, and every process of a
  # multi-process run must open the same ones, whatever the directory held when it looked.)
  latest = latest_step(path)
  if latest is not None and step <= latest:  # Orbax would silently skip the save.
    raise ValueError(f'step {step} must be greater than the latest step {latest} in {path}.')
  with _manager(path, writer=True, keep=keep) as manager:
    items = {
      _STATE: ocp.args.PyTreeSave(jax.tree.map(_stored, state)),
      _METADATA: ocp.args.JsonSave(metadata),
    }
    manager.save(step, args=ocp.args.Composite(**items))


def latest_step(directory: str | os.PathLike) -> int | None:
  """The newest complete step in `directory`; None if it has none or does not exist."""
  return max(all_steps(directory), default=None)


def all_steps(directory: str | os.PathLike) -> list[int]:
  """Every complete step in `directory`, ascending; [] if it has none or does not exist. A directory
  scan, like `save`'s check, rather than a manager: it can be called on one process alone."""
  path = os.path.abspath(directory)
  return sorted(ocp.step.checkpoint_steps(path)) if os.path.isdir(path) else []


def read_metadata(directory: str | os.PathLike, *, step: int | None = None) -> dict[str, Any]:
  """The JSON metadata of a step (the latest by default), without reading its state: what a caller
  needs to build the restore target when the state's shapes depend on it."""
  path = os.path.abspath(directory)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'No checkpoint directory at {path}.')
  with _manager(path) as manager:
    steps = sorted(manager.all_steps())
    if not steps or (step is not None and step not in steps):
      raise FileNotFoundError(f'No checkpoint {"" if step is None else f"step {step} "}in {path}.')
    step = steps[-1] if step is None else step
    where = os.path.join(path, str(step))
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()}))
    except Exception as error:
      raise _malformed(where, error) from error
  if not isinstance(restored[_METADATA], dict):
    raise _malformed(where, TypeError(f'its metadata is {restored[_METADATA]!r}, not a dict'))
  return restored[_METADATA]


def _abstract_leaf(leaf, sharding: jax.sharding.Sharding | None):
  if isinstance(leaf, jax.Array | jax.ShapeDtypeStruct):
    sharding = sharding if sharding is not None else getattr(leaf, 'sharding', None)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
  return leaf  # NumPy arrays and Python scalars stay host values.


def abstract_like(state: PyTree, shardings: PyTree | jax.sharding.Sharding | None = None) -> PyTree:
  """The restore target for a state: its jax arrays as `ShapeDtypeStruct`s carrying shardings.

  Args:
    state: a concrete state, or an abstract one such as `jax.eval_shape(init, ...)`.
    shardings: None to keep each array's own sharding; one sharding for every array; or a pytree of
      shardings matching `state` (as the rules in `llome_jax.sharding` give). NumPy arrays and Python
      scalars take no sharding: they are restored as they are.

  Returns:
    A pytree like `state`, jax arrays replaced by `jax.ShapeDtypeStruct`s with `.sharding` set.
  """
  if shardings is None or isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda leaf: _abstract_leaf(leaf, shardings), state)
  return jax.tree.map(_abstract_leaf, state, shardings)


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):  # DictKey, GetAttrKey, SequenceKey.
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _flat(tree: PyTree) -> dict[tuple[str, ...], tuple[Any, Any]]:
  """Leaves by path names, so that a namedtuple or dataclass matches the dict Orbax stores for it."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(_key_name(key) for key in path): (path, leaf) for path, leaf in flat}


def _shape_dtype(leaf) -> tuple[tuple[int, ...], np.dtype]:
  if not hasattr(leaf, 'dtype'):
    leaf = np.asarray(leaf)  # Orbax stores a Python scalar as NumPy would.
  return tuple(leaf.shape), np.dtype(leaf.dtype)


def _check_has_shardings(abstract: PyTree) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
      raise ValueError(
        f'Leaf {jax.tree_util.keystr(path)} of the abstract state has no sharding; build the abstract '
        'state with checkpoint.abstract_like(state, shardings).'
      )


def _check_matches(raw_abstract: PyTree, stored: PyTree, where: str) -> None:
  """Raises on the first leaf whose presence, shape or dtype differs (keys as their key data)."""
  expected, found = _flat(raw_abstract), _flat(stored)
  problem = f'The checkpoint at {where} does not match the abstract state'
  for name, (path, leaf) in expected.items():
    if name not in found:
      raise ValueError(f'{problem}: leaf {jax.tree_util.keystr(path)} is missing from the checkpoint.')
    (want_shape, want_dtype), (have_shape, have_dtype) = _shape_dtype(leaf), _shape_dtype(found[name][1])
    if (want_shape, want_dtype) != (have_shape, have_dtype):
      raise ValueError(
        f'{problem}: leaf {jax.tree_util.keystr(path)} expected shape {want_shape} dtype {want_dtype}, '
        f'found shape {have_shape} dtype {have_dtype}.'
      )
  for name, (path, _) in found.items():
    if name not in expected:
      raise ValueError(f'{problem}: the checkpoint has leaf {jax.tree_util.keystr(path)}, the state has not.')


def _malformed(where: str, error: Exception) -> ValueError:
  return ValueError(f'The checkpoint at {where} is malformed: {type(error).__name__}: {error}')


def _stored_tree(manager: ocp.CheckpointManager, step: int, where: str) -> PyTree:
  """The step's tree of array metadata (shapes and dtypes), read without reading any array."""
  try:
    stored = manager.item_metadata(step)[_STATE]
    if stored is None:
      raise FileNotFoundError(f'the {_STATE!r} item has no readable metadata')
    return stored.tree
  except Exception as error:
    raise _malformed(where, error) from error


class _DropUnretrievedErrors(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return 'exception was never retrieved' not in record.getMessage()


def _read(manager: ocp.CheckpointManager, step: int, raw_abstract: PyTree, where: str) -> dict:
  """Orbax's restore, its failures reported as a malformed checkpoint.

  When one read fails, Orbax abandons the other failed reads, and asyncio would log each with a long
  TensorStore traceback whenever it is collected; they are collected here, unlogged, instead.
  """
  restore_args = ocp.checkpoint_utils.construct_restore_args(raw_abstract)
  items = {
    _STATE: ocp.args.PyTreeRestore(raw_abstract, restore_args=restore_args),
    _METADATA: ocp.args.JsonRestore(),
  }
  logger, quiet = logging.getLogger('asyncio'), _DropUnretrievedErrors()
  logger.addFilter(quiet)
  try:
    try:
      return manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as error:
      malformed = _malformed(where, error)  # Not chained: its traceback holds the abandoned reads.
    gc.collect()
    raise malformed
  finally:
    logger.removeFilter(quiet)


def restore(
  directory: str | os.PathLike, abstract_state: PyTree, *, step: int | None = None
) -> tuple[PyTree, dict[str, Any]]:
  """Reads a step back onto the shapes, dtypes and shardings of `abstract_state`.

  The mesh need not be the one the step was saved from (8 devices restore onto 1 and back). Nothing
  in `directory` is changed, whether the restore succeeds or fails.

  Args:
    directory: the directory `save` wrote to.
    abstract_state: the target, as from `abstract_like`; a concrete state also works (its arrays'
      shardings are used).
    step: the step to read; None for the latest.

  Returns:
    The restored state (the pytree structure of `abstract_state`) and the metadata dict.

  Raises:
    FileNotFoundError: no such directory, no step in it, or no such step.
    ValueError: the step's leaves, shapes or dtypes differ from `abstract_state` (the message names the
      first leaf that differs), or the step is malformed (truncated, garbled or missing files).
  """
  abstract = abstract_like(abstract_state)
  _check_has_shardings(abstract)
  raw_abstract = jax.tree.map(_stored, abstract)
  path = os.path.abspath(directory)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'No checkpoint directory at {path}.')
  with _manager(path) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f'No checkpoint in {path}.')
    step = steps[-1] if step is None else step
    where = os.path.join(path, str(step))
    if step not in steps:
      raise FileNotFoundError(f'No checkpoint at {where}; the steps in {path} are {steps}.')
    _check_matches(raw_abstract, _stored_tree(manager, step, where), where)
    restored = _read(manager, step, raw_abstract, where)
  if not isinstance(restored[_METADATA], dict):
    raise _malformed(where, TypeError(f'its metadata is {restored[_METADATA]!r}, not a dict'))
  state = jax.tree.map(
    _rebuilt,
    abstract,
    restored[_STATE],
  )
  return state, restored[_METADATA]
