r"""Seconds per LaMBO-2 round on f2, and where they go: training, the starting pool, the guided steps.

  python benchmarks/lambo2_speed.py [--config=experiments/configs/lambo2_f2.py] [--num_proposals=2000] \
      [--set=network.channels=64 ...]

Starts from the LLOME binary's seed data (the f2 seed GA, 1,000 x 10) and times round 1 of the config
(compiled first, then run) and each part of it compiled alone. The reference (cortex, PyTorch) is not
run here: it needs its own environment and a GPU to finish the paper's settings in reasonable time.
Pass --config=experiments/configs/lambo2_f2_paper.py for the paper's settings (64 guided steps, 16
epochs, edit distance).
"""

import argparse
import ast
import importlib.util
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # experiments/ is not installed.
from experiments import common, lambo2  # noqa: E402
from llome_jax import sharding  # noqa: E402
from llome_jax.lambo2 import acquisition, guidance, network, rounds, selection, training  # noqa: E402


def _config(path: str, num_proposals: int, overrides: list[str]):
  spec = importlib.util.spec_from_file_location('benchmark_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.num_proposals = num_proposals
  config.num_rounds = 1
  for override in overrides:  # KEY.PATH=VALUE, the value a Python literal.
    key, _, value = override.partition('=')
    *sections, name = key.split('.')
    node = config
    for section in sections:
      node = node[section]
    node[name] = ast.literal_eval(value)
  return config


def _timed(fn, *args) -> tuple[float, float, object]:
  """(seconds of the first call, which compiles, seconds of a second call, its output)."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return first, time.perf_counter() - start, out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='experiments/configs/lambo2_f2.py')
  parser.add_argument('--num_proposals', type=int, default=2000)
  parser.add_argument('--parts_only', action='store_true', help='Skip compiling and timing the whole round.')
  parser.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='Change a config key (network.channels=64).',
  )
  args = parser.parse_args()
  config = _config(args.config, args.num_proposals, args.set)
  setup = lambo2.build_setup(config)
  cfg = setup.round_cfg
  mesh = sharding.make_mesh(1)
  seqs, values, calls = common.seed_data(setup.problem, setup.ga_cfg, setup.ga_steps, config.seed, mesh)
  state = rounds.init(
    jax.random.key(0), seqs, values, calls, history_capacity=len(values) + args.num_proposals
  )
  history, held = state.history, jnp.arange(state.history.capacity) < state.history.count
  print(f'f2, {len(values)} seed sequences, {args.num_proposals} proposals, {jax.devices()[0].device_kind}')

  graphdef, params = network.init(cfg.network, jax.random.key(1))
  dataset = training.Dataset(history.sequences_CxL, training.standardise(history.values_C, held)[0], held)
  fit = jax.jit(lambda p: training.fit(jax.random.key(2), p, dataset, graphdef=graphdef, cfg=cfg.train)[0])
  pool = jax.jit(
    lambda: selection.starting_pool(
      history.sequences_CxL,
      history.values_C,
      held,
      cfg.num_proposals,
      expansion=cfg.pool_expansion,
      distance=cfg.distance,
    )
  )
  times = {'train': _timed(fit, params), 'starting pool': _timed(pool)}
  trained, (starts, _, _) = times['train'][2], times['starting pool'][2]
  best = acquisition.incumbents(network.merge(graphdef, trained)(starts))
  guide = jax.jit(lambda p, s: guidance.guide(jax.random.key(3), graphdef, p, s, best, cfg=cfg.guide)[0])
  times['guided steps'] = _timed(guide, trained, starts)
  if not args.parts_only:
    round_fn = rounds.jit_round(mesh, state, problem=setup.problem, cfg=cfg)
    copy = jax.tree.map(jnp.copy, state)
    start = time.perf_counter()
    jax.block_until_ready(round_fn(state))
    compile_and_run = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(round_fn(copy))
    times['whole round'] = (compile_and_run, time.perf_counter() - start, None)
  for name, (first, second, _) in times.items():
    print(f'  {name:14s} {second:7.1f} s   (first call, with compilation: {first:.1f} s)')
  per_step = times['guided steps'][1] / cfg.guide.num_steps
  print(f'  guided step    {per_step:7.2f} s for {args.num_proposals} sequences')


if __name__ == '__main__':
  main()
