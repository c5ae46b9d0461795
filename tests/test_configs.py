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


def test_rejects_a_value_where_a_section_belongs():
  config = ml_collections.ConfigDict({'seed': 0, 'ga': 3})
  with pytest.raises(ValueError, match='config.ga must be a section'):
    configs.validate(config, _reference())


@pytest.mark.parametrize('name', ['smoke', 'f2_marge', 'f2_sft', 'f2_dpo', 'l128_marge'])
def test_every_shipped_llome_config_is_valid(name):
  import importlib

  from experiments import llome

  setup = llome.build_setup(importlib.import_module(f'experiments.configs.{name}').get_config())
  assert (
    setup.loop_cfg.select.num_labels
    <= setup.loop_cfg.inner.num_iterations * setup.loop_cfg.num_seeds * (setup.loop_cfg.inner.rows_per_seed)
  )
  assert 2 * setup.codec.length + 4 <= setup.model_cfg.max_len
