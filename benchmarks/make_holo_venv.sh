#!/usr/bin/env bash
# Creates the pytorch-holo reference venv that benchmarks/ehrlich_speed.py times against.
# Usage: bash benchmarks/make_holo_venv.sh [VENV_PATH]   (default: .venv-holo at the repo root)
# holo stays out of the project venv: it pins an old numpy and pulls in torch and botorch.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${repo_root}/.venv-holo}"
python="${PYTHON:-python3}"

"${python}" -m venv "${venv}"
# torch is pinned to the CPU build on local disk; an unpinned torch would fetch a multi-GB CUDA build.
"${venv}/bin/pip" install torch==2.13.0 pytorch-holo 'numpy<2'
"${venv}/bin/python" -c 'import holo, torch; print("holo venv ready:", torch.__version__)'
