#!/usr/bin/env bash
# Wheels a device machine lacks (it reaches no registry), downloaded here into
# .whl/ (git-ignored) for `carry`: the CUTLASS headers the build needs and
# bitsandbytes for the int8 baselines. ~50 MB of the 64 MiB a call may carry.
# scripts/gpu_session.sh installs whatever .whl/ holds.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  -d .whl "nvidia-cutlass>=3.5" "bitsandbytes>=0.45"
du -ch .whl/*.whl | tail -1
