"""LLOME-MargE on a scorer of your own: the example scorer (experiments/oracle_example.py, hydrophobic
fraction of a protein, two prolines in a row infeasible) from 16 initial sequences of length 24, with
the tiny policy.

  python -m experiments.llome --config=experiments/configs/oracle_llome.py --workdir=runs/oracle_llome

Round 0 is the initial sequences (scored: 16 calls) and a short seed GA started from them (128
particles x 4 generations); then 3 rounds (1 SFT, 2 MargE) of at most 48 labels each. The scorer is
called on the labelled sequences only. Expected: about a minute on 2 CPU cores, most of it compiling.
"""

from experiments.configs import llome_defaults, oracle_ga, smoke


def get_config():
  config = smoke.get_config()
  # A scorer replaces the test function, whose keys then stay at their defaults (smoke.py samples one).
  config.test_function = llome_defaults.get_config().test_function
  config.oracle = oracle_ga.get_config().oracle  # The example scorer and its 16 initial sequences.
  config.ga.num_particles = 128
  config.ga.num_steps = 4
  config.ga.mutation_prob = 1 / 24
  return config
