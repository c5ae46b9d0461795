"""LLOME-DPO on f2 as the paper runs it: f2_dpo.py without its repair mutants and spread seeds
(see f2_marge_paper.py)."""

from experiments.configs import f2_dpo, f2_marge


def get_config():
  return f2_dpo.dpo(f2_marge.f2_config('dpo', paper=True))
