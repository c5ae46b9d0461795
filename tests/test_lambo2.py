"""End-to-end tests of the LaMBO-2 binary's `run_experiment` on a toy sampled instance (8 fake devices):
outputs in the LLOME binary's schema, resume equals an uninterrupted run, the seed data read back from
a file equals the seed GA's, and bad seed files fail before any work."""

import json

import numpy as np
import pytest

from experiments import compare, lambo2
from experiments.configs import lambo2_defaults
from llome_jax import metrics_io

pytestmark = pytest.mark.slow


def _config(**top):
  config = lambo2_defaults.get_config()
  tf = config.test_function
  tf.name = ''
  tf.num_states, tf.dim, tf.num_motifs, tf.motif_length, tf.quantization = 6, 12, 2, 3, 3
  config.ga.num_particles, config.ga.num_steps = 128, 4
  config.num_rounds = 3
  config.num_proposals = 24
  config.network.embed_dim, config.network.channels, config.network.ensemble_size = 16, 32, 2
  config.train.epochs, config.train.warmup_epochs, config.train.batch_size = 3, 1, 64
  config.guide.num_steps, config.guide.num_mutations = 2, 4
  for key, value in top.items():
    config[key] = value
  return config


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  return workdir, lambo2.run_experiment(_config(), str(workdir))


def test_writes_the_llome_schema_with_rising_calls_and_falling_regret(uninterrupted):
  workdir, summary = uninterrupted
  rows = metrics_io.read_jsonl(workdir / 'metrics.jsonl')
  assert [r['round'] for r in rows] == [0, 1, 2, 3]
  calls = [r['num_evaluations'] for r in rows]
  assert calls[0] == 512 and all(b > a for a, b in zip(calls, calls[1:], strict=False))
  regrets = [r['simple_regret_best'] for r in rows]
  assert all(b <= a for a, b in zip(regrets, regrets[1:], strict=False))
  assert all(b - a == r['num_labelled'] for a, b, r in zip(calls, calls[1:], rows[1:], strict=False))
  for name in ('best.json', 'regret.png', 'seed_data.npz', 'timings.jsonl', 'labelled/round_0003.npz'):
    assert (workdir / name).exists(), name
  assert summary == json.loads((workdir / 'best.json').read_text())
  assert summary['simple_regret_best'] == regrets[-1]
  evaluations, plotted = compare.load_run(workdir)  # experiments.compare reads it as it reads LLOME's.
  np.testing.assert_array_equal(evaluations, calls)
  np.testing.assert_allclose(plotted, regrets)


def test_stopped_and_resumed_equals_uninterrupted(uninterrupted, tmp_path):
  workdir, summary = uninterrupted
  lambo2.run_experiment(_config(), str(tmp_path), stop_after_round=1)
  assert len(metrics_io.read_jsonl(tmp_path / 'metrics.jsonl')) == 2
  assert lambo2.run_experiment(_config(), str(tmp_path)) == summary
  assert (tmp_path / 'metrics.jsonl').read_text() == (workdir / 'metrics.jsonl').read_text()
  for i in (1, 2, 3):
    name = f'labelled/round_{i:04d}.npz'
    with np.load(tmp_path / name) as got, np.load(workdir / name) as want:
      np.testing.assert_array_equal(got['sequences'], want['sequences'])


def test_seed_data_from_a_file_equals_the_seed_ga(uninterrupted, tmp_path):
  """An LLOME (or LaMBO-2) workdir's seed_data.npz as round 0: the same run as running the seed GA."""
  workdir, _ = uninterrupted
  config = _config(seed_data=str(workdir / 'seed_data.npz'))
  lambo2.run_experiment(config, str(tmp_path))
  rows = metrics_io.read_jsonl(tmp_path / 'metrics.jsonl')
  want = metrics_io.read_jsonl(workdir / 'metrics.jsonl')
  # The file holds the GA's unique sequences, not its oracle calls (duplicates included): round 0 costs
  # one call per sequence, and every later count is offset by the difference.
  offset = want[0]['num_evaluations'] - rows[0]['num_evaluations']
  assert rows[0]['num_evaluations'] == rows[0]['num_labelled'] and offset > 0
  for got_row, want_row in zip(rows, want, strict=True):
    assert got_row['num_evaluations'] + offset == want_row['num_evaluations']
    assert got_row['simple_regret_best'] == want_row['simple_regret_best']
  for i in (1, 2, 3):
    name = f'labelled/round_{i:04d}.npz'
    with np.load(tmp_path / name) as got, np.load(workdir / name) as want_file:
      np.testing.assert_array_equal(got['sequences'], want_file['sequences'])


@pytest.mark.parametrize(
  'change, match',
  [
    (
      lambda p: np.savez(p, sequences=np.zeros((3, 5), int), values=np.zeros(3)),
      r'do not fit the test function',
    ),
    (lambda p: np.savez(p, sequences=np.zeros((3, 12), int), values=np.full(3, 0.5)), r'not those of'),
    (lambda p: p.write_text('not an npz'), r'not a seed_data\.npz'),
  ],
)
def test_bad_seed_files_fail_before_any_work(tmp_path, change, match):
  path = tmp_path / 'seed.npz'
  change(path)
  with pytest.raises(ValueError, match=match):
    lambo2.run_experiment(_config(seed_data=str(path)), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
