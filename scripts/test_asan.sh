#!/usr/bin/env bash
# Runs the CPU test suite against the sanitized CPU build (scripts/build_asan.sh):
# the AddressSanitizer runtime and libstdc++ preloaded into Python (libstdc++ too,
# so ASan intercepts the __cxa_throw of the library torch loads later), leak
# detection off (the interpreter's own allocations are not ours), and every
# ASan/UBSan report aborts the run.
# Extra arguments go to pytest (the CPU suite: -m "not cuda").
# MLX_FUZZ=long makes tests/test_fuzz.py the long fuzzing profile.
set -euo pipefail
cd "$(dirname "$0")/.."
lib="${MLX_ASAN_LIB:-$(ls "${MLX_ASAN_BUILD_DIR:-build/asan-cpu}"/_C*.so | head -n 1)}"
if ! nm -D "$lib" | grep " U __asan_init" >/dev/null; then  # not -q: nm must not die of SIGPIPE (pipefail)
  echo "test_asan: $lib is not an AddressSanitizer build (run scripts/build_asan.sh)" >&2
  exit 2
fi
# The sanitized _C goes into a package of its own, build/asan-cpu/pkg.*/mlx_kernels (one per run):
# links to python/mlx_kernels' files beside the build's _C and _build_config.py. The
# editable install's import hook is told to step aside (scikit-build-core steps aside
# for the build folders listed in SKBUILD_EDITABLE_SKIP), so nothing is rebuilt and the
# editable build in build/<wheel tag> is never loaded.
build="$(dirname "$lib")"
pkg_root="$(mktemp -d "$build/pkg.XXXXXX")"
trap 'rm -rf "$pkg_root"' EXIT
pkg="$pkg_root/mlx_kernels"
mkdir "$pkg"
for f in python/mlx_kernels/*; do
  case "$f" in *.in|*/__pycache__) continue ;; esac
  ln -s "$(realpath "$f")" "$pkg/"
done
ln -s "$(realpath "$lib")" "$pkg/"
ln -s "$(realpath "$build/_build_config.py")" "$pkg/"
editable_builds="$(ls -d "$PWD"/build/cp* 2>/dev/null | paste -sd: || true)"
# allocator_may_return_null: a refused huge malloc becomes torch's own out-of-memory
# error (as without ASan) rather than an ASan abort; detect_odr_violation=0: torch's
# libraries define some globals twice. halt_on_error: the first report fails the run.
# --capture=sys: pytest must not capture file descriptor 2, where the reports go
# (a report inside a captured test would die with the process, unseen).
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0:allow_user_segv_handler=1:allocator_may_return_null=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
PYTHONPATH="$(realpath "$pkg_root")${PYTHONPATH:+:$PYTHONPATH}" SKBUILD_EDITABLE_SKIP="$editable_builds" \
  .venv/bin/python -m pytest -q -p no:cacheprovider --capture=sys -m "not cuda" "$@"
