"""llome_jax: LLOME (language models as bilevel sequence optimisers) in functional JAX/Flax."""

import pathlib

import setuptools

# Ranges, so that the package installs beside a user's own JAX stack: from the oldest versions CI tests
# (constraints.txt, Python 3.11) to below the next release that may break the code. JAX and its
# siblings (flax, orbax) change APIs in minor releases (0.x -> 0.x+1: shard_map's vma typing, Orbax's
# handler registries), so each is capped below its next minor release; .ci/run tests the newest releases
# inside these ranges on the newest Python (JAX 0.12.0.1, flax 0.12.12 on Python 3.13 when written).
# Raise a cap after the suite passes on the new release.
_JAX = '>=0.10.2,<0.13'

setuptools.setup(
  name='llome_jax',
  version='0.1.0',
  description='Functional JAX/Flax LLOME with pytorch-holo-exact Ehrlich functions and GA baseline.',
  long_description=pathlib.Path(__file__).with_name('README.md').read_text(encoding='utf-8'),
  long_description_content_type='text/markdown',
  license='MIT',
  classifiers=[
    'Programming Language :: Python :: 3.11',
    'Programming Language :: Python :: 3.12',
    'Programming Language :: Python :: 3.13',
    'Topic :: Scientific/Engineering :: Artificial Intelligence',
  ],
  packages=setuptools.find_packages(include=['llome_jax', 'llome_jax.*']),
  package_data={'llome_jax.test_functions': ['data/*.json']},
  python_requires='>=3.11,<3.14',
  install_requires=[
    f'jax{_JAX}',
    f'jaxlib{_JAX}',
    'flax>=0.12.8,<0.13',
    'optax>=0.2.8,<0.3',
    'orbax-checkpoint>=0.12.8,<0.13',
    'chex>=0.1.92,<0.2',
    'numpy>=2.0,<3',
    'absl-py>=2.1,<3',
    'ml-collections>=1.1,<2',
    'jaxtyping>=0.3,<0.4',
    'matplotlib>=3.8,<4',
  ],
  extras_require={
    # ruff is capped below its next minor release: its formatting changes between them.
    'test': ['pytest>=8,<10', 'pytest-xdist>=3.5,<4', 'ruff>=0.17,<0.18'],
    # BUILD.md installs '.[cuda12]' or '.[cuda13]' (by the driver's CUDA major version); 'cuda' is cuda12.
    'cuda': [f'jax[cuda12]{_JAX}'],
    'cuda12': [f'jax[cuda12]{_JAX}'],
    'cuda13': [f'jax[cuda13]{_JAX}'],
    'tpu': [f'jax[tpu]{_JAX}'],
  },
)
