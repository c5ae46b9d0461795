"""Ehrlich evaluation throughput: llome_jax vs pytorch-holo on the same instance and sequences.

Holo builds Ehrlich(v=32, L=256, c=4, k=8, seed 0), draws the sequences and times itself in a subprocess
of its own venv (benchmarks/holo_side.py; create the venv with benchmarks/make_holo_venv.sh). This
script then times the jitted JAX evaluate on the same arrays, checks that every value agrees exactly,
and compares both with a roofline measured in the same run.

  .venv/bin/python benchmarks/ehrlich_speed.py [--holo_python=.venv-holo/bin/python]
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from llome_jax.test_functions import ehrlich

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # Warm-up: compilation and first-touch.
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def _run_holo(holo_python: str, batch_sizes: list[int], repeats: int, workdir: str) -> dict:
  out = pathlib.Path(workdir) / 'holo_case.npz'
  # cwd outside holo's package: its `logging` subpackage would shadow the stdlib module.
  subprocess.run(
    [
      holo_python,
      str(REPO_ROOT / 'benchmarks' / 'holo_side.py'),
      f'--out={out}',
      f'--batch_sizes={",".join(map(str, batch_sizes))}',
      f'--repeats={repeats}',
    ],
    check=True,
    cwd=workdir,
  )
  with np.load(out) as data:
    return dict(data)


def _compare_rate(repeats: int) -> float:
  """Byte compare-and-accumulates per second: 32 per byte of an L2-resident uint8 array, both cores."""
  tokens_N = jax.random.randint(jax.random.key(0), (1 << 20,), 0, 32).astype(jnp.uint8)
  kernel = jax.jit(lambda t: sum((t == j).astype(jnp.int8) for j in range(32)))
  return 32 * tokens_N.size / _best_seconds(kernel, tokens_N, repeats=repeats)


def _read_rate(num_bytes: int, repeats: int) -> float:
  """Bytes per second that a max-reduction streams from an int32 array as large as the input."""
  array_N = jnp.arange(num_bytes // 4, dtype=jnp.int32)
  return num_bytes / _best_seconds(jax.jit(jnp.max), array_N, repeats=repeats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--holo_python', default=str(REPO_ROOT / '.venv-holo' / 'bin' / 'python'))
  parser.add_argument('--batch_sizes', default='4096,16384,65536')
  parser.add_argument('--holo_repeats', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  batch_sizes = [int(b) for b in args.batch_sizes.split(',')]

  with tempfile.TemporaryDirectory() as workdir:
    holo = _run_holo(args.holo_python, batch_sizes, args.holo_repeats, workdir)
  params = ehrlich.make_params(holo['transition_matrix'], holo['motifs'], holo['spacings'])
  length = holo['sequences'].shape[1]
  print(
    f'instance: v={params.num_states} L={length} c={params.num_motifs} k={params.motif_length}; '
    f'{np.isneginf(holo["values"]).mean():.0%} of sequences infeasible; holo on {holo["torch_threads"]} '
    f'torch threads, jax on {jax.devices()[0].device_kind}'
  )

  evaluate = jax.jit(ehrlich.evaluate)
  # Work one sequence needs: a compare per motif element per window start, and its int32 tokens.
  compares_per_seq = sum(params.motif_length * (length - offsets[-1]) for offsets in params.offsets)
  bytes_per_seq = 4 * length
  compare_rate = _compare_rate(args.repeats)
  print(
    f'roofline inputs: {compares_per_seq} byte compares and {bytes_per_seq} input bytes per sequence; '
    f'peak {compare_rate / 1e9:.0f} G byte-compares/s (32 compares per byte, L2-resident, jitted)'
  )

  print(
    f'{"B":>7} {"holo seq/s":>11} {"jax seq/s":>11} {"jax/holo":>9} {"roofline":>11} {"bound":>8} {"jax/roof":>9}'
  )
  mismatches = 0
  for b, holo_seconds in zip(batch_sizes, holo['seconds'], strict=True):
    x_BxL = jax.device_put(holo['sequences'][:b])
    got_B = np.asarray(evaluate(params, x_BxL))
    want_B = holo['values'][:b]
    mismatches += int(np.sum((got_B != want_B) & ~(np.isneginf(got_B) & np.isneginf(want_B))))
    jax_seconds = _best_seconds(evaluate, params, x_BxL, repeats=args.repeats)
    # Whichever bound is slower: the compares at peak rate, or reading the input at the rate measured
    # for an array of the same size (small batches stay in the last-level cache between repeats).
    bound_seconds = {
      'compares': b * compares_per_seq / compare_rate,
      'reads': b * bytes_per_seq / _read_rate(b * bytes_per_seq, args.repeats),
    }
    bound = max(bound_seconds, key=bound_seconds.get)
    holo_rate, jax_rate, roof_rate = b / holo_seconds, b / jax_seconds, b / bound_seconds[bound]
    print(
      f'{b:>7} {holo_rate:>11,.0f} {jax_rate:>11,.0f} {jax_rate / holo_rate:>8.0f}x '
      f'{roof_rate:>11,.0f} {bound:>8} {jax_rate / roof_rate:>8.0%}'
    )
  print(f'values differing from holo (every B checked): {mismatches}')
  sys.exit(1 if mismatches else 0)


if __name__ == '__main__':
  main()
