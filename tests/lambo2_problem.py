"""A toy Ehrlich problem for the LaMBO-2 tests: a sampled instance small enough to train on in seconds,
labelled data from DMP paths and their mutants (some infeasible), and small settings."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llome_jax.lambo2 import guidance, network, rounds, training
from llome_jax.test_functions import ehrlich


@functools.cache
def toy():
  params = ehrlich.sample_params(
    jax.random.key(3), num_states=6, dim=12, num_motifs=2, motif_length=3, quantization=3
  )
  paths = np.asarray(ehrlich.initial_solution(jax.random.key(4), params, 12, n=500))
  rng = np.random.default_rng(0)
  mutants = paths.copy()
  flip = rng.random(paths.shape) < 0.15
  mutants[flip] = rng.integers(0, 6, flip.sum())
  optimum = np.asarray(ehrlich.optimal_solution(params, 12))
  near = np.repeat(optimum[None], 100, axis=0)
  flip = rng.random(near.shape) < 0.3
  near[flip] = rng.integers(0, 6, flip.sum())
  seqs = np.unique(np.concatenate([paths, mutants, near]), axis=0)
  seqs = seqs[rng.permutation(len(seqs))]
  values = np.asarray(ehrlich.evaluate(params, seqs))
  standard, _, _ = training.standardise(jnp.asarray(values), jnp.ones(len(values), bool))
  split = int(0.8 * len(seqs))

  def dataset(rows):
    return training.Dataset(
      tokens_BxL=jnp.asarray(seqs[rows], jnp.int32),
      values_B=standard[rows],
      where_B=jnp.ones(len(rows), bool),
    )

  net = network.NetworkConfig(
    num_states=6, length=12, embed_dim=16, channels=32, ensemble_size=2, branch_channels=8
  )
  train = training.TrainConfig(epochs=6, batch_size=64, warmup_epochs=1)
  guide = guidance.GuideConfig(num_steps=3, num_mutations=4, num_updates=2)
  return {
    'params': params,
    'seqs': seqs,
    'values': values,
    'network': net,
    'train': train,
    'guide': guide,
    'round': rounds.RoundConfig(network=net, train=train, guide=guide, num_proposals=24, distance='edit'),
    'train_set': dataset(np.arange(split)),
    'held_out': dataset(np.arange(split, len(seqs))),
  }
