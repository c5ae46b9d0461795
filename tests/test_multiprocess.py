"""Multi-host runs for real: each binary as 2 processes of one JAX job on localhost (one CPU device each,
gloo collectives), against the same run in one process with 2 devices, and killed and resumed across
processes. The commands are BUILD.md's, with --coordinator_address, --num_processes and --process_id.
"""

import json
import os
import signal
import subprocess
import time

import numpy as np
import processes
import pytest

from llome_jax import metrics_io

pytestmark = pytest.mark.slow

_GA = ['-m', 'experiments.ga_baseline', '--config=experiments/configs/ga_ehrlich.py']
_LLOME = ['-m', 'experiments.llome', '--config=experiments/configs/smoke.py', '--config.outer.num_rounds=2']
# Fewer SFT epochs than the smoke run's 40: the test compares two meshes, not what the policy learns.
_LLOME += ['--config.train.first_round_epochs=4']


def _outputs(workdir):
  """metrics.jsonl and best.json as text, and the arrays of the .npz outputs."""
  got = {name: (workdir / name).read_text() for name in ('metrics.jsonl', 'best.json')}
  for path in sorted(workdir.rglob('*.npz')):
    got[str(path.relative_to(workdir))] = {k: v.tolist() for k, v in np.load(path).items()}
  return got


def test_llome_on_two_processes_equals_one_process_on_two_devices(tmp_path):
  """The smoke run (2 rounds: SFT, then MargE, whose weights are normalised over the global batch) on 2
  processes: the same metrics, labelled sequences and oracle calls as one process with 2 devices, which
  runs the same sharded programs. Process 1 writes no output of its own. (Resuming across processes is
  the GA test's: the same checkpoint code, and a state that is not replicated.)"""
  two, one = tmp_path / 'two', tmp_path / 'one'
  stderr = processes.run_processes([*_LLOME, f'--workdir={two}'], num_processes=2)
  assert all(', 2 devices.' in e for e in stderr)
  processes.run_one([*_LLOME, f'--workdir={one}'], num_devices=2)
  got, want = _outputs(two), _outputs(one)
  rows = [json.loads(line) for line in got['metrics.jsonl'].splitlines()]
  assert [row['round'] for row in rows] == [0, 1, 2]
  assert rows[-1]['num_evaluations'] == rows[0]['num_evaluations'] + sum(r['num_labelled'] for r in rows[1:])
  assert got == want
  assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def _build_ga_jobs(tmp_path, extra):
  """BUILD.md's two GA processes on localhost, on a free port, as (argv, env) pairs."""
  port = str(processes.free_port())
  commands = [c for _, c in processes.documented_commands() if '--coordinator_address=localhost:' in c]
  assert len(commands) == 2 and [c.split('--process_id=')[1][0] for c in commands] == ['0', '1']
  return [processes.command_argv(c.replace('12345', port), tmp_path, extra) for c in commands]


def test_ga_on_two_processes_killed_and_resumed_equals_one_process(tmp_path):
  """BUILD.md's two GA commands (40 generations, a checkpoint every 10), both processes SIGKILLed after
  the first checkpoint, then the same commands again: the rerun resumes from the checkpoint the two
  processes wrote and ends with the outputs of one process on 2 devices, byte for byte."""
  extra = ['--config.ga.num_steps=40', '--config.checkpoint_every=10']
  two = tmp_path / 'runs' / 'ga_2proc'
  started = [
    subprocess.Popen(argv, cwd=processes.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for argv, env in _build_ga_jobs(tmp_path, extra)
  ]
  deadline = time.monotonic() + 300
  checkpoints = two / 'checkpoints'
  while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    assert all(p.poll() is None for p in started) and time.monotonic() < deadline, (
      'no checkpoint before the end'
    )
    time.sleep(0.05)
  for p in started:
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
  assert len(metrics_io.read_jsonl(two / 'metrics.jsonl')) < 40, 'killed too late to test a resume'
  stderr = processes.run_together(_build_ga_jobs(tmp_path, extra))
  assert all('Resuming' in e and '(2 devices)' in e for e in stderr)
  one = tmp_path / 'one'  # 1 process x 2 devices; 1 x 1 equals it (tests/test_ga.py, in one process).
  assert '(2 devices)' in processes.run_one([*_GA, f'--workdir={one}', *extra], num_devices=2)
  assert _outputs(one) == _outputs(two)
  assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
