#!/usr/bin/env bash
# Creates the poli-core venv that llome_jax/poli_bridge.py runs poli black boxes in, and that
# tests/test_poli_bridge.py's real-poli tests use (they skip without it).
# Usage: bash benchmarks/make_poli_venv.sh [VENV_PATH]   (default: .venv-poli at the repo root)
# poli stays out of the project venv: poli-core pins numpy<2, JAX needs numpy>=2.
# Verified with poli-core 1.3.1 (numpy 1.26.4, rdkit, selfies come with it) on Python 3.11. poli-baselines
# is not on PyPI (its own requirements name poli-core by git URL), so it is not installed: the adapter's
# solver (llome_jax/poli_solver.py) subclasses its AbstractSolver only where it is present.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${repo_root}/.venv-poli}"
python="${PYTHON:-python3}"

"${python}" -m venv "${venv}"
echo '*' > "${venv}/.gitignore"  # Keeps the venv out of git status without touching .gitignore.
"${venv}/bin/pip" install 'poli-core==1.3.1'
"${venv}/bin/python" -c '
import numpy, poli
from poli import objective_factory
problem = objective_factory.create(name="aloha")
print("poli venv ready: poli", poli.__version__, "numpy", numpy.__version__, "aloha(x0) =", problem.black_box(problem.x0).ravel())
'
