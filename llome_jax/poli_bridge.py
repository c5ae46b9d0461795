r"""poli black boxes as this project's oracle, across a process boundary.

poli-core pins numpy<2 and JAX needs numpy>=2: poli can never be installed beside this project, nor this
project imported beside poli. So a poli black box runs in a worker process with the python of a venv
that has poli (bash benchmarks/make_poli_venv.sh makes .venv-poli), started on first use, running
llome_jax/poli_worker.py by path, and this module talks to it over its stdin/stdout (JSON lines; the
protocol is in poli_worker.py). Nothing here imports poli or JAX.

A scorer module for `--config.oracle.target=PATH.py:score` is then three lines:

  from llome_jax import poli_bridge

  score = poli_bridge.remote_black_box('.venv-poli/bin/python', 'aloha')

and the black box's x0 becomes the initial sequences with

  .venv/bin/python -m llome_jax.poli_bridge x0 --python=.venv-poli/bin/python --name=aloha --out=x0.fasta

which also prints the --config.oracle.alphabet to pass (the black box's own alphabet).

The other direction, this project's optimisers as a poli solver (llome_jax/poli_solver.py, run in poli's
venv), runs the binaries with `--config.oracle.target=llome_jax.poli_bridge:served`: `served` sends the
sequences back to the solver's process, which holds the black box, over a localhost socket.
"""

import argparse
import collections
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import weakref

import numpy as np

from llome_jax import poli_worker

WORKER = pathlib.Path(__file__).with_name('poli_worker.py')
# Set by llome_jax.poli_solver for the binary it starts: where `served` finds the solver's black box.
ADDRESS_ENV = 'LLOME_POLI_ADDRESS'  # HOST:PORT on the loopback interface.
TOKEN_ENV = 'LLOME_POLI_TOKEN'  # A secret the solver's server checks on every request.
_FASTA_SUFFIXES = ('.fa', '.fasta', '.faa', '.fna', '.fas')


class PoliBridgeError(RuntimeError):
  """The poli black box failed, or its worker could not be started or died."""


def _shutdown(process: subprocess.Popen, timeout: float = 5.0) -> None:
  """Closes the worker's input (it exits at end of input), then kills it if it has not exited."""
  if process.poll() is None:
    try:
      poli_worker.send(process.stdin, {'op': 'close'})
    except (OSError, ValueError):
      pass
  for stream in (process.stdin, process.stdout):
    try:
      stream.close()
    except OSError:
      pass
  try:
    process.wait(timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()


def _forward_stderr(stream, tail: collections.deque, prefix: str) -> None:
  """A worker's stderr (poli's messages, tracebacks) goes to ours, and its tail into errors."""
  for line in stream:
    tail.append(line.rstrip('\n'))
    print(f'{prefix}{line}', end='', file=sys.stderr, flush=True)


class RemoteBlackBox:
  """A poli black box in a worker process, as a scorer: `score(list[str]) -> float64 [n]`.

  The worker starts on first use (a call, `info` or `x0`), so importing a scorer module costs nothing,
  and a process of a multi-host run that never scores starts no worker. It stops at `close()`, when
  this object is collected, at interpreter exit, and by itself when this process dies (its input
  closes). Calls are serialised: one request at a time.

  `create_kwargs` go to poli.objective_factory.create(name=name, ...) as they are (seed,
  evaluation_budget, the black box's own keys), so they must be JSON values. `layout` is how sequences
  reach the black box: 'characters' ([b, L] of single characters), 'strings' ([b, 1] of whole strings)
  or 'auto' (by the black box's info.sequences_are_aligned()). `nan_value`, when set, replaces NaN
  replies (poli black boxes use NaN for a failed evaluation); unset, a NaN reaches the oracle's checks,
  which stop the run naming the rows. `env` adds to the worker's environment (PYTHONPATH, say).
  """

  def __init__(
    self,
    python: str,
    name: str,
    *,
    layout: str = 'auto',
    nan_value: float | None = None,
    env: dict[str, str] | None = None,
    **create_kwargs,
  ):
    if layout not in poli_worker.LAYOUTS:
      raise ValueError(f'layout={layout!r} is not one of {poli_worker.LAYOUTS}.')
    try:
      json.dumps(create_kwargs)
    except TypeError as error:
      raise TypeError(f'poli black box {name!r}: create arguments must be JSON values ({error}).') from None
    # abspath, not resolve: a venv's python is a symlink, and its target is not the venv.
    self.python = os.path.abspath(python)
    self.name = name
    self.layout = layout
    self.nan_value = nan_value
    self.env = dict(env or {})
    self.create_kwargs = create_kwargs
    self._lock = threading.RLock()
    self._process: subprocess.Popen | None = None
    self._finalizer = None
    self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
    self._stderr_thread: threading.Thread | None = None
    self._created: dict | None = None

  def __repr__(self) -> str:
    return f'RemoteBlackBox({self.python!r}, {self.name!r}, **{self.create_kwargs!r})'

  # ------------------------------------------------------------------ The worker.
  @property
  def pid(self) -> int | None:
    """The worker's process id while it runs."""
    return None if self._process is None or self._process.poll() is not None else self._process.pid

  def _start(self) -> None:
    if not os.path.isfile(self.python):
      raise PoliBridgeError(
        f'poli black box {self.name!r}: {self.python} is not a file. It is the python of a venv with '
        'poli-core installed (bash benchmarks/make_poli_venv.sh creates .venv-poli).'
      )
    env = dict(os.environ) | self.env | {'PYTHONIOENCODING': 'utf-8', 'PYTHONUNBUFFERED': '1'}
    self._stderr_tail.clear()
    process = subprocess.Popen(
      [self.python, str(WORKER)],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      encoding='utf-8',
      env=env,
    )
    self._process = process
    self._finalizer = weakref.finalize(self, _shutdown, process)
    # A function, not a bound method: the thread must not keep this object alive (its collection stops
    # the worker).
    self._stderr_thread = threading.Thread(
      target=_forward_stderr,
      args=(process.stderr, self._stderr_tail, f'[poli {self.name}] '),
      name=f'poli-{self.name}-stderr',
      daemon=True,
    )
    self._stderr_thread.start()
    try:
      self._created = self._exchange(
        {
          'op': 'create',
          'name': self.name,
          'kwargs': self.create_kwargs,
          'layout': self.layout,
        }
      )
    except PoliBridgeError:
      self.close()  # The next call starts afresh.
      raise

  def _died(self) -> PoliBridgeError:
    process = self._process
    try:
      code = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      process.kill()
      code = process.wait()
    if self._stderr_thread is not None:
      self._stderr_thread.join(timeout=2)
    tail = '\n'.join(self._stderr_tail) or '(nothing)'
    self._process = None
    return PoliBridgeError(
      f'the poli worker for {self.name!r} ({self.python}) exited with code {code}; its last output:\n{tail}'
    )

  def _exchange(self, request: dict) -> dict:
    """Sends one request and returns its reply; PoliBridgeError names the black box and poli's message."""
    try:
      poli_worker.send(self._process.stdin, request)
      reply = poli_worker.receive(self._process.stdout)
    except (BrokenPipeError, ValueError):
      reply = None
    if reply is None:
      raise self._died()
    if not reply.get('ok'):
      raise PoliBridgeError(f'poli black box {self.name!r} raised {reply.get("error")}')
    return reply

  def _request(self, request: dict) -> dict:
    with self._lock:
      if self._process is None:
        self._start()
      return self._exchange(request)

  def close(self) -> None:
    """Stops the worker; a later call starts a new one."""
    with self._lock:
      if self._finalizer is not None:
        self._finalizer()
      if self._stderr_thread is not None:
        self._stderr_thread.join(timeout=2)
      self._process = self._finalizer = self._stderr_thread = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # ------------------------------------------------------------------ The black box.
  def _description(self) -> dict:
    with self._lock:
      if self._process is None:
        self._start()
      return self._created

  @property
  def info(self) -> dict:
    """name, alphabet (a list of tokens, '' padding left out), max_sequence_length (None: any),
    aligned, layout (as resolved) and poli_version."""
    return dict(self._description()['info'])

  @property
  def alphabet(self) -> str:
    """The black box's alphabet as --config.oracle.alphabet takes it; ValueError if its tokens are not
    single characters (the optimisers edit one character per position)."""
    tokens = self.info['alphabet']
    if not tokens or any(len(token) != 1 for token in tokens):
      raise ValueError(
        f'poli black box {self.name!r} has the alphabet {tokens[:10]}: not single characters; give '
        '--config.oracle.alphabet yourself.'
      )
    return ''.join(tokens)

  @property
  def x0(self) -> list[str]:
    """The problem's initial sequences (poli's x0), one string per row."""
    return list(self._description()['x0'])

  def __call__(self, sequences) -> np.ndarray:
    sequences = [str(s) for s in sequences]
    if not sequences:
      return np.zeros((0,), np.float64)
    values = poli_worker.decode_values(self._request({'op': 'score', 'sequences': sequences})['values'])
    if self.nan_value is not None:
      values[np.isnan(values)] = self.nan_value
    return values

  def write_initial_sequences(self, path, *, with_values: bool = False) -> pathlib.Path:
    """Writes x0 for --config.oracle.initial_sequences: FASTA for a FASTA suffix, else CSV with a
    `sequence` column. `with_values` scores x0 now and adds a `value` column (CSV only), so that the run
    takes them as labelled data instead of scoring them itself."""
    path = pathlib.Path(path)
    sequences = self.x0
    if path.suffix.lower() in _FASTA_SUFFIXES:
      if with_values:
        raise ValueError(f'{path}: FASTA holds no values; write a .csv to keep them.')
      path.write_text(''.join(f'>x0_{i}\n{s}\n' for i, s in enumerate(sequences)))
      return path
    lines = ['name,sequence' + (',value' if with_values else '')]
    values = self(sequences) if with_values else None
    for i, sequence in enumerate(sequences):
      value = '' if values is None else f',{"-inf" if values[i] == -np.inf else repr(float(values[i]))}'
      lines.append(f'x0_{i},{sequence}{value}')
    path.write_text('\n'.join(lines) + '\n')
    return path


def remote_black_box(python: str, name: str, **kwargs) -> RemoteBlackBox:
  """The poli black box `name`, created in a worker run by `python` (a venv with poli-core), as a
  scorer for --config.oracle.target. See RemoteBlackBox for the keyword arguments."""
  return RemoteBlackBox(python, name, **kwargs)


# ---------------------------------------------------------------------- The solver direction.
class _SolverConnection:
  """This process's connection to the black box of a LlomeJaxSolver (llome_jax/poli_solver.py)."""

  def __init__(self, address: str, token: str):
    host, _, port = address.rpartition(':')
    self.address, self.token = address, token
    self.socket = socket.create_connection((host, int(port)))
    self.reader = self.socket.makefile('r', encoding='utf-8')
    self.writer = self.socket.makefile('w', encoding='utf-8')

  def score(self, sequences: list[str]) -> np.ndarray:
    poli_worker.send(self.writer, {'op': 'score', 'token': self.token, 'sequences': sequences})
    reply = poli_worker.receive(self.reader)
    if reply is None:
      raise PoliBridgeError(f'the poli solver at {self.address} closed the connection.')
    if not reply.get('ok'):
      raise PoliBridgeError(f"the poli solver's black box raised {reply.get('error')}")
    return poli_worker.decode_values(reply['values'])


_connection: list[_SolverConnection | None] = [None]
_connection_lock = threading.Lock()


def served(sequences) -> np.ndarray:
  """The scorer of a run that llome_jax.poli_solver.LlomeJaxSolver started: sends the sequences to the
  solver's process, whose poli black box scores them (and records them in the solver's history). The
  solver passes its address and token in LLOME_POLI_ADDRESS and LLOME_POLI_TOKEN."""
  sequences = [str(s) for s in sequences]
  with _connection_lock:
    if _connection[0] is None:
      address, token = os.environ.get(ADDRESS_ENV), os.environ.get(TOKEN_ENV)
      if not address or not token:
        raise PoliBridgeError(
          f'llome_jax.poli_bridge:served scores for a poli solver (llome_jax/poli_solver.py), which sets '
          f'{ADDRESS_ENV} and {TOKEN_ENV}; they are not set. To score with a poli black box yourself, '
          'use remote_black_box.'
        )
      try:
        _connection[0] = _SolverConnection(address, token)
      except OSError as error:
        raise PoliBridgeError(f'cannot reach the poli solver at {address}: {error}') from None
    return _connection[0].score(sequences)


# ---------------------------------------------------------------------- Command line.
def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    prog='python -m llome_jax.poli_bridge',
    description="Writes a poli black box's x0 as initial sequences and prints the alphabet to pass.",
  )
  sub = parser.add_subparsers(dest='command', required=True)
  x0 = sub.add_parser('x0', help="write the problem's x0 (FASTA, or CSV by suffix)")
  x0.add_argument(
    '--python', required=True, help='the python of a venv with poli-core (.venv-poli/bin/python)'
  )
  x0.add_argument('--name', required=True, help='the black box, as poli.objective_factory.create names it')
  x0.add_argument('--kwargs', default='{}', help='JSON object of create arguments, e.g. {"seed": 1}')
  x0.add_argument('--out', required=True, help='the file to write (.fasta, or .csv)')
  x0.add_argument('--with_values', action='store_true', help='score x0 now and write a value column (CSV)')
  args = parser.parse_args(argv)
  kwargs = json.loads(args.kwargs)
  if not isinstance(kwargs, dict):
    parser.error(f'--kwargs={args.kwargs!r} is not a JSON object.')
  with remote_black_box(args.python, args.name, **kwargs) as black_box:
    path = black_box.write_initial_sequences(args.out, with_values=args.with_values)
    info = black_box.info
    print(f'wrote {len(black_box.x0)} sequences of {info["name"]} (poli {info["poli_version"]}) to {path}')
    try:
      print(f'--config.oracle.alphabet={black_box.alphabet}')
    except ValueError as error:
      print(error)


if __name__ == '__main__':
  main()
