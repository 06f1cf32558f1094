#!/usr/bin/env bash
# Packaging, vendoring and the oldest torch we claim, end to end, on CPU-only
# builds (what CI runs; README, "Packaging" and "Vendoring"):
#   1. a fresh venv with the oldest claimed torch (2.13, the CPU build) and the
#      runtime/test requirements only; the build tools go to a folder of
#      their own, put on the path for the build commands alone;
#   2. `python -m build`: the sdist, then the abi3 wheel built from the unpacked
#      sdist, with the default set-up (no GPU visible: CPU kernels only);
#   3. the wheel installed into the venv with no compiler, CMake or ninja in
#      reach, and a smoke test there;
#   4. the CMake consumer tests/vendoring (add_subdirectory + mlx_kernels::ops,
#      MLX_NAMESPACE=vendored_mlx) installed as otherlib._vendor.mlx_kernels, and
#      tests/vendoring/check_vendoring.py: both copies in one process;
#   5. MLX_CUTLASS_DIR: one configure that takes CUTLASS from it, one that refuses a bad one;
#   6. the CPU test suite (less fuzzing and hardening) against that torch and the installed wheel.
# MLX_PKG_TORCH: the torch requirement (default torch==2.13.0); MLX_PKG_DIR: the
# work folder (default a new temp folder, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
torch_req="${MLX_PKG_TORCH:-torch==2.13.0}"
work="${MLX_PKG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/mlx-pkg.XXXXXX")}"
[ -n "${MLX_PKG_DIR:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
venv="$work/venv" tools="$work/tools" dist="$work/dist" prefix="$work/otherlib"
jobs="$(nproc)"

start=$(date +%s)
step() {
  local name="$1" t
  shift
  t=$(date +%s)
  echo "--- ${name}"
  "$@"
  echo "--- ${name}: $(( $(date +%s) - t )) s (packaging total $(( $(date +%s) - start )) s)"
}
# The build commands see the tools folder; nothing else does.
with_tools() { PYTHONPATH="$tools" PATH="$tools/bin:$venv/bin:$PATH" CMAKE_BUILD_PARALLEL_LEVEL="$jobs" "$@"; }
# No compiler, CMake or ninja in reach: the venv's bin alone on PATH, a bare environment.
bare() { env -i HOME="$work/home" LANG=C.UTF-8 PATH="$venv/bin" "$@"; }

make_envs() {
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$torch_req" numpy scipy tqdm pytest hypothesis
  # nvidia-cutlass without its own dependencies: the build reads its headers, never imports it.
  "$venv/bin/pip" install -q --target "$tools" "scikit-build-core>=0.10" "cmake>=3.26" ninja build
  "$venv/bin/pip" install -q --target "$tools" --no-deps "nvidia-cutlass>=3.5"
  "$venv/bin/python" -c "import torch; print('torch', torch.__version__)"
}

build_sdist_and_wheel() {
  # MLX_CUDA unset: the default (AUTO) set-up. --skip-dependency-check: the check
  # would want nvidia-cutlass's own Python dependencies, which no build uses.
  (unset MLX_CUDA; with_tools "$venv/bin/python" -m build --no-isolation --skip-dependency-check \
    --outdir "$dist" "$repo") >"$work/build.log" 2>&1 || { tail -60 "$work/build.log"; return 1; }
  grep -E "^\[[0-9]+/[0-9]+\]|mlx-kernels:" "$work/build.log" || true
  ls -l "$dist"
  local sdist wheel
  sdist=$(ls "$dist"/mlx_kernels-*.tar.gz) wheel=$(ls "$dist"/mlx_kernels-*-cp39-abi3-*.whl)
  "$venv/bin/python" - "$sdist" "$wheel" <<'PY'
import sys, tarfile, zipfile
sdist, wheel = sys.argv[1:]
names = [n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n]
for need in ("CMakeLists.txt", "pyproject.toml", "csrc/ops.cpp", "python/mlx_kernels/__init__.py",
             "python/mlx_kernels/_build_config.py.in", "tests/vendoring/CMakeLists.txt", "third_party/README.md",
             "examples/README.md"):
    assert need in names, f"sdist lacks {need}"
bad = [n for n in names if n.split("/")[0] in ("build", ".venv", ".carry", "dist") or n.endswith(".so")]
assert not bad, f"sdist carries build products: {bad[:5]}"
files = zipfile.ZipFile(wheel).namelist()
assert any(f.startswith("mlx_kernels/_C.abi3") and f.endswith(".so") for f in files), files
for need in ("mlx_kernels/__init__.py", "mlx_kernels/_build_config.py", "mlx_kernels/bench/__main__.py"):
    assert need in files, f"wheel lacks {need}"
assert not [f for f in files if f.endswith(".py.in")]
print(f"sdist: {len(names)} files; wheel: {len(files)} files")
PY
}

install_wheel_without_compiler() {
  # From the work folder: the checkout's own build/ folder would pass for the `build` module.
  (cd "$work" && bare python - <<'PY'
import importlib.util, shutil
found = [t for t in ("cc", "gcc", "g++", "c++", "clang", "cmake", "ninja", "nvcc") if shutil.which(t)]
found += [m for m in ("cmake", "ninja", "scikit_build_core", "build") if importlib.util.find_spec(m)]
assert not found, f"not a compiler-free environment: {found}"
PY
  )
  bare python -m pip install -q --no-index --no-deps "$dist"/mlx_kernels-*-cp39-abi3-*.whl
  bare python -m pip check
  (cd "$work" && bare python - <<'PY'
import sys, torch, mlx_kernels
from mlx_kernels import _build_config
assert mlx_kernels.__file__.startswith(sys.prefix), mlx_kernels.__file__
assert not mlx_kernels.WITH_CUDA and mlx_kernels.OPS_NAMESPACE == "mlx"
assert _build_config.TORCH_VERSION == torch.__version__, (_build_config.TORCH_VERSION, torch.__version__)
g = torch.Generator().manual_seed(0)
a = torch.randint(-128, 128, (33, 70), dtype=torch.int8, generator=g)
b = torch.randint(-128, 128, (17, 70), dtype=torch.int8, generator=g)
assert torch.equal(torch.ops.mlx.int8_mm(a, b).long(), a.long() @ b.long().T)
u, k = torch.randn(2, 3, 50, generator=g), torch.randn(3, 9, generator=g)
ref = sum(k[:, s, None] * torch.nn.functional.pad(u, (s, 0))[..., :50] for s in range(9))
torch.testing.assert_close(mlx_kernels.fft_conv(u, k), ref, rtol=1e-4, atol=1e-4)
print(f"wheel OK: mlx_kernels {mlx_kernels.__version__} on torch {torch.__version__}, CPU kernels only")
PY
  )
  echo "bench CLI: $(bare python -m mlx_kernels.bench --list | wc -l) benchmarks listed"
}

build_vendored_copy() {
  (unset MLX_CUDA; with_tools cmake -S "$repo/tests/vendoring" -B "$work/consumer" -G Ninja \
    -DPython_EXECUTABLE="$venv/bin/python" -DCMAKE_BUILD_TYPE=Release) >"$work/consumer.log" 2>&1 ||
    { tail -40 "$work/consumer.log"; return 1; }
  grep "mlx-kernels:" "$work/consumer.log"
  with_tools cmake --build "$work/consumer"
  with_tools cmake --install "$work/consumer" --prefix "$prefix" >/dev/null
  find "$prefix" -name "*.so" -o -name "_build_config.py" | sed "s|$prefix/||"
}

test_vendoring() {
  (cd "$repo" && PYTHONPATH="$prefix" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/vendoring/check_vendoring.py)
}

check_cutlass_dir() {
  # Configure only (MLX_EMU needs the headers; nothing is compiled).
  local cutlass
  cutlass=$(PYTHONPATH="$tools" "$venv/bin/python" -c "import importlib.util, os; print(os.path.join(list(importlib.util.find_spec('cutlass_library').submodule_search_locations)[0], 'source'))")
  (unset MLX_CUDA; with_tools cmake -S "$repo" -B "$work/cutlass-ok" -G Ninja -DMLX_CUDA=OFF -DMLX_EMU=ON \
    -DPython_EXECUTABLE="$venv/bin/python" -DMLX_CUTLASS_DIR="$cutlass") >"$work/cutlass-ok.log" 2>&1 ||
    { tail -20 "$work/cutlass-ok.log"; return 1; }
  grep -F "headers at $cutlass/include (from MLX_CUTLASS_DIR)" "$work/cutlass-ok.log" ||
    { echo "MLX_CUTLASS_DIR was not used:"; grep -i cutlass "$work/cutlass-ok.log"; return 1; }
  if (unset MLX_CUDA; with_tools cmake -S "$repo" -B "$work/cutlass-bad" -G Ninja -DMLX_CUDA=OFF -DMLX_EMU=ON \
      -DPython_EXECUTABLE="$venv/bin/python" -DMLX_CUTLASS_DIR="$work/no-such-cutlass") >"$work/cutlass-bad.log" 2>&1; then
    echo "a missing MLX_CUTLASS_DIR was accepted"; return 1
  fi
  # CMake wraps its error messages: compare with the lines joined.
  tr -s '\n ' '  ' <"$work/cutlass-bad.log" | grep -oF "MLX_CUTLASS_DIR=$work/no-such-cutlass has no include/cutlass/cutlass.h" ||
    { echo "no clear error for a bad MLX_CUTLASS_DIR:"; tail -12 "$work/cutlass-bad.log"; return 1; }
}

cpu_suite() {
  # The CPU suite, the installed wheel under test (python/ is not on the path). Not the
  # fuzz and hardening files: they test our kernels' properties (the pinned torch and the
  # sanitized suite run them), not which torch API exists; CI's 60 minutes are short.
  (cd "$repo" && "$venv/bin/python" -m pytest -q -p no:cacheprovider tests \
    --ignore=tests/test_fuzz.py --ignore=tests/test_hardening.py)
}

step "venv with ${torch_req} (no build tools in it) + build tools apart" make_envs
step "sdist, then the abi3 wheel from it (default set-up: CPU)" build_sdist_and_wheel
step "wheel into the venv with no compiler or CMake, smoke test" install_wheel_without_compiler
step "CMake consumer: add_subdirectory + mlx_kernels::ops as vendored_mlx" build_vendored_copy
step "vendored copy beside the wheel, one process" test_vendoring
step "MLX_CUTLASS_DIR override" check_cutlass_dir
step "CPU test suite on ${torch_req} (the wheel)" cpu_suite
