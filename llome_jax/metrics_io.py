"""Experiment outputs: metrics as JSON lines, files written atomically, a regret-vs-evaluations plot."""

import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping


def _plain(value):
  value = value.item() if hasattr(value, 'item') else value
  if isinstance(value, float) and not math.isfinite(value):
    return None  # JSON has no inf/nan; readers see null.
  return value


def plain_row(row: Mapping) -> dict:
  """Python scalars for a row of NumPy/JAX scalars (inf and nan become None)."""
  return {key: _plain(value) for key, value in row.items()}


def append_jsonl(path: pathlib.Path, rows: Iterable[Mapping]) -> None:
  """Appends one JSON object per row and flushes, so a killed run keeps every finished row."""
  with open(path, 'a') as f:
    for row in rows:
      f.write(json.dumps(plain_row(row)) + '\n')
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path: pathlib.Path) -> list[dict]:
  """The rows of a JSON-lines file. A last line without its newline is a write that a kill cut short
  (`append_jsonl` ends every row with one) and is dropped; a malformed line elsewhere is an error
  naming the file and line."""
  with open(path) as f:
    lines = f.read().split('\n')
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as error:
      if number == len(lines):  # No newline after it: cut short.
        break
      raise ValueError(f'{path}, line {number}, is not a JSON object ({error}).') from None
  return rows


def read_rows(path: pathlib.Path, key: str, count: int) -> list[dict]:
  """The rows whose `key` is 0..count-1, in order, from a metrics file that a resumed run continues;
  rows past `count` (written after the last checkpoint, before a crash) are dropped. Raises ValueError
  if any of the `count` rows is missing."""
  rows = read_jsonl(path) if path.exists() else []
  rows = [row for row in rows if row.get(key, count) < count]
  if [row[key] for row in rows] != list(range(count)):
    raise ValueError(
      f'{path} does not hold the rows {key} = 0..{count - 1} that the last checkpoint has completed, so '
      'the run cannot resume; pass --overwrite to start afresh.'
    )
  return rows


def rewrite_jsonl(path: pathlib.Path, rows: Iterable[Mapping]) -> None:
  """Replaces a JSON-lines file with `rows`, atomically."""
  tmp = path.with_name(path.name + '.tmp')
  tmp.unlink(missing_ok=True)
  append_jsonl(tmp, rows)
  os.replace(tmp, path)


def write_json(path: pathlib.Path, obj) -> None:
  """Writes via a temporary file and rename, so an existing file is never left half-written."""
  text = json.dumps(obj, indent=2, sort_keys=True)  # Fails before anything is written.
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(text)
  os.replace(tmp, path)


def _log_x_axes(title: str, ylabel: str):
  """A figure with one axes: oracle calls on a log x axis, a grid, the title."""
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
  ax.set_xscale('log')
  ax.set_xlabel('oracle calls')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  return fig, ax


def save_figure(fig, path: pathlib.Path) -> None:
  """Writes the figure as PNG atomically (a reader never sees half a file) and frees it."""
  from matplotlib import pyplot as plt

  fig.tight_layout()
  tmp = path.with_name('tmp_' + path.name)
  fig.savefig(tmp, format='png')
  plt.close(fig)
  os.replace(tmp, path)


def plot_regret(
  rows: list[dict],
  path: pathlib.Path,
  *,
  title: str,
  last_key: str = 'simple_regret_last',
  last_label: str = 'this generation',
) -> None:
  """Best-so-far simple regret against cumulative oracle calls (log-x), as the LLOME paper plots it,
  with `last_key` (the regret of each generation or round alone) beside it."""
  evaluations = [row['num_evaluations'] for row in rows]

  def series(key):  # A null (an infeasible-only start of a scorer with floor -inf) is a gap.
    return [math.nan if row[key] is None else row[key] for row in rows]

  fig, ax = _log_x_axes(title, 'simple regret')
  ax.plot(evaluations, series('simple_regret_best'), label='best so far')
  ax.plot(evaluations, series(last_key), alpha=0.5, label=last_label)
  ax.set_ylim(-0.02, 1.02)
  ax.legend()
  save_figure(fig, path)


def plot_best_value(rows: list[dict], path: pathlib.Path, *, title: str) -> None:
  """Best value so far against cumulative oracle calls (log-x): the plot for a scorer whose optimum is
  unknown, where regret is undefined."""
  points = [(row['num_evaluations'], row['best_value']) for row in rows if row.get('best_value') is not None]
  fig, ax = _log_x_axes(title, 'best value')
  ax.plot([x for x, _ in points], [y for _, y in points], label='best so far')
  save_figure(fig, path)
