#!/usr/bin/env bash
# One batched GPU session on a device machine (see the README's "Building for a GPU"):
# build against the machine's own torch, run the whole test suite (CUDA tests
# included), compute-sanitizer memcheck/racecheck on a small CUDA test set, and
# the benchmarks; everything lands in $OUT (logs + one results tarball).
#
#   scripts/gpu_session.sh [pytest -k expression for the sanitizer runs] [bench ops...]
#
# Wheels the machine lacks (nvidia-cutlass, bitsandbytes, ...) are taken from .whl/ if present.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu_out}"
mkdir -p "$out"
sanitize_k="${1:-cuda}"
shift || true
bench_ops=("$@")

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
start=$(date +%s)
if ! python3 -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1; then
  tail -60 "$out/build.log"
  exit 1
fi
echo "build: $(( $(date +%s) - start )) s" | tee -a "$out/device.txt"

python3 -m pytest -q -p no:cacheprovider -rs tests 2>&1 | tee "$out/pytest.log" | tail -30
python3 -m pytest -q -p no:cacheprovider --co tests -k cuda 2>/dev/null | tail -1 | sed 's/^/CUDA tests collected: /' | tee -a "$out/device.txt"

for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --print-limit 20 python3 -m pytest -q -x -p no:cacheprovider tests -k "$sanitize_k" \
    >"$out/sanitizer-$tool.log" 2>&1
  grep -E "ERROR SUMMARY|passed|failed" "$out/sanitizer-$tool.log" | tail -3 | sed "s/^/$tool: /" | tee -a "$out/device.txt"
done

results="$out/results"
python3 -m mlx_kernels.bench --plot --out "$results" ${bench_ops:+--ops "${bench_ops[@]}"} 2>&1 | tee "$out/bench.log" | grep -v "benchmarks:"
tar -czf "$out/results.tgz" -C "$out" results && rm -rf "$results"
