"""A stand-in for poli-core (1.3.1) in the project's own venv, where poli cannot be installed (it pins
numpy<2). tests/test_poli_bridge.py puts tests/data/fake_poli on the worker's PYTHONPATH and drives
llome_jax/poli_worker.py against it: the same entry point (poli.objective_factory.create), return type
(a Problem with .black_box and .x0) and black-box contract (AbstractBlackBox.__call__ asserting aligned
[b, L] input, replying [b, 1]) as the real package, with black boxes that exercise each path."""

__version__ = '1.3.1+fake'
