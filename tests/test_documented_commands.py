"""Every shell command that README.md and BUILD.md show, run as a user would: in a fresh process, on one
JAX device (no device-count flag; the suite's other tests see 8 fake devices), at small sizes where the
command allows. A command these tests cannot run here is listed with the reason, and a documented
command that no entry below accounts for fails `test_every_documented_command_is_accounted_for`, so the
docs cannot gain a command that nothing runs. README's "bad input" table is checked row by row.

Everything that starts a process is marked slow: `-m 'not slow'` (CI's run on the newest Python, with
its time budget) leaves them to the main run.
"""

import os
import pathlib
import re
import signal
import subprocess
import time

import numpy as np
import processes
import pytest

from llome_jax import metrics_io

REPO = pathlib.Path(__file__).resolve().parent.parent
HOLO_PYTHON = REPO / '.venv-holo' / 'bin' / 'python'
HF_PYTHON = REPO / '.venv-hf' / 'bin' / 'python'


# Commands not run by these tests, by pattern, with the reason.
NOT_RUN_HERE = {
  r'^python3 -m venv \.venv$': 'creates the venv that runs these tests (.ci/run runs it on a fresh clone)',
  r"^\.venv/bin/pip install -e (\.|'\.\[test\]')( -c constraints\.txt)?$": (
    'installs the project: .ci/run does it on a fresh clone'
  ),
  r"^\.venv/bin/pip install -e '\.\[(cuda12|tpu)\]'$": 'needs a CUDA GPU or a TPU',
  r'^\.venv/bin/ruff (check|format --check) \.$': 'part of the README test command that CI runs',
  r'^\.venv/bin/python -m pytest ': 'the test suite itself (CI runs the README test command)',
  r'^gcloud compute tpus tpu-vm ssh ': 'needs a TPU pod slice',
  r'^srun ': 'needs a SLURM cluster',
  r'^bash benchmarks/make_(holo|hf|poli)_venv\.sh$': (
    'installs the references (torch and pytorch-holo, transformers, poli-core) in venvs of their own: '
    'minutes of downloads. The commands that use them run below when the venv is present.'
  ),
}

# Commands these tests run, by pattern, with the test that runs them.
RUN_BY = {
  r'^\.venv/bin/python -m experiments\.llome --config=experiments/configs/smoke\.py --workdir=runs/smoke$': (
    'test_readme_quick_start'
  ),
  r'^\.venv/bin/python -m experiments\.ga_baseline --config=experiments/configs/ga_ehrlich\.py '
  r'--workdir=runs/ga_f2$': 'test_readme_f2_walkthrough',
  r'^\.venv/bin/python -m experiments\.llome --config=experiments/configs/f2_marge\.py': 'test_readme_f2_walkthrough',
  r'^\.venv/bin/python -m experiments\.compare ': 'test_readme_f2_walkthrough',
  r'^\.venv/bin/python -m experiments\.diagnose ': 'test_readme_f2_walkthrough',
  r'^\.venv/bin/python -m experiments\.ga_baseline --config=experiments/configs/ga_ehrlich\.py --workdir=DIR ': (
    'test_readme_ga_example'
  ),
  r'^\.venv/bin/python -m experiments\.lambo2 --config=experiments/configs/lambo2_f2\.py ': 'test_documented_lambo2.py::test_readme_lambo2',
  r'^\.venv/bin/python benchmarks/lambo2_speed\.py': 'test_documented_lambo2.py::test_build_lambo2_benchmark',
  r'^mkdir -p runs$': 'test_documented_oracle.py::test_readme_own_oracle',
  r'^\.venv/bin/python -m experiments\.(ga_baseline|llome) --config=experiments/configs/oracle_(ga|llome)\.py '
  r'--workdir=runs/my_': 'test_documented_oracle.py::test_readme_own_oracle',
  r'^\.venv/bin/python -m llome_jax\.poli_bridge x0 ': 'test_documented_oracle.py::test_readme_poli',
  r'--workdir=runs/poli_aloha ': 'test_documented_oracle.py::test_readme_poli',
  r'^XLA_FLAGS=--xla_force_host_platform_device_count=8 ': 'test_build_eight_fake_devices',
  r'^\.venv/bin/python -c "import jax; ': 'test_build_device_listing',
  r'^\.venv/bin/python benchmarks/ehrlich_memory\.py$': 'test_build_memory_benchmark',
  r'^\.venv/bin/python benchmarks/(ehrlich_speed|ga_speed)\.py$': 'test_build_holo_benchmarks',
  r'^(GLIBC_TUNABLES=\S+ )?\.venv/bin/python benchmarks/lm_speed\.py$': 'test_build_lm_benchmark_against_torch',
  r'^\.venv/bin/python benchmarks/lm_speed\.py --skip_hf ': 'test_build_lm_benchmark_alone',
  r'^JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo .* --coordinator_address=localhost:': (
    'test_multiprocess.py::test_ga_on_two_processes_killed_and_resumed_equals_one_process'
  ),
}


def _entry(command: str) -> list[str]:
  return [p for p in (*NOT_RUN_HERE, *RUN_BY) if re.search(p, command)]


def test_every_documented_command_is_accounted_for():
  commands = processes.documented_commands()
  assert len(commands) > 20
  for source, command in commands:
    matches = _entry(command)
    assert len(matches) == 1, f'{source}: {command!r} matches {matches}: add it to this test module.'
  for pattern in (*NOT_RUN_HERE, *RUN_BY):  # No stale entries.
    assert any(re.search(pattern, c) for _, c in commands), f'nothing in the docs matches {pattern!r}'
  for test in set(RUN_BY.values()):  # A test of this module, or FILE::TEST of another.
    module, _, name = test.rpartition('::')
    assert (
      f'def {name}(' in (pathlib.Path(__file__).parent / (module or pathlib.Path(__file__).name)).read_text()
    ), test


def _documented(pattern: str) -> str:
  found = [c for _, c in processes.documented_commands() if re.search(pattern, c)]
  assert found, pattern
  return found[0]


def _run(command: str, tmp_path: pathlib.Path, extra=(), timeout=600) -> subprocess.CompletedProcess:
  argv, env = processes.command_argv(command, tmp_path, extra)
  result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, f'{argv}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}'
  return result


def _rows(workdir: pathlib.Path) -> list[dict]:
  return metrics_io.read_jsonl(workdir / 'metrics.jsonl')


@pytest.mark.slow
def test_readme_quick_start(tmp_path):
  result = _run(_documented(r'configs/smoke\.py --workdir=runs/smoke'), tmp_path)
  assert ' 1 devices.' in result.stderr
  rows = _rows(tmp_path / 'runs' / 'smoke')
  assert [row['round'] for row in rows] == [0, 1, 2, 3]
  assert rows[-1]['simple_regret_best'] <= rows[0]['simple_regret_best']
  assert (tmp_path / 'runs' / 'smoke' / 'best.json').exists()


@pytest.mark.slow
def test_readme_ga_example(tmp_path):
  """The README's GA example: 4,096 particles on one device are evaluated in several chunks inside the
  shard, which once failed to trace (a shard_map varying-axes error) on one device only."""
  result = _run(_documented(r'--workdir=DIR'), tmp_path)
  assert 'GA: 4096 particles x 100 generations on L=32, v=32 (1 devices).' in result.stderr
  rows = _rows(tmp_path / 'DIR')
  assert [row['num_evaluations'] for row in rows] == [4096 * (i + 1) for i in range(100)]


# The f2 walkthrough's LLOME run, shrunk: one round (the SFT round; the quick start's smoke run covers
# MargE rounds on one device), few seeds and labels. Its config, f2_marge.py, and seed stay.
_SMALL_F2_LLOME = (
  '--config.outer.num_rounds=1',
  '--config.train.first_round_epochs=2',
  '--config.outer.num_seeds=8',
  '--config.outer.num_labels=40',  # 20 repair mutants: one in each of f2_marge.py's 20 generations.
  '--config.inner.num_iterations=2',
  '--config.inner.temperatures=(1.0,)',
  '--config.inner.samples_per_temperature=2',
  '--config.pairs.capacity=256',
  '--config.train.batch_size=32',
)


@pytest.mark.slow
def test_readme_f2_walkthrough(tmp_path):
  ga = _run(_documented(r'ga_ehrlich\.py --workdir=runs/ga_f2$'), tmp_path)
  assert '(1 devices)' in ga.stderr
  assert len(_rows(tmp_path / 'runs' / 'ga_f2')) == 10
  llome = _run(_documented(r'configs/f2_marge\.py'), tmp_path, extra=_SMALL_F2_LLOME)
  assert 'L=32, v=32, 1 devices.' in llome.stderr
  rows = _rows(tmp_path / 'runs' / 'f2_marge')
  assert [row['round'] for row in rows] == [0, 1]
  assert rows[-1]['num_evaluations'] == 10_000 + rows[1]['num_labelled'] > 10_000
  assert 0 < rows[1]['num_labelled_mutants'] <= 20  # f2_marge.py gives half the labels to repair mutants.
  labelled = np.load(tmp_path / 'runs' / 'f2_marge' / 'labelled' / 'round_0001.npz')
  sources, likelihoods = labelled['sources'], labelled['likelihoods']
  assert np.sum(sources > 0) == rows[1]['num_labelled_mutants']
  assert np.all(sources[: np.sum(sources == 0)] == 0)  # The policy's rows come first.
  assert np.isfinite(likelihoods[sources == 0]).all() and np.isnan(likelihoods[sources > 0]).all()
  assert rows[1]['frac_infeasible_explained'] == 1.0
  _run(_documented(r'experiments\.compare '), tmp_path)
  assert (tmp_path / 'runs' / 'f2.png').read_bytes()[:4] == b'\x89PNG'
  _run(_documented(r'experiments\.diagnose '), tmp_path, extra=['--max_sequences=1', '--proposal_seeds=2'])
  diagnosis = metrics_io.read_jsonl(tmp_path / 'runs' / 'f2_marge' / 'diagnosis.jsonl')
  assert [row['round'] for row in diagnosis] == [0, 1] and diagnosis[1]['policy']['proposals'] > 0


@pytest.mark.slow
def test_build_eight_fake_devices(tmp_path):
  """BUILD.md's 8-fake-device GA run gives the same metrics as one device."""
  command = _documented(r'^XLA_FLAGS=--xla_force_host_platform_device_count=8 ')
  eight = _run(command, tmp_path)
  assert '(8 devices)' in eight.stderr
  one = _run(command.split(' ', 2)[2], tmp_path / 'one')  # The same command without its env words.
  assert '(1 devices)' in one.stderr
  assert (tmp_path / 'ga_8dev' / 'metrics.jsonl').read_text() == (
    tmp_path / 'one' / 'ga_8dev' / 'metrics.jsonl'
  ).read_text()


@pytest.mark.slow
def test_build_device_listing(tmp_path):
  for _, command in processes.documented_commands():
    if command.startswith('.venv/bin/python -c "import jax; '):
      result = _run(command, tmp_path)
      assert 'CpuDevice' in result.stdout or result.stdout.strip() == '1'


@pytest.mark.slow
def test_build_memory_benchmark(tmp_path):
  result = _run(_documented(r'ehrlich_memory\.py$'), tmp_path, extra=['--num_sequences=10000', '--length=64'])
  assert 'within the limit' in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not HOLO_PYTHON.exists(), reason='no .venv-holo (bash benchmarks/make_holo_venv.sh)')
def test_build_holo_benchmarks(tmp_path):
  speed = _run(
    _documented(r'ehrlich_speed\.py$'),
    tmp_path,
    extra=['--batch_sizes=512', '--holo_repeats=1', '--repeats=2'],
  )
  assert 'values differing from holo (every B checked): 0' in speed.stdout
  ga = _run(
    _documented(r'ga_speed\.py$'),
    tmp_path,
    extra=['--num_particles=1000', '--dim=64', '--holo_steps=1', '--jax_steps=2'],
  )
  assert 'ratio jax/holo' in ga.stdout


_SMALL_LM = ['--preset=tiny', '--batch_size=4', '--seq_len=16', '--num_prompts=4', '--prompt_len=8']
_SMALL_LM += ['--max_new_tokens=4', '--repeats=1']


@pytest.mark.slow
@pytest.mark.skipif(not HF_PYTHON.exists(), reason='no .venv-hf (bash benchmarks/make_hf_venv.sh)')
def test_build_lm_benchmark_against_torch(tmp_path):
  for _, command in processes.documented_commands():
    if re.search(r'^(GLIBC_TUNABLES=\S+ )?\.venv/bin/python benchmarks/lm_speed\.py$', command):
      assert 'ratio llome_jax / torch' in _run(command, tmp_path, extra=_SMALL_LM).stdout


@pytest.mark.slow
def test_build_lm_benchmark_alone(tmp_path):
  command = _documented(r'lm_speed\.py --skip_hf ')
  extra = ['--repeats=1', '--seq_len=16', '--num_prompts=4', '--prompt_len=8', '--max_new_tokens=4']
  result = _run(command, tmp_path, extra=extra)
  assert 'pythia-14m' in result.stdout and 'sampling (4 prompts x 4 new tokens' in result.stdout


@pytest.mark.slow
def test_a_killed_ga_run_resumes_to_the_same_result(tmp_path):
  """SIGKILL in the middle of a GA run on one device, then the same command again: the rerun resumes
  from the last checkpoint and writes the same metrics and seed data as an uninterrupted run."""
  command = _documented(r'--workdir=DIR')
  extra = ['--config.ga.num_steps=40', '--config.checkpoint_every=10']
  argv, env = processes.command_argv(command, tmp_path / 'killed', extra)
  process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoints = tmp_path / 'killed' / 'DIR' / 'checkpoints'
  deadline = time.monotonic() + 300
  while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    assert process.poll() is None and time.monotonic() < deadline, 'the run ended before its first checkpoint'
    time.sleep(0.05)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  written = len(_rows(tmp_path / 'killed' / 'DIR'))
  assert written < 40, 'killed too late to test a resume'
  resumed = _run(command, tmp_path / 'killed', extra)
  assert 'Resuming' in resumed.stderr
  _run(command, tmp_path / 'whole', extra)
  for name in ('metrics.jsonl', 'best.json'):
    assert (tmp_path / 'killed' / 'DIR' / name).read_text() == (tmp_path / 'whole' / 'DIR' / name).read_text()
  killed, whole = (np.load(tmp_path / d / 'DIR' / 'seed_data.npz') for d in ('killed', 'whole'))
  np.testing.assert_array_equal(killed['sequences'], whole['sequences'])


_BAD_INPUT_PREFIXES = {
  'GA': '.venv/bin/python -m experiments.ga_baseline --config=experiments/configs/ga_ehrlich.py --workdir=DIR',
  'LLOME': '.venv/bin/python -m experiments.llome --config=experiments/configs/smoke.py --workdir=DIR',
  'LAMBO2': '.venv/bin/python -m experiments.lambo2 --config=experiments/configs/lambo2_f2.py --workdir=DIR',
  'ORACLE_GA': '.venv/bin/python -m experiments.ga_baseline --config=experiments/configs/oracle_ga.py --workdir=DIR',
  'ORACLE_LLOME': '.venv/bin/python -m experiments.llome --config=experiments/configs/oracle_llome.py --workdir=DIR',
}


def bad_input_rows() -> list[tuple[str, str, str]]:
  """(case, command, message) of each row of README's bad-input table."""
  text = (REPO / 'README.md').read_text().split('<!-- bad-input-table -->\n', 1)[1]
  rows = []
  for line in text.splitlines()[2:]:
    if not line.startswith('|'):
      break
    case, command, message = (cell.strip() for cell in line.strip('|').split(' | '))
    prefix, _, args = command.strip('`').partition(' ')
    rows.append((case, f'{_BAD_INPUT_PREFIXES[prefix]} {args}', message.strip('`')))
  return rows


@pytest.mark.slow
def test_readme_bad_input_table(tmp_path):
  """Each row's command, on one device, exits non-zero with the row's message (each piece between
  "..." found in stderr) before writing anything. The rows run side by side: each fails in seconds."""
  rows = bad_input_rows()
  count = re.search(r'Each of these (\d+) commands', (REPO / 'README.md').read_text())
  assert count and int(count.group(1)) == len(rows)
  started = []
  for i, (_, command, _) in enumerate(rows):
    argv, env = processes.command_argv(command, tmp_path / str(i))
    started.append(
      subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
  for i, ((case, _, message), process) in enumerate(zip(rows, started, strict=True)):
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0, case
    for piece in message.split('...'):
      assert piece.strip() in stderr, f'{case}: {piece.strip()!r} not in\n{stderr[-2000:]}'
    written = sorted(p.name for p in (tmp_path / str(i) / 'DIR').glob('*'))
    # A scorer's reply is checked at its first call, once config.json is written; nothing else is.
    assert written == (['config.json'] if case.startswith("scorer's ") else []), f'{case}: wrote {written}'
