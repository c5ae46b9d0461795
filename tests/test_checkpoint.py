"""Checkpoints: exact round trips, restores across meshes, step bookkeeping and clear failures."""

import os
import pathlib
import re

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llome_jax import checkpoint, sharding


@flax.struct.dataclass
class LoopState:
  params: dict
  opt_state: optax.OptState
  key: jax.Array  # Raw uint32 key.
  typed_key: jax.Array  # jax.random.key.
  particle_keys_P: jax.Array  # Typed keys, split along the mesh.
  round: jax.Array
  mask_P: jax.Array
  host_counts: np.ndarray
  num_calls: int


def _loop_state(seed: int = 0) -> LoopState:
  key_w, key_b = jax.random.split(jax.random.PRNGKey(seed))
  params = {
    'dense': {'w_DxD': jax.random.normal(key_w, (8, 4)), 'b_D': jnp.arange(4, dtype=jnp.float32)},
    'embed_VxD': jax.random.normal(key_b, (16, 4)).astype(jnp.bfloat16),
  }
  opt_state = optax.adamw(1e-3).init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = optax.adamw(1e-3).update(grads, opt_state, params)  # count = 1, moments nonzero.
  return LoopState(
    params=params,
    opt_state=opt_state,
    key=jax.random.PRNGKey(seed + 1),
    typed_key=jax.random.key(seed + 2),
    particle_keys_P=jax.random.split(jax.random.key(seed + 4), 8),
    round=jnp.int32(seed + 3),
    mask_P=jnp.arange(8) % 3 == 0,
    host_counts=np.arange(5, dtype=np.int64) * (seed + 1),
    num_calls=100 + seed,
  )


def _is_typed_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _comparable(state):
  """Typed keys as their key data, which chex can compare."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, state)


def _kinds(state):
  return jax.tree.map(lambda x: (type(x), np.shape(x), getattr(x, 'dtype', None)), _comparable(state))


def _on_mesh(state: LoopState, mesh) -> LoopState:
  """Arrays whose leading axis fits the mesh are split along it; the rest are replicated."""
  return jax.tree.map(
    lambda x: jax.device_put(x, _sharding_for(x, mesh)) if isinstance(x, jax.Array) else x, state
  )


def _sharding_for(x, mesh):
  split = x.ndim and x.shape[0] % mesh.size == 0 and x.shape[0] > 1
  return sharding.leading_axis(mesh) if split else sharding.replicated(mesh)


def test_round_trip_is_exact(tmp_path):
  state = _loop_state()
  checkpoint.save(tmp_path, 3, state, metadata={'round': 3, 'config_hash': 'abc123'})
  restored, metadata = checkpoint.restore(tmp_path, checkpoint.abstract_like(state))

  assert metadata == {'round': 3, 'config_hash': 'abc123'}
  assert isinstance(restored, LoopState)
  chex.assert_trees_all_equal(_comparable(restored), _comparable(state))
  chex.assert_equal(_kinds(restored), _kinds(state))
  assert restored.params['embed_VxD'].dtype == jnp.bfloat16
  assert restored.key.dtype == jnp.uint32
  assert restored.typed_key.dtype == state.typed_key.dtype
  assert isinstance(restored.host_counts, np.ndarray) and isinstance(restored.num_calls, int)
  assert int(restored.opt_state[0].count) == 1


def test_empty_arrays_round_trip(tmp_path):
  """Orbax refuses to save arrays with no elements (a GA archive of capacity 0 holds [0, L] sequences):
  they are left out of the step and rebuilt from the target's shape, dtype and sharding."""
  mesh = sharding.make_mesh(8)
  state = {
    'archive_CxL': jnp.zeros((0, 12), jnp.int8),
    'values_C': np.zeros((0,), np.float32),
    'count': jnp.int32(3),
  }
  checkpoint.save(tmp_path, 1, state)
  target = checkpoint.abstract_like(state, sharding.replicated(mesh))
  restored, _ = checkpoint.restore(tmp_path, target)
  assert restored['archive_CxL'].shape == (0, 12) and restored['archive_CxL'].dtype == jnp.int8
  assert restored['archive_CxL'].sharding == sharding.replicated(mesh)
  assert restored['values_C'].shape == (0,) and int(restored['count']) == 3


@pytest.mark.parametrize('saved_devices, restored_devices', [(8, 1), (1, 8)])
def test_restore_moves_to_another_mesh(tmp_path, saved_devices, restored_devices):
  state = _on_mesh(_loop_state(), sharding.make_mesh(saved_devices))
  assert state.params['dense']['w_DxD'].sharding.num_devices == saved_devices
  checkpoint.save(tmp_path, 0, state)

  mesh = sharding.make_mesh(restored_devices)
  shardings = jax.tree.map(lambda x: _sharding_for(x, mesh) if isinstance(x, jax.Array) else None, state)
  restored, _ = checkpoint.restore(tmp_path, checkpoint.abstract_like(state, shardings))

  chex.assert_trees_all_equal(_comparable(restored), _comparable(state))
  jax.tree.map(lambda x, s: s is None or chex.assert_equal(x.sharding, s), restored, shardings)
  assert restored.params['dense']['w_DxD'].sharding.spec == sharding.leading_axis(mesh).spec
  assert restored.particle_keys_P.sharding.num_devices == restored_devices


def _snapshot(directory: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob('*') if p.is_file()}


def test_steps_latest_older_and_keep(tmp_path):
  assert checkpoint.latest_step(tmp_path / 'absent') is None
  states = {step: _loop_state(seed=step) for step in (1, 2, 3)}
  for step, state in states.items():
    checkpoint.save(tmp_path, step, state, metadata={'round': step})
  debris = tmp_path / '9.orbax-checkpoint-tmp-1700000000'  # As a save that crashed would leave it.
  debris.mkdir()
  assert checkpoint.latest_step(tmp_path) == 3

  restored, metadata = checkpoint.restore(tmp_path, states[1], step=1)
  assert metadata == {'round': 1}
  chex.assert_trees_all_equal(_comparable(restored), _comparable(states[1]))
  with pytest.raises(ValueError, match='greater than the latest step 3'):
    checkpoint.save(tmp_path, 2, states[2])
  assert debris.is_dir()  # A refused save touches nothing: no writer was opened to clean up.

  checkpoint.save(tmp_path, 4, states[3], keep=2)
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ['3', '4']
  assert not debris.exists()
  assert checkpoint.latest_step(tmp_path) == 4
  restored, metadata = checkpoint.restore(tmp_path, states[3], step=3)
  chex.assert_trees_all_equal(_comparable(restored), _comparable(states[3]))
  with pytest.raises(FileNotFoundError, match=r'steps .* are \[3, 4\]'):
    checkpoint.restore(tmp_path, states[1], step=1)


def test_missing_directory_or_step_raises_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match='absent'):
    checkpoint.restore(tmp_path / 'absent', _loop_state())
  with pytest.raises(FileNotFoundError, match='No checkpoint in'):
    checkpoint.restore(tmp_path, _loop_state())
  assert not (tmp_path / 'absent').exists()


def test_mismatched_abstract_state_names_the_leaf(tmp_path):
  state = _loop_state()
  checkpoint.save(tmp_path, 0, state)
  before = _snapshot(tmp_path)

  wide = state.replace(mask_P=jnp.zeros(16, bool))
  with pytest.raises(ValueError, match=r'mask_P expected shape \(16,\) dtype bool, found shape \(8,\)'):
    checkpoint.restore(tmp_path, wide)
  half = state.replace(params={**state.params, 'embed_VxD': state.params['embed_VxD'].astype(jnp.float16)})
  with pytest.raises(ValueError, match=r"\['embed_VxD'\] expected shape \(16, 4\) dtype float16"):
    checkpoint.restore(tmp_path, half)
  extra = state.replace(params={**state.params, 'head_D': jnp.zeros(4)})
  with pytest.raises(ValueError, match=r"\['head_D'\] is missing"):
    checkpoint.restore(tmp_path, extra)
  with pytest.raises(ValueError, match='has no sharding'):
    checkpoint.restore(tmp_path, jax.eval_shape(lambda: state))
  assert _snapshot(tmp_path) == before


def _truncate_array_data(step_dir: pathlib.Path) -> None:
  data_files = [p for p in (step_dir / 'state').rglob('*') if p.is_file() and p.parent.name == 'd']
  assert data_files
  for p in data_files:
    p.write_bytes(p.read_bytes()[:7])


def _delete_tree_metadata(step_dir: pathlib.Path) -> None:
  os.remove(step_dir / 'state' / '_METADATA')


# A failed Orbax read can leave TensorStore callbacks aimed at a closed event loop; they are harmless.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('corrupt', [_truncate_array_data, _delete_tree_metadata])
def test_corrupt_checkpoint_is_reported_and_others_still_restore(tmp_path, corrupt):
  states = {step: _loop_state(seed=step) for step in (1, 2)}
  for step, state in states.items():
    checkpoint.save(tmp_path, step, state)
  corrupt(tmp_path / '2')
  before = _snapshot(tmp_path)

  with pytest.raises(ValueError, match=re.escape(f'checkpoint at {tmp_path / "2"} is malformed')):
    checkpoint.restore(tmp_path, states[2])
  assert _snapshot(tmp_path) == before
  restored, _ = checkpoint.restore(tmp_path, states[1], step=1)
  chex.assert_trees_all_equal(_comparable(restored), _comparable(states[1]))


def test_read_metadata_without_the_state(tmp_path):
  checkpoint.save(tmp_path, 1, _loop_state(), metadata={'round': 1, 'history_capacity': 40})
  checkpoint.save(tmp_path, 2, _loop_state(), metadata={'round': 2, 'history_capacity': 64})
  assert checkpoint.read_metadata(tmp_path) == {'round': 2, 'history_capacity': 64}
  assert checkpoint.read_metadata(tmp_path, step=1) == {'round': 1, 'history_capacity': 40}
  assert checkpoint.all_steps(tmp_path) == [1, 2] and checkpoint.all_steps(tmp_path / 'none') == []
  with pytest.raises(FileNotFoundError, match='No checkpoint step 3'):
    checkpoint.read_metadata(tmp_path, step=3)
  with pytest.raises(FileNotFoundError, match='No checkpoint directory'):
    checkpoint.read_metadata(tmp_path / 'none')
