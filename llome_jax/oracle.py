"""The user's own black box as the oracle: alphabets, initial sequences from FASTA or CSV, a scorer
named by an import path, and the bridge that calls it from inside jitted programs.

A scorer is a plain Python function `score(sequences: list[str]) -> array [len(sequences)]`, higher is
better, -inf marking an infeasible sequence. It runs on the host, outside jit: `jit_objective` wraps it
in a `jax.experimental.io_callback`, so a scanned program (GA generations, LLOME rounds) calls it in
batches between its traced steps. io_callback, not pure_callback: scoring is a side effect (a lab
batch, a paid API), which XLA must neither drop nor repeat. Outside a shard_map the callback runs once,
on one device, whatever the mesh, so each labelled sequence is scored exactly once.

Every reply is checked before the algorithm sees it: the shape, a numeric dtype, and no NaN (the error
names the rows). A failure (the scorer raised, or its reply failed a check) is not raised inside the
compiled program: on a multi-device mesh the other devices would wait at their next collective for the
one that raised, and XLA aborts the process. The failure is kept on the `HostOracle` (`error`), this and
every later batch of the program come back -inf without calling the scorer, and the caller discards the
program's results and raises it (`raise_if_failed`), with the scorer's own message.
"""

import csv
import dataclasses
import functools
import importlib
import importlib.util
import math
import pathlib
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from llome_jax import round_metrics, sharding
from llome_jax.test_functions import ehrlich

ALPHABETS = {'protein': 'ACDEFGHIKLMNPQRSTVWY', 'dna': 'ACGT', 'rna': 'ACGU'}
_FASTA_SUFFIXES = ('.fa', '.fasta', '.faa', '.fna', '.fas')


class OracleError(RuntimeError):
  """The scorer failed or answered something the optimisers cannot use."""


def resolve_alphabet(name: str) -> str:
  """'protein' (the 20 amino acids), 'dna', 'rna', or the literal characters ('ACGT'); token i is
  character i."""
  if name in ALPHABETS:
    return ALPHABETS[name]
  if not name:
    raise ValueError(
      "oracle.alphabet is empty: name one ('protein', 'dna', 'rna') or give the characters ('ACGT')."
    )
  repeated = sorted({c for c in name if name.count(c) > 1})
  if repeated:
    raise ValueError(f'oracle.alphabet={name!r} repeats the characters {repeated}.')
  if len(name) < 2:
    raise ValueError(f'oracle.alphabet={name!r} has fewer than 2 characters: nothing to optimise.')
  if any(c.isspace() for c in name):
    raise ValueError(f'oracle.alphabet={name!r} holds whitespace.')
  return name


def load_target(target: str) -> Callable:
  """The function named by 'MODULE:FUNCTION' (an importable module) or 'PATH.py:FUNCTION'."""
  module_name, sep, function_name = target.rpartition(':')
  if not sep or not module_name or not function_name:
    raise ValueError(f'oracle.target={target!r} is not MODULE:FUNCTION (or PATH.py:FUNCTION).')
  if module_name.endswith('.py'):
    path = pathlib.Path(module_name)
    if not path.is_file():
      raise ValueError(f'oracle.target={target!r}: {path} is not a file.')
    spec = importlib.util.spec_from_file_location(f'llome_oracle_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    try:
      spec.loader.exec_module(module)
    except Exception as error:
      raise ValueError(f'oracle.target={target!r}: running {path} raised {error!r}.') from error
  else:
    if '' not in sys.path and '.' not in sys.path:  # `python -m` puts the working directory first.
      sys.path.insert(0, '')
    try:
      module = importlib.import_module(module_name)
    except ImportError as error:
      raise ValueError(f'oracle.target={target!r}: cannot import {module_name!r} ({error}).') from error
  function = getattr(module, function_name, None)
  if function is None:
    raise ValueError(f'oracle.target={target!r}: {module_name!r} has no attribute {function_name!r}.')
  if not callable(function):
    raise ValueError(f'oracle.target={target!r}: {function_name!r} is not callable.')
  return function


@dataclasses.dataclass(frozen=True)
class InitialSequences:
  """Initial sequences as tokens, with the values given beside them (NaN where none was given)."""

  tokens_NxL: np.ndarray  # int32
  values_N: np.ndarray  # float32; NaN: no value given, so the sequence is scored (an oracle call).
  names: tuple[str, ...]

  @property
  def labelled_N(self) -> np.ndarray:
    return ~np.isnan(self.values_N)


def _fasta_records(text: str, path) -> list[tuple[str, str, None]]:
  records, name, chunks = [], None, []
  for number, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if not line or line.startswith(';'):
      continue
    if line.startswith('>'):
      if name is not None:
        records.append((name, ''.join(chunks), None))
      name, chunks = line[1:].strip() or f'record {len(records) + 1}', []
    elif name is None:
      raise ValueError(f'{path}, line {number}: sequence data before the first ">" header (not FASTA).')
    else:
      chunks.append(''.join(line.split()))
  if name is not None:
    records.append((name, ''.join(chunks), None))
  return records


def _csv_records(text: str, path) -> list[tuple[str, str, float | None]]:
  reader = csv.DictReader(text.splitlines())
  fields = [f.strip() for f in reader.fieldnames or []]
  if 'sequence' not in fields:
    raise ValueError(f'{path}: a CSV of initial sequences needs a "sequence" column; its header is {fields}.')
  records = []
  for number, row in enumerate(reader, 2):  # Line 1 is the header.
    row = {k.strip(): (v or '').strip() for k, v in row.items() if k is not None}
    name = row.get('name') or row.get('id') or f'line {number}'
    value = None
    if row.get('value'):
      try:
        value = float(row['value'])
      except ValueError:
        raise ValueError(f'{path}, line {number}: value {row["value"]!r} is not a number.') from None
      if math.isnan(value) or value == math.inf:
        raise ValueError(f'{path}, line {number}: value {row["value"]!r} (use -inf for infeasible).')
    records.append((name, row['sequence'], value))
  return records


def read_initial_sequences(path: str, alphabet: str) -> InitialSequences:
  """Reads FASTA (by suffix, or a first line starting with '>') or CSV (a `sequence` column and an
  optional `value` column; rows with a value are labelled data, no oracle call). Sequences must all
  have one length and use only the alphabet (named alphabets also accept lower case). Raises
  ValueError naming the file, the record and the character at fault."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise ValueError(f'oracle.initial_sequences={path!r} is not a file.')
  text = file.read_text()
  if not text.strip():
    raise ValueError(f'oracle.initial_sequences={path!r} is empty.')
  is_fasta = file.suffix.lower() in _FASTA_SUFFIXES or text.lstrip().startswith('>')
  records = _fasta_records(text, file) if is_fasta else _csv_records(text, file)
  if not records:
    raise ValueError(f'oracle.initial_sequences={path!r} holds no sequence.')
  upper = alphabet.upper() == alphabet and alphabet in ALPHABETS.values()
  index = {c: i for i, c in enumerate(alphabet)}
  length = len(records[0][1])
  tokens, values, names = [], [], []
  for name, sequence, value in records:
    sequence = sequence.upper() if upper else sequence
    if not sequence:
      raise ValueError(f'{file}: record {name!r} is an empty sequence.')
    if len(sequence) != length:
      raise ValueError(
        f'{file}: record {name!r} has length {len(sequence)}, the first record {records[0][0]!r} has '
        f'{length}; every initial sequence must have the same length (edits keep the length).'
      )
    for position, character in enumerate(sequence):
      if character not in index:
        raise ValueError(
          f'{file}: record {name!r}, position {position + 1}: {character!r} is not in the alphabet '
          f'{alphabet!r}.'
        )
    tokens.append([index[c] for c in sequence])
    values.append(math.nan if value is None else value)
    names.append(name)
  return InitialSequences(np.asarray(tokens, np.int32), np.asarray(values, np.float32), tuple(names))


def decode(tokens_NxL, alphabet: str) -> list[str]:
  """Token rows as strings of the alphabet."""
  table = np.asarray(list(alphabet))
  return [''.join(row) for row in table[np.asarray(tokens_NxL)]]


def check_scores(scores, sequences: Sequence[str]) -> np.ndarray:
  """A scorer's reply as float32 [len(sequences)]; OracleError for a wrong shape, a non-numeric dtype,
  NaN (naming the rows) or +inf."""
  try:
    array = np.asarray(scores)
  except Exception as error:
    raise OracleError(f'the scorer returned {type(scores).__name__}, not an array ({error}).') from None
  if array.dtype.kind not in 'biuf':
    raise OracleError(f'the scorer returned dtype {array.dtype}, not numbers.')
  if array.shape != (len(sequences),):
    raise OracleError(
      f'the scorer returned shape {array.shape} for {len(sequences)} sequences; expected ({len(sequences)},).'
    )
  array = array.astype(np.float32)
  for bad, what in ((np.isnan(array), 'NaN'), (array == np.inf, '+inf')):
    if bad.any():
      rows = np.flatnonzero(bad)
      shown = ', '.join(f'{i} ({sequences[i]})' for i in rows[:5])
      more = f' and {len(rows) - 5} more' if len(rows) > 5 else ''
      raise OracleError(
        f'the scorer returned {what} for rows {shown}{more}; return -inf for infeasible sequences.'
      )
  return array


class HostOracle:
  """A scorer over strings, called on token rows; counts what it scored and keeps the last failure."""

  def __init__(self, score: Callable, alphabet: str, name: str = 'scorer'):
    self.score = score
    self.alphabet = alphabet
    self.name = name
    self.num_scored = 0
    self.error: Exception | None = None

  def __call__(self, tokens_NxL) -> np.ndarray:
    """Scores of token rows; raises OracleError (and keeps it) if the scorer fails."""
    sequences = decode(tokens_NxL, self.alphabet)
    if not sequences:
      return np.zeros((0,), np.float32)
    try:
      scores = self.score(sequences)
    except Exception as error:
      self.error = OracleError(f'{self.name} raised {type(error).__name__}: {error}')
      self.error.__cause__ = error
      raise self.error from error
    try:
      scores = check_scores(scores, sequences)
    except OracleError as error:
      self.error = OracleError(f'{self.name}: {error}')
      raise self.error from None
    self.num_scored += len(sequences)
    return scores

  def masked(self, tokens_NxL, where_N) -> np.ndarray:
    """Scores of the rows where `where_N`; -inf elsewhere (those rows are not sent). Never raises: after
    a failure (kept in `error`) every row is -inf and the scorer is not called."""
    tokens_NxL, where_N = np.asarray(tokens_NxL), np.asarray(where_N, bool)
    out = np.full(where_N.shape, -np.inf, np.float32)
    if where_N.any() and self.error is None:
      try:
        out[where_N] = self(tokens_NxL[where_N])
      except OracleError:
        pass  # Kept in self.error; the caller raises it once the program has finished.
    return out

  def jit_objective(self) -> Callable:
    """`evaluate(x_NxL, where_N=None) -> f32 [N]` for use inside jit: one io_callback per call, on the
    rows where `where_N` (all rows when None); the others get -inf and are not scored."""

    def evaluate(x_NxL, where_N=None):
      if where_N is None:
        where_N = jnp.ones(x_NxL.shape[:1], bool)
      shape = jax.ShapeDtypeStruct(x_NxL.shape[:1], jnp.float32)
      return io_callback(self.masked, shape, x_NxL, where_N, ordered=False)

    return evaluate

  def raise_if_failed(self, context: str) -> None:
    """Re-raises a kept scorer failure as OracleError, with `context` (what survives, how to resume)."""
    if self.error is not None:
      error, self.error = self.error, None
      raise OracleError(f'{error} {context}') from error.__cause__


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
  """What an optimiser needs to know about its oracle, for an Ehrlich function or a user's scorer.

  `evaluate` (derived from `ehrlich_params` or `host`) is row-wise and jittable. An Ehrlich function is evaluated in XLA, split across a mesh
  by `sharding.per_shard`; a user's scorer (`host`) goes through one io_callback per batch. Regret is
  `optimal_value - max(f, value_floor)`: an Ehrlich function counts an infeasible sequence as f = 0
  (floor 0, holo's convention); a scorer's values may be negative, so its floor is -inf, and its
  optimal value, when unknown, is NaN, which makes every regret NaN (null in metrics.jsonl).
  """

  num_states: int
  dim: int
  initial_KxL: np.ndarray | None = None  # The starting sequences: the GA's population cycles over them.
  initial_values_K: np.ndarray | None = None  # Given values, NaN where the scorer must be called.
  optimal_value: float = 1.0
  value_floor: float = 0.0
  host: HostOracle | None = None
  alphabet: str | None = None
  name: str = 'Ehrlich'
  ehrlich_params: ehrlich.EhrlichParams | None = None  # Set for an Ehrlich problem, `host` otherwise.

  @property
  def evaluate(self) -> Callable:
    """f32 [N] of int [N, L]: the Ehrlich function, or the scorer on the host (outside jit)."""
    return self.host if self.host is not None else functools.partial(ehrlich.evaluate, self.ehrlich_params)

  def evaluator(self, mesh=None) -> Callable:
    """`evaluate(x_NxL, where_N=None)` for jitted code: rows outside `where_N` come back -inf and, for
    a user's scorer, are never sent to it. An Ehrlich function on a mesh evaluates each device's rows
    there; a scorer is called once per batch, on one device, whatever the mesh."""
    if self.host is not None:
      scorer = self.host.jit_objective()
      if mesh is None:
        return scorer

      def gathered(x_NxL, where_N=None):  # Gathered first: the callback runs on one device.
        x_NxL = jax.lax.with_sharding_constraint(x_NxL, sharding.replicated(mesh))
        return scorer(x_NxL, where_N)

      return gathered

    batch = self.evaluate if mesh is None else sharding.per_shard(mesh, self.evaluate)

    def evaluate(x_NxL, where_N=None):
      values = batch(x_NxL)
      return values if where_N is None else jnp.where(where_N, values, -jnp.inf)

    return evaluate

  def regret(self, value):
    """Simple regret of a best value (jittable)."""
    return jnp.float32(self.optimal_value) - jnp.maximum(value, jnp.float32(self.value_floor))

  def regrets(self, values_N, where_N, best_so_far_regret):
    """`round_metrics.regrets` with this problem's optimum and floor."""
    return round_metrics.regrets(
      values_N, where_N, best_so_far_regret, optimal_value=self.optimal_value, value_floor=self.value_floor
    )

  def decode(self, tokens_NxL) -> list[str] | None:
    """Token rows as strings, for a user's alphabet; None for an Ehrlich function (tokens are states)."""
    return None if self.alphabet is None else decode(tokens_NxL, self.alphabet)


def ehrlich_problem(params, dim: int, initial_L=None) -> Problem:
  """An Ehrlich function (llome_jax.test_functions.ehrlich) as a Problem; optimum 1."""
  initial = None if initial_L is None else np.asarray(initial_L)[None]
  return Problem(params.num_states, dim, initial, ehrlich_params=params)


def host_problem(
  score: Callable,
  alphabet: str,
  initial: InitialSequences,
  *,
  optimal_value: float | None = None,
  name: str = 'scorer',
) -> Problem:
  """A user's scorer over strings of `alphabet` as a Problem, starting from `initial`."""
  host = HostOracle(score, alphabet, name)
  return Problem(
    num_states=len(alphabet),
    dim=initial.tokens_NxL.shape[1],
    initial_KxL=initial.tokens_NxL,
    initial_values_K=initial.values_N,
    optimal_value=math.nan if optimal_value is None else float(optimal_value),
    value_floor=-math.inf,
    host=host,
    alphabet=alphabet,
    name=name,
  )


def score_initial(problem: Problem) -> tuple[np.ndarray, int]:
  """The initial sequences' values: those given, and the scorer's for the rest (oracle calls).

  Returns (values [K], number of sequences scored)."""
  values = np.array(problem.initial_values_K, np.float32)
  missing = np.isnan(values)
  if missing.any():
    values[missing] = problem.host(problem.initial_KxL[missing])
  return values, int(missing.sum())
