"""Test setup: 8 fake CPU devices, so sharded code runs for real. Set before JAX initialises."""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pathlib  # noqa: E402

import pytest  # noqa: E402

DATA_DIR = pathlib.Path(__file__).parent / 'data'


@pytest.fixture(scope='session')
def holo_cases():
  import json

  with open(DATA_DIR / 'ehrlich_holo_cases.json') as f:
    return json.load(f)['cases']
