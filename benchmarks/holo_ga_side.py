"""pytorch-holo side of ga_speed.py: times holo's DiscreteEvolution on an Ehrlich function.

Runs under the reference venv's python (see make_holo_venv.sh). Writes an .npz with the instance, the
initial solution and the best seconds per generation, so the JAX side runs the same problem.
"""

import argparse
import time

import numpy as np
import torch
from holo.optim import DiscreteEvolution
from holo.test_functions.closed_form import Ehrlich


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--out', required=True)
  parser.add_argument('--num_particles', type=int, default=100_000)
  parser.add_argument('--dim', type=int, default=256)
  parser.add_argument('--steps', type=int, default=3)
  args = parser.parse_args()

  fn = Ehrlich(num_states=32, dim=args.dim, num_motifs=4, motif_length=8, negate=True, random_seed=0)
  initial = fn.initial_solution()
  params = [torch.nn.Parameter(initial.float())]
  prob = 1.1 / args.dim  # holo's benchmark default for mutation and recombination.
  optimizer = DiscreteEvolution(
    params,
    vocab=list(range(32)),
    mutation_prob=prob,
    recombine_prob=prob,
    num_particles=args.num_particles,
    survival_quantile=0.1,
  )
  times = []
  with torch.no_grad():
    for _ in range(args.steps + 1):  # The first generation is a warm-up.
      start = time.perf_counter()
      optimizer.step(lambda param_list: fn(param_list[0]))
      times.append(time.perf_counter() - start)
  np.savez(
    args.out,
    transition_matrix=fn.transition_matrix.numpy(),
    motifs=torch.stack(fn.motifs).numpy(),
    spacings=torch.stack(fn.spacings).numpy(),
    initial_solution=initial.numpy(),
    seconds_per_generation=min(times[1:]),
    mutation_prob=prob,
  )


if __name__ == '__main__':
  main()
