#!/usr/bin/env bash
# Set up from nothing: a virtual environment in .venv with the pinned torch and
# the build/test requirements, then an editable build of mlx_kernels against it.
# The CUDA kernels are built when torch sees a GPU or MLX_CUDA=ON is set (CI
# sets it), else the CPU kernels only; MLX_CUDA=OFF never builds them.
# One line per compiled unit while it builds, on all cores; the full build log
# is build/setup.log. Safe to re-run: .venv is reused, the build is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
echo "setup: installing requirements-dev.txt into .venv (torch $(sed -n 's/^torch==//p' requirements.txt), ~6 GB on a first run)"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
echo "setup: requirements installed ($(elapsed)); building mlx_kernels (MLX_CUDA=${MLX_CUDA:-AUTO})"

# --no-build-isolation: build against the torch installed above (see README).
# pip -v passes the build's output through (indented); the filter keeps ninja's
# line per compiled unit ([done/total elapsed]) and our own configure messages.
mkdir -p build
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" NINJA_STATUS="${NINJA_STATUS:-[%f/%t %es] }"
.venv/bin/python -m pip install -v --no-build-isolation -e . >build/setup.log 2>&1 </dev/null &
pid=$!
tail -n +1 -f --pid=$pid build/setup.log | grep --line-buffered -E "^ *\[[0-9]+/[0-9]+[] ]|^ *-- mlx-kernels:" |
  sed -u 's/^ *\(-- \)\{0,1\}//' || true
if ! wait $pid; then
  echo "setup: build FAILED after $(elapsed); the end of build/setup.log:" >&2
  tail -40 build/setup.log >&2
  exit 1
fi
.venv/bin/python - "$(elapsed)" <<'PY'
import sys
import mlx_kernels as m
print(f"setup: mlx_kernels built in {sys.argv[1]} total: namespace={m.OPS_NAMESPACE} cuda={m.WITH_CUDA}"
      + (f" archs={m._build_config.CUDA_ARCHS}" if m.WITH_CUDA else ""))
if not m.WITH_CUDA:
    print("setup: CPU kernels only; for the CUDA kernels too (needs nvcc): MLX_CUDA=ON bash scripts/setup.sh")
PY
