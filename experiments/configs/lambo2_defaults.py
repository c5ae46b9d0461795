"""Every key of a LaMBO-2 experiment config, with the reference's Ehrlich settings (bbo-bench's
`reproduce_llome_lambo_results`, read through cortex) as defaults, on f2.

This is the schema: `experiments.lambo2` rejects a config with a key not listed here. The named
configs (lambo2_f2.py, lambo2_f2_paper.py, lambo2_l128.py) start from it and change values only.
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs import ga_ehrlich


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_devices = config_dict.placeholder(int)  # None: every device.
  config.keep_checkpoints = 2
  # Rounds of num_proposals guided proposals; oracle budget = seed GA calls + at most this x num_proposals.
  config.num_rounds = 12
  config.num_proposals = 2000  # Starting sequences, hence proposals (and at most the calls) a round.
  config.pool_expansion = 2  # Starts are thinned from the best pool_expansion x num_proposals labelled.
  config.distance = 'edit'  # Of the farthest-first thinning: 'edit' (Levenshtein) or 'hamming'.
  # Round-0 data: an LLOME workdir's seed_data.npz (sequences, values) to start from the same sequences,
  # or empty to run the seed GA of `ga` on `test_function` (the LLOME binary's, so the same config and
  # seed give the same data). A file's sequences are checked against the test function and count one
  # oracle call each (the GA's duplicate calls are not in the file).
  config.seed_data = ''

  base = ga_ehrlich.get_config()
  config.test_function = base.test_function
  config.oracle = base.oracle  # A scorer of your own instead of test_function (README).
  config.ga = base.ga

  config.network = ml_collections.ConfigDict()
  config.network.embed_dim = 32
  config.network.channels = 128
  config.network.kernel_size = 5
  config.network.ensemble_size = 8
  config.network.branch_channels = 8

  config.train = ml_collections.ConfigDict()
  config.train.learning_rate = 5e-3
  config.train.b1 = 0.9
  config.train.b2 = 0.99
  config.train.epochs = 16
  config.train.batch_size = 128
  config.train.warmup_epochs = 2

  config.guide = ml_collections.ConfigDict()
  config.guide.num_steps = 64
  config.guide.num_mutations = 16
  config.guide.num_updates = 2
  config.guide.step_size = 0.05
  config.guide.b1 = 0.9
  config.guide.b2 = 0.999
  config.guide.position_temperature = 1.0
  config.guide.acquisition = 'log_ei'  # Or 'reference': cortex's log fat-plus of the members' means.
  config.guide.use_feasibility = True  # Add log p(feasible) of the classifier ensemble.
  config.guide.accept_first = False
  return config
