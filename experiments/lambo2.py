r"""LaMBO-2 on an Ehrlich function: GA seed data (the LLOME binary's), then rounds of train -> guide ->
label.

  python -m experiments.lambo2 --config=experiments/configs/lambo2_f2.py --workdir=runs/lambo2_f2 \
      --config.num_rounds=2

Writes to workdir, in the LLOME binary's formats (so experiments.compare reads both): config.json;
metrics.jsonl (round 0 is the seed data, then one object per round); seed_data.npz;
labelled/round_NNNN.npz (each round's newly labelled proposals and values); best.json; regret.png;
timings.jsonl; checkpoints/ (Orbax, the whole loop state). Rerunning on the same workdir resumes from
the last checkpoint and ends as an uninterrupted run would; a workdir holding another config is refused
unless --overwrite is given.
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
from experiments.configs import lambo2_defaults
from llome_jax import checkpoint, configs, ga, metrics_io, oracle, sharding
from llome_jax.lambo2 import guidance, network, rounds, training

_MAY_CHANGE = ('num_rounds', 'keep_checkpoints')
_OUTPUTS = (
  'metrics.jsonl',
  'seed_data.npz',
  'best.json',
  'regret.png',
  'best_value.png',
  'labelled',
  'checkpoints',
  'timings.jsonl',
)


@dataclasses.dataclass(frozen=True)
class Setup:
  problem: oracle.Problem
  ga_cfg: ga.GAConfig
  ga_steps: int
  round_cfg: rounds.RoundConfig


def build_setup(config: ml_collections.ConfigDict) -> Setup:
  """Validates the config (keys, types, values) and builds the static settings; raises ValueError
  naming the key at fault, before any work."""
  defaults = lambo2_defaults.get_config()
  configs.validate(config, defaults)
  for key in ('num_rounds', 'keep_checkpoints'):
    if config[key] < 1:
      raise ValueError(f'config.{key} must be >= 1, got {config[key]}.')
  problem = common.resolve_problem(config, defaults)
  dim = problem.dim
  ga_cfg = common.make_ga_config(config.ga, problem.num_states, dim, problem)
  ga_steps = ga.num_steps_for_budget(ga_cfg, config.ga.num_steps, config.ga.max_evaluations)
  if not config.seed_data and ga_steps < 1 and problem.host is None:
    raise ValueError(
      f'config.ga: the seed GA budget holds no generation (num_steps={config.ga.num_steps}, '
      f'max_evaluations={config.ga.max_evaluations}), so there would be no seed data.'
    )
  with configs.section('network'):
    net_cfg = network.NetworkConfig(num_states=problem.num_states, length=dim, **config.network.to_dict())
  with configs.section('train'):
    train_cfg = training.TrainConfig(**config.train.to_dict())
  with configs.section('guide'):
    guide_cfg = guidance.GuideConfig(**config.guide.to_dict())
  round_cfg = rounds.RoundConfig(
    network=net_cfg,
    train=train_cfg,
    guide=guide_cfg,
    num_proposals=config.num_proposals,
    pool_expansion=config.pool_expansion,
    distance=config.distance,
  )
  return Setup(problem, ga_cfg, ga_steps, round_cfg)


def _read_seed_data(path: str, problem: oracle.Problem):
  """An LLOME workdir's seed_data.npz, checked: its values must be the test function's (a file made
  for another instance would silently optimise against the wrong data). A user's scorer is not called
  to check them: its values are taken as given."""
  dim = problem.dim
  try:
    with np.load(path) as data:
      seqs, values = np.asarray(data['sequences']), np.asarray(data['values'], np.float32)
  except (OSError, KeyError, ValueError) as error:
    raise ValueError(
      f'config.seed_data={path!r}: not a seed_data.npz with sequences and values ({error}).'
    ) from None
  if seqs.ndim != 2 or seqs.shape[1] != dim or len(values) != len(seqs) or not len(seqs):
    raise ValueError(
      f'config.seed_data={path!r}: sequences of shape {seqs.shape} and {len(values)} values do not fit '
      f'the test function (L = {dim}).'
    )
  if problem.ehrlich_params is None:
    return seqs, values, len(seqs)
  want = np.asarray(problem.evaluate(seqs))
  if not np.array_equal(np.isfinite(want), np.isfinite(values)) or not np.allclose(
    want, values, equal_nan=True
  ):
    raise ValueError(f'config.seed_data={path!r}: its values are not those of config.test_function.')
  return seqs, values, len(seqs)


def _save_labelled(workdir: pathlib.Path, round_index: int, proposals, values, labelled) -> None:
  directory = workdir / 'labelled'
  directory.mkdir(exist_ok=True)
  path = directory / f'round_{round_index:04d}.npz'
  tmp = path.with_name(path.stem + '.tmp.npz')
  np.savez(tmp, sequences=proposals[labelled], values=values[labelled])
  tmp.replace(path)


def _initial_state(setup: Setup, config, mesh, file_seeds, workdir: pathlib.Path | None = None):
  seeds = file_seeds
  if seeds is None and setup.problem.host is not None and workdir is not None:
    seeds = common.saved_seed_data(workdir)  # Resuming: the scorer is not called again for round 0.
  if seeds is None:
    seeds = common.seed_data(setup.problem, setup.ga_cfg, setup.ga_steps, config.seed, mesh)
  capacity = len(seeds[1]) + config.num_rounds * config.num_proposals
  state = rounds.init(jax.random.key(config.seed), *seeds, history_capacity=capacity)
  return seeds, state


def run_experiment(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  overwrite: bool = False,
  stop_after_round: int | None = None,
) -> dict:
  """Runs (or resumes) LaMBO-2 and writes its outputs; returns the summary written as best.json."""
  # ---------------------------------------------------------------- Setup: every check before any work.
  setup = build_setup(config)
  mesh = sharding.make_mesh(config.num_devices)
  file_seeds = None
  if config.seed_data:  # Read and checked before the workdir is touched.
    file_seeds = _read_seed_data(config.seed_data, setup.problem)
  budget = common.Budget(config.num_rounds, 'rounds', f'num_rounds={config.num_rounds}')
  workdir = common.prepare_workdir(
    workdir, config, overwrite=overwrite, outputs=_OUTPUTS, may_change=_MAY_CHANGE, budget=budget
  )
  checkpoints = workdir / 'checkpoints'
  seeds, state = _initial_state(setup, config, mesh, file_seeds, workdir)
  state_sh = jax.tree.map(lambda _: sharding.replicated(mesh), state)
  metrics_path = workdir / 'metrics.jsonl'

  seed_metrics = functools.partial(rounds.seed_metrics, problem=setup.problem)
  state, rows = common.resume_or_start(workdir, state, state_sh, seeds, seed_metrics)
  writer = common.is_writer()

  # ---------------------------------------------------------------- Rounds.
  run = rounds.jit_round(mesh, state, problem=setup.problem, cfg=setup.round_cfg)
  stop = config.num_rounds if stop_after_round is None else min(stop_after_round, config.num_rounds)
  logging.info(
    'LaMBO-2: rounds %d..%d of %d, %d proposals each, L=%d, v=%d, %d devices.',
    int(state.round) + 1,
    stop,
    config.num_rounds,
    config.num_proposals,
    setup.round_cfg.network.length,
    setup.round_cfg.network.num_states,
    mesh.size,
  )
  while int(state.round) < stop:
    start = time.perf_counter()
    with common.oracle_failure(setup.problem, f'the last checkpoint (round {int(state.round)}) is intact'):
      state, (metrics, proposals, values, labelled) = run(state)
      metrics, proposals, values, labelled = jax.device_get((metrics, proposals, values, labelled))
    round_index = int(metrics['round'])
    row = metrics_io.plain_row(metrics)
    if writer:
      _save_labelled(workdir, round_index, proposals, values, labelled)
      metrics_io.append_jsonl(metrics_path, [row])
    rows.append(row)
    metadata = {'round': round_index, 'history_capacity': state.history.capacity}
    checkpoint.save(checkpoints, round_index, state, metadata=metadata, keep=config.keep_checkpoints)
    seconds = time.perf_counter() - start
    if writer:
      metrics_io.append_jsonl(workdir / 'timings.jsonl', [{'round': round_index, 'seconds': seconds}])
    logging.info(
      'round %d/%d  evaluations %d  best %.4f  regret best %s  labelled %d (feasible %.2f)  '
      'acquisition %.2f -> %.2f  (%.1f s)',
      round_index,
      config.num_rounds,
      row['num_evaluations'],
      row['best_value'],
      row['simple_regret_best'],
      row['num_labelled'],
      row['frac_labelled_feasible'],
      row['acquisition_start'],
      row['acquisition_proposal'],
      seconds,
    )

  # ---------------------------------------------------------------- Outputs.
  title = f'LaMBO-2, {common.problem_title(setup.problem, config)}'
  return common.write_summary(workdir, setup.problem, state, rows, title, write=writer)


if __name__ == '__main__':
  common.run_rounds_binary(run_experiment)
