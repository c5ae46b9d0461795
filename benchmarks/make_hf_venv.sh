#!/usr/bin/env bash
# Creates the Hugging Face reference venv (torch + transformers) for benchmarks/hf_side.py and
# benchmarks/export_neox_reference.py.
# Usage: bash benchmarks/make_hf_venv.sh [VENV_PATH]   (default: .venv-hf at the repo root)
# torch and transformers stay out of the project venv: llome_jax never imports them.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${repo_root}/.venv-hf}"
python="${PYTHON:-python3}"

"${python}" -m venv "${venv}"
# torch is pinned to the CPU build on local disk; an unpinned torch would fetch a multi-GB CUDA build.
# Where no local CPU wheel exists, add PyTorch's CPU wheel index to pip (--extra-index-url).
"${venv}/bin/pip" install torch==2.13.0 transformers==5.24.0 numpy
"${venv}/bin/python" -c '
import torch, transformers
assert torch.version.cuda is None, f"expected the CPU build of torch, got CUDA {torch.version.cuda}"
print("hf venv ready: torch", torch.__version__, "transformers", transformers.__version__)'
