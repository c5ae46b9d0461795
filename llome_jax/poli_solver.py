"""This project's optimisers (the GA, LLOME, LaMBO-2) as a poli solver, for use in poli's own venv.

poli-core pins numpy<2 and JAX needs numpy>=2, so the optimisers cannot run in poli's process. This file
imports only the standard library and numpy (and poli-baselines' AbstractSolver where it is installed,
as a base class for isinstance checks; poli-baselines is not on PyPI), never JAX, and is imported in
poli's venv with the repository on sys.path (`from llome_jax.poli_solver import LlomeJaxSolver`) or
loaded by path. It runs a binary in the project's venv:

  * x0 and y0 go to WORKDIR/initial.csv (`sequence`, `value`): labelled data, not scored again;
  * the black box is served from this process on a loopback socket, in a thread; the binary runs with
    --config.oracle.target=llome_jax.poli_bridge:served, which sends each batch it scores here, so the
    poli black box (its observer, its evaluation budget) sees every evaluation, and the history records
    each one in order;
  * a step grows the binary's budget by one generation (GA, ga.num_steps) or one round (LLOME
    outer.num_rounds, LaMBO-2 num_rounds) and reruns the same command on WORKDIR/run, which resumes
    from its checkpoint and ends as an uninterrupted run would, scoring only the new generation/round.

Each rerun starts a process (JAX's start-up and compilation: seconds), so `solve(max_iter)` without
callbacks or a stopping value runs the whole budget in one go, with the same result as max_iter steps.
"""

from __future__ import annotations  # poli supports Python 3.9; this file runs in its venv.

import collections
import hmac
import importlib.util
import json
import os
import pathlib
import secrets
import socketserver
import subprocess
import threading
import warnings

import numpy as np

try:  # poli-baselines' base class, where installed; the solver's behaviour does not depend on it.
  from poli_baselines.core.abstract_solver import AbstractSolver as _Base
except ImportError:
  _Base = object


def _load_protocol():
  """poli_worker.py beside this file: the JSON-lines helpers both directions share. Loaded by path, so
  that this file works whether or not the repository is on sys.path."""
  path = pathlib.Path(__file__).with_name('poli_worker.py')
  spec = importlib.util.spec_from_file_location('llome_jax_poli_protocol', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_protocol = _load_protocol()
REPO = pathlib.Path(__file__).resolve().parent.parent
ADDRESS_ENV, TOKEN_ENV = 'LLOME_POLI_ADDRESS', 'LLOME_POLI_TOKEN'  # As llome_jax.poli_bridge reads them.
TARGET = 'llome_jax.poli_bridge:served'
# Per binary: the config key that a step grows, the key of best.json that counts what was run, and the
# config a solver uses unless told otherwise.
BINARIES = {
  'ga_baseline': ('ga.num_steps', 'num_generations', 'experiments/configs/oracle_ga.py'),
  'llome': ('outer.num_rounds', 'num_rounds', 'experiments/configs/oracle_llome.py'),
  'lambo2': ('num_rounds', 'num_rounds', 'experiments/configs/lambo2_defaults.py'),
}


class SolverError(RuntimeError):
  """The binary failed: the black box raised (its message first), or the run stopped otherwise."""


class _Handler(socketserver.BaseRequestHandler):
  """One connection of the binary: score requests, answered by the solver's black box."""

  def handle(self):
    solver = self.server.solver
    reader = self.request.makefile('r', encoding='utf-8')
    writer = self.request.makefile('w', encoding='utf-8')
    while True:
      request = _protocol.receive(reader)
      if request is None:
        return
      if not hmac.compare_digest(str(request.get('token', '')), solver._token):
        _protocol.send(writer, {'ok': False, 'error': 'PermissionError: wrong token'})
        return
      try:
        if request.get('op') != 'score':
          raise ValueError(f'unknown request {request.get("op")!r}.')
        reply = {'ok': True, 'values': _protocol.encode_values(solver._score(request['sequences']))}
      except Exception as error:
        solver._error = error
        reply = _protocol.error_reply(error)
      _protocol.send(writer, reply)


class _Server(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True


class LlomeJaxSolver(_Base):
  """A poli solver that runs this project's binary `binary` ('ga_baseline', 'llome' or 'lambo2') on the
  black box, from x0 (with y0, or scored first when y0 is None).

  As poli-baselines' StepByStepSolver: `history` ({'x': [...], 'y': [...]}, one [1, L] (or [1, 1]) row
  per evaluation, x0/y0 first), `iteration`, `step() -> (x, y)`, `solve(max_iter) -> (best x, best y)`,
  `get_best_solution`, `get_best_performance`, `get_history_as_arrays`. One difference: the binary
  scores its own candidates (the GA selects on their values), so `next_candidate()` runs the next
  generation and returns what it scored, and `step()` returns those values without calling the black
  box again.

  `x0` fixes the layout of the black box's inputs and of the history: [n, L] of characters, [n, 1] of
  whole strings, or [n] of strings. `alphabet` (a string of single characters) defaults to the black
  box's info.alphabet, else to x0's characters (with a warning: the optimiser then never leaves them).
  `project_python` is the project venv's python, `workdir` holds initial.csv, binary.log and run/ (the
  binary's workdir). `overrides` are more --config flags ('--config.ga.num_particles=64'). `nan_value`,
  when set, is what the binary gets for a NaN from the black box (the history keeps the NaN); unset, a
  NaN stops the run. A solver made on a workdir holding a run continues it: its history then starts with
  x0/y0 and the run's best so far (best.json).
  """

  def __init__(
    self,
    black_box,
    x0,
    y0=None,
    *,
    project_python: str,
    workdir: str,
    binary: str = 'ga_baseline',
    config: str | None = None,
    overrides=(),
    alphabet: str | None = None,
    seed: int | None = None,
    nan_value: float | None = None,
    project_root: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
  ):
    if binary not in BINARIES:
      raise ValueError(f'binary={binary!r} is not one of {sorted(BINARIES)}.')
    x0 = np.asarray(x0)
    if _Base is not object:
      super().__init__(black_box, x0, y0)
    self.black_box, self.x0, self.y0 = black_box, x0, y0
    self.binary = binary
    self.budget_key, self.count_key, default_config = BINARIES[binary]
    self.project_root = pathlib.Path(project_root).resolve() if project_root else REPO
    self.config = config or default_config
    self.project_python = os.path.abspath(project_python)  # Not resolve: a venv's python is a symlink.
    self.workdir = pathlib.Path(workdir).resolve()
    self.overrides = tuple(overrides)
    self.seed = seed
    self.nan_value = nan_value
    self.env = dict(env or {})
    self.timeout = timeout
    self._check_overrides()
    self.layout = self._layout(x0)
    sequences = _protocol.from_poli(x0)
    self.alphabet = self._alphabet(alphabet, sequences)
    values = self._initial_values(y0, len(sequences))
    self.history = {'x': [], 'y': []}
    self.iteration = 0
    self.summary: dict | None = None
    self._lock = threading.Lock()
    self._token = secrets.token_hex(16)
    self._server: _Server | None = None
    self._error: Exception | None = None
    self._batch: list[tuple[str, float]] = []
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._write_initial(sequences, values)
    if values is not None:
      self._record(sequences, values)
    best = self.run_dir / 'best.json'
    if best.exists():  # A run to continue.
      self.summary = json.loads(best.read_text())
      self.iteration = int(self.summary[self.count_key])
      self._record([self.summary['best_sequence']], np.array([self.summary['best_value']]))

  # ------------------------------------------------------------------ Setup.
  @property
  def run_dir(self) -> pathlib.Path:
    return self.workdir / 'run'

  @property
  def log_path(self) -> pathlib.Path:
    return self.workdir / 'binary.log'

  def _check_overrides(self) -> None:
    owned = ('oracle.target', 'oracle.alphabet', 'oracle.initial_sequences', self.budget_key, 'seed')
    for flag in self.overrides:
      key = flag.removeprefix('--config.').partition('=')[0]
      if not flag.startswith('--config.') or '=' not in flag:
        raise ValueError(f'override {flag!r} is not --config.KEY=VALUE.')
      if key in owned:
        raise ValueError(f'override {flag!r}: the solver sets {key} (alphabet=, seed=, steps).')

  @staticmethod
  def _layout(x0: np.ndarray) -> str:
    if x0.dtype.kind != 'U':
      raise ValueError(f'x0 of dtype {x0.dtype}: this solver takes poli sequences, arrays of strings.')
    if x0.ndim == 1:
      return 'flat'
    if x0.ndim == 2 and x0.shape[1] == 1:  # Whole strings (or sequences of one character: the same).
      return 'strings'
    if x0.ndim == 2:
      if any(len(c) != 1 for c in x0.ravel().tolist()):
        raise ValueError('x0 holds tokens of several characters; the optimisers edit single characters.')
      return 'characters'
    raise ValueError(f'x0 of shape {x0.shape}: poli sequences are [n, L], [n, 1] or [n].')

  def _alphabet(self, alphabet: str | None, sequences: list[str]) -> str:
    if alphabet is None:
      info = getattr(self.black_box, 'info', None)
      tokens = [t for t in (getattr(info, 'alphabet', None) or []) if t]
      if tokens and all(len(t) == 1 for t in tokens):
        alphabet = ''.join(tokens)
      else:
        alphabet = ''.join(sorted(set(''.join(sequences))))
        warnings.warn(
          f'LlomeJaxSolver: the black box states no single-character alphabet; using the characters of x0 '
          f'({alphabet!r}). Pass alphabet= to let the optimiser use others.',
          stacklevel=3,
        )
    if len(set(alphabet)) != len(alphabet) or len(alphabet) < 2 or any(c.isspace() for c in alphabet):
      raise ValueError(f'alphabet {alphabet!r}: at least 2 distinct characters, no whitespace.')
    stray = sorted(set(''.join(sequences)) - set(alphabet))
    if stray:
      raise ValueError(f'x0 holds {stray}, which are not in the alphabet {alphabet!r}.')
    return alphabet

  def _initial_values(self, y0, num_rows: int) -> np.ndarray | None:
    if y0 is None:
      return None
    values = np.asarray(y0, np.float64)
    if values.shape not in ((num_rows, 1), (num_rows,)):
      raise ValueError(f'y0 of shape {values.shape} for {num_rows} rows of x0; expected ({num_rows}, 1).')
    values = values.reshape(num_rows)
    if np.isnan(values).any() and self.nan_value is None:
      raise ValueError('y0 holds NaN; pass nan_value= (say -inf: infeasible) to say what the optimiser sees.')
    if (values == np.inf).any():
      raise ValueError('y0 holds +inf.')
    return values

  def _write_initial(self, sequences: list[str], values: np.ndarray | None) -> None:
    """initial.csv: x0 with y0 (so they are labelled data), or without values (the binary scores them).
    A workdir holding a run started from other initial sequences is refused."""
    lines = ['name,sequence' + (',value' if values is not None else '')]
    for i, sequence in enumerate(sequences):
      if values is None:
        lines.append(f'x0_{i},{sequence}')
      else:
        value = self.nan_value if np.isnan(values[i]) else values[i]
        lines.append(f'x0_{i},{sequence},{"-inf" if value == -np.inf else repr(float(value))}')
    text = '\n'.join(lines) + '\n'
    path = self.workdir / 'initial.csv'
    if path.exists() and path.read_text() != text and (self.run_dir / 'config.json').exists():
      raise ValueError(
        f'{self.workdir} holds a run started from other initial sequences ({path}); use another workdir.'
      )
    path.write_text(text)

  # ------------------------------------------------------------------ The black box, served.
  def _to_poli(self, sequences: list[str]) -> np.ndarray:
    if self.layout == 'characters':
      return _protocol.to_poli(sequences, 'characters')
    array = np.array(sequences, dtype=str)
    return array if self.layout == 'flat' else array.reshape(-1, 1)

  def _record(self, sequences: list[str], values: np.ndarray) -> None:
    x = self._to_poli(sequences).reshape(len(sequences), -1)
    self.history['x'] += [row.reshape(1, -1) for row in x]
    self.history['y'] += [np.array([[value]]) for value in np.asarray(values, np.float64)]

  def _score(self, sequences: list[str]) -> np.ndarray:
    """Called from the server's thread for each batch the binary scores."""
    sequences = [str(s) for s in sequences]
    with self._lock:
      values = _protocol.flatten_values(self.black_box(self._to_poli(sequences)), len(sequences))
      self._record(sequences, values)
      self._batch += [(sequences[i], float(values[i])) for i in range(len(sequences))]
    if self.nan_value is not None:
      values = np.where(np.isnan(values), self.nan_value, values)
    return values

  def _serve(self) -> str:
    if self._server is None:
      self._server = _Server(('127.0.0.1', 0), _Handler)
      self._server.solver = self
      threading.Thread(target=self._server.serve_forever, name='llome-poli-solver', daemon=True).start()
    host, port = self._server.server_address[:2]
    return f'{host}:{port}'

  def close(self) -> None:
    """Stops serving the black box (a later step serves it again)."""
    if self._server is not None:
      self._server.shutdown()
      self._server.server_close()
      self._server = None

  def __del__(self):
    try:
      self.close()
    except Exception:
      pass

  # ------------------------------------------------------------------ Runs.
  def command(self, budget: int) -> list[str]:
    """The binary's command line for a budget of `budget` generations (GA) or rounds."""
    args = [
      self.project_python,
      '-m',
      f'experiments.{self.binary}',
      f'--config={self.config}',
      f'--workdir={self.run_dir}',
      f'--config.oracle.target={TARGET}',
      f'--config.oracle.alphabet={self.alphabet}',
      f'--config.oracle.initial_sequences={self.workdir / "initial.csv"}',
      f'--config.{self.budget_key}={budget}',
    ]
    if self.seed is not None:
      args.append(f'--config.seed={self.seed}')
    return args + list(self.overrides)

  def _run(self, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Runs the binary to `budget`; returns what it scored, as (x in x0's layout, y [b, 1])."""
    env = dict(os.environ) | self.env | {ADDRESS_ENV: self._serve(), TOKEN_ENV: self._token}
    self._batch, self._error = [], None
    with open(self.log_path, 'a', encoding='utf-8') as log:
      log.write(f'$ {" ".join(self.command(budget))}\n')
      log.flush()
      process = subprocess.run(
        self.command(budget),
        cwd=self.project_root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        timeout=self.timeout,
      )
    if process.returncode != 0:
      tail = ''.join(collections.deque(open(self.log_path, encoding='utf-8'), maxlen=15))
      cause = f'the black box raised {type(self._error).__name__}: {self._error}; ' if self._error else ''
      raise SolverError(
        f'{self.binary} stopped ({cause}exit code {process.returncode}); the end of {self.log_path}:\n{tail}'
      ) from self._error
    self.summary = json.loads((self.run_dir / 'best.json').read_text())
    self.iteration = int(self.summary[self.count_key])
    sequences = [s for s, _ in self._batch]
    x = self._to_poli(sequences) if sequences else np.zeros((0,) + self.x0.shape[1:], self.x0.dtype)
    return x, np.array([v for _, v in self._batch], np.float64).reshape(-1, 1)

  def next_candidate(self) -> np.ndarray:
    """Runs the next generation (GA) or round and returns the sequences it scored (already evaluated:
    they are in the history, and `step()` is the call that returns their values too)."""
    return self.step()[0]

  def step(self) -> tuple[np.ndarray, np.ndarray]:
    """One more generation (GA) or round: the binary resumes and scores only the new one. Returns its
    (x, y); the first step also returns x0's values when y0 was not given."""
    return self._run(self.iteration + 1)

  def solve(
    self,
    max_iter: int = 100,
    n_initial_points: int = 0,
    seed: int | None = None,
    break_at_performance: float | None = None,
    verbose: bool = False,
    pre_step_callbacks=None,
    post_step_callbacks=None,
  ) -> tuple[np.ndarray, np.ndarray]:
    """`max_iter` more generations (or rounds); returns (best x [1, ...], best y [1]), as poli-baselines'
    StepByStepSolver. Without callbacks, stopping value or verbose output, the budget runs in one
    binary call (resuming is exact, so it ends where max_iter steps would). `seed` sets the binary's
    config.seed before its first run; a run, once started, keeps its seed."""
    if n_initial_points:
      raise ValueError('n_initial_points: the initial points are x0 (scored first when y0 is None).')
    if seed is not None and seed != self.seed:
      if self.summary is not None:
        raise ValueError(f'seed={seed}: the run in {self.run_dir} started with seed {self.seed}.')
      self.seed = seed
    if not (pre_step_callbacks or post_step_callbacks or verbose or break_at_performance is not None):
      if max_iter > 0:
        self._run(self.iteration + max_iter)
      return self.get_best_solution(), self.get_best_performance()
    for i in range(max_iter):
      for callback in pre_step_callbacks or ():
        callback(self)
      _, y = self.step()
      for callback in post_step_callbacks or ():
        callback(self)
      if verbose:
        print(f'Iteration {i}: {y.max(initial=-np.inf)}, best so far: {self.get_best_performance()}')
      if break_at_performance is not None and (self.get_best_performance() >= break_at_performance).all():
        break
    return self.get_best_solution(), self.get_best_performance()

  # ------------------------------------------------------------------ History.
  def get_history_as_arrays(self, penalize_nans_with: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate(self.history['x'], axis=0)
    y = np.concatenate(self.history['y'], axis=0)
    if penalize_nans_with is not None:
      y = np.where(np.isnan(y), penalize_nans_with, y)
    return x, y

  def get_best_solution(self, top_k: int = 1) -> np.ndarray:
    """The top_k best rows of the history, best last (poli-baselines' order)."""
    x, y = self.get_history_as_arrays(penalize_nans_with=-np.inf)
    order = np.argsort(y.ravel(), kind='stable')
    return x[order[-min(top_k, len(order)) :]]

  def get_best_performance(self, until: int | None = None) -> np.ndarray:
    """The best value so far, [1] (NaN ignored), over the first `until` evaluations when given."""
    y = np.concatenate(self.history['y'][:until], axis=0)
    return np.nanmax(y, axis=0)

  def __repr__(self) -> str:
    return (
      f'LlomeJaxSolver(binary={self.binary!r}, workdir={str(self.workdir)!r}, iteration={self.iteration})'
    )
