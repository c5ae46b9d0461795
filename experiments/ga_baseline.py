r"""GA baseline (holo DiscreteEvolution) on an Ehrlich function.

  python -m experiments.ga_baseline --config=experiments/configs/ga_ehrlich.py --workdir=/tmp/ga_f2 \
      --config.ga.num_particles=4096

Writes to workdir: config.json, metrics.jsonl (one object per generation), best.json, regret.png,
checkpoints/ (the GA state, every `checkpoint_every` generations and at the end) and, when the archive is
on, seed_data.npz (the unique sequences evaluated and their values: LLOME's round-0 data). Rerunning the
same command on the same workdir resumes from the last checkpoint and ends as an uninterrupted run; a
workdir holding another config is refused unless --overwrite is given.
"""

import dataclasses
import functools
import time

import jax
import ml_collections
import numpy as np
from absl import app, logging

from experiments import common
from experiments.configs import ga_ehrlich
from llome_jax import archive, checkpoint, configs, ga, metrics_io, oracle, sharding

_OUTPUTS = ('metrics.jsonl', 'best.json', 'regret.png', 'best_value.png', 'seed_data.npz', 'checkpoints')
# Keys a resumed run may change: its budget (which may grow, never below what was run) and what only
# changes logging and housekeeping.
_MAY_CHANGE = ('ga.num_steps', 'ga.max_evaluations', 'log_every', 'checkpoint_every', 'keep_checkpoints')


def run_experiment(config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False) -> dict:
  """Runs (or resumes) the GA and writes its outputs; returns the final summary (also best.json).

  A workdir that holds this config resumes from its last checkpoint (every `checkpoint_every`
  generations and at the end) and ends exactly as an uninterrupted run. A finished run whose budget
  (ga.num_steps, ga.max_evaluations) is raised continues to the new budget and ends as a run started
  with it; logging and checkpointing keys may change too. A workdir holding another config is refused
  unless `overwrite`. Every check of the config runs before anything is written.
  """
  defaults = ga_ehrlich.get_config()
  configs.validate(config, defaults)
  # ---------------------------------------------------------------- Setup: every check before any work.
  problem = common.resolve_problem(config, defaults)
  dim, initial_solution = problem.dim, problem.initial_KxL
  cfg = common.make_ga_config(config.ga, problem.num_states, dim, problem)
  num_steps = ga.num_steps_for_budget(cfg, config.ga.num_steps, config.ga.max_evaluations)
  if num_steps < 1:
    raise ValueError(
      f'config.ga: the budget holds no generation (num_steps={config.ga.num_steps}, '
      f'max_evaluations={config.ga.max_evaluations}, one generation is num_particles={cfg.num_particles} calls).'
    )
  for key in ('log_every', 'checkpoint_every'):
    if config[key] < 1:
      raise ValueError(f'config.{key} must be >= 1, got {config[key]}.')
  mesh = sharding.make_mesh(config.num_devices)
  budget = common.Budget(
    num_steps,
    'generations',
    f'ga.num_steps={config.ga.num_steps}, ga.max_evaluations={config.ga.max_evaluations}',
  )
  workdir = common.prepare_workdir(
    workdir, config, overwrite=overwrite, outputs=_OUTPUTS, may_change=_MAY_CHANGE, budget=budget
  )
  checkpoints = workdir / 'checkpoints'
  state = ga.init(initial_solution, cfg=cfg)
  state_shardings = sharding.ga_state_shardings(mesh, state)
  metrics_path = workdir / 'metrics.jsonl'
  initial_best = None  # A scorer's: the best value of the initial sequences, given or scored.

  def restore_target(metadata):
    # The default archive holds every evaluation of the budget, so a run resumed with a larger budget
    # restores the archive it saved and grows it.
    capacity = metadata.get('archive_capacity', cfg.archive_capacity)
    saved = ga.init(initial_solution, cfg=dataclasses.replace(cfg, archive_capacity=capacity))
    return checkpoint.abstract_like(saved, sharding.ga_state_shardings(mesh, saved))

  restored = common.restore_checkpoint(checkpoints, restore_target)
  if restored is not None:
    archive_now = archive.resized(restored.archive, cfg.archive_capacity)
    state = sharding.put(restored.replace(archive=archive_now), state_shardings)
    rows = metrics_io.read_rows(metrics_path, 'step', int(state.step))
    initial_best = checkpoint.read_metadata(checkpoints).get('initial_best_value')
    logging.info('Resuming %s after generation %d.', workdir, int(state.step))
  else:
    if problem.host is not None:
      state, initial_best = _start_from_initial(state, problem, cfg)
    state, rows = sharding.put(state, state_shardings), []
  writer = common.is_writer()  # Process 0 writes the outputs; every process its part of checkpoints.
  if writer:
    metrics_io.rewrite_jsonl(metrics_path, rows)
  key = jax.random.key(config.seed)

  @functools.partial(
    jax.jit, static_argnames='length', donate_argnums=1, out_shardings=(state_shardings, None)
  )
  def run_chunk(key, state, length):
    return ga.run(
      key,
      state,
      objective=problem.evaluator(mesh),
      cfg=cfg,
      num_steps=length,
      stop_at_optimum=config.ga.stop_at_optimum,
    )

  # ---------------------------------------------------------------- Generations.
  logging.info(
    'GA: %d particles x %d generations on L=%d, v=%d (%d devices).',
    cfg.num_particles,
    num_steps,
    dim,
    problem.num_states,
    mesh.size,
  )
  done, saved, start = int(state.step), int(state.step), time.perf_counter()
  solved = config.ga.stop_at_optimum and float(state.best_value) >= cfg.optimal_value
  while done < num_steps and not solved:
    length = min(config.log_every, num_steps - done)
    with common.oracle_failure(problem, f'the last checkpoint (generation {saved}) is intact'):
      state, metrics = run_chunk(key, state, length)
      metrics = jax.device_get(metrics)  # Inside: a scorer's failure surfaces here.
    chunk_rows = [
      metrics_io.plain_row({k: v[i] for k, v in metrics.items() if k != 'active'})
      for i in range(length)
      if metrics['active'][i]
    ]
    if writer:
      metrics_io.append_jsonl(metrics_path, chunk_rows)
    rows.extend(chunk_rows)
    done += length
    solved = not metrics['active'][-1]
    if int(state.step) > saved and (done - saved >= config.checkpoint_every or done >= num_steps or solved):
      metadata = {'generation': int(state.step), 'archive_capacity': cfg.archive_capacity}
      if initial_best is not None:
        metadata['initial_best_value'] = initial_best
      checkpoint.save(checkpoints, int(state.step), state, metadata=metadata, keep=config.keep_checkpoints)
      saved = int(state.step)
    if chunk_rows:
      last = chunk_rows[-1]
      logging.info(
        'generation %d/%d  evaluations %d  best %.4f  (%.1f generations/s)',
        last['step'] + 1,
        num_steps,
        last['num_evaluations'],
        last['best_value'],
        len(chunk_rows) / (time.perf_counter() - start),
      )
      start = time.perf_counter()
    if solved:
      logging.info('Optimum reached after %d evaluations; stopping.', int(state.num_evaluations))

  # ---------------------------------------------------------------- Outputs.
  summary = common.summary(problem, state, rows) | {'num_generations': int(state.step)}
  if initial_best is not None:
    summary['initial_best_value'] = initial_best
  if cfg.archive_capacity:
    sequences, values = archive.contents(state.archive)
    if writer:
      np.savez(workdir / 'seed_data.npz', sequences=sequences, values=values)
    summary['archive_size'] = len(values)
    summary['archive_dropped'] = int(state.archive.num_dropped)
  if writer:
    metrics_io.write_json(workdir / 'best.json', summary)
    common.plot_progress(problem, rows, workdir, f'GA, {common.problem_title(problem, config)}')
  logging.info(
    'Best value %.4f after %d evaluations; outputs in %s',
    summary['best_value'],
    summary['num_evaluations'],
    workdir,
  )
  return summary


def _start_from_initial(state: ga.GAState, problem, cfg: ga.GAConfig) -> tuple[ga.GAState, float]:
  """A scorer's run starts knowing its initial sequences: their values (given, or scored now, counted as
  oracle calls) set the best so far and enter the archive."""
  values, num_scored = oracle.score_initial(problem)
  best = int(np.argmax(values))
  state = state.replace(
    best_solution_L=np.asarray(problem.initial_KxL[best], state.particles_PxL.dtype),
    best_value=np.float32(values[best]),
    num_evaluations=np.int32(num_scored),
  )
  if cfg.archive_capacity:
    tokens = problem.initial_KxL.astype(state.particles_PxL.dtype)
    state = state.replace(archive=archive.add(state.archive, tokens, values))
  return state, float(values[best])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  common.initialize_distributed()
  run_experiment(common.CONFIG.value, common.WORKDIR.value, overwrite=common.OVERWRITE.value)


if __name__ == '__main__':
  common.run_main(main)
