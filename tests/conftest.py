"""Test setup: 8 fake CPU devices, so sharded code runs for real. Set before JAX initialises.

Programs are compiled with XLA:CPU's LLVM backend at -O0 (--xla_backend_optimization_level=0): the
suite is bound by compilation, and this cut it from 790 s to 483 s on 2 cores. Tests check values
against references at tolerances, and their exact comparisons (jit against eager, 1 device against 8,
resume against uninterrupted) are between programs built the same way. To run the suite as users'
programs are built, put the flag's default in XLA_FLAGS (--xla_backend_optimization_level=3): a
caller's own setting is kept.

Each test process also gets its own persistent compilation cache, so that the end-to-end tests,
which build the same jitted round programs in several `run_experiment` calls, compile each once.
The cache is per process (the xdist workers do not share one: JAX writes entries unlocked) and is
deleted at exit. A JAX_COMPILATION_CACHE_DIR set by the caller is used instead and kept; the workers
then share it.
"""

import atexit
import os
import shutil
import tempfile

_flags = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
if '--xla_backend_optimization_level' not in _flags:
  _flags += ' --xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = _flags.strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # Per process: not inherited by xdist workers.
  _cache_dir = tempfile.mkdtemp(prefix='llome-jax-test-cache-')
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  jax.config.update('jax_compilation_cache_dir', _cache_dir)
# Cache every program, however small or quick to compile: the suite's cost is many small compiles.
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
import pathlib  # noqa: E402

import pytest  # noqa: E402

DATA_DIR = pathlib.Path(__file__).parent / 'data'


@pytest.fixture(scope='session')
def holo_cases():
  import json

  with open(DATA_DIR / 'ehrlich_holo_cases.json') as f:
    return json.load(f)['cases']
