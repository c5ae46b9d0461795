"""Peak memory of evaluating 1,000,000 Ehrlich sequences of length 256 against a 4 GB budget.

Each measurement runs in a fresh subprocess, so ru_maxrss is that evaluation's own high-water mark
(the interpreter, JAX, the int32 input and the call). The compiled executable's memory_analysis() gives
the XLA side alone: argument, output and temporary buffers.

  .venv/bin/python benchmarks/ehrlich_memory.py [--num_sequences=1000000]
"""

import argparse
import json
import resource
import subprocess
import sys

LIMIT_BYTES = 4 * 10**9
GB = 10**9


def _child(num_sequences: int, length: int) -> None:
  import jax
  import jax.numpy as jnp

  from llome_jax.test_functions import ehrlich

  params = ehrlich.sample_params(jax.random.key(0), num_states=32, dim=length, num_motifs=4, motif_length=8)
  rss_runtime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

  # Drawn on the device 1,000 rows at a time: one randint over the whole input would itself peak at
  # several times the input's size, and a host copy would double it.
  def draw(key):
    rows_KxRxL = jax.lax.map(
      lambda k: jax.random.randint(k, (1000, length), 0, params.num_states),
      jax.random.split(key, num_sequences // 1000),
    )
    return rows_KxRxL.reshape(num_sequences, length)

  x_NxL = jax.block_until_ready(jax.jit(draw)(jax.random.key(1)))
  evaluate = jax.jit(ehrlich.evaluate).lower(params, x_NxL).compile()
  analysis = evaluate.memory_analysis()
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  values_N = jax.block_until_ready(evaluate(params, x_NxL))
  rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  report = {
    'input_bytes': x_NxL.nbytes,
    'peak_rss_runtime': rss_runtime,
    'xla_argument_bytes': analysis.argument_size_in_bytes,
    'xla_output_bytes': analysis.output_size_in_bytes,
    'xla_temp_bytes': analysis.temp_size_in_bytes,
    'peak_rss_before_call': rss_before,
    'peak_rss': rss_after,
    'feasible_fraction': float(jnp.mean(jnp.isfinite(values_N))),
  }
  print(json.dumps(report))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--num_sequences', type=int, default=1_000_000, help='a multiple of 1000')
  parser.add_argument('--length', type=int, default=256)
  parser.add_argument('--child', action='store_true', help='internal: measure in this process')
  args = parser.parse_args()
  if args.child:
    _child(args.num_sequences, args.length)
    return

  command = [
    sys.executable,
    __file__,
    '--child',
    f'--num_sequences={args.num_sequences}',
    f'--length={args.length}',
  ]
  result = subprocess.run(command, check=True, capture_output=True, text=True)
  report = json.loads(result.stdout.strip().splitlines()[-1])
  print(f'evaluate on {args.num_sequences:,} x {args.length} int32 tokens (fresh process):')
  print(f'  int32 input alone:            {report["input_bytes"] / GB:6.2f} GB')
  print(f'  XLA output buffer:            {report["xla_output_bytes"] / GB:6.3f} GB')
  print(f'  XLA temporaries:              {report["xla_temp_bytes"] / GB:6.3f} GB')
  print(f'  peak RSS of the runtime alone: {report["peak_rss_runtime"] / GB:6.2f} GB')
  print(f'  peak RSS with input, before:  {report["peak_rss_before_call"] / GB:6.2f} GB')
  print(
    f'  peak RSS after evaluate:      {report["peak_rss"] / GB:6.2f} GB  (limit {LIMIT_BYTES / GB:.0f} GB)'
  )
  within = report['peak_rss'] <= LIMIT_BYTES
  print(
    f'  {"within" if within else "OVER"} the limit; the call itself added '
    f'{(report["peak_rss"] - report["peak_rss_before_call"]) / GB:.2f} GB over the input'
  )
  sys.exit(0 if within else 1)


if __name__ == '__main__':
  main()
