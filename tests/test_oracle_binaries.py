"""The binaries on a scorer of the user's own (tests/oracle_scorers.py, the example scorer behind a
recorder): it is called on exactly the sequences counted as oracle calls, 1 device equals 8, a scorer
that fails mid-run stops with its own message and the last checkpoint intact, and rerunning resumes to
the result of an uninterrupted run."""

import json

import numpy as np
import oracle_scorers
import pytest

from experiments import ga_baseline, lambo2, llome
from experiments.configs import lambo2_defaults, oracle_ga, oracle_llome
from llome_jax import metrics_io, oracle

PROTEIN = oracle.ALPHABETS['protein']


def _ga_config(**changes):
  config = oracle_ga.get_config()
  config.oracle.target = 'oracle_scorers:recorded'
  config.ga.num_particles, config.ga.num_steps = 64, 6
  config.checkpoint_every = 1
  config.update_from_flattened_dict(changes)
  return config


def _rows(workdir):
  return metrics_io.read_jsonl(workdir / 'metrics.jsonl')


@pytest.fixture(scope='module')
def ga_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ga_eight')
  oracle_scorers.reset()
  summary = ga_baseline.run_experiment(_ga_config(), str(workdir))
  return workdir, summary, list(oracle_scorers.calls)


def test_ga_scores_exactly_what_it_counts_and_improves(ga_run):
  workdir, summary, calls = ga_run
  initial = oracle.read_initial_sequences('experiments/data/oracle_example.fasta', PROTEIN)
  assert calls[0] == oracle.decode(initial.tokens_NxL, PROTEIN)  # The 16 initial sequences first.
  assert [len(batch) for batch in calls[1:]] == [64] * 6  # Then one batch per generation.
  assert summary['num_evaluations'] == sum(len(batch) for batch in calls) == 16 + 6 * 64
  assert summary['best_value'] > summary['initial_best_value'] == pytest.approx(5 / 24)
  assert summary['best_sequence'] == oracle.decode([summary['best_solution']], PROTEIN)[0]
  assert oracle.load_target('experiments.oracle_example:score')([summary['best_sequence']])[
    0
  ] == pytest.approx(summary['best_value'])
  rows = _rows(workdir)
  assert all(row['simple_regret_best'] is None for row in rows)  # The optimum is unknown.
  assert [row['best_value'] for row in rows] == sorted(row['best_value'] for row in rows)
  assert (workdir / 'best_value.png').exists() and not (workdir / 'regret.png').exists()


def test_ga_on_one_device_equals_eight(ga_run, tmp_path):
  workdir, summary, _ = ga_run
  oracle_scorers.reset()
  assert ga_baseline.run_experiment(_ga_config(num_devices=1), str(tmp_path)) == summary
  assert (tmp_path / 'metrics.jsonl').read_text() == (workdir / 'metrics.jsonl').read_text()


def test_known_optimum_gives_regrets(tmp_path):
  oracle_scorers.reset()
  summary = ga_baseline.run_experiment(_ga_config(**{'oracle.optimal_value': 1.0}), str(tmp_path))
  assert summary['simple_regret_best'] == pytest.approx(1.0 - summary['best_value'])
  assert (tmp_path / 'regret.png').exists()


def test_csv_values_are_not_scored_again(tmp_path):
  initial = oracle.read_initial_sequences('experiments/data/oracle_example.fasta', PROTEIN)
  strings = oracle.decode(initial.tokens_NxL, PROTEIN)
  lines = ['sequence,value'] + [f'{s},{0.5 if i % 2 else ""}' for i, s in enumerate(strings)]
  (tmp_path / 'start.csv').write_text('\n'.join(lines) + '\n')
  oracle_scorers.reset()
  config = _ga_config(**{'oracle.initial_sequences': str(tmp_path / 'start.csv'), 'ga.num_steps': 1})
  summary = ga_baseline.run_experiment(config, str(tmp_path / 'run'))
  assert oracle_scorers.calls[0] == strings[::2]  # The rows without a value, and only those.
  assert summary['num_evaluations'] == 8 + 64 and summary['initial_best_value'] == 0.5


def test_a_scorer_that_fails_mid_run_stops_and_the_rerun_resumes(ga_run, tmp_path):
  workdir, summary, _ = ga_run
  oracle_scorers.reset(fail_after_batches=4)  # The initial batch, generations 1-3, then it fails.
  with pytest.raises(oracle.OracleError) as raised:
    ga_baseline.run_experiment(_ga_config(), str(tmp_path))
  message = str(raised.value)
  assert 'ConnectionError: the assay server went away' in message
  assert 'the last checkpoint (generation 3) is intact' in message and 'rerun the command' in message
  assert len(_rows(tmp_path)) == 3
  oracle_scorers.reset()
  assert ga_baseline.run_experiment(_ga_config(), str(tmp_path)) == summary
  assert [len(batch) for batch in oracle_scorers.calls] == [64] * 3  # Neither the start nor done work again.
  assert (tmp_path / 'metrics.jsonl').read_text() == (workdir / 'metrics.jsonl').read_text()


@pytest.mark.parametrize(
  'target, message',
  [
    ('oracle_scorers:wrong_shape', r'returned shape \(16, 1\) for 16 sequences; expected \(16,\)'),
    ('oracle_scorers:strings', 'returned dtype <U4, not numbers'),
    ('oracle_scorers:nan_rows', r'returned NaN for rows 1 \(\w+\), 8 \(\w+\), 15 \(\w+\)'),
  ],
)
def test_bad_replies_stop_the_run_with_the_rows(tmp_path, target, message):
  with pytest.raises(oracle.OracleError, match=message):
    ga_baseline.run_experiment(_ga_config(**{'oracle.target': target}), str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['config.json']


@pytest.mark.slow
def test_llome_scores_only_labels_and_resumes_without_rescoring(tmp_path):
  """8 fake devices; the README example runs the same config on 1 device in a fresh process."""
  config = oracle_llome.get_config()
  config.oracle.target = 'oracle_scorers:recorded'
  config.outer.num_rounds = 2
  config.train.first_round_epochs = 8  # Accounting and resume, not learning: the README test runs 40.
  oracle_scorers.reset()
  llome.run_experiment(config, str(tmp_path), stop_after_round=1)
  first = oracle_scorers.num_scored()
  oracle_scorers.reset()
  summary = llome.run_experiment(config, str(tmp_path))
  rows = _rows(tmp_path)
  assert [row['round'] for row in rows] == [0, 1, 2]
  assert rows[0]['num_evaluations'] == 16 + 128 * 4  # Initial sequences, then the seed GA.
  assert first == rows[1]['num_evaluations']
  assert oracle_scorers.num_scored() == rows[2]['num_labelled'] > 0  # Round 2 alone after resuming.
  assert summary['num_evaluations'] == rows[2]['num_evaluations']
  assert all(row['frac_improved'] is None for row in rows[1:])  # Unlabelled sequences are not scored.
  assert (
    summary['best_value'] >= rows[0]['best_value'] >= summary['initial_best_value'] == pytest.approx(5 / 24)
  )
  assert json.loads((tmp_path / 'best.json').read_text()) == summary


@pytest.mark.slow
def test_lambo2_on_a_scorer(tmp_path):
  config = lambo2_defaults.get_config()
  config.oracle.target = 'oracle_scorers:recorded'
  config.oracle.alphabet = 'protein'
  config.oracle.initial_sequences = 'experiments/data/oracle_example.fasta'
  config.ga.num_particles, config.ga.num_steps, config.ga.mutation_prob = 64, 2, 1 / 24
  config.num_rounds, config.num_proposals = 2, 16
  config.network.embed_dim, config.network.channels, config.network.ensemble_size = 16, 32, 2
  config.train.epochs, config.train.warmup_epochs, config.train.batch_size = 2, 1, 64
  config.guide.num_steps, config.guide.num_mutations = 2, 4
  oracle_scorers.reset()
  summary = lambo2.run_experiment(config, str(tmp_path))
  rows = _rows(tmp_path)
  assert oracle_scorers.num_scored() == summary['num_evaluations'] == rows[-1]['num_evaluations']
  assert np.all(np.diff([row['best_value'] for row in rows]) >= 0)
  assert summary['best_value'] >= summary['initial_best_value']
