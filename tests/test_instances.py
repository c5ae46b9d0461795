"""Tests for instances: the shipped paper instances load, score as holo stored, and bad files fail loudly."""

import copy
import json
import re

import jax
import numpy as np
import pytest

from llome_jax.test_functions import ehrlich, instances

SHIPPED_NAMES = {
  'f2',
  'ehr_v32_l32_c4_k4_q2',
  'ehr_v32_l128_c4_k4_q4',
  'ehr_v32_l128_c4_k4_q2',
  'ehr_v32_l128_c8_k8_q8',
  'ehr_v8_l128_c8_k8_q8',
}

evaluate_jit = jax.jit(ehrlich.evaluate)


@pytest.fixture(scope='module')
def shipped():
  return instances.load_instances()


@pytest.fixture(scope='module')
def shipped_json():
  with open(instances.SHIPPED_PATH) as f:
    return json.load(f)


def test_shipped_names(shipped):
  assert set(shipped) == SHIPPED_NAMES
  for name, instance in shipped.items():
    assert instance.name == name


def test_f2_is_the_paper_instance(shipped):
  f2 = shipped['f2']
  params = f2.params
  assert (params.num_states, f2.dim, params.num_motifs, params.motif_length, params.quantization) == (
    32,
    32,
    4,
    4,
    4,
  )
  assert params.epistasis_factor == 0.0


@pytest.mark.parametrize('name', sorted(SHIPPED_NAMES - {'f2'}))
def test_variant_parameters_match_their_names(shipped, name):
  num_states, dim, num_motifs, motif_length, quantization = map(
    int, re.fullmatch(r'ehr_v(\d+)_l(\d+)_c(\d+)_k(\d+)_q(\d+)', name).groups()
  )
  instance = shipped[name]
  params = instance.params
  assert (params.num_states, instance.dim, params.num_motifs, params.motif_length, params.quantization) == (
    num_states,
    dim,
    num_motifs,
    motif_length,
    quantization,
  )


@pytest.mark.parametrize('name', sorted(SHIPPED_NAMES))
def test_shipped_solutions_score_as_stored(shipped, shipped_json, name):
  instance = shipped[name]
  entry = shipped_json['instances'][name]
  assert instance.initial_solution.shape == (instance.dim,)
  assert instance.initial_solution_value is not None
  optimum_L = np.asarray(ehrlich.optimal_solution(instance.params, instance.dim))
  np.testing.assert_array_equal(optimum_L, np.asarray(entry['optimal_solution']))
  # One call for both rows (same length): holo's initial value exactly, and the optimum at 1.0.
  values_2 = np.asarray(evaluate_jit(instance.params, np.stack([instance.initial_solution, optimum_L])))
  assert values_2[0] == np.float32(instance.initial_solution_value)
  assert values_2[1] == 1.0


def test_load_instance_by_name(shipped):
  f2 = instances.load_instance('f2')
  np.testing.assert_array_equal(
    np.asarray(f2.params.transition_matrix), shipped['f2'].params.transition_matrix
  )
  assert f2.params.motifs == shipped['f2'].params.motifs
  assert f2.params.spacings == shipped['f2'].params.spacings
  np.testing.assert_array_equal(f2.initial_solution, shipped['f2'].initial_solution)


def test_unknown_name_lists_the_available_ones():
  with pytest.raises(ValueError, match=r"unknown Ehrlich instance 'nope'.*'ehr_v8_l128_c8_k8_q8'.*'f2'"):
    instances.load_instance('nope')


# --- Malformed files ---------------------------------------------------------------------------------


def _small_entry(shipped_json) -> dict:
  """A copy of the shipped v=8 instance entry (the smallest matrix), to break one field at a time."""
  return copy.deepcopy(shipped_json['instances']['ehr_v8_l128_c8_k8_q8'])


def _write(tmp_path, payload) -> str:
  path = tmp_path / 'instances.json'
  path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
  return str(path)


def test_a_well_formed_custom_file_loads(tmp_path, shipped_json):
  path = _write(tmp_path, {'instances': {'mine': _small_entry(shipped_json)}})
  assert set(instances.load_instances(path)) == {'mine'}
  assert instances.load_instance('mine', path).dim == 128


@pytest.mark.parametrize(
  'payload, match',
  [
    ('{"instances": {', 'is not valid JSON'),
    ({}, 'must hold an object with an "instances" mapping'),
    ([], 'must hold an object with an "instances" mapping'),
    ({'instances': []}, 'must hold an object with an "instances" mapping'),
    ({'instances': {'bad': 3}}, "instance 'bad' .* must be a JSON object"),
  ],
  ids=['invalid_json', 'no_instances', 'top_level_list', 'instances_list', 'entry_not_object'],
)
def test_malformed_file_structure_raises(tmp_path, payload, match):
  with pytest.raises(ValueError, match=match):
    instances.load_instances(_write(tmp_path, payload))


def _drop_motifs(entry):
  del entry['motifs']


def _wrong_optimum(entry):
  entry['optimal_solution'][0] = (entry['optimal_solution'][0] + 1) % entry['num_states']


def _unnormalised_row(entry):
  entry['transition_matrix'][2] = [2 * p for p in entry['transition_matrix'][2]]


def _permutation_matrix(entry):
  num_states = entry['num_states']
  entry['transition_matrix'] = np.roll(np.eye(num_states), 1, axis=1).tolist()


def _non_square_matrix(entry):
  entry['transition_matrix'] = entry['transition_matrix'][:-1]


def _wrong_num_states(entry):
  entry['num_states'] = 9


def _dim_too_small(entry):
  entry['dim'] = 20


def _short_initial_solution(entry):
  entry['initial_solution'] = entry['initial_solution'][:-1]


def _spacing_zero(entry):
  entry['spacings'][0][0] = 0


@pytest.mark.parametrize(
  'corrupt, match',
  [
    (_drop_motifs, r"is missing keys \['motifs'\]"),
    (_wrong_optimum, 'stored optimal_solution disagrees'),
    (_unnormalised_row, 'is malformed: transition_matrix is not row-stochastic: row 2'),
    (_permutation_matrix, 'is malformed: transition_matrix is not ergodic'),
    (_non_square_matrix, 'is malformed: transition_matrix must be square'),
    (_wrong_num_states, r'declared \(num_states, num_motifs, motif_length\)=\(9, 8, 8\)'),
    (_dim_too_small, 'dim=20 cannot hold the motifs'),
    (_short_initial_solution, r'initial_solution must have shape \(128,\)'),
    (_spacing_zero, 'is malformed: spacings must be >= 1'),
  ],
  ids=lambda f: f.__name__.lstrip('_') if callable(f) else None,
)
def test_malformed_instance_raises(tmp_path, shipped_json, corrupt, match):
  entry = _small_entry(shipped_json)
  corrupt(entry)
  path = _write(tmp_path, {'instances': {'broken': entry}})
  with pytest.raises(ValueError, match=match) as err:
    instances.load_instances(path)
  assert "instance 'broken'" in str(err.value)
