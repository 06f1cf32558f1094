#!/usr/bin/env bash
# What a device machine lacks (it reaches no registry, and only the repository
# travels), gathered here into the git-ignored .carry/ for the call's `carry`:
#   .carry/whl/       nvidia-cutlass (the build's headers), bitsandbytes (int8 baselines)
#   .carry/matrices/  the SuiteSparse matrices of ../shared/data/matrices
# ~53 MB of the 64 MiB a call may carry. scripts/gpu_session.sh uses both.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
mkdir -p .carry/whl .carry/matrices
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  -d .carry/whl "nvidia-cutlass>=3.5" "bitsandbytes>=0.45"
matrices="${MLX_MATRIX_DIR:-../shared/data/matrices}"
if compgen -G "$matrices/*.mtx" >/dev/null; then cp "$matrices"/*.mtx .carry/matrices/; fi
du -sh .carry
