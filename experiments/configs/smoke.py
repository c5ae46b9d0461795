"""A few rounds of LLOME-MargE on a small sampled Ehrlich function with the tiny model: the CI
end-to-end check, well under two minutes on 2 CPU cores (most of it compilation).

  python -m experiments.llome --config=experiments/configs/smoke.py --workdir=runs/smoke

Expected (~45 s, most of it compiling two round programs): 256 GA seed evaluations and ~127 unique
seed sequences, then 3 rounds (1 SFT, 2 MargE) of at most 48 labels each (~20: the pool of 112
generations holds ~60 distinct ones, 40% of which pass the likelihood quantile); the mean edit
distance falls from ~0.8 (untrained) to ~0.3-0.4 after the SFT round, MargE rounds train on tens of
pairs, every generation is valid (constrained decoding) and the best regret never rises.
"""

from experiments.configs import llome_defaults


def get_config():
  config = llome_defaults.get_config()
  config.test_function.name = ''  # Sampled from the fields below with a JAX key.
  config.test_function.num_states = 8
  config.test_function.dim = 12
  config.test_function.num_motifs = 2
  config.test_function.motif_length = 3
  config.ga.num_particles = 64
  config.ga.num_steps = 4
  config.ga.mutation_prob = 0.1
  config.ga.survival_quantile = 0.25
  config.model.preset = 'tiny'
  config.outer.num_rounds = 3
  config.outer.num_labels = 48
  config.outer.num_seeds = 8
  config.pairs.capacity = 256
  config.inner.num_iterations = 2
  config.inner.temperatures = (0.8, 1.2)
  config.inner.samples_per_temperature = 3
  config.inner.top_k = 0
  config.train.batch_size = 32
  config.train.first_round_epochs = 40  # From scratch the policy first has to learn to copy.
  config.train.sft.learning_rate = 3e-3
  config.train.pref.learning_rate = 1e-3
  return config
