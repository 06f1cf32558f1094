// spgemm_csr on CUDA: C = A·B for CSR matrices, Gustavson row by row with a
// hash-table scratchpad per output row, filled with atomics (SMASH; the row
// binning and table sizing follow NSparse / spECK / OpSparse).
//
// Two passes over the partial products, symbolic then numeric:
//   1. validate   one kernel per matrix checks the row pointers and column
//                 ranges (flags ORed atomically); the bounds kernel computes
//                 each row's product bound ub_i = Σ_p nnz(B[col(p), :]), the
//                 nnz(C) bounds of spgemm.h, and a histogram of rows by bin.
//                 One small device->host copy brings the flags, bounds and bin
//                 counts back; errors are raised before anything else runs.
//   2. symbolic   each row inserts its products' columns into a table of at
//                 least min(ub_i, n) slots (it can never overflow) and counts
//                 the columns it inserted first: nnz(C[i, :]).
//   3. offsets    prefix sum -> C's row pointer; nnz(C) is checked against the
//                 index dtype before C is allocated at its exact size.
//   4. numeric    (numeric_pass.cuh) rows are binned again by their exact nnz (table >= 2·nnz,
//                 load <= ½, so more rows fit on chip than with ub), products
//                 are accumulated with atomicAdd, then each row is compacted
//                 and sorted by column on chip and written to its place in C.
// Why two passes and not one with the upper bound: a one-pass kernel must
// reserve ub_i output slots per row and compact afterwards; ub / nnz(C) is
// 1.5-10x on typical A·A (2.3x on the SuiteSparse set here), so the extra
// memory alone would break the memory budget (<= ½ of cuSPARSE's), and the
// symbolic pass is cheap (keys only, no values, no sort).
//
// Bins (by the table a row needs, in slots): tables of 32 << b slots for
// b = 0..7 live in shared memory, one group of threads per row with 4 slots per
// thread (8 threads for a 32-slot table, a warp for 128, 1024 threads for
// 4096); small groups share a 128-thread block. Rows needing more than 4096
// slots use a block of kGlobalThreads threads and a table in global memory, in
// batches that bound the table pool; their rows are compacted, sorted with a
// segmented radix sort (segmented_sort.cu) and scattered into C. Rows with no
// products are skipped.
// Inside a group, each product is handled by one thread: groups walk A's row
// kSubgroup entries at a time, and the threads of a subgroup of `sub` threads
// (a power of two near B's mean row length) walk one row of B together.
// Hash: Fibonacci hashing + linear probing (spgemm.h); keys are int32 columns
// (n < 2^31 is checked), -1 marks an empty slot.

#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include "common/registration.h"
#include "spgemm/spgemm_cuda.cuh"

namespace mlx_kernels::spgemm {
namespace {

// stats layout (int64): flags, Σ min(ub_i, n), Σ longest contributing B row, bin counts.
constexpr int kStatFlags = 0, kStatUpper = 1, kStatLower = 2, kStatBins = 3;
constexpr int kNumStats = kStatBins + kNumBins;

using ull = unsigned long long;

__device__ __forceinline__ int bin_of_table(int64_t slots) {
  if (slots == 0) return kEmptyBin;
  for (int b = 0; b < kSharedBins; ++b) {
    if (slots <= (int64_t{1} << (kSmallestTableLog2 + b))) return b;
  }
  return kGlobalBin;
}

// --- 1. validation and bounds ---------------------------------------------------

// Checks a CSR row pointer (crow[0] == 0, non-decreasing, crow[rows] == nnz) and
// its column indices (in [0, cols)); ORs the given flags into stats[kStatFlags].
template <typename index_t>
__global__ void validate_csr_kernel(const index_t* crow, const index_t* col, int64_t rows, int64_t nnz,
                                    int64_t cols, int bad_crow, int bad_col, int64_t* stats) {
  int flags = 0;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i <= rows || i < nnz; i += stride) {
    if (i <= rows) {
      const int64_t p = crow[i];
      const bool ok = p >= 0 && p <= nnz && (i > 0 || p == 0) && (i < rows || p == nnz) &&
                      (i == rows || p <= crow[i + 1]);
      if (!ok) flags |= bad_crow;
    }
    if (i < nnz && (col[i] < 0 || col[i] >= cols)) flags |= bad_col;
  }
  if (flags) atomicOr(reinterpret_cast<ull*>(stats + kStatFlags), static_cast<ull>(flags));
}

// Per row of A: ub_i, the nnz(C) bounds and the symbolic bin histogram. Rows
// and columns that are out of range (flagged by validation) are skipped so
// nothing is read out of bounds before the host raises the error.
template <typename index_t>
__global__ void row_bounds_kernel(const index_t* a_crow, const index_t* a_col, const index_t* b_crow,
                                  int64_t m, int64_t k, int64_t n, int64_t a_nnz, int64_t* upper,
                                  int64_t* stats) {
  MLX_SHARED(int[kNumBins], bin_counts);
  MLX_SHARED(ull[2], sums);
  if (threadIdx.x < kNumBins) bin_counts[threadIdx.x] = 0;
  if (threadIdx.x < 2) sums[threadIdx.x] = 0;
  __syncthreads();
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i < m) {
    int64_t ub = 0, longest = 0;
    const int64_t begin = a_crow[i], end = a_crow[i + 1];
    if (begin >= 0 && begin <= end && end <= a_nnz) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t kk = a_col[p];
        if (kk < 0 || kk >= k) continue;
        const int64_t len = max(int64_t{0}, static_cast<int64_t>(b_crow[kk + 1] - b_crow[kk]));
        ub += len;
        longest = max(longest, len);
      }
    }
    upper[i] = ub;
    const int64_t table = min(ub, n);
    atomicAdd(&sums[0], static_cast<ull>(table));
    atomicAdd(&sums[1], static_cast<ull>(longest));
    atomicAdd(&bin_counts[bin_of_table(table)], 1);
  }
  __syncthreads();
  if (threadIdx.x < kNumBins && bin_counts[threadIdx.x]) {
    atomicAdd(reinterpret_cast<ull*>(stats + kStatBins + threadIdx.x), static_cast<ull>(bin_counts[threadIdx.x]));
  }
  if (threadIdx.x < 2) atomicAdd(reinterpret_cast<ull*>(stats + kStatUpper + threadIdx.x), sums[threadIdx.x]);
}

// Table slots each row needs in the numeric pass: 2·nnz(C[i, :]).
__global__ void numeric_table_kernel(const int64_t* row_nnz, int64_t m, int64_t* table, int64_t* stats) {
  MLX_SHARED(int[kNumBins], bin_counts);
  if (threadIdx.x < kNumBins) bin_counts[threadIdx.x] = 0;
  __syncthreads();
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i < m) {
    table[i] = 2 * row_nnz[i];
    atomicAdd(&bin_counts[bin_of_table(table[i])], 1);
  }
  __syncthreads();
  if (threadIdx.x < kNumBins && bin_counts[threadIdx.x]) {
    atomicAdd(reinterpret_cast<ull*>(stats + kStatBins + threadIdx.x), static_cast<ull>(bin_counts[threadIdx.x]));
  }
}

// Lists the rows of each bin contiguously: rows_by_bin[bin_start[b] + j].
// Positions are reserved per block (one atomic per bin per block).
__global__ void scatter_bins_kernel(const int64_t* table, int64_t m, const int64_t* bin_start,
                                    int64_t* bin_cursor, int32_t* rows_by_bin) {
  MLX_SHARED(int[kNumBins], local_counts);
  MLX_SHARED(int64_t[kNumBins], block_base);
  if (threadIdx.x < kNumBins) local_counts[threadIdx.x] = 0;
  __syncthreads();
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  int bin = 0, local = 0;
  if (i < m) {
    bin = bin_of_table(table[i]);
    local = atomicAdd(&local_counts[bin], 1);
  }
  __syncthreads();
  if (threadIdx.x < kNumBins && local_counts[threadIdx.x]) {
    block_base[threadIdx.x] = static_cast<int64_t>(atomicAdd(
        reinterpret_cast<ull*>(bin_cursor + threadIdx.x), static_cast<ull>(local_counts[threadIdx.x])));
  }
  __syncthreads();
  if (i < m) rows_by_bin[bin_start[bin] + block_base[bin] + local] = static_cast<int32_t>(i);
}

// --- host side ----------------------------------------------------------------

Bins bin_rows(const at::Tensor& table, const int64_t* bin_counts) {
  const int64_t m = table.numel();
  Bins bins;
  bins.start.assign(kNumBins + 1, 0);
  for (int b = 0; b < kNumBins; ++b) bins.start[b + 1] = bins.start[b] + bin_counts[b];
  bins.rows = at::empty({m}, table.options().dtype(at::kInt));
  at::Tensor start = at::tensor(std::vector<int64_t>(bins.start.begin(), bins.start.end() - 1),
                                at::TensorOptions().dtype(at::kLong)).to(table.device(), /*non_blocking=*/true);
  at::Tensor cursor = at::zeros({kNumBins}, table.options());
  if (m > 0) {
    MLX_LAUNCH_KERNEL(scatter_bins_kernel, blocks_for(m, kRowThreads), kRowThreads, 0, at::cuda::getCurrentCUDAStream(),
        table.data_ptr<int64_t>(), m, start.data_ptr<int64_t>(), cursor.data_ptr<int64_t>(),
        bins.rows.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return bins;
}

// log2 of the subgroup size: a power of two near B's mean row length, so the
// threads of a group spread over a row of B rather than idle on short ones.
int subgroup_log2(const SpgemmShape& s, int group_threads) {
  const int64_t mean = s.k > 0 ? ceil_div_dev<int64_t>(s.b_nnz, s.k) : 1;
  int log2 = 0;
  while ((int64_t{1} << log2) < mean && (2 << log2) <= group_threads) ++log2;
  return log2;
}

template <typename index_t, typename value_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> spgemm_typed(const Operands<index_t, value_t>& op,
                                                             const SpgemmShape& s, const at::Tensor& a_crow,
                                                             const at::Tensor& a_val) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto long_options = a_crow.options().dtype(at::kLong);
  const auto cpu_long = at::TensorOptions().dtype(at::kLong);
  const int threads = kRowThreads;
  const int max_blocks = 4 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount * 8;

  // 1. validation, bounds, symbolic bins: one device -> host copy.
  at::Tensor stats = at::zeros({kNumStats}, long_options);
  at::Tensor upper = at::empty({s.m}, long_options);
  MLX_LAUNCH_KERNEL(validate_csr_kernel<index_t>, std::min<int64_t>(blocks_for(std::max(s.k + 1, s.b_nnz), threads), max_blocks), threads, 0,
                        stream, op.b_crow, op.b_col, s.k, s.b_nnz, s.n, kBadBCrow, kBadBCol,
                                  stats.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  MLX_LAUNCH_KERNEL(validate_csr_kernel<index_t>, std::min<int64_t>(blocks_for(std::max(s.m + 1, s.a_nnz), threads), max_blocks), threads, 0,
                        stream, op.a_crow, op.a_col, s.m, s.a_nnz, s.k, kBadACrow, kBadACol,
                                  stats.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (s.m > 0) {
    MLX_LAUNCH_KERNEL(row_bounds_kernel<index_t>, blocks_for(s.m, threads), threads, 0, stream,
        op.a_crow, op.a_col, op.b_crow, s.m, s.k, s.n, s.a_nnz, upper.data_ptr<int64_t>(),
        stats.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor host_stats = stats.cpu();
  const int64_t* st = host_stats.data_ptr<int64_t>();
  raise_if_invalid(static_cast<int>(st[kStatFlags]), s);
  check_output_nnz("at least", st[kStatLower], a_crow.scalar_type());

  // 2. symbolic pass: keys only, so its kernels are instantiated once per index
  // dtype (value_t = float, never read).
  at::Tensor row_nnz = at::zeros({s.m}, long_options);
  const int sub_log2 = subgroup_log2(s, kGlobalThreads);
  if (st[kStatUpper] > 0) {
    const Operands<index_t, float> keys_only{op.a_crow, op.a_col, nullptr, op.b_crow, op.b_col, nullptr};
    at::Tensor table = upper.clamp_max(s.n);
    const Bins bins = bin_rows(table, st + kStatBins);
    launch_shared_bins<false>(keys_only, bins, sub_log2, row_nnz.data_ptr<int64_t>(), nullptr,
                              static_cast<index_t*>(nullptr), static_cast<float*>(nullptr));
    if (bins.count(kGlobalBin) > 0) {
      // Global tables get twice the bound (load <= ½): memory is not the limit there.
      const at::Tensor rows = bins.rows.narrow(0, bins.start[kGlobalBin], bins.count(kGlobalBin));
      const at::Tensor slots = (table.index_select(0, rows) * 2).cpu();
      for_each_global_batch(
          std::vector<int64_t>(slots.data_ptr<int64_t>(), slots.data_ptr<int64_t>() + slots.numel()),
          [&](int64_t first, int64_t last, const std::vector<int64_t>& offsets, const std::vector<int32_t>& bits,
              int64_t pool) {
            at::Tensor pool_keys = at::empty({pool}, a_crow.options().dtype(at::kInt));
            const at::Tensor d_offsets = at::tensor(offsets, cpu_long).to(a_crow.device());
            const at::Tensor d_bits = at::tensor(bits, at::TensorOptions().dtype(at::kInt)).to(a_crow.device());
            MLX_LAUNCH_KERNEL(global_table_kernel<false, index_t, float>, last - first, kGlobalThreads, 0, stream,
                keys_only, rows.data_ptr<int32_t>() + first, d_offsets.data_ptr<int64_t>(), d_bits.data_ptr<int32_t>(),
                sub_log2, pool_keys.data_ptr<int>(), nullptr, row_nnz.data_ptr<int64_t>(), nullptr, nullptr,
                nullptr);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
    }
  }

  // 3. row offsets, exact nnz(C), numeric bins: one device -> host copy.
  at::Tensor c_offsets = at::zeros({s.m + 1}, long_options);
  if (s.m > 0) {
    at::Tensor tail = c_offsets.narrow(0, 1, s.m);
    at::cumsum_out(tail, row_nnz, 0);
  }
  at::Tensor numeric_stats = at::zeros({kNumStats}, long_options);
  at::Tensor table = at::empty({s.m}, long_options);
  if (s.m > 0) {
    MLX_LAUNCH_KERNEL(numeric_table_kernel, blocks_for(s.m, threads), threads, 0, stream,
        row_nnz.data_ptr<int64_t>(), s.m, table.data_ptr<int64_t>(), numeric_stats.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  numeric_stats[kStatUpper].copy_(c_offsets[s.m]);
  const at::Tensor host_numeric = numeric_stats.cpu();
  const int64_t nnz = host_numeric.data_ptr<int64_t>()[kStatUpper];
  check_output_nnz("", nnz, a_crow.scalar_type());

  at::Tensor c_col = at::empty({nnz}, a_crow.options());
  at::Tensor c_val = at::empty({nnz}, a_val.options());
  if (nnz > 0) {
    // 4. numeric pass (numeric_pass.cuh).
    const Bins bins = bin_rows(table, host_numeric.data_ptr<int64_t>() + kStatBins);
    numeric_pass(op, bins, sub_log2, table, c_offsets, c_col, c_val);
  }
  return {c_offsets.to(a_crow.scalar_type()), c_col, c_val};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spgemm_csr_cuda(
    const at::Tensor& a_crow, const at::Tensor& a_col, const at::Tensor& a_val,
    const at::Tensor& b_crow, const at::Tensor& b_col, const at::Tensor& b_val, int64_t n) {
  const SpgemmShape s = check_spgemm_args(a_crow, a_col, a_val, b_crow, b_col, b_val, n);
  // Hash keys are int32 columns and row lists int32 row ids.
  MLX_CHECK(s.n < std::numeric_limits<int32_t>::max(), kOp, "the CUDA kernel needs n < 2^31 - 1, got n = ", s.n);
  MLX_CHECK(s.m < std::numeric_limits<int32_t>::max(), kOp, "the CUDA kernel needs m < 2^31 - 1, got m = ", s.m);
  // The values of C are summed with floating-point atomics in a run-dependent
  // order: torch.use_deterministic_algorithms(True) makes this an error (and
  // warn_only=True a warning), as for torch's own atomic-add kernels.
  at::globalContext().alertNotDeterministic(
      std::string(kOp) + " on CUDA (C's values are summed with floating-point atomics in a run-dependent order)");
  const c10::cuda::CUDAGuard guard(a_crow.device());
  const at::Tensor ac = a_crow.contiguous(), aj = a_col.contiguous(), av = a_val.contiguous();
  const at::Tensor bc = b_crow.contiguous(), bj = b_col.contiguous(), bv = b_val.contiguous();
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_INDEX_TYPES(ac.scalar_type(), "spgemm_csr_cuda", [&] {
    AT_DISPATCH_FLOATING_TYPES(av.scalar_type(), "spgemm_csr_cuda", [&] {
      const Operands<index_t, scalar_t> op{ac.data_ptr<index_t>(), aj.data_ptr<index_t>(), av.data_ptr<scalar_t>(),
                                           bc.data_ptr<index_t>(), bj.data_ptr<index_t>(), bv.data_ptr<scalar_t>()};
      out = spgemm_typed<index_t, scalar_t>(op, s, ac, av);
    });
  });
  return out;
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) { m.impl("spgemm_csr", &spgemm_csr_cuda); }

}  // namespace mlx_kernels::spgemm
