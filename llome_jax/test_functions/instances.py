"""Named Ehrlich instances loaded from JSON files (holo exports), e.g. the LLOME paper's `f2`.

The paper's instances come from torch's generator (holo seed 50494), so they are shipped, not sampled.
File format: {"instances": {name: {num_states, dim, num_motifs, motif_length, quantization,
epistasis_factor, transition_matrix, motifs, spacings, optimal_solution?, initial_solution?, ...}}}.
"""

import dataclasses
import json
import pathlib

import numpy as np

from llome_jax.test_functions import ehrlich

SHIPPED_PATH = pathlib.Path(__file__).parent / 'data' / 'ehrlich_instances.json'
_REQUIRED = ('num_states', 'dim', 'num_motifs', 'motif_length', 'transition_matrix', 'motifs', 'spacings')


@dataclasses.dataclass(frozen=True)
class Instance:
  """A loaded instance: parameters, length, and the holo solutions stored with it (if any)."""

  name: str
  params: ehrlich.EhrlichParams
  dim: int
  initial_solution: np.ndarray | None
  initial_solution_value: float | None


def _parse(name: str, entry, source: str) -> Instance:
  where = f'instance {name!r} in {source}'
  if not isinstance(entry, dict):
    raise ValueError(f'{where} must be a JSON object, got {type(entry).__name__}.')
  missing = [key for key in _REQUIRED if key not in entry]
  if missing:
    raise ValueError(f'{where} is missing keys {missing}.')
  try:
    params = ehrlich.make_params(
      entry['transition_matrix'],
      entry['motifs'],
      entry['spacings'],
      quantization=entry.get('quantization'),
      epistasis_factor=entry.get('epistasis_factor', 0.0),
    )
  except (ValueError, TypeError) as err:
    raise ValueError(f'{where} is malformed: {err}') from err
  declared = (entry['num_states'], entry['num_motifs'], entry['motif_length'])
  actual = (params.num_states, params.num_motifs, params.motif_length)
  if declared != actual:
    raise ValueError(
      f'{where}: declared (num_states, num_motifs, motif_length)={declared}, arrays give {actual}.'
    )
  dim = entry['dim']
  if not isinstance(dim, int) or dim < params.min_dim:
    raise ValueError(f'{where}: dim={dim!r} cannot hold the motifs (needs an integer >= {params.min_dim}).')
  if 'optimal_solution' in entry:
    expected = np.asarray(ehrlich.optimal_solution(params, dim))
    if np.asarray(entry['optimal_solution']).tolist() != expected.tolist():
      raise ValueError(f'{where}: stored optimal_solution disagrees with the motifs and spacings.')
  initial = entry.get('initial_solution')
  if initial is not None:
    initial = np.asarray(initial, dtype=np.int32)
    if initial.shape != (dim,):
      raise ValueError(f'{where}: initial_solution must have shape ({dim},), got {initial.shape}.')
  return Instance(name, params, dim, initial, entry.get('initial_solution_value'))


def load_instances(path: str | pathlib.Path | None = None) -> dict[str, Instance]:
  """Reads every instance of an instance file (the shipped one by default)."""
  path = pathlib.Path(path) if path is not None else SHIPPED_PATH
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as err:
    raise ValueError(f'instance file {path} is not valid JSON: {err}') from err
  if not isinstance(data, dict) or not isinstance(data.get('instances'), dict):
    raise ValueError(f'instance file {path} must hold an object with an "instances" mapping.')
  return {name: _parse(name, entry, str(path)) for name, entry in data['instances'].items()}


def load_instance(name: str, path: str | pathlib.Path | None = None) -> Instance:
  """One named instance, e.g. `load_instance('f2')`."""
  available = load_instances(path)
  if name not in available:
    raise ValueError(f'unknown Ehrlich instance {name!r}; available: {sorted(available)}.')
  return available[name]
