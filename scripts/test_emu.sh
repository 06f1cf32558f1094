#!/usr/bin/env bash
# Runs the CUDA test suite and the emulator's self-tests on the SIMT emulator
# (MLX_EMU=1 pytest -m "cuda or emu"), against build/emu (or MLX_EMU_LIB).
# A sanitized build (build_emu.sh --sanitize) gets the AddressSanitizer runtime
# preloaded into Python, leak detection off (the interpreter's own allocations
# are not ours), and every ASan/UBSan report aborts the run.
# Extra arguments go to pytest (e.g. tests/test_bsr.py, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
lib="${MLX_EMU_LIB:-$(ls "${MLX_EMU_BUILD_DIR:-build/emu}"/_emu*.so | head -n 1)}"
preload=""
if nm -D "$lib" | grep " U __asan_init" >/dev/null; then  # not -q: nm must not die of SIGPIPE (pipefail)
  # libstdc++ too: loaded later (by torch), ASan could not intercept its __cxa_throw.
  preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
fi
LD_PRELOAD="$preload" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_odr_violation=0:allow_user_segv_handler=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
MLX_EMU=1 MLX_EMU_LIB="$lib" exec .venv/bin/python -m pytest -q -p no:cacheprovider -m "cuda or emu" "$@"
