"""All sharding rules: one device mesh, data and populations split along its leading `data` axis."""

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all by default), with an Auto-typed data axis."""
  available = jax.device_count()
  num_devices = available if num_devices is None else num_devices
  if not 1 <= num_devices <= available:
    raise ValueError(f'num_devices must lie in [1, {available}], got {num_devices}.')
  return jax.make_mesh(
    (num_devices,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:num_devices]
  )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def leading_axis(mesh: Mesh) -> NamedSharding:
  """Splits an array's first axis across the data axis; other axes stay whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_divisible(mesh: Mesh, size: int, what: str) -> None:
  num_shards = mesh.shape[DATA_AXIS]
  if size % num_shards:
    raise ValueError(f'{what}={size} must be divisible by the {num_shards} devices of the mesh data axis.')


def per_shard(mesh: Mesh, batch_fn):
  """Runs a per-row batch function on each device's own rows (shard_map over the data axis).

  Row-independent work such as evaluating a population then needs no communication, and a function
  that loops over chunks of its batch (Ehrlich evaluation) loops over local rows only.
  """
  spec = PartitionSpec(DATA_AXIS)
  return jax.shard_map(batch_fn, mesh=mesh, in_specs=spec, out_specs=spec)


def ga_state_shardings(mesh: Mesh, state):
  """GA state: the population is split along the data axis; incumbent, counters and archive replicated."""
  shardings = jax.tree.map(lambda _: replicated(mesh), state)
  return shardings.replace(particles_PxL=leading_axis(mesh))
