r"""Several experiment workdirs on one best-so-far-regret-vs-oracle-calls plot, with a JSON summary.

  python -m experiments.compare --workdirs=/tmp/ga_s0,/tmp/ga_s1,/tmp/llome_s0 --labels=GA,GA,LLOME \
      --output=/tmp/compare.png --budget=10000

Runs that share a label are seeds of one method: drawn as their median with a min-max band. Writes the
PNG and, next to it (same path, .json), per label: each run's and the median's final evaluations and
regret, the regret at the budget and the evaluations needed to reach regret <= 0.25 and <= 0; each
run's plateaus (every best regret it held, when it got there and the calls it spent there); each run's
per-round diagnostics (feasible fraction, edit distance, calibration) and wall clock where its
workdir has them; and (same path, .md) these as a Markdown table, also printed.
"""

import os
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from llome_jax import metrics_io

_WORKDIRS = flags.DEFINE_list('workdirs', None, 'Comma-separated experiment workdirs (with metrics.jsonl).')
_LABELS = flags.DEFINE_list(
  'labels', None, 'Comma-separated labels, one per workdir (same label = seeds of one method).'
)
_OUTPUT = flags.DEFINE_string('output', None, 'Path of the PNG; the summary goes to the same path as .json.')
_TITLE = flags.DEFINE_string('title', None, 'Plot title.')
_BUDGET = flags.DEFINE_integer('budget', None, 'Oracle-call budget: a dashed line and the regret there.')

THRESHOLDS = (0.25, 0.0)
_REQUIRED_KEYS = ('num_evaluations', 'simple_regret_best')
# Per-row diagnostics copied into the summary: the LLOME binary's (rounds >= 1) and the GA's.
_DIAGNOSTIC_KEYS = (
  'frac_labelled_feasible',
  'mean_edit_hamming',
  'calibration_spearman',
  'frac_particles_feasible',
)


def load_run(workdir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads a workdir's metrics.jsonl as (num_evaluations, simple_regret_best) arrays.

  Rows whose regret is null (JSON for nan/inf) are kept as nan: they do not move a run's step function,
  which keeps the value of its last non-null row, as a best-so-far value cannot get worse.

  Returns:
    (evaluations, regrets): int64 and float64 arrays of one entry per row, evaluations non-decreasing.
  """
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.is_file():
    raise ValueError(f'no metrics.jsonl in workdir {workdir}: {path} does not exist.')
  rows = metrics_io.read_jsonl(path)  # A malformed line is a ValueError naming the file and line.
  if not rows:
    raise ValueError(f'{path} is empty: the run has no rows yet.')
  for i, row in enumerate(rows):
    missing = [key for key in _REQUIRED_KEYS if not isinstance(row, dict) or key not in row]
    if missing:
      raise ValueError(f'{path}: row {i} is missing {", ".join(missing)}.')
    if row['num_evaluations'] is None:
      raise ValueError(f'{path}: row {i} has a null num_evaluations.')
  evaluations = np.asarray([row['num_evaluations'] for row in rows], np.int64)
  regrets = np.asarray([row['simple_regret_best'] for row in rows], np.float64)  # None -> nan.
  if np.any(np.diff(evaluations) < 0):
    raise ValueError(f'{path}: num_evaluations decreases; rows must be in the order they were run.')
  if np.all(np.isnan(regrets)):
    raise ValueError(
      f'{path}: every simple_regret_best is null; there is nothing to draw. (A run on a scorer of your own '
      'has no regret without oracle.optimal_value; its best_value column and best_value.png show progress.)'
    )
  return evaluations, regrets


def step_values(evaluations: np.ndarray, regrets: np.ndarray, x) -> np.ndarray:
  """A run's best-so-far regret at each x: the regret of its last non-null row with evaluations <= x.

  Returns:
    float64 array shaped like x; nan where x comes before the run's first non-null row (not covered).
  """
  known = ~np.isnan(regrets)
  evaluations, regrets = evaluations[known], regrets[known]
  index = np.searchsorted(evaluations, np.asarray(x), side='right') - 1
  return np.where(index >= 0, regrets[np.maximum(index, 0)], np.nan)


def evaluations_to_threshold(evaluations: np.ndarray, regrets: np.ndarray, threshold: float) -> int | None:
  """The first evaluation count at which regret <= threshold (nan never counts), or None if never."""
  reached = np.flatnonzero(regrets <= threshold)  # nan <= t is False.
  return int(evaluations[reached[0]]) if reached.size else None


def plateaus(evaluations: np.ndarray, regrets: np.ndarray) -> list[dict]:
  """Each best-so-far regret a run holds, in order: the evaluations at which it was first reached and
  the calls spent on it before the next improvement (up to the run's last row for the last level).
  The GA crosses a plateau in generations of its population; a round-based optimiser in rounds."""
  known = ~np.isnan(regrets)
  evaluations, regrets = evaluations[known], regrets[known]
  starts = np.flatnonzero(np.concatenate([[True], regrets[1:] < regrets[:-1]]))
  ends = np.append(evaluations[starts[1:]], evaluations[-1]) if starts.size else starts
  return [
    {
      'regret': float(regrets[i]),
      'first_evaluations': int(evaluations[i]),
      'calls_spent': int(end - evaluations[i]),
    }
    for i, end in zip(starts, ends, strict=True)
  ]


def band(runs: Sequence[tuple[np.ndarray, np.ndarray]], x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Median, min and max over the runs covering each x of their step-function values.

  Returns:
    (median, low, high), float64 arrays shaped like x; nan where no run covers x.
  """
  values_RxX = np.stack([step_values(e, r, x) for e, r in runs])
  with warnings.catch_warnings():  # An x no run covers gives nan, which is what we want.
    warnings.simplefilter('ignore', RuntimeWarning)
    return np.nanmedian(values_RxX, 0), np.nanmin(values_RxX, 0), np.nanmax(values_RxX, 0)


def _curve_summary(evaluations: np.ndarray, regrets: np.ndarray, budget: int | None) -> dict:
  summary = {
    'final_num_evaluations': int(evaluations[-1]),
    'final_simple_regret_best': float(step_values(evaluations, regrets, evaluations[-1])),
  }
  if budget is not None:
    summary['regret_at_budget'] = float(step_values(evaluations, regrets, budget))
  for threshold in THRESHOLDS:
    summary[f'evaluations_to_regret_{threshold:g}'] = evaluations_to_threshold(
      evaluations, regrets, threshold
    )
  return metrics_io.plain_row(summary)  # nan (not covered) becomes null.


def run_diagnostics(workdir: str | os.PathLike) -> dict:
  """A run's per-row diagnostics and wall clock, for the table.

  Returns:
    {key: [value per row]} for each of `_DIAGNOSTIC_KEYS` that the run's rows hold (LLOME rows of
    round 0, the GA seed data, are skipped: they have no generations), and 'wall_clock_s': the seconds
    summed over timings.jsonl, or None when the workdir has none.
  """
  workdir = pathlib.Path(workdir)
  rows = [row for row in metrics_io.read_jsonl(workdir / 'metrics.jsonl') if row.get('round', 1) >= 1]
  out = {}
  for key in _DIAGNOSTIC_KEYS:
    values = [row[key] for row in rows if row.get(key) is not None]
    if values:
      out[key] = values
  timings = workdir / 'timings.jsonl'
  out['wall_clock_s'] = (
    sum(row['seconds'] for row in metrics_io.read_jsonl(timings)) if timings.is_file() else None
  )
  return out


def _fmt(value, spec: str = '.3f') -> str:
  return '-' if value is None else format(value, spec)


def _span(values, spec: str = '.3f') -> str:
  """'x' when all equal, else 'min-max'."""
  values = [v for v in values if v is not None]
  if not values:
    return '-'
  low, high = min(values), max(values)
  return _fmt(low, spec) if low == high else f'{_fmt(low, spec)}-{_fmt(high, spec)}'


def markdown_table(summary: dict, budget: int | None) -> str:
  """One row per label: regret at the budget (median; each seed), evaluations to the thresholds
  (the median's, and how many seeds get there), last-row feasible fraction, edit distance
  of the first and last round, Spearman(likelihood, f) over rounds and wall clock, as seed ranges."""
  at = f'at {budget:,}' if budget is not None else 'final'
  lines = [
    f'| method | seeds | best regret {at} (median; per seed) | calls to 0.25 | calls to 0 '
    '| feasible (last round) | edit distance (first -> last round) | Spearman over rounds | wall clock (s) |',
    '|---|---|---|---|---|---|---|---|---|',
  ]
  for label, group in summary.items():
    runs, median = group['runs'], group['median']
    key = 'regret_at_budget' if budget is not None else 'final_simple_regret_best'
    regret = f'{_fmt(median[key])}; {", ".join(_fmt(run[key]) for run in runs)}'
    reach = []
    for t in THRESHOLDS:
      key = f'evaluations_to_regret_{t:g}'
      reached = sum(run[key] is not None for run in runs)
      reach.append(
        f'{_fmt(median[key], ",") if median[key] is not None else "not reached"} ({reached}/{len(runs)} seeds)'
      )
    diag = [run['diagnostics'] for run in runs]
    feasible_key = (
      'frac_labelled_feasible' if 'frac_labelled_feasible' in diag[0] else 'frac_particles_feasible'
    )
    feasible = _span([d.get(feasible_key, [None])[-1] for d in diag], '.2f')
    edit = [d.get('mean_edit_hamming') for d in diag]
    edit = '-' if None in edit else f'{_span([e[0] for e in edit])} -> {_span([e[-1] for e in edit])}'
    spearman = _span([v for d in diag for v in d.get('calibration_spearman', [])], '.2f')
    clock = _span([d['wall_clock_s'] for d in diag], ',.0f')
    lines.append(
      f'| {label} | {len(runs)} | {regret} | {reach[0]} | {reach[1]} | {feasible} | {edit} | {spearman} | {clock} |'
    )
  return '\n'.join(lines) + '\n'


def _group(workdirs: Sequence[str], labels: Sequence[str] | None) -> dict[str, list[str]]:
  if not workdirs:
    raise ValueError('no workdirs given.')
  if labels is None:
    labels = [pathlib.Path(w).resolve().name for w in workdirs]
  elif len(labels) != len(workdirs):
    raise ValueError(
      f'--labels has {len(labels)} entries but --workdirs has {len(workdirs)}: '
      f'labels {list(labels)} for workdirs {list(workdirs)}.'
    )
  groups = {}
  for label, workdir in zip(labels, workdirs, strict=True):
    groups.setdefault(label, []).append(workdir)  # Legend order: first appearance.
  return groups


def _plot(curves: dict, path: pathlib.Path, *, title: str | None, budget: int | None) -> None:
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for label, (x, median, low, high, num_runs) in curves.items():
    (line,) = ax.step(x, median, where='post', label=f'{label} (n={num_runs})' if num_runs > 1 else label)
    if num_runs > 1:
      ax.fill_between(x, low, high, step='post', color=line.get_color(), alpha=0.2, linewidth=0)
  if budget is not None:
    ax.axvline(budget, color='k', linestyle='--', linewidth=1, label=f'budget ({budget})')
  ax.set_xscale('log')
  ax.set_ylim(0, 1)
  ax.set_xlabel('oracle calls')
  ax.set_ylabel('best-so-far simple regret')
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  metrics_io.save_figure(fig, path)


def compare(
  workdirs: Sequence[str],
  labels: Sequence[str] | None,
  output: str | os.PathLike,
  *,
  title: str | None = None,
  budget: int | None = None,
) -> dict:
  """Draws the runs on one plot at `output` and writes the summary next to it (`output` with .json).

  Args:
    workdirs: experiment directories, each with a metrics.jsonl.
    labels: one per workdir, or None for each workdir's basename; equal labels are seeds of one method.
    output: path of the PNG.
    title: plot title.
    budget: an oracle-call budget, drawn as a dashed line; the summary then gives the regret there.

  Returns:
    The summary: {label: {'num_runs', 'runs': [per-run dict with 'workdir'], 'median': dict}}, where
    each dict has final_num_evaluations, final_simple_regret_best, regret_at_budget (with a budget),
    evaluations_to_regret_0.25 and evaluations_to_regret_0 (null if never reached); each run's also
    has its `plateaus`.
  """
  if budget is not None and budget < 1:
    raise ValueError(f'budget must be a positive number of oracle calls, got {budget}.')
  groups = _group(workdirs, labels)
  output = pathlib.Path(output)
  summary, curves = {}, {}
  for label, label_workdirs in groups.items():
    runs = [load_run(w) for w in label_workdirs]
    x = np.unique(np.concatenate([e for e, _ in runs]))
    median, low, high = band(runs, x)
    curves[label] = (x, median, low, high, len(runs))
    summary[label] = {
      'num_runs': len(runs),
      'runs': [
        {
          'workdir': str(w),
          **_curve_summary(e, r, budget),
          'plateaus': plateaus(e, r),
          'diagnostics': run_diagnostics(w),
        }
        for w, (e, r) in zip(label_workdirs, runs, strict=True)
      ],
      # Every run is constant between points of x, so the median's own step function is exact.
      'median': _curve_summary(x, median, budget),
    }
  output.parent.mkdir(parents=True, exist_ok=True)
  _plot(curves, output, title=title, budget=budget)
  metrics_io.write_json(output.with_suffix('.json'), summary)
  table = markdown_table(summary, budget)
  output.with_suffix('.md').write_text(table)
  print(table, end='')
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  compare(_WORKDIRS.value, _LABELS.value, _OUTPUT.value, title=_TITLE.value, budget=_BUDGET.value)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdirs', 'output'])
  app.run(main)
