"""All sharding rules: a (data, model) device mesh; data and populations split along `data`; model
parameters split FSDP-style over `data` and, optionally, tensor-parallel over `model`."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'
MODEL_AXIS = 'model'


def make_mesh(num_devices: int | None = None, *, model_parallel: int = 1) -> Mesh:
  """A (data, model) mesh over the first `num_devices` devices (all by default).

  `model_parallel` devices share each data shard's model (tensor parallelism); the rest split the
  batch. Both axes are Auto-typed: shardings given at the jit boundary propagate through the program.
  """
  available = jax.device_count()
  num_devices = available if num_devices is None else num_devices
  if not 1 <= num_devices <= available:
    raise ValueError(f'num_devices must lie in [1, {available}], got {num_devices}.')
  if model_parallel < 1 or num_devices % model_parallel:
    raise ValueError(f'model_parallel={model_parallel} must divide num_devices={num_devices}.')
  return jax.make_mesh(
    (num_devices // model_parallel, model_parallel),
    (DATA_AXIS, MODEL_AXIS),
    axis_types=(AxisType.Auto, AxisType.Auto),
    devices=jax.devices()[:num_devices],
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def leading_axis(mesh: Mesh) -> NamedSharding:
  """Splits an array's first axis across the data axis; other axes stay whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def rows(mesh: Mesh, num_rows: int) -> NamedSharding:
  """Rows (the leading axis) of a `num_rows`-row array, split across the data axis when they divide
  evenly, else replicated: arrays crossing a jit boundary must split evenly, so a population of 999 on 8
  devices stays whole, and `per_shard` still splits the work on it."""
  return leading_axis(mesh) if num_rows % mesh.shape[DATA_AXIS] == 0 else replicated(mesh)


def put(tree, shardings):
  """Places a pytree of host values or arrays on `shardings` (a pytree of them, or one for all), in one
  process or across many.

  With several processes (multi-host), `jax.device_put` refuses to move an array already committed to
  a local device (the output of a jitted call) onto a mesh spanning other processes. Every process
  holds the same host value here (the binaries compute their host state deterministically), so each
  leaf goes through the host and each process takes its own shards of it; typed PRNG keys go as their
  key data, and arrays that are already global (a restored checkpoint) are resharded by a jitted
  identity. In one process this is `jax.device_put`.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def one(x, target):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:  # Already global (a restored state).
      return jax.jit(lambda a: a, out_shardings=target)(x)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      data = jax.device_put(np.asarray(jax.random.key_data(x)), target)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), target)

  return jax.tree.map(one, tree, shardings)


def per_shard(mesh: Mesh, batch_fn):
  """Runs a row-wise batch function on each device's own rows (shard_map over the data axis).

  Row-independent work such as evaluating a population then needs no communication, and a function
  that loops over chunks of its batch (Ehrlich evaluation) loops over local rows only. Any number of
  rows works: they are padded with zero rows to a multiple of the data axis and the padding's outputs
  dropped, so 999 rows on 8 devices give the same values as on 1.

  The shard_map runs without JAX's varying-manual-axes types (`check_vma=False`). `batch_fn` is
  row-wise and calls no collective, so every value inside it is per-device and the types carry no
  information; with them on, every loop inside `batch_fn` whose carry starts from a constant (the
  output buffer of a chunked evaluation) would fail to trace ("carry input and carry output must have
  equal types"), but only where the loop runs, i.e. on meshes whose shards hold more than one chunk.
  This is the one shard_map of the package, so the choice is made here and nowhere else.

  Args:
    mesh: the mesh whose data axis splits the rows.
    batch_fn: maps arrays with a leading row axis to arrays (or a pytree) with the same leading axis,
      each output row depending on its input rows only.

  Returns:
    A function of the same arguments as `batch_fn`, to be called inside or outside jit.
  """
  spec = PartitionSpec(DATA_AXIS)
  mapped = jax.shard_map(batch_fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
  num_shards = mesh.shape[DATA_AXIS]

  def run(*args):
    total = jax.tree.leaves(args)[0].shape[0]
    pad = -total % num_shards
    if pad:
      args = jax.tree.map(lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)), args)
    out = mapped(*args)
    return jax.tree.map(lambda y: y[:total], out) if pad else out

  return run


def chunked_map(fn, xs, *, rows: int, mesh: Mesh | None = None):
  """`fn(i, chunk)` over chunks of `rows` rows of every leaf of `xs` (one `lax.map`), results
  concatenated back to the original number of rows: bounded memory for large row-wise batches.

  The last chunk is padded with zero rows, whose outputs are dropped. With a mesh, each chunk's rows
  are split across the data axis (rows rounded up to a multiple of its size), so every device works
  on its own rows; `fn` must then treat rows independently.
  """
  total = jax.tree.leaves(xs)[0].shape[0]
  rows = max(1, min(rows, total))
  if mesh is not None:
    shards = mesh.shape[DATA_AXIS]
    rows = -(-rows // shards) * shards
  groups = -(-total // rows)

  def group(x):
    x = jnp.pad(x, [(0, groups * rows - total)] + [(0, 0)] * (x.ndim - 1))
    x = x.reshape(groups, rows, *x.shape[1:])
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(None, DATA_AXIS)))
    return x

  out = jax.lax.map(lambda args: fn(*args), (jnp.arange(groups), jax.tree.map(group, xs)))
  return jax.tree.map(lambda y: y.reshape(groups * rows, *y.shape[2:])[:total], out)


def ga_state_shardings(mesh: Mesh, state):
  """GA state: the population split along the data axis (see `rows`); incumbent, counters, archive replicated."""
  shardings = jax.tree.map(lambda _: replicated(mesh), state)
  return shardings.replace(particles_PxL=rows(mesh, state.particles_PxL.shape[0]))


# Parameter rules by name, for GPT-NeoX layouts (model.py): Megatron-style tensor parallelism (the fused
# qkv and the MLP's first layer split by output features, i.e. whole heads; the attention output and the
# MLP's second layer split by input features) and FSDP over the data axis on the other dimension.
# 'fsdp' stands for the data axis when FSDP is on, else no axis. LayerNorms stay replicated.
_PARAM_RULES = (
  (r'query_key_value/kernel$|dense_h_to_4h/kernel$|embed_out/kernel$', ('fsdp', MODEL_AXIS)),
  (r'query_key_value/bias$|dense_h_to_4h/bias$', (MODEL_AXIS,)),
  (r'/dense/kernel$|dense_4h_to_h/kernel$', (MODEL_AXIS, 'fsdp')),
  (r'embed_in/embedding$', ('fsdp', MODEL_AXIS)),
)


def _path_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def param_spec(name: str, shape: tuple[int, ...], mesh: Mesh, *, fsdp: bool = True) -> PartitionSpec:
  """The PartitionSpec of one parameter; an axis that does not divide its dimension is dropped."""
  axes = (None,) * len(shape)
  for pattern, rule in _PARAM_RULES:
    if re.search(pattern, name) and len(rule) == len(shape):
      axes = tuple((DATA_AXIS if fsdp else None) if a == 'fsdp' else a for a in rule)
      break
  axes = tuple(
    a if a is not None and dim % mesh.shape[a] == 0 else None for a, dim in zip(axes, shape, strict=True)
  )
  return PartitionSpec(*axes)


def param_shardings(params, mesh: Mesh, *, fsdp: bool = True):
  """NamedShardings for a parameter tree (arrays or ShapeDtypeStructs), inferred from names and shapes."""
  return jax.tree_util.tree_map_with_path(
    lambda path, x: NamedSharding(mesh, param_spec(_path_name(path), x.shape, mesh, fsdp=fsdp)), params
  )


def opt_state_shardings(optimizer: optax.GradientTransformation, opt_state, params_shardings, mesh: Mesh):
  """Optimizer moments follow their parameters' shardings; counters and other leaves are replicated."""
  return optax.tree_map_params(
    optimizer,
    lambda _, sharding: sharding,
    opt_state,
    params_shardings,
    transform_non_params=lambda _: replicated(mesh),
  )
