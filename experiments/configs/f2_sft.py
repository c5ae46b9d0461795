"""LLOME-SFT on f2: as f2_marge.py, with SFT in every round."""

from experiments.configs import f2_marge


def get_config():
  return f2_marge.f2_config('sft')
