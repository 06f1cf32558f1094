#!/usr/bin/env bash
# Builds the CPU kernels (mlx_kernels._C, no CUDA) with AddressSanitizer and
# UBSan (-fsanitize=address,undefined -fno-sanitize-recover=all) into their own
# build folder, build/asan-cpu (MLX_ASAN_BUILD_DIR picks another), against the
# .venv's torch; the editable build in build/<wheel tag> is left alone.
# Then: bash scripts/test_asan.sh (the CPU suite on it, sanitizer runtime preloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-$PWD/.venv/bin/python}"
build="${MLX_ASAN_BUILD_DIR:-build/asan-cpu}"
export PATH="$(dirname "$py"):$PATH"  # the venv's cmake and ninja
san="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
# -g1: line tables for the reports' stack traces, at a fraction of -g's compile time.
cmake -S . -B "$build" -G Ninja -DMLX_CUDA=OFF -DMLX_EMU=OFF -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$py" -DCMAKE_CXX_FLAGS="$san -g1" \
  -DCMAKE_MODULE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san" >/dev/null
NINJA_STATUS="[%f/%t %es] " cmake --build "$build" --target _C -j "$(nproc)"
ls "$build"/_C*.so
