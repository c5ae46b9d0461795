"""llome_jax: LLOME (language models as bilevel sequence optimisers) in functional JAX/Flax."""

import setuptools

setuptools.setup(
  name='llome_jax',
  version='0.1.0',
  description='Functional JAX/Flax LLOME with pytorch-holo-exact Ehrlich functions and GA baseline.',
  packages=setuptools.find_packages(include=['llome_jax', 'llome_jax.*']),
  package_data={'llome_jax.test_functions': ['data/*.json']},
  python_requires='>=3.11',
  install_requires=[
    'jax==0.10.2',
    'jaxlib==0.10.2',
    'flax==0.12.8',
    'optax==0.2.8',
    'orbax-checkpoint==0.12.8',
    'chex==0.1.92',
    'numpy>=2.0,<3',
    'absl-py==2.5.1',
    'ml-collections==1.1.0',
    'jaxtyping>=0.3,<0.4',
    'matplotlib==3.11.2',
  ],
  extras_require={
    'test': ['pytest==9.2.0', 'pytest-xdist==3.8.0', 'ruff==0.17.6'],
    # BUILD.md installs '.[cuda12]' or '.[cuda13]' (by the driver's CUDA major version); 'cuda' is cuda12.
    'cuda': ['jax[cuda12]==0.10.2'],
    'cuda12': ['jax[cuda12]==0.10.2'],
    'cuda13': ['jax[cuda13]==0.10.2'],
    'tpu': ['jax[tpu]==0.10.2'],
  },
)
