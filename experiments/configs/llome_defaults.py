"""Every key of an LLOME experiment config, with the LLOME paper's f2 settings as defaults.

This is the schema: `experiments.llome` rejects a config with a key not listed here. The named configs
(smoke.py, f2_marge.py, ...) start from it and change values only. Run one with:
  python -m experiments.llome --config=experiments/configs/f2_marge.py --workdir=runs/f2_marge
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs import ga_ehrlich


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_devices = config_dict.placeholder(int)  # None: every device.
  # FSDP splits parameters over the data axis: needed for large policies, pointless for small ones,
  # and it reorders float reductions, so runs on different meshes then agree only to ~1e-5, which
  # sampling can amplify into different draws. Replicated parameters give 1 device == 8 devices.
  config.fsdp = False
  config.rounds_per_chunk = 1  # Rounds per jitted lax.scan call; a checkpoint and log line after each.
  config.keep_checkpoints = 2

  # The test function (or a scorer of your own, `oracle`) and the GA that makes the round-0 seed data,
  # exactly as the GA baseline binary
  # (experiments/configs/ga_ehrlich.py): f2 and 1,000 particles x 10 generations by default.
  base = ga_ehrlich.get_config()
  config.test_function = base.test_function
  config.oracle = base.oracle
  config.ga = base.ga

  config.model = ml_collections.ConfigDict()
  config.model.preset = 'small'  # llome_jax.model.PRESETS; the vocabulary comes from the codec.
  config.model.num_layers = config_dict.placeholder(int)  # None: the preset's.
  config.model.width = config_dict.placeholder(int)
  config.model.num_heads = config_dict.placeholder(int)
  config.model.ff_width = config_dict.placeholder(int)
  config.model.max_len = config_dict.placeholder(int)  # Prompt + target is 2L + 4 tokens.
  config.model.dtype = 'float32'  # Compute dtype ('bfloat16' on accelerators); parameters stay fp32.

  config.outer = ml_collections.ConfigDict()
  config.outer.num_rounds = 10  # Trained rounds; oracle budget = GA calls + num_rounds * num_labels.
  config.outer.schedule = 'marge'  # Objective after the first (SFT) round: 'sft', 'marge' or 'dpo'.
  config.outer.num_labels = 2000  # n: oracle calls per round.
  config.outer.likelihood_quantile = 0.6
  config.outer.num_seeds = 200
  config.outer.temperature_scaling = True
  config.outer.num_calibration_bins = 10
  config.outer.split_rows = False  # Decode each device's own rows on a multi-device mesh (see LoopConfig).
  # Fraction of each round's labels given to blind 2-site mutants of the seeds, not the policy's
  # generations: 0 is the paper's LLOME (issue 17's lever; see outer_loop.LoopConfig.num_mutants).
  config.outer.mutant_fraction = 0.0
  # 'blind' (two uniform sites) or 'repair' (one site, plus neighbours whose transition with it no
  # feasible label shows; outer_loop.repair_mutants).
  config.outer.mutant_kind = 'blind'
  # Label a round's mutants in this many generations, each drawn from the best of the last once it is
  # labelled (1: all at once from the seeds; outer_loop.LoopConfig.mutant_generations).
  config.outer.mutant_generations = 1
  # Seeds: 1 takes the better members of the best pairs (the paper); E > 1 takes, of the best
  # E x num_seeds labelled sequences so far, those at the best value thinned farthest-first on Hamming
  # distance, then the next best (LoopConfig.seed_pool).
  config.outer.seed_pool = 1
  # Of each mutant generation's rows, this share are two-point recombinants of two of its parents
  # (0: none; LoopConfig.crossover_fraction).
  config.outer.crossover_fraction = 0.0
  # Of each mutant generation's rows, this share (after the recombinants) are segment duplications: a
  # piece of one parent, 2 to duplication_max_length long, copied over another place of it (0: none;
  # LoopConfig.duplication_fraction).
  config.outer.duplication_fraction = 0.0
  config.outer.duplication_max_length = 10

  config.pairs = ml_collections.ConfigDict()
  config.pairs.capacity = 4096  # Most pairs (or DPO triples) trained on per round.
  config.pairs.max_distance = 0.25
  config.pairs.num_neighbors = 30
  config.pairs.max_infeasible_fraction = 0.1

  config.inner = ml_collections.ConfigDict()
  config.inner.num_iterations = 10
  config.inner.temperatures = (0.6, 0.8, 1.0, 1.2, 1.4, 1.6)
  config.inner.samples_per_temperature = 10
  config.inner.greedy = True
  config.inner.top_k = 50
  config.inner.logprobs = 'model'  # 'tempered' ranks as the reference does (favours low temperatures).
  config.inner.constrained = True  # Every output has L states; False reports the validity funnel.
  config.inner.chunk_rows = 2048  # Trajectories decoded at once (KV-cache memory).
  # Independent row groups per decoding step (sampling.SampleConfig): None is 2 on CPU (two cores decode
  # side by side: an f2 MargE round 36 s -> 27 s on 2 cores) and 1 on accelerators.
  config.inner.row_groups = config_dict.placeholder(int)

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 64
  config.train.first_round_epochs = 1  # Epochs over the pairs in round 1 (SFT) ...
  config.train.epochs = 1  # ... and in every later round (the reference trains one).
  for name, lr in (('sft', 1e-3), ('pref', 1e-4)):  # SFT rounds; MargE / DPO rounds.
    optim = ml_collections.ConfigDict()
    optim.learning_rate = lr
    optim.warmup_steps = 0
    optim.schedule = 'constant'
    optim.decay_steps = 0
    optim.end_fraction = 0.1
    optim.weight_decay = 0.0
    optim.grad_clip = 1.0
    config.train[name] = optim
  config.train.dpo_beta = 0.4
  config.train.dpo_label_smoothing = 0.0
  config.train.marge_alpha = 1.0
  config.train.marge_beta = 10.0
  config.train.marge_self_normalize = True
  return config
