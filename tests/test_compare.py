"""Tests of the comparison plot binary: step-function medians and bands, the summary, and its errors."""

import json
import pathlib

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import compare

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

# Two seeds of method A and one of B; B's first row has a null regret, so B starts at 100 calls.
_RUNS = {
  'a0': [(10, 0.9), (20, 0.5), (40, 0.25), (80, 0.0)],
  'a1': [(15, 0.8), (30, 0.6), (60, 0.1)],
  'b0': [(50, None), (100, 0.7), (200, 0.3)],
}


def _write_workdir(path, rows, *, extra=None):
  path.mkdir(parents=True)
  (path / 'config.json').write_text('{}')
  lines = [json.dumps({'num_evaluations': e, 'simple_regret_best': r, **(extra or {})}) for e, r in rows]
  (path / 'metrics.jsonl').write_text(''.join(line + '\n' for line in lines))
  return str(path)


@pytest.fixture
def workdirs(tmp_path):
  return {name: _write_workdir(tmp_path / name, rows, extra={'step': 0}) for name, rows in _RUNS.items()}


def test_step_values_hold_the_last_row_and_skip_nulls():
  evaluations = np.array([50, 100, 200])
  regrets = np.array([np.nan, 0.7, 0.3])
  np.testing.assert_array_equal(
    compare.step_values(evaluations, regrets, [10, 50, 99, 100, 150, 200, 10_000]),
    [np.nan, np.nan, np.nan, 0.7, 0.7, 0.3, 0.3],
  )
  np.testing.assert_array_equal(  # Equal counts (generations after the optimum): the last row wins.
    compare.step_values(np.array([1, 2, 2]), np.array([0.5, 0.4, 0.0]), [2]), [0.0]
  )


def test_plateaus_are_the_levels_and_the_calls_spent_on_each():
  evaluations = np.array([10, 20, 30, 40, 50, 60])
  regrets = np.array([np.nan, 0.9, 0.9, 0.5, np.nan, 0.5])
  assert compare.plateaus(evaluations, regrets) == [
    {'regret': 0.9, 'first_evaluations': 20, 'calls_spent': 20},
    {'regret': 0.5, 'first_evaluations': 40, 'calls_spent': 20},
  ]
  assert compare.plateaus(np.array([5]), np.array([0.25])) == [
    {'regret': 0.25, 'first_evaluations': 5, 'calls_spent': 0}
  ]


def test_evaluations_to_threshold():
  evaluations, regrets = np.array([10, 20, 40, 80]), np.array([0.9, 0.5, 0.25, 0.0])
  assert compare.evaluations_to_threshold(evaluations, regrets, 0.25) == 40  # <=, not <.
  assert compare.evaluations_to_threshold(evaluations, regrets, 0.0) == 80
  assert compare.evaluations_to_threshold(evaluations, regrets, -0.1) is None
  assert compare.evaluations_to_threshold(np.array([5, 6]), np.array([np.nan, 0.2]), 0.25) == 6


def test_band_is_median_min_max_over_covering_runs(workdirs):
  runs = [compare.load_run(workdirs['a0']), compare.load_run(workdirs['a1'])]
  x = [5, 10, 15, 20, 30, 40, 60, 80, 1000]
  median, low, high = compare.band(runs, x)
  # a0 at x: -, .9, .9, .5, .5, .25, .25, 0, 0; a1 (from 15): -, -, .8, .8, .6, .6, .1, .1, .1.
  np.testing.assert_allclose(median, [np.nan, 0.9, 0.85, 0.65, 0.55, 0.425, 0.175, 0.05, 0.05])
  np.testing.assert_allclose(low, [np.nan, 0.9, 0.8, 0.5, 0.5, 0.25, 0.1, 0.0, 0.0])
  np.testing.assert_allclose(high, [np.nan, 0.9, 0.9, 0.8, 0.6, 0.6, 0.25, 0.1, 0.1])


def test_compare_summary_and_outputs(workdirs, tmp_path):
  output = tmp_path / 'plots' / 'compare.png'
  summary = compare.compare(
    [workdirs['a0'], workdirs['b0'], workdirs['a1']], ['A', 'B', 'A'], output, title='A vs B', budget=50
  )
  assert list(summary) == ['A', 'B']
  a, b = summary['A'], summary['B']
  assert a['num_runs'] == 2 and b['num_runs'] == 1
  assert [run['workdir'] for run in a['runs']] == [workdirs['a0'], workdirs['a1']]
  a0, a1 = a['runs']
  assert a0 == {
    'workdir': workdirs['a0'],
    'final_num_evaluations': 80,
    'final_simple_regret_best': 0.0,
    'regret_at_budget': 0.25,
    'evaluations_to_regret_0.25': 40,
    'evaluations_to_regret_0': 80,
    'plateaus': [
      {'regret': 0.9, 'first_evaluations': 10, 'calls_spent': 10},
      {'regret': 0.5, 'first_evaluations': 20, 'calls_spent': 20},
      {'regret': 0.25, 'first_evaluations': 40, 'calls_spent': 40},
      {'regret': 0.0, 'first_evaluations': 80, 'calls_spent': 0},
    ],
    'diagnostics': {'wall_clock_s': None},  # Rows without diagnostics, no timings.jsonl.
  }
  assert (a1['final_num_evaluations'], a1['final_simple_regret_best'], a1['regret_at_budget']) == (
    60,
    0.1,
    0.6,
  )
  assert (a1['evaluations_to_regret_0.25'], a1['evaluations_to_regret_0']) == (60, None)
  assert a['median'] == pytest.approx(
    {
      'final_num_evaluations': 80,
      'final_simple_regret_best': 0.05,
      'regret_at_budget': 0.425,  # Median of 0.25 and 0.6.
      'evaluations_to_regret_0.25': 60,  # Median 0.175 there; 0.425 at 40.
      'evaluations_to_regret_0': None,
    }
  )
  assert b['runs'][0]['regret_at_budget'] is None  # Its only row by 50 calls has a null regret.
  assert b['median'] == {
    'final_num_evaluations': 200,
    'final_simple_regret_best': 0.3,
    'regret_at_budget': None,
    'evaluations_to_regret_0.25': None,
    'evaluations_to_regret_0': None,
  }
  assert output.read_bytes()[:8] == _PNG_SIGNATURE
  assert json.loads(output.with_suffix('.json').read_text()) == summary
  assert sorted(p.name for p in output.parent.iterdir()) == ['compare.json', 'compare.md', 'compare.png']


def test_default_labels_are_basenames_and_no_budget_key(workdirs, tmp_path):
  summary = compare.compare(list(workdirs.values()), None, tmp_path / 'out.png')
  assert list(summary) == ['a0', 'a1', 'b0']
  assert all(entry['num_runs'] == 1 for entry in summary.values())
  assert 'regret_at_budget' not in summary['a0']['median']
  run = summary['a1']['runs'][0]
  assert summary['a1']['median'] == {
    k: v for k, v in run.items() if k not in ('workdir', 'diagnostics', 'plateaus')
  }


def _llome_workdir(path, regrets, feasible, edit, spearman, seconds):
  """An LLOME-shaped workdir: round 0 (seed data, no generations) then one row per trained round."""
  rows = [{'round': 0, 'num_evaluations': 100, 'simple_regret_best': 0.9, 'frac_labelled_feasible': 0.5}]
  for r, (regret, f, e, s) in enumerate(zip(regrets, feasible, edit, spearman, strict=True), start=1):
    rows.append(
      {
        'round': r,
        'num_evaluations': 100 + 10 * r,
        'simple_regret_best': regret,
        'frac_labelled_feasible': f,
        'mean_edit_hamming': e,
        'calibration_spearman': s,
      }
    )
  path.mkdir(parents=True)
  (path / 'metrics.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  (path / 'timings.jsonl').write_text(''.join(json.dumps({'seconds': t}) + '\n' for t in seconds))
  return str(path)


def test_llome_diagnostics_and_markdown_table(workdirs, tmp_path):
  s0 = _llome_workdir(tmp_path / 's0', [0.5, 0.25], [0.8, 0.9], [0.1, 0.3], [0.2, 0.4], [10.0, 5.5])
  s1 = _llome_workdir(tmp_path / 's1', [0.6, 0.5], [0.7, 0.95], [0.2, 0.1], [None, 0.6], [20.0])
  assert compare.run_diagnostics(s1) == {
    'frac_labelled_feasible': [0.7, 0.95],  # Round 0 (seed data) left out.
    'mean_edit_hamming': [0.2, 0.1],
    'calibration_spearman': [0.6],  # A null (undefined) correlation is skipped.
    'wall_clock_s': 20.0,
  }
  output = tmp_path / 'table.png'
  compare.compare([s0, s1, workdirs['b0']], ['LLOME', 'LLOME', 'GA'], output, budget=120)
  table = output.with_suffix('.md').read_text().splitlines()
  assert len(table) == 4 and table[0].count('|') == table[2].count('|') == 10
  assert table[2] == (
    '| LLOME | 2 | 0.375; 0.250, 0.500 | not reached (1/2 seeds) | not reached (0/2 seeds) | 0.90-0.95 '
    '| 0.100-0.200 -> 0.100-0.300 | 0.20-0.60 | 16-20 |'
  )
  assert (
    table[3]
    == '| GA | 1 | 0.700; 0.700 | not reached (0/1 seeds) | not reached (0/1 seeds) | - | - | - | - |'
  )
  compare.compare([s0], None, output)  # Its median is the run: it reaches 0.25 at 120 calls.
  assert (
    '| s0 | 1 | 0.250; 0.250 | 120 (1/1 seeds) | not reached (0/1 seeds) |'
    in output.with_suffix('.md').read_text()
  )


def test_errors_name_the_problem_and_the_path(workdirs, tmp_path):
  output = tmp_path / 'out.png'
  (tmp_path / 'no_metrics').mkdir()
  with pytest.raises(ValueError, match=r'no metrics\.jsonl in workdir .*no_metrics'):
    compare.compare([str(tmp_path / 'no_metrics')], None, output)
  empty = _write_workdir(tmp_path / 'empty', [])
  with pytest.raises(ValueError, match=r'empty.metrics\.jsonl is empty'):
    compare.compare([empty], None, output)
  for key in ('num_evaluations', 'simple_regret_best'):
    bad = tmp_path / f'no_{key}'
    bad.mkdir()
    (bad / 'metrics.jsonl').write_text(
      json.dumps({'num_evaluations': 1, 'simple_regret_best': 0.5}) + '\n' + json.dumps({key: 1}) + '\n'
    )
    with pytest.raises(ValueError, match=rf'no_{key}.metrics\.jsonl: row 1 is missing'):
      compare.compare([workdirs['a0'], str(bad)], None, output)
  with pytest.raises(ValueError, match='--labels has 1 entries but --workdirs has 2'):
    compare.compare([workdirs['a0'], workdirs['a1']], ['A'], output)
  garbled = _write_workdir(tmp_path / 'garbled', [(10, 0.9), (20, 0.5)])
  text = (pathlib.Path(garbled) / 'metrics.jsonl').read_text()
  (pathlib.Path(garbled) / 'metrics.jsonl').write_text(text.replace('0.9', '0.9,,', 1))
  with pytest.raises(ValueError, match=r'garbled.metrics\.jsonl, line 1, is not a JSON object'):
    compare.compare([garbled], None, output)
  shuffled = _write_workdir(tmp_path / 'shuffled', [(20, 0.5), (10, 0.9)])
  with pytest.raises(ValueError, match=r'shuffled.metrics\.jsonl: num_evaluations decreases'):
    compare.compare([shuffled], None, output)
  assert not output.exists()  # Nothing is drawn before every run has been read.


def test_main_parses_flags(workdirs, tmp_path):
  output = tmp_path / 'main.png'
  argv = [
    'compare',
    f'--workdirs={workdirs["a0"]},{workdirs["a1"]}',
    '--labels=A,A',
    f'--output={output}',
    '--budget=50',
  ]
  with flagsaver.flagsaver():
    try:
      compare.main(flags.FLAGS(argv))
    finally:
      flags.FLAGS.unparse_flags()  # Later tests see unparsed flags again.
  assert json.loads(output.with_suffix('.json').read_text())['A']['median']['regret_at_budget'] == 0.425
