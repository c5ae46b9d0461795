"""Tests for config validation at the experiment boundary."""

import ml_collections
import pytest

from llome_jax import configs


def _reference():
  return ml_collections.ConfigDict({'seed': 0, 'ga': {'num_particles': 10, 'mutation_prob': 0.1}})


def test_accepts_the_reference_and_overridden_values():
  config = _reference()
  config.ga.num_particles = 4096
  configs.validate(config, _reference())


@pytest.mark.parametrize(
  'edit, match',
  [
    (lambda c: c.ga.__setattr__('num_partcles', 3), r'config\.ga\.num_partcles'),
    (lambda c: c.__setattr__('sed', 1), r'config\.sed'),
    (lambda c: c.ga.__delattr__('mutation_prob'), r"missing config keys \['config\.ga\.mutation_prob'\]"),
  ],
)
def test_rejects_unknown_missing_and_misshapen_keys(edit, match):
  config = _reference()
  with config.unlocked():
    edit(config)
  with pytest.raises(ValueError, match=match):
    configs.validate(config, _reference())


def _typed_reference():
  from ml_collections import config_dict

  return ml_collections.ConfigDict(
    {
      'seed': 0,
      'num_devices': config_dict.placeholder(int),
      'ga': {'num_particles': 10, 'mutation_prob': 0.1, 'stop_at_optimum': True, 'name': 'f2'},
      'inner': {'temperatures': (0.6, 0.8)},
    }
  )


def _typed(**changes):
  """A config built from scratch (as a user's config file may be), so ml_collections' own type checks
  on assignment never see it."""
  values = _typed_reference().to_dict()
  for dotted, value in changes.items():
    *sections, key = dotted.split('__')
    node = values
    for section in sections:
      node = node[section]
    node[key] = value
  return ml_collections.ConfigDict(values)


def test_accepts_ints_for_floats_lists_for_tuples_and_unset_placeholders():
  configs.validate(
    _typed(ga__mutation_prob=1, inner__temperatures=[1, 1.2], num_devices=None), _typed_reference()
  )
  configs.validate(_typed(num_devices=8), _typed_reference())


@pytest.mark.parametrize(
  'changes, match',
  [
    ({'ga__num_particles': 1.5}, r'config\.ga\.num_particles must be an integer, got float 1\.5'),
    ({'ga__num_particles': True}, r'config\.ga\.num_particles must be an integer, got bool True'),
    ({'ga__num_particles': '4096'}, r"config\.ga\.num_particles must be an integer, got str '4096'"),
    ({'ga__num_particles': None}, r'config\.ga\.num_particles must be an integer, got None'),
    ({'ga__mutation_prob': 'high'}, r'config\.ga\.mutation_prob must be a number'),
    ({'ga__stop_at_optimum': 1}, r'config\.ga\.stop_at_optimum must be True or False, got int 1'),
    ({'ga__name': 2}, r'config\.ga\.name must be a string'),
    ({'inner__temperatures': 0.8}, r'config\.inner\.temperatures must be a tuple, got float'),
    (
      {'inner__temperatures': (0.8, 'hot')},
      r"config\.inner\.temperatures\[1\] must be a number, got str 'hot'",
    ),
    ({'num_devices': 2.0}, r'config\.num_devices must be an integer, got float 2\.0'),
  ],
)
def test_rejects_values_of_the_wrong_type_naming_the_key(changes, match):
  with pytest.raises(ValueError, match=match):
    configs.validate(_typed(**changes), _typed_reference())


def test_section_prefixes_a_library_error_with_the_key_path():
  with pytest.raises(ValueError, match=r'^config\.ga: num_particles must be positive'):
    with configs.section('ga'):
      raise ValueError('num_particles must be positive, got -5.')


def test_rejects_a_value_where_a_section_belongs():
  config = ml_collections.ConfigDict({'seed': 0, 'ga': 3})
  with pytest.raises(ValueError, match='config.ga must be a section'):
    configs.validate(config, _reference())


@pytest.mark.parametrize(
  'name',
  [
    'smoke',
    'f2_marge',
    'f2_sft',
    'f2_dpo',
    'f2_marge_paper',
    'f2_sft_paper',
    'f2_dpo_paper',
    'l128_marge',
    'l128_marge_paper',
  ],
)
def test_every_shipped_llome_config_is_valid(name):
  import importlib

  from experiments import llome

  setup = llome.build_setup(importlib.import_module(f'experiments.configs.{name}').get_config())
  assert (
    setup.loop_cfg.select.num_labels
    <= setup.loop_cfg.inner.num_iterations * setup.loop_cfg.num_seeds * (setup.loop_cfg.inner.rows_per_seed)
  )
  assert 2 * setup.codec.length + 4 <= setup.model_cfg.max_len


def test_every_binary_imports_beside_the_others():
  """absl flags are global to a process: two binaries defining one flag name cannot be imported
  together (pytest imports them into one worker, and a user's notebook may too)."""
  import importlib
  import pkgutil

  import experiments

  names = [m.name for m in pkgutil.iter_modules(experiments.__path__)]
  assert {'llome', 'ga_baseline', 'compare', 'diagnose'} <= set(names)
  for name in names:
    importlib.import_module(f'experiments.{name}')


@pytest.mark.parametrize('name', ['lambo2_f2', 'lambo2_f2_paper', 'lambo2_l128'])
def test_every_shipped_lambo2_config_is_valid(name):
  """Built as the binary builds them; the paper config is the reference's settings, the others depart
  from them only where their docstrings say."""
  import importlib

  from experiments import lambo2

  setup = lambo2.build_setup(importlib.import_module(f'experiments.configs.{name}').get_config())
  assert setup.round_cfg.num_proposals == 2000 and setup.round_cfg.network.channels == 128
  if name == 'lambo2_f2_paper':
    guide = setup.round_cfg.guide
    assert (guide.num_steps, guide.num_mutations, guide.num_updates, guide.step_size) == (64, 16, 2, 0.05)
    assert (guide.b1, guide.b2, guide.acquisition, guide.use_feasibility) == (
      0.09,
      0.0999,
      'reference',
      False,
    )
    assert setup.round_cfg.train.epochs == 16 and setup.round_cfg.distance == 'edit'


@pytest.mark.parametrize('name', ['f2_marge', 'f2_sft', 'f2_dpo', 'l128_marge'])
def test_paper_configs_differ_only_by_the_mutants_and_seed_spread(name):
  """Each f2 and L=128 config's paper version is one config away: the same keys and values, bar the levers."""
  import importlib

  from experiments.configs import llome_defaults

  def flatten(config, prefix=''):
    out = {}
    for key, value in config.items():
      if isinstance(value, ml_collections.ConfigDict):
        out |= flatten(value, f'{prefix}{key}.')
      else:
        out[f'{prefix}{key}'] = value
    return out

  shipped = flatten(importlib.import_module(f'experiments.configs.{name}').get_config())
  paper = flatten(importlib.import_module(f'experiments.configs.{name}_paper').get_config())
  assert shipped.keys() == paper.keys()
  changed = {key for key in shipped if shipped[key] != paper[key]}
  levers = ('outer.mutant_fraction', 'outer.mutant_kind', 'outer.mutant_generations', 'outer.seed_pool')
  l128 = name == 'l128_marge'  # Kept at the settings its runs were measured with.
  assert changed == set(levers) | (set() if l128 else {'outer.duplication_fraction'})
  assert tuple(shipped[key] for key in levers) == (0.5, 'repair', 8 if l128 else 20, 4)
  assert shipped['outer.duplication_fraction'] == (0.0 if l128 else 0.2)
  defaults = flatten(llome_defaults.get_config())
  assert all(paper[key] == defaults[key] for key in changed)  # Labels the policy's generations only.
