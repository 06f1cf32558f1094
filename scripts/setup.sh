#!/usr/bin/env bash
# Set up from nothing: a virtual environment in .venv with the pinned torch and
# the build/test requirements, then an editable build of mlx_kernels against it
# (CUDA kernels too when nvcc is present; MLX_CUDA=OFF skips them).
# Safe to re-run: an existing .venv is reused and the build is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
# --no-build-isolation: build against the torch installed above (see README).
.venv/bin/python -m pip install --quiet --no-build-isolation -e .
.venv/bin/python -c "import mlx_kernels as m; print(f'mlx_kernels built: namespace={m.OPS_NAMESPACE} cuda={m.WITH_CUDA}')"
