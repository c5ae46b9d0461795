"""LLOME-DPO on f2: as f2_marge.py, with DPO (beta 0.4, the paper's f2 setting) after the SFT round."""

from experiments.configs import f2_marge


def dpo(config):
  config.train.dpo_beta = 0.4
  return config


def get_config():
  return dpo(f2_marge.f2_config('dpo'))
