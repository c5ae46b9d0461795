"""poli's `aloha` black box as a scorer for --config.oracle.target=experiments/poli_aloha.py:score.

poli runs in its own venv (bash benchmarks/make_poli_venv.sh): the black box lives in a worker process
started with that venv's python on the first call (llome_jax/poli_bridge.py). Keyword arguments after
the name go to poli.objective_factory.create.
"""

from llome_jax import poli_bridge

score = poli_bridge.remote_black_box('.venv-poli/bin/python', 'aloha')
