"""LLOME-MargE on f2 as the paper runs it: f2_marge.py without its repair mutants and spread seeds, so
every label is one of the policy's generations and the seeds are the best pairs' better members (the
config behind RESULTS.md's LLOME rows before the repair lever).

  python -m experiments.llome --config=experiments/configs/f2_marge_paper.py --workdir=runs/f2_marge_paper
"""

from experiments.configs import f2_marge


def get_config():
  return f2_marge.f2_config('marge', paper=True)
