"""Scorers for the oracle tests, importable as `oracle_scorers:NAME` (tests/ is on sys.path): a good
one that records what it was sent, and the bad replies a user's scorer can give."""

import numpy as np

from experiments import oracle_example

calls: list[list[str]] = []  # Every batch `recorded` was sent, in order.
fail_after: list[int | None] = [None]  # `recorded` raises once this many batches have been scored.


def reset(fail_after_batches: int | None = None) -> None:
  calls.clear()
  fail_after[0] = fail_after_batches


def num_scored() -> int:
  return sum(len(batch) for batch in calls)


def recorded(sequences):
  if fail_after[0] is not None and len(calls) >= fail_after[0]:
    raise ConnectionError('the assay server went away')
  calls.append(list(sequences))
  return oracle_example.score(sequences)


def wrong_shape(sequences):
  return np.zeros((len(sequences), 1))


def strings(sequences):
  return np.array(['high'] * len(sequences))


def nan_rows(sequences):
  values = oracle_example.score(sequences)
  values[1::7] = np.nan
  return values


def raising(sequences):
  raise ConnectionError('the assay server went away')
