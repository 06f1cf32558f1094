#!/usr/bin/env bash
# One batched, time-boxed GPU session on a device machine (README, "Building for
# a GPU"), sized for one call of at most 10 minutes:
#   1. build and install against the machine's own torch (sm_90a only),
#   2. every CUDA test of every family (`pytest -m cuda`),
#   3. compute-sanitizer memcheck and racecheck, side by side, on the small CUDA
#      tests of the chosen families,
#   4. the chosen families' benchmarks (--plot).
# Each step gets a share of the budget and stops cleanly when it runs out (tests
# through MLX_TEST_DEADLINE, the benchmark CLI through SIGINT), so a cut-short
# step still reports what it finished. Everything lands in $OUT (7 files):
# summary.txt, build.log, pytest.log, memcheck.log, racecheck.log, bench.log,
# results.tgz.
#
#   MLX_COMMIT=<sha> scripts/gpu_session.sh [FAMILY ...]
#     FAMILY: int8 bipolar bsr spgemm fftconv attention (default: all six)
#     GPU_SESSION_SECONDS: the whole budget (default 540)
# What the machine lacks comes in .carry/ (scripts/prepare_gpu_carry.sh; name
# .carry in the call's carry): wheels to install, and the SuiteSparse matrices.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
budget=${GPU_SESSION_SECONDS:-540}
out="${OUT:-$PWD/gpu_out}"
mkdir -p "$out"
summary="$out/summary.txt"
families=("$@")
[ ${#families[@]} -gt 0 ] || families=(int8 bipolar bsr spgemm fftconv attention)

# Per family (tests in tests/test_<family>.py): the small CUDA tests for the sanitizers, the benchmarked ops.
declare -A small_tests=(
  [int8]="test_int8_mm_matches_oracle or test_int8_gemm_matches_oracle or test_vectorwise_quant_matches_oracle"
  [bipolar]="test_gemm_all_bit_widths_exact or test_pack_matches_oracle or test_bipolar_linear_matches_oracle"
  [bsr]="test_bsr_spmm_matches_oracle or test_bsr_spmm_dtypes or test_ops_survive_corrupted_indices or test_bsr_spmm_empty_rows_and_all_empty"
  [spgemm]="test_random_matches_oracle or test_empty_and_tiny or test_long_rows_use_every_bin"
  [fftconv]="(test_fft_conv_matches_oracle and not 65536) or test_frequency_sparse_matches_truncated_oracle"
  [attention]="test_attention_with_lse_matches_oracle or test_shared_prefix_matches_oracle or test_merge")
declare -A bench_ops=([int8]="int8_gemm int8_mm int8_vectorwise_quant"
                      [bipolar]="bipolar_mma_peak bipolar_gemm bipolar_linear" [bsr]=bsr_spmm
                      [spgemm]=spgemm_csr [fftconv]=fft_conv [attention]=shared_prefix_attention)

left() { echo $(( budget - ($(date +%s) - start) )); }
at_least() { echo $(( $1 > $2 ? $1 : $2 )); }  # timeout 0 would mean no limit
note() { echo "$*" | tee -a "$summary"; }
outcome() { grep -E "(passed|failed|skipped|error|no tests ran).* in [0-9.]+s" "$1" | tail -1; }  # pytest's last line
# A deadline `share` percent of the remaining budget from now (seconds since the epoch).
deadline_in() { echo $(( $(date +%s) + $(left) * $1 / 100 )); }

if compgen -G ".carry/whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .carry/whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if compgen -G ".carry/matrices/*.mtx" >/dev/null; then export MLX_MATRIX_DIR="$PWD/.carry/matrices"; fi
# MLX_CUDA=ON: the CUDA kernels or a failed build, never a silent CPU-only one.
# Built against whatever torch the machine has (2.11 so far): nothing here pins one.
export MLX_CUDA="${MLX_CUDA:-ON}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" PYTHONUNBUFFERED=1

note "commit ${MLX_COMMIT:-unknown}; families: ${families[*]}; budget ${budget} s"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$summary"
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee -a "$summary"

# 1. Build. A regular (not editable) install: an editable one re-checks the build
# on every import, and 8 test workers would run ninja in one build folder at once.
t=$(date +%s)
if ! timeout "$(at_least $(( $(left) - 120 )) 60)" python3 -m pip install --no-build-isolation --no-deps . >"$out/build.log" 2>&1 ||
   ! python3 -c "import mlx_kernels, sys; sys.exit(0 if mlx_kernels.WITH_CUDA else 1)" >>"$out/build.log" 2>&1; then
  note "build FAILED after $(( $(date +%s) - t )) s"
  tail -60 "$out/build.log"
  exit 1
fi
note "build: $(( $(date +%s) - t )) s, archs $(python3 -c 'from mlx_kernels import _build_config as b; print(b.CUDA_ARCHS)')"

# 2. Every CUDA test (all families: none had run on a GPU), in parallel workers when xdist is there.
workers=()
python3 -c "import xdist" 2>/dev/null && workers=(-n 8)
t=$(date +%s)
tests_until=$(deadline_in 40)
MLX_TEST_DEADLINE=$tests_until timeout $(( tests_until - $(date +%s) + 90 )) \
  python3 -m pytest -q -p no:cacheprovider -m cuda "${workers[@]}" -rfEs --durations=15 tests >"$out/pytest.log" 2>&1
note "CUDA tests ($(( $(date +%s) - t )) s): $(outcome "$out/pytest.log")"
grep -E "^(FAILED|ERROR) " "$out/pytest.log" | head -40 | tee -a "$summary"

# 3. compute-sanitizer on the chosen families' small tests, memcheck and racecheck side by side.
files=() ; small=""
for f in "${families[@]}"; do
  files+=("tests/test_$f.py")
  small="${small:+$small or }(${small_tests[$f]})"
done
sanitize_until=$(deadline_in 45)
for tool in memcheck racecheck; do
  MLX_TEST_DEADLINE=$sanitize_until timeout $(( sanitize_until - $(date +%s) + 60 )) \
    compute-sanitizer --tool "$tool" --print-limit 20 \
    python3 -m pytest -q -p no:cacheprovider -m cuda -k "$small" "${files[@]}" >"$out/$tool.log" 2>&1 &
done
wait
for tool in memcheck racecheck; do
  note "$tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$tool.log" | tail -1)" \
       "| $(outcome "$out/$tool.log")"
done

# 4. Benchmarks of the chosen families, stopped by SIGINT (results so far kept) near the end.
ops=()
for f in "${families[@]}"; do read -ra more <<<"${bench_ops[$f]}"; ops+=("${more[@]}"); done
t=$(date +%s)
timeout -s INT "$(at_least $(( $(left) - 20 )) 10)" python3 -m mlx_kernels.bench --device cuda --plot \
  --out "$out/results" --ops "${ops[@]}" >"$out/bench.log" 2>&1
rc=$?
note "bench ($(( $(date +%s) - t )) s, exit $rc): $(ls "$out/results" 2>/dev/null | grep -c json) of ${#ops[@]} ops written"
[ -d "$out/results" ] && tar -czf "$out/results.tgz" -C "$out" results && rm -rf "$out/results"
note "total: $(( $(date +%s) - start )) s"
