r"""LLOME on an Ehrlich function: GA seed data, then rounds of train -> inner loop -> label.

  python -m experiments.llome --config=experiments/configs/smoke.py --workdir=runs/smoke \
      --config.outer.num_rounds=5

Writes to workdir: config.json; metrics.jsonl (round 0 is the seed data, then one object per round);
seed_data.npz; labelled/round_NNNN.npz (each round's labelled sequences, values, likelihoods and sources);
best.json; regret.png; checkpoints/ (Orbax, the whole loop state). Rerunning on the same workdir
resumes from the last checkpoint and ends as an uninterrupted run would; a workdir holding another
config is refused unless --overwrite is given.
"""

import dataclasses
import functools
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from experiments import common
from experiments.configs import llome_defaults
from llome_jax import (
  checkpoint,
  configs,
  ga,
  inner_loop,
  labelling,
  metrics_io,
  oracle,
  outer_loop,
  pairs,
  sharding,
  train,
)
from llome_jax import codec as codec_lib
from llome_jax import model as model_lib

# Keys a resumed run may change: the number of rounds (which may grow, never below what was run) and
# housekeeping.
_MAY_CHANGE = ('outer.num_rounds', 'keep_checkpoints', 'rounds_per_chunk')
_OUTPUTS = (
  'metrics.jsonl',
  'seed_data.npz',
  'best.json',
  'regret.png',
  'best_value.png',
  'labelled',
  'checkpoints',
  'timings.jsonl',
  'diagnosis.jsonl',
  'diagnosis.md',
)


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything static that a run derives from its config, built before any work starts."""

  problem: oracle.Problem
  ga_cfg: ga.GAConfig
  ga_steps: int
  codec: codec_lib.CompactCodec
  model_cfg: model_lib.ModelConfig
  loop_cfg: outer_loop.LoopConfig


def _optim(section: ml_collections.ConfigDict) -> train.OptimConfig:
  return train.OptimConfig(**section.to_dict())


def build_setup(config: ml_collections.ConfigDict) -> Setup:
  """Validates the config (keys, types and values) and builds the static settings. Raises ValueError
  naming the config key at fault, before any work."""
  defaults = llome_defaults.get_config()
  configs.validate(config, defaults)
  for key in ('rounds_per_chunk', 'keep_checkpoints'):
    if config[key] < 1:
      raise ValueError(f'config.{key} must be >= 1, got {config[key]}.')
  if config.outer.num_rounds < 1:
    raise ValueError(f'config.outer.num_rounds must be >= 1, got {config.outer.num_rounds}: no round to run.')
  problem = common.resolve_problem(config, defaults)
  dim = problem.dim
  ga_cfg = common.make_ga_config(config.ga, problem.num_states, dim, problem)
  ga_steps = ga.num_steps_for_budget(ga_cfg, config.ga.num_steps, config.ga.max_evaluations)
  if ga_steps < 1 and problem.host is None:  # A scorer's initial sequences may be the whole seed.
    raise ValueError(
      f'config.ga: the seed GA budget holds no generation (num_steps={config.ga.num_steps}, '
      f'max_evaluations={config.ga.max_evaluations}, one generation is num_particles={ga_cfg.num_particles} '
      'calls), so there would be no seed data.'
    )
  if not ga_cfg.archive_capacity:
    raise ValueError('config.ga.archive_capacity must be > 0: the archive of the seed GA is the seed data.')
  codec = codec_lib.CompactCodec(problem.num_states, dim)
  overrides = {k: v for k, v in config.model.to_dict().items() if k != 'preset' and v is not None}
  with configs.section('model'):
    model_cfg = model_lib.preset(config.model.preset, vocab_size=codec.vocab_size, **overrides)
    if codec.prompt_len + codec.max_target_len + 1 > model_cfg.max_len:
      raise ValueError(f'max_len {model_cfg.max_len} is too short for L = {dim} (needs {2 * dim + 4}).')
  with configs.section('inner'):
    inner = inner_loop.InnerLoopConfig(**config.inner.to_dict())
  with configs.section('pairs'):
    pair_cfg = pairs.PairConfig(**config.pairs.to_dict())
  with configs.section('train.sft'):
    sft_optim = _optim(config.train.sft)
  with configs.section('train.pref'):
    pref_optim = _optim(config.train.pref)
  outer = config.outer
  if not 0.0 <= outer.mutant_fraction < 1.0:
    raise ValueError(f'config.outer.mutant_fraction must lie in [0, 1), got {outer.mutant_fraction}.')
  if outer.mutant_kind not in outer_loop.MUTANT_KINDS:
    raise ValueError(
      f'config.outer.mutant_kind must be one of {outer_loop.MUTANT_KINDS}, got {outer.mutant_kind!r}.'
    )
  num_mutants = round(outer.mutant_fraction * outer.num_labels)
  if outer.mutant_generations < 1 or num_mutants % outer.mutant_generations:
    raise ValueError(
      f'config.outer.mutant_generations={outer.mutant_generations} must be >= 1 and divide the '
      f'{num_mutants} mutants of a round (mutant_fraction x num_labels).'
    )
  with configs.section('outer'):
    select = labelling.SelectConfig(
      num_labels=outer.num_labels, likelihood_quantile=outer.likelihood_quantile
    )
  loop_cfg = outer_loop.LoopConfig(
    pairs=pair_cfg,
    inner=inner,
    select=select,
    schedule=outer.schedule,
    batch_size=config.train.batch_size,
    sft_optim=sft_optim,
    pref_optim=pref_optim,
    objective=train.ObjectiveConfig(
      dpo_beta=config.train.dpo_beta,
      dpo_label_smoothing=config.train.dpo_label_smoothing,
      marge_alpha=config.train.marge_alpha,
      marge_beta=config.train.marge_beta,
      marge_self_normalize=config.train.marge_self_normalize,
    ),
    num_seeds=outer.num_seeds,
    temperature_scaling=outer.temperature_scaling,
    num_calibration_bins=outer.num_calibration_bins,
    first_round_epochs=config.train.first_round_epochs,
    epochs=config.train.epochs,
    split_rows=outer.split_rows,
    num_mutants=num_mutants,
    mutant_kind=outer.mutant_kind,
    mutant_generations=outer.mutant_generations,
    seed_pool=outer.seed_pool,
    crossover_fraction=outer.crossover_fraction,
    duplication_fraction=outer.duplication_fraction,
    duplication_max_length=outer.duplication_max_length,
  )
  pool = inner.num_iterations * outer.num_seeds * inner.rows_per_seed
  if outer.num_labels > pool:
    raise ValueError(
      f'config.outer.num_labels={outer.num_labels} exceeds the pool of {pool} generations per round '
      f'(inner.num_iterations x outer.num_seeds x decoding settings per seed).'
    )
  return Setup(problem, ga_cfg, ga_steps, codec, model_cfg, loop_cfg)


def _initial_state(setup: Setup, config, seeds):
  """The policy and the state before round 1; shapes independent of the mesh, so 1 device equals 8."""
  seqs, values, num_evaluations = seeds
  key = jax.random.key(config.seed)
  num_labels = setup.loop_cfg.select.num_labels
  capacity = max(len(values), num_labels)
  graphdef, params = model_lib.init(setup.model_cfg, jax.random.fold_in(key, 1))
  return graphdef, outer_loop.init(
    jax.random.fold_in(key, 2),
    params,
    seqs,
    values,
    num_evaluations,
    capacity=capacity,
    history_capacity=len(values) + config.outer.num_rounds * num_labels,
  )


def initial_state(setup: Setup, config: ml_collections.ConfigDict, mesh, workdir: pathlib.Path | None = None):
  """Runs the seed GA and builds the state before round 1 on `mesh`. With a user's scorer and a
  `workdir` that can resume, the seed data is read back from it instead: a scorer is not called twice
  for the same run.

  Returns:
    (graphdef, seed data (sequences, values, oracle calls), state, its shardings); the state is also
    the restore target of the run's checkpoints.
  """
  seeds = None
  if setup.problem.host is not None and workdir is not None:
    seeds = common.saved_seed_data(workdir)
  if seeds is None:
    seeds = common.seed_data(setup.problem, setup.ga_cfg, setup.ga_steps, config.seed, mesh)
  graphdef, state = _initial_state(setup, config, seeds)
  return graphdef, seeds, state, outer_loop.state_shardings(state, mesh, fsdp=config.fsdp)


def _chunks(loop_cfg: outer_loop.LoopConfig, start: int, stop: int, per_chunk: int):
  """(first round, number of rounds, (objective, epochs)) of each jitted chunk; a chunk never mixes
  trainings."""
  round_index = start + 1
  while round_index <= stop:
    training = loop_cfg.training_of_round(round_index)
    length = 1
    while (
      length < per_chunk
      and round_index + length <= stop
      and loop_cfg.training_of_round(round_index + length) == training
    ):
      length += 1
    yield round_index, length, training
    round_index += length


def _rows(metrics: dict, num_rounds: int) -> list[dict]:
  rows = []
  for i in range(num_rounds):
    row = {k: (v[i].tolist() if np.ndim(v[i]) else v[i]) for k, v in metrics.items()}
    rows.append(metrics_io.plain_row(row))
  return rows


def _save_labelled(workdir: pathlib.Path, first_round: int, selection, values, loop_cfg) -> None:
  """Each round's labelled rows, in the order they were drawn, with where each came from (`sources`:
  0 the policy, 1 a mutant, 2 a recombinant, 3 a duplication)."""
  directory = workdir / 'labelled'
  directory.mkdir(exist_ok=True)
  num_rows = values.shape[1]
  sources_N = np.asarray(outer_loop.row_sources(loop_cfg, num_rows), np.int8)
  for i in range(values.shape[0]):
    where = selection.where_N[i]
    path = directory / f'round_{first_round + i:04d}.npz'
    tmp = path.with_name(path.stem + '.tmp.npz')
    np.savez(
      tmp,
      sequences=selection.seqs_NxL[i][where],
      values=values[i][where],
      likelihoods=selection.likelihood_N[i][where],
      sources=sources_N[where],
    )
    tmp.replace(path)


def run_experiment(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  overwrite: bool = False,
  stop_after_round: int | None = None,
) -> dict:
  """Runs (or resumes) LLOME and writes its outputs; returns the summary written as best.json."""
  # ---------------------------------------------------------------- Setup: every check before any work.
  setup = build_setup(config)
  mesh = sharding.make_mesh(config.num_devices)
  budget = common.Budget(config.outer.num_rounds, 'rounds', f'outer.num_rounds={config.outer.num_rounds}')
  workdir = common.prepare_workdir(
    workdir, config, overwrite=overwrite, outputs=_OUTPUTS, may_change=_MAY_CHANGE, budget=budget
  )
  checkpoints = workdir / 'checkpoints'
  graphdef, seeds, state, state_sh = initial_state(setup, config, mesh, workdir)
  metrics_path = workdir / 'metrics.jsonl'

  seed_metrics = functools.partial(outer_loop.seed_metrics, problem=setup.problem)
  state, rows = common.resume_or_start(workdir, state, state_sh, seeds, seed_metrics)
  writer = common.is_writer()

  # ---------------------------------------------------------------- Rounds.
  run = outer_loop.jit_run_rounds(
    state_sh,
    mesh,
    graphdef=graphdef,
    problem=setup.problem,
    codec=setup.codec,
    cfg=setup.loop_cfg,
  )
  stop = (
    config.outer.num_rounds if stop_after_round is None else min(stop_after_round, config.outer.num_rounds)
  )
  logging.info(
    'LLOME (%s): rounds %d..%d of %d, %d labels each, L=%d, v=%d, %d devices.',
    setup.loop_cfg.schedule,
    int(state.round) + 1,
    stop,
    config.outer.num_rounds,
    setup.loop_cfg.select.num_labels,
    setup.codec.length,
    setup.codec.num_states,
    mesh.size,
  )
  for first, length, (objective, epochs) in _chunks(
    setup.loop_cfg, int(state.round), stop, config.rounds_per_chunk
  ):
    start = time.perf_counter()
    intact = f'the last checkpoint (round {int(state.round)}) is intact'
    with common.oracle_failure(setup.problem, intact):
      state, (metrics, selection, values) = run(state, length, objective, epochs)
      metrics, selection, values = jax.device_get((metrics, selection, values))
    train.check_finite(
      {'nonfinite': metrics['train_nonfinite_steps']}, f'rounds {first}..{first + length - 1}'
    )
    new_rows = _rows(metrics, length)
    if writer:
      _save_labelled(workdir, first, selection, values, setup.loop_cfg)
      metrics_io.append_jsonl(metrics_path, new_rows)
    rows.extend(new_rows)
    metadata = {'round': int(state.round), 'history_capacity': state.history.capacity}
    checkpoint.save(checkpoints, int(state.round), state, metadata=metadata, keep=config.keep_checkpoints)
    seconds = time.perf_counter() - start
    if writer:
      metrics_io.append_jsonl(
        workdir / 'timings.jsonl', [{'first_round': first, 'rounds': length, 'seconds': seconds}]
      )
    last = new_rows[-1]
    logging.info(
      'round %d/%d (%s)  evaluations %d  best %.4f  regret best %s  edit %.3f  valid %.2f  (%.1f s)',
      last['round'],
      config.outer.num_rounds,
      objective,
      last['num_evaluations'],
      last['best_value'],
      last['simple_regret_best'],
      last['mean_edit_hamming'],
      last['frac_generations_valid'],
      seconds,
    )

  # ---------------------------------------------------------------- Outputs.
  name = {'sft': 'SFT', 'marge': 'MargE', 'dpo': 'DPO'}[setup.loop_cfg.schedule]
  title = f'LLOME-{name}, {common.problem_title(setup.problem, config)}'
  return common.write_summary(workdir, setup.problem, state, rows, title, write=writer)


if __name__ == '__main__':
  common.run_rounds_binary(run_experiment)
