r"""GA generations per second: llome_jax against pytorch-holo's DiscreteEvolution, same problem, same run.

  python benchmarks/ga_speed.py [--holo_python=.venv-holo/bin/python] [--num_particles=100000]

Both run holo's benchmark defaults (mutation = recombine = 1.1 / L, survival quantile 0.1) on the same
Ehrlich(v=32, L=256, c=4, k=8) instance built by holo (seed 0) from holo's initial solution. The goal is
at least 50x holo's generations per second at 100,000 particles.
"""

import argparse
import functools
import pathlib
import subprocess
import tempfile
import time

import jax
import numpy as np

from llome_jax import ga
from llome_jax.test_functions import ehrlich

REPO = pathlib.Path(__file__).resolve().parents[1]


def time_jax(holo: dict, num_particles: int, steps: int) -> float:
  """Best seconds per generation of a jitted `lax.scan` over `steps` generations (compiled first)."""
  params = ehrlich.make_params(holo['transition_matrix'], holo['motifs'], holo['spacings'])
  prob = float(holo['mutation_prob'])
  cfg = ga.GAConfig(
    num_particles=num_particles,
    num_states=params.num_states,
    mutation_prob=prob,
    recombine_prob=prob,
    survival_quantile=0.1,
  )
  run = jax.jit(
    functools.partial(
      ga.run,
      objective=functools.partial(ehrlich.evaluate, params),
      cfg=cfg,
      num_steps=steps,
      stop_at_optimum=False,
    )
  )
  state = ga.init(holo['initial_solution'], cfg=cfg)
  state, _ = run(jax.random.key(0), state)
  jax.block_until_ready(state)
  best = float('inf')
  for repeat in range(3):
    start = time.perf_counter()
    state, metrics = run(jax.random.key(repeat + 1), state)
    jax.block_until_ready(state)
    best = min(best, (time.perf_counter() - start) / steps)
  print(
    f'  (jax GA best regret after {int(state.step)} generations: {float(metrics["simple_regret_best"][-1]):.3f})'
  )
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--holo_python', default=str(REPO / '.venv-holo' / 'bin' / 'python'))
  parser.add_argument('--num_particles', type=int, default=100_000)
  parser.add_argument('--dim', type=int, default=256)
  parser.add_argument('--holo_steps', type=int, default=3)
  parser.add_argument('--jax_steps', type=int, default=10)
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / 'holo_ga.npz'
    subprocess.run(
      [
        args.holo_python,
        str(REPO / 'benchmarks' / 'holo_ga_side.py'),
        f'--out={out}',
        f'--num_particles={args.num_particles}',
        f'--dim={args.dim}',
        f'--steps={args.holo_steps}',
      ],
      check=True,
      cwd=tmp,
    )
    holo = dict(np.load(out))
  jax_seconds = time_jax(holo, args.num_particles, args.jax_steps)
  holo_seconds = float(holo['seconds_per_generation'])
  print(f'GA, {args.num_particles} particles, L={args.dim}, v=32, c=4, k=8 on {jax.devices()[0].platform}')
  print(f'{"":8}{"s/generation":>14}{"generations/s":>15}')
  print(f'{"holo":8}{holo_seconds:14.4f}{1 / holo_seconds:15.2f}')
  print(f'{"jax":8}{jax_seconds:14.4f}{1 / jax_seconds:15.2f}')
  print(f'ratio jax/holo: {holo_seconds / jax_seconds:.1f}x (goal >= 50x)')


if __name__ == '__main__':
  main()
