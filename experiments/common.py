"""What the experiment binaries share: flags, the test function and GA settings from a config, and the
workdir protocol (a rerun resumes, another config is refused, --overwrite clears)."""

import contextlib
import copy
import dataclasses
import importlib.util
import json
import pathlib
import shutil
import sys
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from llome_jax import archive as archive_lib
from llome_jax import checkpoint, configs, ga, metrics_io, oracle, sharding
from llome_jax.test_functions import ehrlich, instances

_DEFAULT_ARCHIVE_LIMIT = 100_000

# Flags every experiment binary takes, defined once here so that binaries can import each other
# (and tests can import several) without absl's duplicate-flag error.
CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to an experiment config file.')
WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the outputs.')
DISTRIBUTED = flags.DEFINE_bool(
  'distributed',
  False,
  'Multi-host: call jax.distributed.initialize() first, the coordinator, process count and id found in '
  'the environment (TPU pods, SLURM). Run the same command on every host.',
)
COORDINATOR = flags.DEFINE_string(
  'coordinator_address', None, 'Multi-host without a cluster manager: HOST:PORT of process 0 (every process).'
)
NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: how many processes take part.')
PROCESS_ID = flags.DEFINE_integer(
  'process_id', None, "Multi-host: this process's id, 0 .. num_processes - 1."
)
STOP_AFTER_ROUND = flags.DEFINE_integer(
  'stop_after_round',
  None,
  'Model-based binaries: stop cleanly after this round (pre-emptible machines); rerun to resume.',
)
OVERWRITE = flags.DEFINE_bool(
  'overwrite',
  False,
  "Delete the workdir's outputs (another config's run, or one that cannot resume), then run.",
)

# The keys that describe a sampled instance (test_function.name == ''). A named instance fixes all of
# them itself, so setting one beside a name is a contradiction, not a refinement.
SAMPLED_KEYS = ('num_states', 'dim', 'num_motifs', 'motif_length', 'quantization', 'epistasis_factor')
_REQUIRED_SAMPLED_KEYS = ('num_states', 'dim', 'num_motifs', 'motif_length')


def _check_test_function_keys(tf_config: ml_collections.ConfigDict) -> None:
  def dotted(keys):
    return [f'test_function.{k}' for k in keys]

  if tf_config.name:
    contradicting = [k for k in SAMPLED_KEYS if tf_config[k] is not None]
    if contradicting:
      raise ValueError(
        f'test_function.name={tf_config.name!r} picks a stored instance, which fixes its own parameters, '
        f'so {dotted(contradicting)} would be ignored. Unset them, or set test_function.name= (empty) to '
        'sample an instance from them.'
      )
    return
  unset = [k for k in _REQUIRED_SAMPLED_KEYS if tf_config[k] is None]
  if unset:
    raise ValueError(
      f'test_function.name is empty, which samples an instance from {dotted(_REQUIRED_SAMPLED_KEYS)}; '
      f'{dotted(unset)} are unset. Set them, or name a stored instance.'
    )
  if tf_config.instance_file:
    raise ValueError(
      f'test_function.instance_file={tf_config.instance_file!r} is only read for a named instance, but '
      'test_function.name is empty (a sampled instance). Set test_function.name, or unset instance_file.'
    )


def resolve_test_function(tf_config: ml_collections.ConfigDict):
  """Returns (params, dim, initial_solution) for a stored instance or a sampled one.

  Raises ValueError, naming the keys, for sampled-instance keys set beside a named instance, a sampled
  instance missing its sizes, a `seed` that a stored initial solution makes meaningless, and for
  impossible Ehrlich parameters.
  """
  _check_test_function_keys(tf_config)
  seed = 0 if tf_config.seed is None else tf_config.seed
  with configs.section('test_function'):
    if tf_config.name:
      instance = instances.load_instance(tf_config.name, tf_config.instance_file or None)
      initial = instance.initial_solution
      if initial is None:
        initial = ehrlich.initial_solution(jax.random.key(seed), instance.params, instance.dim)[0]
      elif tf_config.seed is not None:
        raise ValueError(
          f'seed={tf_config.seed} would be ignored: instance {tf_config.name!r} stores its initial '
          'solution (the seed only draws one for a sampled instance or one stored without it).'
        )
      return instance.params, instance.dim, np.asarray(initial)
    key = jax.random.key(seed)
    params = ehrlich.sample_params(
      key,
      num_states=tf_config.num_states,
      dim=tf_config.dim,
      num_motifs=tf_config.num_motifs,
      motif_length=tf_config.motif_length,
      quantization=tf_config.quantization,
      epistasis_factor=0.0 if tf_config.epistasis_factor is None else tf_config.epistasis_factor,
    )
    initial = ehrlich.initial_solution(jax.random.fold_in(key, 1), params, tf_config.dim)[0]
  return params, tf_config.dim, np.asarray(initial)


def _check_oracle_keys(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  section = config.oracle
  if not section.target:
    stray = [k for k in ('alphabet', 'initial_sequences') if section[k]]
    stray += ['optimal_value'] if section.optimal_value is not None else []
    if stray:
      raise ValueError(
        f'{["oracle." + k for k in stray]} are only read with oracle.target (a scorer of your own); '
        'oracle.target is empty, so the test_function section is the oracle. Set oracle.target or unset them.'
      )
    return
  changed = [
    f'test_function.{k}'
    for k in config.test_function.keys()
    if config.test_function[k] != defaults.test_function[k]
  ]
  if changed:
    raise ValueError(
      f'oracle.target={section.target!r} replaces the Ehrlich test function, but {changed} are set too and '
      'would be ignored. Leave the test_function section at its defaults, or unset oracle.target.'
    )
  if not section.initial_sequences:
    raise ValueError(
      'oracle.target is set but oracle.initial_sequences is empty: the sequences to start from (FASTA, or '
      'CSV with a "sequence" column) fix the length and the starting point.'
    )


def resolve_problem(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> oracle.Problem:
  """The oracle of a run: the Ehrlich function of `test_function`, or with `oracle.target` set, the
  user's scorer over `oracle.alphabet`, starting from `oracle.initial_sequences`. `defaults` is the
  binary's default config: with a scorer, every test_function key must keep its default value.

  Raises ValueError naming the keys at fault, an import path that does not resolve, or the record and
  character of a bad initial sequence; nothing is called or written.
  """
  _check_oracle_keys(config, defaults)
  section = config.oracle
  if not section.target:
    params, dim, initial = resolve_test_function(config.test_function)
    return oracle.ehrlich_problem(params, dim, initial)
  if jax.process_count() > 1:
    raise ValueError(
      f'oracle.target={section.target!r}: a scorer of your own runs in one process (each process would '
      'score the initial sequences itself); run it on one host, with any number of its devices.'
    )
  with configs.section('oracle'):
    alphabet = oracle.resolve_alphabet(section.alphabet)
    score = oracle.load_target(section.target)
    initial = oracle.read_initial_sequences(section.initial_sequences, alphabet)
  return oracle.host_problem(
    score, alphabet, initial, optimal_value=section.optimal_value, name=section.target
  )


def make_ga_config(
  ga_config: ml_collections.ConfigDict, num_states: int, dim: int, problem: oracle.Problem | None = None
) -> ga.GAConfig:
  """The GA settings of a config's `ga` section; with `problem`, its optimum and regret floor."""
  capacity = ga_config.archive_capacity
  if capacity is None:
    capacity = min(ga_config.num_particles * ga_config.num_steps, _DEFAULT_ARCHIVE_LIMIT)
  recombine_prob = ga_config.recombine_prob
  with configs.section('ga'):
    return ga.GAConfig(
      num_particles=ga_config.num_particles,
      num_states=num_states,
      mutation_prob=ga_config.mutation_prob,
      recombine_prob=1.1 / dim if recombine_prob is None else recombine_prob,
      survival_quantile=ga_config.survival_quantile,
      archive_capacity=capacity,
      optimal_value=1.0 if problem is None else problem.optimal_value,
      value_floor=0.0 if problem is None else problem.value_floor,
    )


@contextlib.contextmanager
def oracle_failure(problem: oracle.Problem, intact: str):
  """Around a jitted call and the fetch of its results: if the user's scorer failed inside it, raises
  the scorer's OracleError, saying what survived (`intact`) and that rerunning the command resumes. The
  call's results (computed on -inf placeholders after the failure) are then discarded by the raise."""
  try:
    yield
  finally:  # On success or on XLA's own error alike, a kept scorer failure is the one to report.
    if problem.host is not None:
      problem.host.raise_if_failed(
        f'The run stopped; {intact}. Fix the scorer and rerun the command to resume.'
      )


def problem_title(problem: oracle.Problem, config: ml_collections.ConfigDict) -> str:
  if problem.host is not None:
    return problem.name
  return f'{config.test_function.name or "sampled"} Ehrlich'


def summary(problem: oracle.Problem, state, rows: list[dict]) -> dict:
  """best.json's common fields: the best sequence (and its string, for a scorer), value, regret and
  oracle calls."""
  out = {
    'best_solution': np.asarray(state.best_solution_L).astype(int).tolist(),
    'best_value': float(state.best_value),
    'simple_regret_best': rows[-1]['simple_regret_best'],
    'num_evaluations': int(state.num_evaluations),
  }
  if problem.alphabet is not None:
    out['best_sequence'] = problem.decode(np.asarray(state.best_solution_L)[None])[0]
  return out


def plot_progress(problem: oracle.Problem, rows: list[dict], workdir: pathlib.Path, title: str, **kw) -> None:
  """regret.png, or best_value.png where the optimum is unknown (a scorer without optimal_value)."""
  if np.isnan(problem.optimal_value):
    metrics_io.plot_best_value(rows, workdir / 'best_value.png', title=title)
  else:
    metrics_io.plot_regret(rows, workdir / 'regret.png', title=title, **kw)


def seed_data(problem: oracle.Problem, ga_cfg: ga.GAConfig, num_steps: int, seed: int, mesh):
  """The round-0 seed data of the model-based binaries (LLOME, LaMBO-2): the GA's unique sequences,
  their values and its oracle calls. A function of (problem, GA settings, seed) alone, so the binaries
  start from the same data when given the same config.

  For a user's scorer, the initial sequences come first, with their given values or scored now (oracle
  calls); the GA then starts from them (its population cycles over them), and `num_steps` may be 0.
  """
  seqs = np.zeros((0, problem.dim), np.int32)
  values = np.zeros((0,), np.float32)
  calls = 0
  if problem.host is not None:
    values, calls = oracle.score_initial(problem)
    seqs = problem.initial_KxL
  if num_steps > 0:
    objective = problem.evaluator(mesh)
    state = ga.init(problem.initial_KxL, cfg=ga_cfg)
    state = sharding.put(state, sharding.ga_state_shardings(mesh, state))
    run = jax.jit(
      lambda key, state: ga.run(key, state, objective=objective, cfg=ga_cfg, num_steps=num_steps)[0]
    )
    with oracle_failure(problem, 'nothing was written but config.json'):
      state = jax.block_until_ready(run(jax.random.fold_in(jax.random.key(seed), 0), state))
    ga_seqs, ga_values = archive_lib.contents(state.archive)
    if problem.host is None:
      return ga_seqs, ga_values, int(state.num_evaluations)
    seqs = np.concatenate([seqs, np.asarray(ga_seqs, seqs.dtype)])
    values = np.concatenate([values, ga_values])
    calls += int(state.num_evaluations)
  _, first = np.unique(seqs, axis=0, return_index=True)
  keep = np.sort(first)
  return seqs[keep].astype(np.int32), values[keep].astype(np.float32), calls


def saved_seed_data(workdir: pathlib.Path):
  """The seed data a resumable run wrote (seed_data.npz, and round 0's oracle calls from metrics.jsonl),
  or None. A binary of rounds resumes from it rather than rerunning the seed GA where that would call
  a user's scorer again."""
  path, metrics = workdir / 'seed_data.npz', workdir / 'metrics.jsonl'
  if checkpoint.latest_step(workdir / 'checkpoints') is None or not path.exists() or not metrics.exists():
    return None
  rows = metrics_io.read_jsonl(metrics)
  if not rows or rows[0].get('round') != 0:
    return None
  with np.load(path) as data:
    return data['sequences'], data['values'], int(rows[0]['num_evaluations'])


def _initial_best(problem: oracle.Problem, seed_file: pathlib.Path) -> float:
  """The best value among the initial sequences, as round 0 recorded them in seed_data.npz (which
  also holds the seed GA's sequences): a resumed run does not score them again."""
  with np.load(seed_file) as data:
    seqs, values = data['sequences'], data['values']
  initial = {row.tobytes() for row in problem.initial_KxL.astype(seqs.dtype)}
  return float(max(v for row, v in zip(seqs, values, strict=True) if row.tobytes() in initial))


def write_summary(
  workdir: pathlib.Path, problem, state, rows: list[dict], title: str, *, write: bool
) -> dict:
  """The end of a model-based run (LLOME, LaMBO-2): best.json and the progress plot (by the writing
  process only), and a log line. `state` has best_solution_L, best_value, num_evaluations and round;
  `rows` are the run's metrics rows. Returns the summary written as best.json."""
  out = summary(problem, state, rows) | {'num_rounds': int(state.round)}
  if problem.host is not None:
    out['initial_best_value'] = _initial_best(problem, workdir / 'seed_data.npz')
  if write:
    metrics_io.write_json(workdir / 'best.json', out)
    plot_progress(problem, rows, workdir, title, last_key='simple_regret_round', last_label='this round')
  logging.info(
    'Best value %.4f after %d evaluations; outputs in %s', out['best_value'], out['num_evaluations'], workdir
  )
  return out


def config_differences(held, wanted, prefix: str = '') -> dict[str, tuple]:
  """The dotted keys whose values differ between two configs (as JSON dicts), with (held, wanted)."""
  changes = {}
  for key in sorted(set(held) | set(wanted)):
    a, b = held.get(key, '<absent>'), wanted.get(key, '<absent>')
    if isinstance(a, dict) and isinstance(b, dict):
      changes |= config_differences(a, b, f'{prefix}{key}.')
    elif a != b:
      changes[f'{prefix}{key}'] = (a, b)
  return changes


@dataclasses.dataclass(frozen=True)
class Budget:
  """A run's budget in checkpoint steps (`allowed` generations or rounds), and the config keys that set
  it, for the message when a rerun asks for less than was run."""

  allowed: int
  unit: str
  keys: str


# Keys added to the configs after runs were recorded, each with the value that reproduces what a run
# recorded without it did. A config.json without one is read as holding that value, so the run still
# resumes (when the config asked for matches it) and can be diagnosed.
ADDED_KEYS = {
  'outer.mutant_fraction': 0.0,
  'outer.mutant_kind': 'blind',
  'outer.mutant_generations': 1,
  'outer.seed_pool': 1,
  'outer.crossover_fraction': 0.0,
  'outer.duplication_fraction': 0.0,
  'outer.duplication_max_length': 10,
}


def with_added_keys(held: dict, defaults: dict) -> dict:
  """A config.json recorded before some keys existed, read as the config it ran: an `oracle` section,
  where `defaults` has one and `held` has none, is unset (the Ehrlich function, as it was); each of
  `ADDED_KEYS` that `defaults` has and `held`'s section lacks takes its recorded value."""
  held = copy.deepcopy(held)
  if 'oracle' in defaults and 'oracle' not in held:
    held['oracle'] = {k: ('' if isinstance(v, str) else None) for k, v in defaults['oracle'].items()}
  for dotted, value in ADDED_KEYS.items():
    *sections, key = dotted.split('.')
    have, want = held, defaults
    for name in sections:
      have, want = have.get(name), want.get(name)
      if not isinstance(have, dict) or not isinstance(want, dict):
        break
    else:
      if key in want and key not in have:
        have[key] = value
  return held


def _delete(workdir: pathlib.Path, outputs: tuple[str, ...]) -> None:
  for name in outputs:
    path = workdir / name
    if path.is_dir():
      shutil.rmtree(path)
    elif path.exists():
      path.unlink()


def prepare_workdir(
  workdir: str | pathlib.Path,
  config: ml_collections.ConfigDict,
  *,
  overwrite: bool,
  outputs: tuple[str, ...],
  may_change: tuple[str, ...] = (),
  budget: Budget | None = None,
) -> pathlib.Path:
  """The workdir protocol, shared by the binaries.

  Without `overwrite`, a workdir holding this config is resumed, and so is one whose config differs in
  `may_change` keys only (a budget that grows, logging and housekeeping), unless `budget` is below what
  its last checkpoint (WORKDIR/checkpoints) already ran. A workdir
  holding another config, an unreadable config.json, or outputs without a config.json is refused with
  the reason, and nothing in it is written or deleted. With `overwrite`, the workdir's `outputs` are
  deleted and the run starts afresh. Records this config as config.json.
  """
  workdir = pathlib.Path(workdir)
  config_path = workdir / 'config.json'
  wanted = json.loads(json.dumps(config.to_dict()))  # Tuples as lists, as they read back.
  if not overwrite:
    _check_workdir(workdir, config_path, wanted, outputs, may_change, budget)
  # Every process has checked the workdir as it was before process 0 changes it below: a refusal
  # stops them all, and none waits at a barrier for one that stopped.
  sync('prepare_workdir: checked')
  if is_writer():
    if overwrite:
      _delete(workdir, outputs)
    workdir.mkdir(parents=True, exist_ok=True)
    metrics_io.write_json(config_path, wanted)
  sync('prepare_workdir: written')
  return workdir


def _check_workdir(workdir, config_path, wanted, outputs, may_change, budget: Budget | None) -> None:
  if config_path.exists():
    try:
      held = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
      raise ValueError(
        f'{config_path} is not valid JSON ({error}), so this workdir cannot be resumed; choose another '
        'workdir or pass --overwrite to delete its outputs.'
      ) from None
    changes = config_differences(with_added_keys(held, wanted), wanted)
    fixed = {key: change for key, change in changes.items() if key not in may_change}
    if fixed:
      listed = '; '.join(f'{key}: {a!r} -> {b!r}' for key, (a, b) in fixed.items())
      raise FileExistsError(
        f'{workdir} holds a run with another config ({len(fixed)} keys differ: {listed}); only '
        f'{list(may_change)} may change when a run is resumed. Choose another workdir or pass --overwrite '
        'to delete its outputs.'
      )
    done = checkpoint.latest_step(workdir / 'checkpoints') or 0
    if budget is not None and budget.allowed < done:
      raise ValueError(
        f'this workdir already ran {done} {budget.unit}, and the budget given ({budget.keys}) allows '
        f'{budget.allowed}: a budget can grow when a run is resumed, not shrink below what was run. '
        'Nothing was changed; rerun with a budget of at least what was run, or pass --overwrite to start '
        'afresh.'
      )
  elif any((workdir / name).exists() for name in outputs):
    raise FileExistsError(
      f'{workdir} holds outputs ({[n for n in outputs if (workdir / n).exists()]}) but no config.json, '
      'so whose run they are is unknown; choose another workdir or pass --overwrite to delete them.'
    )


def restore_checkpoint(checkpoints: pathlib.Path, target: Callable[[dict], Any]):
  """The latest checkpoint of a workdir being resumed, or None if it has none.

  Args:
    checkpoints: the checkpoint directory.
    target: maps the step's metadata to the restore target (an abstract state): where the state's
      shapes depend on the budget (an archive sized for the whole run), the metadata says which.

  A checkpoint that cannot be read onto the target (truncated, or written by another version of the
  code) is an error that says so and how to start afresh; nothing is deleted.
  """
  if checkpoint.latest_step(checkpoints) is None:
    return None
  try:
    return checkpoint.restore(checkpoints, target(checkpoint.read_metadata(checkpoints)))[0]
  except (ValueError, FileNotFoundError) as error:
    raise ValueError(
      f'cannot resume from {checkpoints}: {error} Pass --overwrite to delete the outputs and start afresh.'
    ) from error


def initialize_distributed() -> None:
  """Starts multi-host JAX when asked: with --coordinator_address, --num_processes and --process_id
  (all three), or with --distributed alone (found in the environment on TPU pods and under SLURM).

  Every process then runs the whole program on one global mesh and uses the same --workdir, which must
  be a filesystem all hosts share: process 0 writes the outputs, every process its part of each
  checkpoint. On CPU hosts, collectives need JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo.
  """
  explicit = {
    'coordinator_address': COORDINATOR.value,
    'num_processes': NUM_PROCESSES.value,
    'process_id': PROCESS_ID.value,
  }
  given = [name for name, value in explicit.items() if value is not None]
  if given and len(given) < len(explicit):
    missing = [f'--{name}' for name in explicit if name not in given]
    raise app.UsageError(f'--{given[0]} needs {missing} too: give all three, or --distributed alone.')
  if given:
    jax.distributed.initialize(**explicit)
  elif DISTRIBUTED.value:
    jax.distributed.initialize()


def is_writer() -> bool:
  """Whether this process writes the run's outputs (process 0; every process writes checkpoints)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (nothing in one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _config_file(argv: list[str]) -> ml_collections.ConfigDict | None:
  """The config that `--config=FILE[:ARG]` names, loaded as ml_collections loads it; None if absent."""
  values = [arg.split('=', 1)[1] for arg in argv[1:] if arg.startswith('--config=')]
  if not values:
    return None
  path, _, arg = values[-1].partition(':')
  spec = importlib.util.spec_from_file_location('_config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _unknown_override(config: ml_collections.ConfigDict | None, argv: list[str]) -> str | None:
  """The first `--config.a.b=...` argument whose key the config file lacks, as an error message."""
  if config is None:
    return None
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    node, walked = config, 'config'
    for part in arg[2:].split('=', 1)[0].split('.')[1:]:
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        return f'{arg.split("=", 1)[0]}: {walked} has no key {part!r} (its keys: {keys})'
      node, walked = node[part], f'{walked}.{part}'
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with an override of an unknown config key reported by its full name.

  ml_collections raises a bare KeyError/AttributeError from inside absl's parser, naming only the last
  part of the key; here the user gets the dotted key and the keys that do exist, and exit code 2.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError):
    message = _unknown_override(_config_file(argv), argv)
    if message is None:
      raise
    sys.stderr.write(f'FATAL unknown config key {message}\n')
    sys.exit(2)


def run_main(main) -> None:
  """`app.run(main)` for a binary that takes --config and --workdir."""
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=parse_flags)


def run_rounds_binary(run_experiment) -> None:
  """`run_main` for a binary of rounds (LLOME, LaMBO-2): `run_experiment(config, workdir, *, overwrite,
  stop_after_round)` after multi-host start-up."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments {argv[1:]}')
    initialize_distributed()
    run_experiment(
      CONFIG.value, WORKDIR.value, overwrite=OVERWRITE.value, stop_after_round=STOP_AFTER_ROUND.value
    )

  run_main(main)


def resume_or_start(workdir: pathlib.Path, state, state_sh, seeds, seed_metrics) -> tuple[Any, list[dict]]:
  """The start of a binary of rounds (LLOME, LaMBO-2) whose state holds a labelled `history` archive
  sized for the whole budget: the workdir's last checkpoint, its history grown to this run's budget,
  and its metrics rows; or, without a checkpoint, `state` and its round-0 row (`seed_metrics(state)`),
  writing seed_data.npz. Either way the metrics file is rewritten to exactly these rows (process 0).

  Returns (the state on `state_sh`, the metrics rows so far).
  """
  checkpoints, metrics_path = workdir / 'checkpoints', workdir / 'metrics.jsonl'
  length = state.history.sequences_CxL.shape[1]

  def restore_target(metadata):
    # The history holds every label of the budget, so a run resumed with more rounds restores the
    # history it saved and grows it.
    capacity = metadata.get('history_capacity', state.history.capacity)
    saved = state.replace(history=archive_lib.init(capacity, length))
    return checkpoint.abstract_like(saved, state_sh)

  restored = restore_checkpoint(checkpoints, restore_target)
  if restored is not None:
    history = archive_lib.resized(restored.history, state.history.capacity)
    state = sharding.put(restored.replace(history=history), state_sh)
    rows = metrics_io.read_rows(metrics_path, 'round', int(state.round) + 1)
    logging.info('Resuming %s after round %d.', workdir, int(state.round))
  else:
    state = sharding.put(state, state_sh)
    rows = [metrics_io.plain_row(jax.device_get(seed_metrics(state)))]
  if is_writer():  # Process 0 writes the outputs; every process its part of checkpoints.
    if restored is None:
      np.savez(workdir / 'seed_data.npz', sequences=seeds[0], values=seeds[1])
    metrics_io.rewrite_jsonl(metrics_path, rows)
  return state, rows
