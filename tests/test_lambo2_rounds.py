"""LaMBO-2 rounds: the oracle is paid once per new proposal, and a round on 8 devices equals one on 1."""

import jax
import lambo2_problem
import numpy as np
import pytest

from llome_jax import archive as archive_lib
from llome_jax import oracle, sharding
from llome_jax.lambo2 import rounds
from llome_jax.test_functions import ehrlich


def _round_on(num_devices: int):
  problem = lambo2_problem.toy()
  seqs, values = problem['seqs'][:150], problem['values'][:150]
  state = rounds.init(jax.random.key(7), seqs, values, 400, history_capacity=150 + 2 * 24)
  mesh = sharding.make_mesh(num_devices)
  ehrlich_problem = oracle.ehrlich_problem(problem['params'], seqs.shape[1])
  run = rounds.jit_round(mesh, state, problem=ehrlich_problem, cfg=problem['round'])
  before = jax.device_get(state)  # The run donates its input state.
  return before, jax.device_get(run(sharding.put(state, sharding.replicated(mesh))))


@pytest.fixture(scope='module')
def one_device():
  return _round_on(1)


def test_a_round_labels_new_proposals_only_and_pays_one_call_each(one_device):
  before, (after, (metrics, proposals, values, labelled)) = one_device
  problem = lambo2_problem.toy()
  assert metrics['num_starts'] == 24
  held = archive_lib.contains(before.history, proposals)
  assert not np.any(labelled & np.asarray(held))
  _, first_index = np.unique(proposals, axis=0, return_index=True)
  want = np.zeros(24, bool)
  want[first_index] = True
  np.testing.assert_array_equal(labelled, want & ~np.asarray(held))
  assert after.num_evaluations == 400 + labelled.sum() == 400 + metrics['num_labelled']
  assert after.history.count == 150 + labelled.sum()
  np.testing.assert_array_equal(values[labelled], ehrlich.evaluate(problem['params'], proposals[labelled]))
  assert np.all(np.isneginf(values[~labelled]))
  assert after.best_value == max(before.best_value, values.max())
  assert metrics['simple_regret_best'] == 1.0 - max(after.best_value, 0.0)
  assert labelled.sum() > 0 and metrics['mean_edit_hamming'] > 0


def test_a_round_on_8_devices_equals_one_device(one_device):
  """The starts split across 8 devices (24 rows: 3 each); training replicated. Proposals, values, what
  was labelled and the state equal 1 device's exactly; float metrics agree to float32 rounding (XLA
  partitions even the replicated training's batch means differently on 8 devices: the losses differ
  in the last bit, too little to change a sample here)."""
  _, (want_state, (want_metrics, *want)) = one_device
  _, (got_state, (got_metrics, *got)) = _round_on(8)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  jax.tree.map(np.testing.assert_array_equal, got_state.replace(key=0), want_state.replace(key=0))
  exact = {k for k in want_metrics if np.asarray(want_metrics[k]).dtype.kind in 'iub'}
  for key, value in want_metrics.items():
    if key in exact:
      np.testing.assert_array_equal(got_metrics[key], value, err_msg=key)
    else:
      np.testing.assert_allclose(got_metrics[key], value, rtol=1e-6, err_msg=key)
