"""Multi-host runs for real: each binary as 2 processes of one JAX job on localhost (one CPU device each,
gloo collectives), against the same run in one process with 2 devices and with 1, and resumed across
processes. The commands are BUILD.md's, with --coordinator_address, --num_processes and --process_id.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import processes
import pytest

from llome_jax import metrics_io

pytestmark = pytest.mark.slow

_GA = ['-m', 'experiments.ga_baseline', '--config=experiments/configs/ga_ehrlich.py']
_LLOME = ['-m', 'experiments.llome', '--config=experiments/configs/smoke.py', '--config.outer.num_rounds=2']


def _outputs(workdir):
  """metrics.jsonl and best.json as text, and the arrays of the .npz outputs."""
  got = {name: (workdir / name).read_text() for name in ('metrics.jsonl', 'best.json')}
  for path in sorted(workdir.rglob('*.npz')):
    got[str(path.relative_to(workdir))] = {k: v.tolist() for k, v in np.load(path).items()}
  return got


def _build_ga_job(tmp_path, extra):
  """BUILD.md's two GA processes on localhost, on a free port."""
  port = str(processes.free_port())
  commands = [c for _, c in processes.documented_commands() if '--coordinator_address=localhost:' in c]
  assert len(commands) == 2 and [c.split('--process_id=')[1][0] for c in commands] == ['0', '1']
  jobs = [processes.command_argv(c.replace('12345', port), tmp_path, extra) for c in commands]
  return processes.run_together(jobs)


def test_ga_on_two_processes_equals_one_process_and_resumes_across_them(tmp_path):
  """BUILD.md's commands: 5 generations on 2 processes, then the same job rerun with 10 (resumed from
  the checkpoint both processes wrote): the outputs equal a 10-generation run in one process on 2
  devices and on 1."""
  two = tmp_path / 'runs' / 'ga_2proc'
  stderr = _build_ga_job(tmp_path, ['--config.ga.num_steps=5'])
  assert all('(2 devices)' in e for e in stderr)
  assert len(metrics_io.read_jsonl(two / 'metrics.jsonl')) == 5
  stderr = _build_ga_job(tmp_path, ['--config.ga.num_steps=10'])
  assert all('Resuming' in e for e in stderr)
  for num_devices in (2, 1):
    one = tmp_path / f'one_{num_devices}'
    stderr = processes.run_one(
      [*_GA, f'--workdir={one}', '--config.ga.num_steps=10'], num_devices=num_devices
    )
    assert f'({num_devices} devices)' in stderr
    assert _outputs(one) == _outputs(two)
  assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in (tmp_path / 'one_1').iterdir())


def test_llome_on_two_processes_resumed_equals_one_process_on_two_devices(tmp_path):
  """The smoke run (2 rounds) on 2 processes, stopped after round 1 and rerun: the same metrics,
  labelled sequences and oracle calls as one process with 2 devices, which runs the same sharded
  programs. Process 1 writes no output of its own."""
  two, one = tmp_path / 'two', tmp_path / 'one'
  processes.run_processes([*_LLOME, f'--workdir={two}', '--stop_after_round=1'], num_processes=2)
  assert [row['round'] for row in metrics_io.read_jsonl(two / 'metrics.jsonl')] == [0, 1]
  stderr = processes.run_processes([*_LLOME, f'--workdir={two}'], num_processes=2)
  assert all('Resuming' in e and ', 2 devices.' in e for e in stderr)
  processes.run_one([*_LLOME, f'--workdir={one}'], num_devices=2)
  got, want = _outputs(two), _outputs(one)
  rows = [json.loads(line) for line in got['metrics.jsonl'].splitlines()]
  assert [row['round'] for row in rows] == [0, 1, 2]
  assert rows[-1]['num_evaluations'] == rows[0]['num_evaluations'] + sum(r['num_labelled'] for r in rows[1:])
  assert got == want
  assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_a_killed_two_process_ga_resumes_to_the_same_result(tmp_path):
  """Both processes SIGKILLed after the first checkpoint, then the same two commands again: the rerun
  resumes from the checkpoint the two processes wrote and ends with the outputs of one process."""
  killed = tmp_path / 'killed'
  args = [*_GA, f'--workdir={killed}', '--config.ga.num_steps=40', '--config.checkpoint_every=10']
  port = processes.free_port()
  env = processes.one_device_env(JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')
  flags = [f'--coordinator_address=localhost:{port}', '--num_processes=2']
  started = [
    subprocess.Popen(
      [sys.executable, *args, *flags, f'--process_id={i}'],
      cwd=processes.REPO,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    for i in range(2)
  ]
  deadline = time.monotonic() + 300
  checkpoints = killed / 'checkpoints'
  while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
    assert all(p.poll() is None for p in started) and time.monotonic() < deadline, (
      'no checkpoint before the end'
    )
    time.sleep(0.05)
  for p in started:
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
  assert len(metrics_io.read_jsonl(killed / 'metrics.jsonl')) < 40, 'killed too late to test a resume'
  stderr = processes.run_processes(args, num_processes=2)
  assert all('Resuming' in e for e in stderr)
  whole = tmp_path / 'whole'
  processes.run_one([*_GA, f'--workdir={whole}', '--config.ga.num_steps=40', '--config.checkpoint_every=10'])
  assert _outputs(killed) == _outputs(whole)
