"""Test setup: 8 fake CPU devices, so sharded code runs for real. Set before JAX initialises.

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

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
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
