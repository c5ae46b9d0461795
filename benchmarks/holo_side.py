"""pytorch-holo side of ehrlich_speed.py: builds the instance, draws sequences, times holo on them.

Runs under the reference venv's python (see make_holo_venv.sh), never the project venv. Writes one .npz
with the instance, the sequences, holo's values for them and holo's best time at each batch size.
"""

import argparse
import time

import numpy as np
import torch
from holo.test_functions.closed_form import Ehrlich


def _draw_sequences(fn: Ehrlich, num: int, seed: int) -> torch.Tensor:
  """A mix: DMP paths (feasible), mutated paths and optima (feasible or not, high values), uniform noise."""
  gen = torch.Generator().manual_seed(seed)
  quarter = num // 4
  dmp_paths = fn.initial_solution(n=2 * quarter)
  mutated = dmp_paths[quarter:].clone()
  mutated[: quarter // 2] = fn.optimal_solution()  # Near-optima give values well above zero.
  hits = torch.rand(mutated.shape, generator=gen) < 2.0 / fn.dim
  mutated[hits] = torch.randint(fn.num_states, (int(hits.sum()),), generator=gen)
  noise = torch.randint(fn.num_states, (num - 2 * quarter, fn.dim), generator=gen)
  seqs = torch.cat([dmp_paths[:quarter], mutated, noise])
  return seqs[torch.randperm(num, generator=gen)]  # So every prefix B holds the same mix.


def _best_time(fn: Ehrlich, x: torch.Tensor, repeats: int) -> float:
  fn.evaluate_true(x)  # Warm-up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn.evaluate_true(x)
    times.append(time.perf_counter() - start)
  return min(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--out', required=True)
  parser.add_argument('--batch_sizes', default='4096,16384,65536')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  batch_sizes = [int(b) for b in args.batch_sizes.split(',')]

  fn = Ehrlich(num_states=32, dim=256, num_motifs=4, motif_length=8, random_seed=args.seed)
  seqs = _draw_sequences(fn, max(batch_sizes), args.seed)
  with torch.no_grad():
    values = fn.evaluate_true(seqs)
    seconds = [_best_time(fn, seqs[:b], args.repeats) for b in batch_sizes]
  np.savez(
    args.out,
    transition_matrix=fn.transition_matrix.numpy(),
    motifs=torch.stack(fn.motifs).numpy(),
    spacings=torch.stack(fn.spacings).numpy(),
    sequences=seqs.numpy().astype(np.int32),
    values=values.numpy(),
    batch_sizes=np.asarray(batch_sizes),
    seconds=np.asarray(seconds),
    torch_threads=torch.get_num_threads(),
  )


if __name__ == '__main__':
  main()
