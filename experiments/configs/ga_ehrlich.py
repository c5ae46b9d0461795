"""GA baseline on the LLOME paper's f2 Ehrlich instance (holo seed 50494), as the paper seeds LLOME.

Run:
  python -m experiments.ga_baseline --config=experiments/configs/ga_ehrlich.py --workdir=/tmp/ga_f2

Expected: 10 generations of 1,000 particles = 10,000 oracle calls in about 3 s on a 2-core CPU (most
of it compilation); best regret falls from 0.953 (the initial solution scores 0.046875) to 0.906 with
seed 0, and about 1,000 unique sequences land in seed_data.npz. The paper reports that on f2 the GA
stays at regret >= 0.25 even after 200,000 calls.

holo's unit-test setting (reaches regret 0 within 256 generations):
  --config.test_function.name= --config.test_function.num_states=32 --config.test_function.dim=128
  --config.test_function.num_motifs=1 --config.test_function.motif_length=4
  --config.test_function.quantization=4 --config.ga.num_particles=4096
  --config.ga.mutation_prob=0.0078125 --config.ga.recombine_prob=0.0078125
  --config.ga.survival_quantile=0.01 --config.ga.num_steps=256
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_devices = config_dict.placeholder(int)  # None: every device, population split across them.
  config.log_every = 1  # Generations per jitted chunk (one progress line and metrics flush per chunk).
  # Generations between checkpoints of the GA state (rounded up to whole chunks; always one at the end),
  # from which a rerun of the same command resumes. An Orbax save costs ~0.1 s.
  config.checkpoint_every = 100
  config.keep_checkpoints = 1

  # `name` picks a stored instance (f2, ehr_v32_l128_c4_k4_q4, ...: the shipped ones, or those of
  # `instance_file`), which fixes every parameter below: setting one of them beside a name is an error.
  # An empty name samples an instance with a JAX key from num_states, dim, num_motifs and motif_length
  # (required) and quantization and epistasis_factor (optional).
  config.test_function = ml_collections.ConfigDict()
  config.test_function.name = 'f2'
  config.test_function.instance_file = ''  # Empty: the instances shipped with llome_jax.
  config.test_function.num_states = config_dict.placeholder(int)
  config.test_function.dim = config_dict.placeholder(int)
  config.test_function.num_motifs = config_dict.placeholder(int)
  config.test_function.motif_length = config_dict.placeholder(int)
  config.test_function.quantization = config_dict.placeholder(int)  # None: motif_length.
  config.test_function.epistasis_factor = config_dict.placeholder(float)  # None: 0.
  # Key of a sampled instance and its initial solution, or of the initial solution of a stored instance
  # that has none (the shipped ones all have one). None: 0.
  config.test_function.seed = config_dict.placeholder(int)

  # A scorer of your own instead of the Ehrlich function (see README, "Your own oracle"): with `target`
  # set, the test_function section must keep its defaults.
  config.oracle = ml_collections.ConfigDict()
  config.oracle.target = ''  # MODULE:FUNCTION or PATH.py:FUNCTION, score(list[str]) -> array [n].
  config.oracle.alphabet = ''  # 'protein', 'dna', 'rna' or the characters ('ACGT'); token i = character i.
  config.oracle.initial_sequences = ''  # FASTA, or CSV with `sequence` and optional `value` columns.
  config.oracle.optimal_value = config_dict.placeholder(float)  # None: unknown, regrets are null.

  config.ga = ml_collections.ConfigDict()
  config.ga.num_particles = 1000
  config.ga.mutation_prob = 0.005
  config.ga.recombine_prob = config_dict.placeholder(float)  # None: 1.1 / dim, holo's benchmark default.
  config.ga.survival_quantile = 0.1
  config.ga.num_steps = 10
  config.ga.max_evaluations = config_dict.placeholder(int)  # Oracle budget; None: num_steps generations.
  config.ga.archive_capacity = config_dict.placeholder(int)  # None: every evaluation, up to 100,000.
  config.ga.stop_at_optimum = True
  return config
