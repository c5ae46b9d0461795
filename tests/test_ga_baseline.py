"""End-to-end tests of the GA experiment binary's `run_experiment`."""

import json
import os
import shutil

import numpy as np
import pytest

from experiments import ga_baseline
from experiments.configs import ga_ehrlich
from llome_jax import metrics_io
from llome_jax.test_functions import ehrlich, instances


def _small_config(**ga_overrides):
  config = ga_ehrlich.get_config()
  config.ga.num_particles = 200
  config.ga.num_steps = 4
  config.log_every = 3  # Chunks of 3 + 1 generations.
  config.ga.update(ga_overrides)
  return config


def test_writes_every_output(tmp_path):
  summary = ga_baseline.run_experiment(_small_config(), str(tmp_path))
  rows = metrics_io.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [row['step'] for row in rows] == [0, 1, 2, 3]
  assert [row['num_evaluations'] for row in rows] == [200, 400, 600, 800]
  assert {'simple_regret_best', 'simple_regret_last', 'cumulative_regret', 'frac_particles_feasible'} <= set(
    rows[0]
  )
  regrets = [row['simple_regret_best'] for row in rows]
  assert regrets == sorted(regrets, reverse=True)  # Best-so-far never gets worse.
  np.testing.assert_allclose(rows[-1]['cumulative_regret'], sum(regrets), rtol=1e-6)
  assert json.loads((tmp_path / 'config.json').read_text())['ga']['num_particles'] == 200
  best = json.loads((tmp_path / 'best.json').read_text())
  assert best == summary
  f2 = instances.load_instance('f2')
  assert float(ehrlich.evaluate(f2.params, np.asarray(best['best_solution']))) == best['best_value']
  assert best['simple_regret_best'] == pytest.approx(1 - best['best_value'])
  seed = np.load(tmp_path / 'seed_data.npz')
  assert len(seed['values']) == best['archive_size'] > 1
  np.testing.assert_array_equal(np.asarray(ehrlich.evaluate(f2.params, seed['sequences'])), seed['values'])
  assert (tmp_path / 'regret.png').stat().st_size > 1000


def test_one_device_run_equals_eight_device_run(tmp_path):
  results = []
  for num_devices in (1, 8):
    config = _small_config(num_particles=999)  # Not a multiple of 8: the population stays whole.
    config.num_devices = num_devices
    ga_baseline.run_experiment(config, str(tmp_path / str(num_devices)))
    results.append((tmp_path / str(num_devices) / 'metrics.jsonl').read_text())
  assert results[0] == results[1]


def test_budget_and_sampled_instance(tmp_path):
  config = _small_config(max_evaluations=500, num_steps=100)
  config.test_function.name = ''
  config.test_function.update(num_states=8, dim=24, num_motifs=2, motif_length=3, quantization=3, seed=3)
  summary = ga_baseline.run_experiment(config, str(tmp_path))
  assert summary['num_evaluations'] == 400  # Two whole generations fit in 500.


def _snapshot(directory):
  """A workdir's outputs by content: bytes, arrays of .npz files (zip entries carry write times), and
  the checkpoint steps (Orbax's metadata carries timestamps)."""
  snapshot = {'steps': sorted(p.name for p in (directory / 'checkpoints').iterdir())}
  for path in sorted(directory.glob('*')):
    if path.suffix == '.npz':
      snapshot[path.name] = {k: v.tolist() for k, v in np.load(path).items()}
    elif path.is_file():
      snapshot[path.name] = path.read_bytes()
  return snapshot


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
  """A crash after the generation-2 checkpoint, with rows 2-3 and half of row 4 already written: the
  rerun drops what the checkpoint does not cover and ends byte for byte as the uninterrupted run."""
  config = _small_config(num_steps=6)
  config.log_every, config.checkpoint_every, config.keep_checkpoints = 1, 2, 10
  whole, crashed = tmp_path / 'whole', tmp_path / 'crashed'
  summary = ga_baseline.run_experiment(config, str(whole))
  assert sorted(p.name for p in (whole / 'checkpoints').iterdir()) == ['2', '4', '6']
  shutil.copytree(whole, crashed)
  for name in ('best.json', 'regret.png', 'seed_data.npz'):
    (crashed / name).unlink()
  for step in ('4', '6'):
    shutil.rmtree(crashed / 'checkpoints' / step)
  lines = (whole / 'metrics.jsonl').read_text().splitlines(keepends=True)
  (crashed / 'metrics.jsonl').write_text(''.join(lines[:4]) + lines[4][:20])
  assert ga_baseline.run_experiment(config, str(crashed)) == summary
  assert _snapshot(crashed) == _snapshot(whole)
  # Rerunning a finished run changes nothing.
  before = _snapshot(whole)
  assert ga_baseline.run_experiment(config, str(whole)) == summary
  assert _snapshot(whole) == before


@pytest.mark.parametrize(
  'first, then', [({'num_steps': 3}, {'num_steps': 5}), ({'max_evaluations': 600}, {'max_evaluations': 1000})]
)
def test_a_finished_run_extended_equals_one_run_with_the_larger_budget(tmp_path, first, then):
  """3 generations, then the same workdir rerun with a budget of 5: the same outputs as 5 straight. The
  default archive, sized for the budget (600, then 1,000 evaluations), grows with it."""
  straight, extended = tmp_path / 'straight', tmp_path / 'extended'
  summary = ga_baseline.run_experiment(_small_config(**then), str(straight))
  ga_baseline.run_experiment(_small_config(**first), str(extended))
  assert len(metrics_io.read_jsonl(extended / 'metrics.jsonl')) == 3
  config = _small_config(**then)
  config.log_every = 2  # Logging may change on a rerun too.
  assert ga_baseline.run_experiment(config, str(extended)) == summary
  snapshot = _snapshot(extended)
  assert json.loads(snapshot.pop('config.json')) == json.loads(json.dumps(config.to_dict()))
  expected = _snapshot(straight)
  expected.pop('config.json')
  assert snapshot == expected


def test_a_budget_below_what_was_run_is_refused_and_changes_nothing(tmp_path):
  ga_baseline.run_experiment(_small_config(num_steps=5), str(tmp_path))
  before = _snapshot(tmp_path)
  with pytest.raises(ValueError, match=r'already ran 5 generations, and the budget given \(ga\.num_steps=4'):
    ga_baseline.run_experiment(_small_config(num_steps=4), str(tmp_path))
  assert _snapshot(tmp_path) == before


def test_another_config_is_refused_without_touching_the_run_unless_overwrite(tmp_path):
  ga_baseline.run_experiment(_small_config(), str(tmp_path))
  before = _snapshot(tmp_path)
  with pytest.raises(
    FileExistsError,
    match=r"another config \(1 keys differ: ga\.mutation_prob: 0\.005 -> 0\.01\); only \['ga\.num_steps', "
    r"'ga\.max_evaluations', 'log_every', 'checkpoint_every', 'keep_checkpoints'\] may change",
  ):
    ga_baseline.run_experiment(_small_config(mutation_prob=0.01), str(tmp_path))
  assert _snapshot(tmp_path) == before
  ga_baseline.run_experiment(_small_config(mutation_prob=0.01, num_steps=2), str(tmp_path), overwrite=True)
  assert [row['step'] for row in metrics_io.read_jsonl(tmp_path / 'metrics.jsonl')] == [0, 1]


# A failed Orbax read can leave TensorStore callbacks aimed at a closed event loop; they are harmless.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_run_that_cannot_resume_says_why_and_overwrite_starts_afresh(tmp_path):
  config = _small_config()
  summary = ga_baseline.run_experiment(config, str(tmp_path))
  os.remove(tmp_path / 'checkpoints' / '4' / 'state' / '_METADATA')  # A step garbled on disk.
  before = _snapshot(tmp_path)
  with pytest.raises(ValueError, match=r'cannot resume from .*checkpoints.*Pass --overwrite'):
    ga_baseline.run_experiment(config, str(tmp_path))
  assert _snapshot(tmp_path) == before
  assert ga_baseline.run_experiment(config, str(tmp_path), overwrite=True) == summary


def test_rejects_bad_configs_before_writing_anything(tmp_path):
  def fails(config, match):
    workdir = tmp_path / 'run'
    with pytest.raises(ValueError, match=match):
      ga_baseline.run_experiment(config, str(workdir))
    assert not workdir.exists()

  config = _small_config()
  config.ga.num_partcles = 10  # A typo in a key.
  fails(config, 'num_partcles')
  impossible = _small_config()
  impossible.test_function.name = ''
  impossible.test_function.update(num_states=8, dim=10, num_motifs=4, motif_length=4)
  fails(impossible, 'cannot all fit')
  bad_name = _small_config()
  bad_name.test_function.name = 'f99'
  fails(bad_name, 'unknown Ehrlich instance')
  both = _small_config()
  both.test_function.dim = 128
  both.test_function.quantization = 2
  fails(both, r"name='f2'.*\['test_function.dim', 'test_function.quantization'\] would be ignored")
  fails(_small_config(max_evaluations=100), r'config\.ga: the budget holds no generation')
  fails(_small_config(mutation_prob=2.0), r'config\.ga: mutation_prob must lie in \(0, 1\)')


@pytest.mark.slow
def test_holo_unit_test_setting_reaches_zero_regret(tmp_path):
  config = ga_ehrlich.get_config()
  config.test_function.name = ''
  config.test_function.update(num_states=32, dim=128, num_motifs=1, motif_length=4, quantization=4, seed=0)
  config.ga.update(
    num_particles=4096,
    mutation_prob=1 / 128,
    recombine_prob=1 / 128,
    survival_quantile=0.01,
    num_steps=256,
    archive_capacity=0,
  )
  config.log_every = 32
  summary = ga_baseline.run_experiment(config, str(tmp_path))
  assert summary['simple_regret_best'] == 0.0 and summary['best_value'] == 1.0
  assert summary['num_evaluations'] < 4096 * 256  # Stopped early, as holo's benchmark does.
