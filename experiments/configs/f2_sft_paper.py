"""LLOME-SFT on f2 as the paper runs it: f2_sft.py without its repair mutants and spread seeds
(see f2_marge_paper.py)."""

from experiments.configs import f2_marge


def get_config():
  return f2_marge.f2_config('sft', paper=True)
