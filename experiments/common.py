"""Helpers shared by the experiment binaries (no flags here: each binary defines its own)."""

import pathlib

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from llome_jax import ga
from llome_jax.test_functions import ehrlich, instances

_DEFAULT_ARCHIVE_LIMIT = 100_000

# Flags every experiment binary takes, defined once here so that binaries can import each other
# (and tests can import several) without absl's duplicate-flag error.
CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to an experiment config file.')
WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the outputs.')
DISTRIBUTED = flags.DEFINE_bool(
  'distributed', False, 'Multi-host: call jax.distributed.initialize() first (run on every host).'
)


def resolve_test_function(tf_config: ml_collections.ConfigDict):
  """Returns (params, dim, initial_solution) for a shipped instance or a sampled one."""
  if tf_config.name:
    instance = instances.load_instance(tf_config.name, tf_config.instance_file or None)
    initial = instance.initial_solution
    if initial is None:
      initial = ehrlich.initial_solution(jax.random.key(tf_config.seed), instance.params, instance.dim)[0]
    return instance.params, instance.dim, np.asarray(initial)
  key = jax.random.key(tf_config.seed)
  params = ehrlich.sample_params(
    key,
    num_states=tf_config.num_states,
    dim=tf_config.dim,
    num_motifs=tf_config.num_motifs,
    motif_length=tf_config.motif_length,
    quantization=tf_config.quantization,
    epistasis_factor=tf_config.epistasis_factor,
  )
  initial = ehrlich.initial_solution(jax.random.fold_in(key, 1), params, tf_config.dim)[0]
  return params, tf_config.dim, np.asarray(initial)


def make_ga_config(ga_config: ml_collections.ConfigDict, num_states: int, dim: int) -> ga.GAConfig:
  capacity = ga_config.archive_capacity
  if capacity is None:
    capacity = min(ga_config.num_particles * ga_config.num_steps, _DEFAULT_ARCHIVE_LIMIT)
  recombine_prob = ga_config.recombine_prob
  return ga.GAConfig(
    num_particles=ga_config.num_particles,
    num_states=num_states,
    mutation_prob=ga_config.mutation_prob,
    recombine_prob=1.1 / dim if recombine_prob is None else recombine_prob,
    survival_quantile=ga_config.survival_quantile,
    archive_capacity=capacity,
  )


def process_workdir(workdir: str, distributed: bool) -> str:
  """With `distributed`, initialises multi-host JAX (coordinator and process ids from the environment:
  TPU pods, SLURM); every host runs the same program and process i > 0 writes under WORKDIR/process_i."""
  if not distributed:
    return workdir
  jax.distributed.initialize()
  if jax.process_index() > 0:
    return str(pathlib.Path(workdir) / f'process_{jax.process_index()}')
  return workdir
