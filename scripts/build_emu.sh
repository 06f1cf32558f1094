#!/usr/bin/env bash
# Builds the SIMT emulator extension (csrc/emu/): the hand-written CUDA kernels
# compiled for the CPU, into build/emu/_emu*.so, against the .venv's torch.
#   scripts/build_emu.sh             # plain (fast to build and run)
#   scripts/build_emu.sh --sanitize  # AddressSanitizer + UBSan (what CI runs)
#   scripts/build_emu.sh --coverage  # gcov line coverage of the emulated kernels
# MLX_EMU_BUILD_DIR picks another build folder (default build/emu).
# Then: MLX_EMU=1 .venv/bin/python -m pytest -m "cuda or emu" (scripts/test_emu.sh
# runs that, with the sanitizer runtime preloaded for a --sanitize build).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-$PWD/.venv/bin/python}"
sanitize=OFF coverage=OFF
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=ON ;;
    --coverage) coverage=ON ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
build="${MLX_EMU_BUILD_DIR:-build/emu}"
export PATH="$(dirname "$py"):$PATH"  # the venv's cmake and ninja
cmake -S . -B "$build" -G Ninja -DMLX_EMU=ON -DMLX_CUDA=OFF -DPython_EXECUTABLE="$py" \
  -DMLX_EMU_SANITIZE="$sanitize" -DMLX_EMU_COVERAGE="$coverage" >/dev/null
cmake --build "$build" --target _emu -j "$(nproc)"
ls "$build"/_emu*.so
