"""LLOME-MargE on a larger shipped instance, ehr_v32_l128_c4_k4_q4 (v=32, L=128, c=4, k=4, q=4; holo
seed 50494): the f2 round structure with a lighter inner loop, since each edit is 4x longer.

  python -m experiments.llome --config=experiments/configs/l128_marge.py --workdir=runs/l128_marge

The GA seed data keeps the paper's shape (1,000 particles x 10 generations); the mutation rate is
holo's 1.1 / L default scaled to the longer sequence. Like f2_marge.py, half of each round's labels are
repair mutants and the seeds are spread over the best-value ties, but the mutants are labelled in 8
generations and without segment duplications (as f2_marge.py's were when these runs were made; f2's
20 generations and duplications were not tried at L=128);
l128_marge_paper.py is the same run without them (the paper's LLOME).
"""

from experiments.configs import f2_marge


def l128_config(*, paper: bool = False):
  """The L=128 MargE config; `paper=True` labels only the policy's generations, seeded as the paper."""
  config = f2_marge.f2_config('marge', paper=paper)
  config.test_function.name = 'ehr_v32_l128_c4_k4_q4'
  config.ga.mutation_prob = 1.1 / 128
  config.model.max_len = 272  # 2L + 4 = 260 tokens per pair.
  config.outer.num_seeds = 100
  config.inner.samples_per_temperature = 4
  config.inner.chunk_rows = 512
  if not paper:
    config.outer.mutant_generations = 8
    config.outer.duplication_fraction = 0.0
  return config


def get_config():
  return l128_config()
