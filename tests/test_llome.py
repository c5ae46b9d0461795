"""End-to-end tests of the LLOME binary's `run_experiment` on the smoke config: outputs, oracle
accounting, resume equals an uninterrupted run, 1 device equals 8, and errors before any work."""

import json
import shutil

import numpy as np
import pytest

from experiments import common, llome
from experiments.configs import smoke
from llome_jax import metrics_io
from llome_jax.test_functions import ehrlich

pytestmark = pytest.mark.slow


def _config(**top):
  """The smoke run with 8 SFT epochs instead of 40: these tests check accounting, resumes and meshes,
  not how well the policy learns (the README quick-start test runs the smoke config as shipped)."""
  config = smoke.get_config()
  config.train.first_round_epochs = 8
  config.update(top)
  return config


def _rows(workdir):
  return metrics_io.read_jsonl(workdir / 'metrics.jsonl')


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """The smoke run on all 8 devices, once for the module."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  summary = llome.run_experiment(_config(), str(workdir))
  return workdir, summary


def test_outputs_and_oracle_accounting(uninterrupted):
  workdir, summary = uninterrupted
  config = _config()
  rows = _rows(workdir)
  assert [row['round'] for row in rows] == [0, 1, 2, 3]
  seed = np.load(workdir / 'seed_data.npz')
  ga_calls = config.ga.num_particles * config.ga.num_steps
  assert rows[0]['num_evaluations'] == ga_calls
  assert rows[0]['num_labelled'] == len(seed['values'])
  labelled_seqs = [seed['sequences']]
  setup = llome.build_setup(config)
  for row in rows[1:]:
    data = np.load(workdir / 'labelled' / f'round_{row["round"]:04d}.npz')
    # Oracle calls: exactly the labelled sequences, at most n per round.
    assert len(data['values']) == row['num_labelled'] <= config.outer.num_labels
    assert row['num_evaluations'] == ga_calls + sum(r['num_labelled'] for r in rows[1 : row['round'] + 1])
    np.testing.assert_array_equal(
      data['values'], np.asarray(ehrlich.evaluate(setup.problem.ehrlich_params, data['sequences']))
    )
    labelled_seqs.append(data['sequences'])
    # Constrained decoding: every generation is valid.
    assert row['frac_generations_valid'] == 1.0
    assert sum(row['calibration_bin_count']) == row['num_labelled']
  everything = np.concatenate(labelled_seqs)
  assert len({tuple(s) for s in everything.tolist()}) == len(everything)  # Never labelled twice.
  # Regrets: best-so-far is the best over every labelled value, and never rises.
  all_values = np.concatenate(
    [seed['values']] + [np.load(workdir / 'labelled' / f'round_{r:04d}.npz')['values'] for r in (1, 2, 3)]
  )
  best = float(np.max(np.maximum(all_values, 0.0)))
  regrets = [row['simple_regret_best'] for row in rows]
  assert regrets == sorted(regrets, reverse=True)
  assert regrets[-1] == pytest.approx(1.0 - best)
  assert summary == json.loads((workdir / 'best.json').read_text())
  assert summary['best_value'] == pytest.approx(best)
  assert (
    float(ehrlich.evaluate(setup.problem.ehrlich_params, np.asarray(summary['best_solution'])))
    == summary['best_value']
  )
  assert (workdir / 'regret.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_resume_equals_uninterrupted(uninterrupted, tmp_path):
  workdir, summary = uninterrupted
  llome.run_experiment(_config(), str(tmp_path), stop_after_round=1)
  assert [row['round'] for row in _rows(tmp_path)] == [0, 1]
  # A crash after round 2's metrics were written but before its checkpoint: the row is dropped on resume.
  # Then a kill halfway through writing round 3's row: a line without its newline.
  metrics_io.append_jsonl(tmp_path / 'metrics.jsonl', [{'round': 2, 'num_evaluations': -1}])
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"round": 3, "num_evalu')
  resumed = llome.run_experiment(_config(), str(tmp_path))
  assert resumed == summary
  assert _rows(tmp_path) == _rows(workdir)
  for r in (1, 2, 3):
    name = f'labelled/round_{r:04d}.npz'
    a, b = np.load(workdir / name), np.load(tmp_path / name)
    for key in ('sequences', 'values', 'likelihoods'):
      np.testing.assert_array_equal(a[key], b[key])


# Float sums run in a mesh-dependent order on 8 fake devices (training is data-parallel, so the batch
# mean becomes a cross-device sum; each device gets fewer CPU threads, so matmuls block differently):
# one trained round leaves the 1- and 8-device policies ~1e-5 apart. Sampling thousands of tokens
# from them, a near-tie then flips the odd token, and label selection (a uniform draw from the
# eligible pool) turns one changed generation into a different labelled set, so trained rounds are
# compared as statistics, not exactly.
# The inner loop on one fixed policy does decode identically on both meshes (tests/test_inner_loop.py).
_ROUND_ONE_EXACT = (
  'round',
  'num_pairs',
  'num_pair_candidates',
  'train_steps',
  'train_nonfinite_steps',
  'num_generations',
  'frac_generations_valid',
)
_ROUND_ONE_STATISTICS = ('mean_edit_hamming', 'frac_copied', 'pool_mean_pairwise_hamming')


def test_one_device_equals_eight(uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  llome.run_experiment(_config(num_devices=1), str(tmp_path), stop_after_round=1)
  one, eight = _rows(tmp_path), _rows(workdir)[:2]  # Seed data and the SFT round.
  assert one[0] == eight[0]  # The GA seed data: its population is split 8 ways, bit for bit the same.
  np.testing.assert_array_equal(
    np.load(tmp_path / 'seed_data.npz')['sequences'], np.load(workdir / 'seed_data.npz')['sequences']
  )
  assert one[1].keys() == eight[1].keys() and eight[1]['num_pairs'] > 0
  assert {k: one[1][k] for k in _ROUND_ONE_EXACT} == {k: eight[1][k] for k in _ROUND_ONE_EXACT}
  np.testing.assert_allclose(one[1]['train_loss'], eight[1]['train_loss'], rtol=1e-4)
  for key in _ROUND_ONE_STATISTICS:  # The same policy up to rounding: a flipped token or two at most.
    np.testing.assert_allclose(one[1][key], eight[1][key], atol=0.02, err_msg=key)
  # How many distinct generations pass the likelihood quantile moves with those flips (~25 of 48 here).
  assert abs(one[1]['num_labelled'] - eight[1]['num_labelled']) <= 3
  for rows in (one, eight):
    assert rows[1]['num_evaluations'] == rows[0]['num_evaluations'] + rows[1]['num_labelled']


def _snapshot(directory):
  """Every file's bytes, .npz files by their arrays (zip entries carry write times), checkpoints and
  timings (which hold timestamps) by name only."""
  snapshot = {}
  for path in sorted(p for p in directory.rglob('*') if p.is_file()):
    name = str(path.relative_to(directory))
    if name.startswith('checkpoints') or name == 'timings.jsonl':
      snapshot[name] = None
    elif path.suffix == '.npz':
      snapshot[name] = {k: v.tolist() for k, v in np.load(path).items()}
    else:
      snapshot[name] = path.read_bytes()
  return snapshot


def test_refuses_a_workdir_with_another_config_unless_overwrite(uninterrupted, tmp_path):
  workdir, _ = uninterrupted
  before = _snapshot(workdir)
  changed = _config()
  changed.outer.num_labels = 40
  with pytest.raises(
    FileExistsError, match=r"1 keys differ: outer.num_labels: 48 -> 40\); only \['outer.num_rounds'"
  ):
    llome.run_experiment(changed, str(workdir))
  shrunk = _config()
  shrunk.outer.num_rounds = 2
  with pytest.raises(ValueError, match=r'already ran 3 rounds, and the budget given \(outer.num_rounds=2\)'):
    llome.run_experiment(shrunk, str(workdir))
  assert _snapshot(workdir) == before  # Nothing written before is lost.
  # Overwriting a copy of the finished run leaves only the new run's outputs.
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  llome.run_experiment(changed, str(copy), overwrite=True, stop_after_round=0)
  assert [row['round'] for row in _rows(copy)] == [0]
  assert not (copy / 'labelled' / 'round_0001.npz').exists()


def test_a_finished_run_extended_equals_one_run_with_more_rounds(uninterrupted, tmp_path):
  """The 3-round smoke run, rerun with outer.num_rounds=5 (and another checkpoint count, which is
  housekeeping): rounds 4 and 5 continue from its checkpoint, and every output equals a 5-round run's.
  The label history, sized for the budget, grows with it."""
  workdir, _ = uninterrupted
  extended, straight = tmp_path / 'extended', tmp_path / 'straight'
  shutil.copytree(workdir, extended)
  five = _config()
  five.outer.num_rounds = 5
  summary = llome.run_experiment(five, str(straight))
  five.keep_checkpoints = 3
  assert llome.run_experiment(five, str(extended)) == summary
  got, want = _snapshot(extended), _snapshot(straight)
  for name in ('config.json', 'diagnosis.jsonl', 'diagnosis.md'):  # The diagnosis test may have run.
    got.pop(name, None), want.pop(name, None)
  assert {k: v for k, v in got.items() if v is not None} == {k: v for k, v in want.items() if v is not None}


@pytest.mark.parametrize(
  'edit, error, match',
  [
    (lambda c: c.outer.__setattr__('num_labelz', 3), ValueError, r'config\.outer\.num_labelz'),
    (lambda c: c.outer.__setattr__('num_labels', 10_000), ValueError, r'num_labels=10000 exceeds the pool'),
    (lambda c: c.inner.__setattr__('temperatures', (0.8, 0.0)), ValueError, r'temperatures must all be > 0'),
    (lambda c: c.outer.__setattr__('schedule', 'ppo'), ValueError, r'schedule must be one of'),
    (lambda c: c.model.__setattr__('preset', 'huge'), ValueError, r'Unknown model preset'),
    (lambda c: c.outer.__setattr__('num_seeds', 10_000), ValueError, r'num_seeds=10000'),
    (
      lambda c: c.test_function.__setattr__('name', 'f2'),
      ValueError,
      r"name='f2'.*\['test_function.num_states', 'test_function.dim', 'test_function.num_motifs', "
      r"'test_function.motif_length'\] would be ignored",
    ),
    (lambda c: c.test_function.__setattr__('dim', None), ValueError, r"\['test_function.dim'\] are unset"),
    (
      lambda c: c.ga.__setattr__('max_evaluations', 10),
      ValueError,
      r'config\.ga: the seed GA budget holds no',
    ),
    (lambda c: c.outer.__setattr__('num_rounds', 0), ValueError, r'config\.outer\.num_rounds must be >= 1'),
    (
      lambda c: c.outer.__setattr__('num_labels', 0),
      ValueError,
      r'config\.outer: num_labels must be positive',
    ),
    (
      lambda c: c.train.sft.__setattr__('learning_rate', -1.0),
      ValueError,
      r'config\.train\.sft: learning_rate',
    ),
    (lambda c: c.__setattr__('num_devices', 99), ValueError, r'num_devices must lie in \[1, 8\]'),
    (
      lambda c: c.outer.__setattr__('mutant_fraction', 1.0),
      ValueError,
      r'outer\.mutant_fraction must lie in',
    ),
    (
      lambda c: c.outer.__setattr__('mutant_kind', 'repare'),
      ValueError,
      r"config\.outer\.mutant_kind must be one of \('blind', 'repair'\), got 'repare'",
    ),
    (
      lambda c: (c.outer.__setattr__('mutant_fraction', 0.5), c.outer.__setattr__('mutant_generations', 7)),
      ValueError,
      r'config\.outer\.mutant_generations=7 must be >= 1 and divide the \d+ mutants',
    ),
    (lambda c: c.outer.__setattr__('seed_pool', 0), ValueError, r'seed_pool must be >= 1, got 0'),
    (
      lambda c: (c.outer.__setattr__('mutant_fraction', 0.5), c.outer.__setattr__('crossover_fraction', 1.0)),
      ValueError,
      r'crossover_fraction must lie in \[0, 1\), got 1\.0',
    ),
    (
      lambda c: c.outer.__setattr__('crossover_fraction', 0.5),
      ValueError,
      r'crossover_fraction > 0 needs mutant slots',
    ),
    (
      lambda c: (
        c.outer.__setattr__('mutant_fraction', 0.5),
        c.outer.__setattr__('crossover_fraction', 0.5),
        c.outer.__setattr__('duplication_fraction', 0.75),
      ),
      ValueError,
      r'crossover_fraction \+ duplication_fraction = 1\.25 asks for more than the \d+ mutant slots',
    ),
    (
      lambda c: (
        c.outer.__setattr__('mutant_fraction', 0.5),
        c.outer.__setattr__('duplication_max_length', 1),
      ),
      ValueError,
      r'duplication_max_length must be >= 2, got 1',
    ),
  ],
)
def test_bad_config_fails_before_any_work(edit, error, match, tmp_path):
  config = _config()
  with config.unlocked():
    edit(config)
  workdir = tmp_path / 'run'
  with pytest.raises(error, match=match):
    llome.run_experiment(config, str(workdir))
  assert not workdir.exists()


def test_diagnose_reports_every_round(uninterrupted):
  """experiments.diagnose on the smoke run: a row per round, the plateau read back from the labelled
  files, and policy statistics for the rounds whose checkpoints are kept (2 and 3)."""
  from experiments import diagnose

  workdir, summary = uninterrupted
  rows = diagnose.diagnose(workdir, max_sequences=2, proposal_seeds=2)
  assert [row['round'] for row in rows] == [0, 1, 2, 3]
  assert rows[-1]['best_value'] == summary['best_value']
  metrics = _rows(workdir)
  for row, metric in zip(rows, metrics, strict=True):
    assert row['best_value'] == pytest.approx(1.0 - metric['simple_regret_best'])
    assert 1 <= row['analysed'] == min(2, row['num_plateau'])
    assert row['num_singles'] == 12 * 7 and row['num_doubles'] == 66 * 49
    improving = row['improving_singles'] + row['improving_doubles']
    assert (row['best_reachable_value'] is None) == (sum(improving) == 0)
    if row['best_reachable_value'] is not None:
      assert row['best_reachable_value'] > row['best_value']
    counts = [count for _, count in row['arrangements']]
    assert counts == sorted(counts, reverse=True) and 1 <= sum(counts) <= row['num_plateau']
  assert all('policy' not in row for row in rows[:2])
  setup = llome.build_setup(_config())
  for row in rows[2:]:
    policy = row['policy']
    assert policy['proposals'] == 2 * setup.loop_cfg.inner.rows_per_seed * row['analysed']
    assert 0.0 <= policy['frac_improving'] <= policy['frac_feasible'] <= 1.0
    assert policy['improving_edits'] == sum(row['improving_singles']) + sum(row['improving_doubles'])
    assert 0 <= policy['improving_kept'] <= policy['improving_edits']
  assert (workdir / 'diagnosis.md').read_text().count('\n') == 2 + len(rows)
  assert metrics_io.read_jsonl(workdir / 'diagnosis.jsonl') == json.loads(json.dumps(rows))
  # --openings: each analysed sequence's neutral segment copies and 2-site substitutions, a sample of
  # up to 5 of each checked for a way off the plateau, in a second table.
  opened = diagnose.diagnose(
    workdir, rounds=[3], max_sequences=2, proposal_seeds=2, openings=5, output=workdir / 'o'
  )
  for kind, total in (('copies', None), ('doubles', 66 * 49)):
    assert len(opened[0]['openings'][kind]) == opened[0]['analysed']
    for found in opened[0]['openings'][kind]:
      assert total is None or found['num_steps'] == total
      assert found['num_improving'] + found['num_neutral'] <= found['num_feasible'] <= found['num_steps']
      assert (
        found['num_checked'] == min(5, found['num_neutral']) and found['num_opening'] <= found['num_checked']
      )
  assert 'segment copies: neutral, opening of checked' in (workdir / 'o.md').read_text()


def test_a_config_recorded_before_later_keys_still_resumes(tmp_path):
  """A workdir whose config.json predates `oracle` and the mutant keys is read as holding the values
  that reproduce what it ran (common.ADDED_KEYS): the same config resumes it, a changed one is refused."""
  config = _config()
  workdir = tmp_path / 'old'
  workdir.mkdir()
  held = json.loads(json.dumps(config.to_dict()))
  del held['oracle']
  for key in common.ADDED_KEYS:
    if key.startswith('outer.'):
      del held['outer'][key.removeprefix('outer.')]
  (workdir / 'config.json').write_text(json.dumps(held))
  common.prepare_workdir(workdir, config, overwrite=False, outputs=('metrics.jsonl',))
  assert json.loads((workdir / 'config.json').read_text()) == json.loads(json.dumps(config.to_dict()))
  (workdir / 'config.json').write_text(json.dumps(held))
  changed = _config()
  changed.outer.mutant_fraction, changed.outer.mutant_generations = 0.5, 4
  with pytest.raises(
    FileExistsError, match=r'outer.mutant_fraction: 0.0 -> 0.5; outer.mutant_generations: 1 -> 4'
  ):
    common.prepare_workdir(workdir, changed, overwrite=False, outputs=('metrics.jsonl',))
