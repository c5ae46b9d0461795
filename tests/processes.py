"""Helpers for tests that start experiment binaries in processes of their own (not a test module)."""

import os
import pathlib
import re
import shlex
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = ('README.md', 'BUILD.md')


def _bash_blocks(text: str) -> list[str]:
  return re.findall(r'^```bash\n(.*?)^```', text, flags=re.MULTILINE | re.DOTALL)


def _split_chain(line: str) -> list[str]:
  """`a && b` as [a, b]; an `&&` inside quotes (a command run over ssh) stays."""
  parts, quote, start = [], None, 0
  for i, char in enumerate(line):
    if char in '"\'' and quote in (None, char):
      quote = None if quote else char
    elif quote is None and line.startswith(' && ', i):
      parts.append(line[start:i])
      start = i + 4
  return [part.strip() for part in parts + [line[start:]] if part.strip()]


def documented_commands() -> list[tuple[str, str]]:
  """(file, command) for each command of the docs' bash blocks: continuation lines joined, comments
  dropped, `a && b` chains split into their commands."""
  commands = []
  for name in DOCS:
    for block in _bash_blocks((REPO / name).read_text()):
      for line in block.replace('\\\n', ' ').splitlines():
        line = re.sub(r'\s+#.*$', '', line).strip()
        commands += [(name, ' '.join(part.split())) for part in _split_chain(line)]
  return commands


def command_argv(command: str, tmp_path: pathlib.Path, extra=()) -> tuple[list[str], dict[str, str]]:
  """A documented command as argv and environment: .venv/bin/python is this interpreter, the docs'
  placeholder directories (runs/..., DIR, /tmp/ga_8dev) live under tmp_path, leading VAR=value words go
  to the environment (one device unless they say otherwise), a trailing `&` is dropped."""
  words = shlex.split(command.removesuffix(' &'))
  env = {}
  while re.match(r'^[A-Z_]+=', words[0]):
    key, value = words.pop(0).split('=', 1)
    env[key] = value
  replaced = []
  for word in words:
    word = word.replace('.venv/bin/python', sys.executable)
    word = re.sub(r'(^|=|,)runs/', lambda m: f'{m.group(1)}{tmp_path}/runs/', word)
    word = re.sub(r'=(DIR|/tmp/ga_8dev)$', lambda m: f'={tmp_path / pathlib.Path(m.group(1)).name}', word)
    replaced.append(word)
  run_env = one_device_env()
  if 'XLA_FLAGS' in env:  # The command's own flags, plus the suite's compiler level.
    env['XLA_FLAGS'] += ' ' + run_env['XLA_FLAGS']
  run_env.update(env)
  return replaced + list(extra), run_env


def one_device_env(**extra) -> dict[str, str]:
  """The caller's environment without the suite's 8 fake devices: what a user's shell holds. The
  suite's compiler level (-O0, conftest.py) is kept, since only speed depends on it."""
  env = dict(os.environ)
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', env.get('XLA_FLAGS', '')).split()
  env['XLA_FLAGS'] = ' '.join(flags)
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = str(REPO)
  env.update(extra)
  return env


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_together(jobs: list[tuple[list[str], dict[str, str]]], *, timeout: float = 600) -> list[str]:
  """Starts every (argv, env) at once, waits for all, returns their stderr; fails if any fails."""
  started = [
    subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for argv, env in jobs
  ]
  errors = []
  try:
    for process in started:
      errors.append(process.communicate(timeout=timeout)[1])
  finally:
    for process in started:
      process.kill()
  for (argv, _), process, stderr in zip(jobs, started, errors, strict=True):
    assert process.returncode == 0, f'{argv}:\n{stderr[-6000:]}'
  return errors


def run_processes(args: list[str], *, num_processes: int, timeout: float = 600) -> list[str]:
  """`python ARGS` as `num_processes` processes of one multi-host JAX job on localhost (one CPU device
  each, gloo collectives), started together; returns each one's stderr."""
  port = free_port()
  env = one_device_env(JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')
  flags = [f'--coordinator_address=localhost:{port}', f'--num_processes={num_processes}']
  jobs = [([sys.executable, *args, *flags, f'--process_id={i}'], env) for i in range(num_processes)]
  return run_together(jobs, timeout=timeout)


def run_one(args: list[str], *, num_devices: int = 1, timeout: float = 600) -> str:
  """`python ARGS` in one process with `num_devices` CPU devices; returns its stderr."""
  env = one_device_env()
  if num_devices > 1:
    env['XLA_FLAGS'] += f' --xla_force_host_platform_device_count={num_devices}'
  result = subprocess.run(
    [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
  )
  assert result.returncode == 0, f'{args}:\n{result.stderr[-6000:]}'
  return result.stderr
