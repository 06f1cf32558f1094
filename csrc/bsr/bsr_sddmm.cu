// CUDA kernel of bsr_sddmm: out[j] = (a · bᵀ) restricted to stored block j of an
// [m, k] BCSR structure (br × bc blocks), a [m, n] and b [k, n] dense:
//   out[j][r][c] = Σ_t a[row(rb·br + r), t] · b[col[j]·bc + c, t],
// row(s) = row_perm[s] (or s), 0 in the padding (rows at or past m, columns at
// or past k). It is bsr_spmm's d/dblocks: bsr_sddmm(crow, col, grad_out, b, ...).
//
// SIMT: a CTA computes one tile of at most 32 × 32 entries of one block (grid.x
// the block, grid.y the tile), its threads taking the tile's entries in turn
// (for 16 × 16 blocks, two each). n is walked 32 at a time: the tile's a rows
// and b rows are staged in shared memory in the accumulation type (fp32 for
// 16-bit inputs, fp64 for fp32 and fp64, see acc_type), zero past n, and each
// entry adds its 32 products by FMA. Every product is made, so Inf and NaN
// reach the entries they touch as in a dense matmul; padding entries are
// stored as 0 without a product. Indices are clamped when read (block row by a
// binary search of crow, b rows into [0, k), a rows into [0, m)), so the
// unchecked variant gives a wrong result for a bad index, never an access out
// of bounds. bsr_sddmm checks the index values first (one device pass and a
// sync, as bsr_spmm does).

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "bsr/bsr.h"
#include "bsr/index_checks.cuh"
#include "common/cuda_utils.cuh"
#include "common/registration.h"

namespace mlx_kernels::bsr {
namespace {

constexpr int kSddmmThreads = 128;
constexpr int kTileRows = 32, kTileCols = 32;  // a block is taken in tiles of at most 32 × 32 entries
constexpr int kTileN = 32;                     // n per shared-memory stage
constexpr int kEntriesPerThread = kTileRows * kTileCols / kSddmmThreads;

struct SddmmProblem {
  const int* crow;          // [block_rows + 1]
  const int* col;           // [nblocks]
  const int64_t* row_perm;  // [m] or nullptr
  int64_t m, k, n;
  int block_rows, nblocks, br, bc;
  int col_tiles;            // ceil(bc / kTileCols)
};

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kSddmmThreads) bsr_sddmm_kernel(SddmmProblem p, const T* __restrict__ a,
                                                                  const T* __restrict__ b, T* __restrict__ out) {
  MLX_SHARED(acc_t[kTileRows][kTileN + 1], a_tile);
  MLX_SHARED(acc_t[kTileCols][kTileN + 1], b_tile);

  const int j = blockIdx.x;
  const int r0 = static_cast<int>(blockIdx.y) / p.col_tiles * kTileRows;
  const int c0 = static_cast<int>(blockIdx.y) % p.col_tiles * kTileCols;
  const int rows = min(kTileRows, p.br - r0), cols = min(kTileCols, p.bc - c0);
  const int tid = threadIdx.x;
  // The block row of block j: the last rb with crow[rb] <= j (clamped into range).
  int lo = 0, hi = p.block_rows;
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    if (p.crow[mid] <= j) lo = mid; else hi = mid - 1;
  }
  const int64_t rb = max(min(lo, p.block_rows - 1), 0);
  const int64_t first_row = rb * p.br + r0;                             // stored row of the tile's row 0
  const int64_t first_col = static_cast<int64_t>(p.col[j]) * p.bc + c0;  // b row of the tile's column 0

  acc_t acc[kEntriesPerThread] = {};
  for (int64_t n0 = 0; n0 < p.n; n0 += kTileN) {
    __syncthreads();  // the previous stage has been read
    for (int i = tid; i < kTileRows * kTileN; i += kSddmmThreads) {
      const int r = i / kTileN, t = i % kTileN;
      const int64_t s = first_row + r;
      acc_t v = acc_t(0);
      if (r < rows && s < p.m && n0 + t < p.n) {
        const int64_t row = p.row_perm != nullptr ? min(max(p.row_perm[s], int64_t{0}), p.m - 1) : s;
        v = static_cast<acc_t>(a[row * p.n + n0 + t]);
      }
      a_tile[r][t] = v;
    }
    for (int i = tid; i < kTileCols * kTileN; i += kSddmmThreads) {
      const int c = i / kTileN, t = i % kTileN;
      const int64_t kc = first_col + c;
      b_tile[c][t] = c < cols && kc >= 0 && kc < p.k && n0 + t < p.n ? static_cast<acc_t>(b[kc * p.n + n0 + t])
                                                                     : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kEntriesPerThread; ++e) {
      const int entry = tid + e * kSddmmThreads;  // row-major over the tile's rows × cols
      if (entry < rows * cols) {
        const int r = entry / cols, c = entry % cols;
#pragma unroll 8
        for (int t = 0; t < kTileN; ++t) acc[e] = fma(a_tile[r][t], b_tile[c][t], acc[e]);
      }
    }
  }
#pragma unroll
  for (int e = 0; e < kEntriesPerThread; ++e) {
    const int entry = tid + e * kSddmmThreads;
    if (entry < rows * cols) {
      const int r = entry / cols, c = entry % cols;
      const bool inside = first_row + r < p.m && first_col + c < p.k;
      out[(static_cast<int64_t>(j) * p.br + r0 + r) * p.bc + c0 + c] = inside ? from_acc<T>(acc[e]) : T(0.0f);
    }
  }
}

at::Tensor run_bsr_sddmm(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& a_in,
                         const at::Tensor& b_in, int64_t br, int64_t bc,
                         const c10::optional<at::Tensor>& row_perm_in) {
  constexpr const char* op = kSddmmOp;
  const int64_t nblocks = col_in.numel(), block_rows = crow_in.numel() - 1;
  const int64_t m = a_in.size(0), k = b_in.size(0), n = a_in.size(1);
  at::Tensor out = at::empty({nblocks, br, bc}, a_in.options());
  if (out.numel() == 0) return out;
  check_fits_int32(op, "nblocks", nblocks);
  check_fits_int32(op, "ceil(m / br) (block rows)", block_rows);
  check_fits_int32(op, "ceil(k / bc) (block columns)", ceil_div_dev(k, bc));
  check_fits_int32(op, "br + 32 (the block height, tiled)", br + kTileRows);
  check_fits_int32(op, "bc + 32 (the block width, tiled)", bc + kTileCols);
  const int64_t tiles = ceil_div_dev<int64_t>(br, kTileRows) * ceil_div_dev<int64_t>(bc, kTileCols);
  MLX_CHECK(tiles <= 65535, op, "blocks of ", br, " × ", bc, " are too large (at most 65535 tiles of 32 × 32)");
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const at::Tensor crow = crow_in.to(at::kInt).contiguous(), col = col_in.to(at::kInt).contiguous();
  c10::optional<at::Tensor> row_perm;
  if (row_perm_in.has_value()) row_perm = row_perm_in->contiguous();
  const SddmmProblem p{crow.data_ptr<int>(),
                       col.data_ptr<int>(),
                       row_perm.has_value() ? row_perm->data_ptr<int64_t>() : nullptr,
                       m, k, n,
                       static_cast<int>(block_rows), static_cast<int>(nblocks), static_cast<int>(br),
                       static_cast<int>(bc), static_cast<int>(ceil_div_dev<int64_t>(bc, kTileCols))};
  const dim3 grid(static_cast<unsigned>(nblocks), static_cast<unsigned>(tiles));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "bsr_sddmm_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    MLX_LAUNCH_KERNEL(bsr_sddmm_kernel<scalar_t, acc_t>, grid, kSddmmThreads, 0, stream, p,
                      reinterpret_cast<const scalar_t*>(a.data_ptr()), reinterpret_cast<const scalar_t*>(b.data_ptr()),
                      reinterpret_cast<scalar_t*>(out.data_ptr()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor bsr_sddmm_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& a, const at::Tensor& b,
                          int64_t br, int64_t bc, const c10::optional<at::Tensor>& row_perm) {
  check_bsr_sddmm_shapes(crow, col, a, b, br, bc, row_perm);
  const c10::cuda::CUDAGuard guard(a.device());
  check_bsr_values_cuda(kSddmmOp, crow, col, b.size(0), bc, row_perm);
  return run_bsr_sddmm(crow, col, a, b, br, bc, row_perm);
}

at::Tensor bsr_sddmm_unchecked_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& a,
                                    const at::Tensor& b, int64_t br, int64_t bc,
                                    const c10::optional<at::Tensor>& row_perm) {
  check_bsr_sddmm_shapes(crow, col, a, b, br, bc, row_perm);
  const c10::cuda::CUDAGuard guard(a.device());
  return run_bsr_sddmm(crow, col, a, b, br, bc, row_perm);
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) {
  m.impl("bsr_sddmm", &bsr_sddmm_cuda);
  m.impl("bsr_sddmm_unchecked", &bsr_sddmm_unchecked_cuda);
}

}  // namespace mlx_kernels::bsr
