"""The GA on a scorer of your own: the example scorer (experiments/oracle_example.py, hydrophobic
fraction of a protein, two prolines in a row infeasible) from 16 initial sequences of length 24.

  python -m experiments.ga_baseline --config=experiments/configs/oracle_ga.py --workdir=runs/oracle_ga

Point it at your own with --config.oracle.target=MODULE:FUNCTION (or PATH.py:FUNCTION),
--config.oracle.initial_sequences=FILE (FASTA, or CSV with `sequence` and optional `value` columns)
and --config.oracle.alphabet. Expected: 20 generations of 256 particles, 5,120 scorer calls plus the
16 initial ones, in about 15 s on 2 CPU cores; the best value rises from 0.21 (the best initial
sequence) to 1.0 (24 hydrophobic residues) by about generation 18 with seed 0: the example scorer is
easy. The optimum is unknown to the run (oracle.optimal_value unset), so regrets are null and
best_value.png plots the best value.
"""

from experiments.configs import ga_ehrlich


def get_config():
  config = ga_ehrlich.get_config()
  config.oracle.target = 'experiments.oracle_example:score'
  config.oracle.alphabet = 'protein'
  config.oracle.initial_sequences = 'experiments/data/oracle_example.fasta'
  config.ga.num_particles = 256
  config.ga.num_steps = 20
  config.ga.mutation_prob = 1 / 24
  config.ga.survival_quantile = 0.1
  return config
