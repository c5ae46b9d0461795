r"""GA baseline (holo DiscreteEvolution) on an Ehrlich function.

  python -m experiments.ga_baseline --config=experiments/configs/ga_ehrlich.py --workdir=/tmp/ga_f2 \
      --config.ga.num_particles=4096

Writes to workdir: config.json, metrics.jsonl (one object per generation), best.json, regret.png and,
when the archive is on, seed_data.npz (the unique sequences evaluated and their values: LLOME's round-0
data).
"""

import functools
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from experiments import common
from experiments.configs import ga_ehrlich
from llome_jax import archive, configs, ga, metrics_io, sharding
from llome_jax.test_functions import ehrlich


def _prepare_workdir(workdir: str) -> pathlib.Path:
  path = pathlib.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  if (path / 'metrics.jsonl').exists():
    raise FileExistsError(f'{path} already holds a run (metrics.jsonl); choose another workdir.')
  return path


def run_experiment(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the GA and writes its outputs; returns the final summary (also written as best.json)."""
  configs.validate(config, ga_ehrlich.get_config())
  # ---------------------------------------------------------------- Setup.
  params, dim, initial_solution = common.resolve_test_function(config.test_function)
  cfg = common.make_ga_config(config.ga, params.num_states, dim)
  num_steps = ga.num_steps_for_budget(cfg, config.ga.num_steps, config.ga.max_evaluations)
  if num_steps < 1:
    raise ValueError(
      f'ga.max_evaluations={config.ga.max_evaluations} is below one generation ({cfg.num_particles}).'
    )
  if config.log_every < 1:
    raise ValueError(f'log_every must be >= 1, got {config.log_every}.')
  mesh = sharding.make_mesh(config.num_devices)
  workdir = _prepare_workdir(workdir)
  metrics_io.write_json(workdir / 'config.json', config.to_dict())

  state = ga.init(initial_solution, cfg=cfg)
  state_shardings = sharding.ga_state_shardings(mesh, state)
  state = jax.device_put(state, state_shardings)
  key = jax.random.key(config.seed)

  @functools.partial(
    jax.jit, static_argnames='length', donate_argnums=1, out_shardings=(state_shardings, None)
  )
  def run_chunk(key, state, length):
    return ga.run(
      key,
      state,
      objective=sharding.per_shard(mesh, functools.partial(ehrlich.evaluate, params)),
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
    params.num_states,
    mesh.size,
  )
  rows, done, start = [], 0, time.perf_counter()
  while done < num_steps:
    length = min(config.log_every, num_steps - done)
    state, metrics = run_chunk(key, state, length)
    metrics = jax.device_get(metrics)
    chunk_rows = [
      metrics_io.plain_row({k: v[i] for k, v in metrics.items() if k != 'active'})
      for i in range(length)
      if metrics['active'][i]
    ]
    metrics_io.append_jsonl(workdir / 'metrics.jsonl', chunk_rows)
    rows.extend(chunk_rows)
    done += length
    if chunk_rows:
      last = chunk_rows[-1]
      logging.info(
        'generation %d/%d  evaluations %d  regret best %.4f  (%.1f generations/s)',
        done,
        num_steps,
        last['num_evaluations'],
        last['simple_regret_best'],
        done / (time.perf_counter() - start),
      )
    if not metrics['active'][-1]:
      logging.info('Optimum reached after %d evaluations; stopping.', int(state.num_evaluations))
      break

  # ---------------------------------------------------------------- Outputs.
  summary = {
    'best_solution': np.asarray(state.best_solution_L).astype(int).tolist(),
    'best_value': float(state.best_value),
    'simple_regret_best': rows[-1]['simple_regret_best'],
    'num_evaluations': int(state.num_evaluations),
    'num_generations': int(state.step),
  }
  if cfg.archive_capacity:
    sequences, values = archive.contents(state.archive)
    np.savez(workdir / 'seed_data.npz', sequences=sequences, values=values)
    summary['archive_size'] = len(values)
    summary['archive_dropped'] = int(state.archive.num_dropped)
  metrics_io.write_json(workdir / 'best.json', summary)
  metrics_io.plot_regret(
    rows, workdir / 'regret.png', title=f'GA, {config.test_function.name or "sampled"} Ehrlich'
  )
  logging.info(
    'Best value %.4f after %d evaluations; outputs in %s',
    summary['best_value'],
    summary['num_evaluations'],
    workdir,
  )
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  workdir = common.process_workdir(common.WORKDIR.value, common.DISTRIBUTED.value)
  run_experiment(common.CONFIG.value, workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
