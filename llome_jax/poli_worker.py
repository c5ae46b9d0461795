"""A poli black box served over stdin/stdout, run by file path with the python of a venv that has poli.

poli-core pins numpy<2 and JAX needs numpy>=2, so poli and this project never share an environment.
`llome_jax.poli_bridge` starts this file as a subprocess with poli's interpreter; it imports only the
standard library, numpy and poli (never llome_jax or JAX), so it runs in poli's venv, and the project
imports it too, for the protocol helpers below (no poli import at module level).

Protocol: one JSON object per line each way, request then reply, in order.
  {"op": "create", "name": NAME, "kwargs": {...}, "layout": "auto"|"characters"|"strings"}
      -> {"ok": true, "info": {name, alphabet, max_sequence_length, aligned, layout, poli_version},
          "x0": [str, ...]}
  {"op": "score", "sequences": [str, ...]} -> {"ok": true, "values": [number or "-inf"/"inf"/"nan", ...]}
  {"op": "close"} -> the worker exits (so does end of input: the parent went away).
  Any failure -> {"ok": false, "error": "TypeName: message", "traceback": "..."}; the worker stays up.
Values are numbers, or the strings "-inf", "inf" and "nan": strict JSON has no non-finite numbers, and
-inf (an infeasible sequence) must survive the trip. Create arguments are Python's JSON, whose -Infinity
and NaN both ends read (a black box's return_value_on_unfeasible=-inf, say).

poli's input convention (poli.core.abstract_black_box.AbstractBlackBox.__call__, poli-core 1.3.1): an
aligned black box (info.sequences_are_aligned()) takes x of shape [b, L], one character per cell, and
asserts L == info.max_sequence_length; an unaligned one takes [b, 1] of whole strings. Every black box
returns y of shape [b, 1]. Layout 'auto' picks by the black box's info.
"""

from __future__ import annotations  # poli supports Python 3.9; this file runs in its venv.

import json
import math
import os
import signal
import sys
import traceback

import numpy as np

LAYOUTS = ('auto', 'characters', 'strings')


def encode_values(values) -> list:
  """Floats as JSON-safe items: finite numbers as they are, -inf, inf and NaN as strings."""
  out = []
  for value in np.asarray(values, np.float64).ravel().tolist():
    out.append(value if math.isfinite(value) else ('nan' if math.isnan(value) else str(value)))
  return out


def decode_values(items) -> np.ndarray:
  """The inverse of encode_values: float64 [n]."""
  return np.array([float(item) for item in items], np.float64)


def send(stream, message: dict) -> None:
  stream.write(json.dumps(message) + '\n')
  stream.flush()


def receive(stream) -> dict | None:
  """The next message, or None at end of input."""
  line = stream.readline()
  return json.loads(line) if line else None


def error_reply(error: BaseException) -> dict:
  return {
    'ok': False,
    'error': f'{type(error).__name__}: {error}',
    'traceback': ''.join(traceback.format_exception(type(error), error, error.__traceback__)),
  }


def to_poli(sequences: list[str], layout: str) -> np.ndarray:
  """Strings as poli's input: [b, L] of characters, or [b, 1] of whole strings."""
  if layout == 'characters':
    lengths = {len(s) for s in sequences}
    if len(lengths) > 1:
      raise ValueError(f'sequences of lengths {sorted(lengths)}: an aligned black box takes one length.')
    return np.array([list(s) for s in sequences], dtype=str).reshape(len(sequences), -1)
  return np.array(sequences, dtype=str).reshape(-1, 1)


def from_poli(x) -> list[str]:
  """poli's x ([b, L] of characters, [b, 1] or [b] of strings) as one string per row."""
  x = np.asarray(x)
  if x.ndim == 1:
    return [str(s) for s in x]
  if x.ndim != 2:
    raise ValueError(f'x of shape {x.shape}: poli inputs are [b, L] or [b, 1].')
  return [''.join(str(c) for c in row) for row in x]


def flatten_values(y, num_rows: int) -> np.ndarray:
  """A black box's y ([b, 1], or [b]) as float64 [b]; ValueError for anything else (several objectives)."""
  array = np.asarray(y)
  if array.dtype.kind not in 'biuf':
    raise ValueError(f'the black box returned dtype {array.dtype}, not numbers.')
  if array.shape not in ((num_rows, 1), (num_rows,)):
    raise ValueError(
      f'the black box returned shape {array.shape} for {num_rows} sequences; expected ({num_rows}, 1): '
      'one objective.'
    )
  return array.astype(np.float64).reshape(num_rows)


def describe(black_box, layout: str) -> dict:
  """What the project needs of a black box's info: its alphabet (the '' padding token left out), length,
  alignment, and the layout its inputs take."""
  info = black_box.info  # poli.core.black_box_information.BlackBoxInformation.
  aligned = bool(info.sequences_are_aligned())
  length = info.get_max_sequence_length()
  if length is not None and not (isinstance(length, float) and math.isinf(length)):
    length = int(length)
  else:
    length = None
  if layout == 'auto':
    layout = 'characters' if aligned else 'strings'
  alphabet = [str(token) for token in (info.get_alphabet() or []) if str(token)]
  return {
    'name': str(info.get_problem_name()),
    'alphabet': alphabet,
    'max_sequence_length': length,
    'aligned': aligned,
    'layout': layout,
  }


def create(name: str, kwargs: dict):
  """(black box, x0) from poli.objective_factory.create: a Problem with .black_box and .x0 since poli
  1.0 (March 2024), a tuple (f, x0, y0) before."""
  import poli
  from poli import objective_factory

  created = objective_factory.create(name=name, **kwargs)
  if hasattr(created, 'black_box'):
    return created.black_box, created.x0, getattr(poli, '__version__', 'unknown')
  if isinstance(created, tuple) and len(created) == 3:
    return created[0], created[1], getattr(poli, '__version__', 'unknown')
  raise TypeError(f'poli.objective_factory.create returned {type(created).__name__}, not a Problem.')


class Worker:
  """One black box and the layout of its inputs, answering requests."""

  def __init__(self):
    self.black_box = None
    self.layout = None

  def handle(self, request: dict) -> dict:
    op = request.get('op')
    if op == 'create':
      if self.black_box is not None:
        raise RuntimeError('this worker already holds a black box.')
      layout = request.get('layout', 'auto')
      if layout not in LAYOUTS:
        raise ValueError(f'layout {layout!r} is not one of {LAYOUTS}.')
      black_box, x0, version = create(request['name'], request.get('kwargs') or {})
      info = describe(black_box, layout)
      self.black_box, self.layout = black_box, info['layout']
      return {'ok': True, 'info': info | {'poli_version': str(version)}, 'x0': from_poli(x0)}
    if op == 'score':
      if self.black_box is None:
        raise RuntimeError('score before create.')
      sequences = request['sequences']
      if not sequences:
        return {'ok': True, 'values': []}
      values = flatten_values(self.black_box(to_poli(sequences, self.layout)), len(sequences))
      return {'ok': True, 'values': encode_values(values)}
    raise ValueError(f'unknown request {op!r}.')


def main() -> None:
  # The protocol gets its own copy of stdout; fd 1 then points at stderr, so that whatever poli or its
  # libraries print (poli announces itself with print) goes to the parent's log, not into the protocol.
  replies = os.fdopen(os.dup(1), 'w', encoding='utf-8')
  sys.stdout.flush()
  os.dup2(2, 1)
  # Ctrl-C in a terminal reaches the whole process group: the parent handles it and closes our input.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  # Run by path, this file's folder (llome_jax/) heads sys.path: its modules must not shadow poli's.
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != here]
  requests = open(sys.stdin.fileno(), encoding='utf-8', closefd=False)
  worker = Worker()
  while True:
    request = receive(requests)
    if request is None or request.get('op') == 'close':
      break
    try:
      reply = worker.handle(request)
    except Exception as error:
      reply = error_reply(error)
    try:
      send(replies, reply)
    except BrokenPipeError:  # The parent went away mid-request.
      break
  if worker.black_box is not None and hasattr(worker.black_box, 'terminate'):
    worker.black_box.terminate()


if __name__ == '__main__':
  main()
