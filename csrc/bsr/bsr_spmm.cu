// CUDA kernels of bsr_spmm: C [m, n] = A · B, A in BCSR (br × bc blocks), B dense.
//
// Work split. Block row rb (blocks crow[rb] .. crow[rb+1]-1) is cut into
// chunks of at most kChunk blocks; a CTA computes one chunk for one kCtaN-wide
// column tile of C. An empty block row is one (empty) chunk, so its rows of C
// are written as zeros. Rows with more than kChunk blocks therefore spread over
// several CTAs instead of stalling the grid behind one long row: their partial
// sums go with atomicAdd into a workspace in the accumulation type (one slot
// per split block row, slots numbered on the device) and a second kernel
// converts those rows to C.
// Rows that fit one chunk are stored directly. The chunk → block row map is a
// prefix sum of chunks per block row computed on the device; each CTA finds its
// block row by binary search, so no count has to travel back to the host: the
// grid is sized by an upper bound and surplus CTAs exit (only a workspace bound
// over 64 MiB is replaced by the exact split-row count, at the cost of a sync).
//
// Tensor-core path (fp16/bf16, br = 16, bc = 16 or 8): 4 warps, each owning 16
// columns of the CTA's 64. A stage stages 4 k-steps of 16: the A rows of the
// next 64/bc blocks (16 × 16 per k-step; two 16 × 8 blocks side by side when
// bc = 8, which is exactly a k = 16 MMA over both blocks' B rows) and the
// matching B rows (gathered through col[], zero past row k and column n) in
// shared memory, B transposed so every MMA fragment is one 32-bit load. Each
// k-step is one mma.sync.m16n8k16 per 8 columns, accumulating in fp32.
//
// SIMT path (fp32, fp64, and other block shapes): FMA in fp64 for fp32/fp64
// inputs (fp32 for 16-bit ones, see acc_type), one thread per column and a
// strided set of the block row's rows, the block and its B tile staged in
// shared memory. fp32 is never rounded to TF32 (that would not meet fp32
// accuracy); H100's fp64 FMA rate is half its fp32 rate.
//
// Epilogue: stored row r of block row rb is A's row row_perm[rb·br + r] (when
// given), so the un-permutation is the store's address; rows ≥ m are dropped.
// Index values are not validated on the device (that would need a sync); the
// kernels clamp every index they dereference, so a bad index gives a wrong
// result, never an out-of-bounds access.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "bsr/bsr.h"
#include "common/cuda_utils.cuh"
#include "common/mma.cuh"
#include "common/registration.h"

namespace mlx_kernels::bsr {
namespace {

constexpr int kChunk = 32;   // blocks per CTA at most
constexpr int kThreads = 128;
constexpr int64_t kWorkspaceSyncBytes = int64_t{64} << 20;

// --- work split and epilogue (shared by both kernels) -------------------------------

template <typename acc_t>
struct Problem {
  const int* crow;          // [block_rows + 1]
  const int* col;           // [nblocks]
  const int* chunk_end;     // [block_rows]: inclusive prefix sum of chunks per block row
  const int* split_slot;    // [block_rows]: workspace slot of a split block row
  const int64_t* row_perm;  // [m] or nullptr
  acc_t* workspace;         // [split rows · br, n]
  int64_t m, k, n;
  int block_rows, nblocks, br, bc;
};

struct Chunk {
  int block_row, first, last;  // blocks [first, last) of block_row
  bool split;                  // the block row has several chunks
};

// The chunk of work item `item`, or block_row = -1 past the last one.
template <typename acc_t>
__device__ Chunk find_chunk(const Problem<acc_t>& p, int item) {
  int lo = 0, hi = p.block_rows;  // first block row whose chunk_end > item
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (p.chunk_end[mid] > item) hi = mid; else lo = mid + 1;
  }
  if (lo == p.block_rows) return {-1, 0, 0, false};
  const int chunk = item - (lo > 0 ? p.chunk_end[lo - 1] : 0);
  const int row_first = min(max(p.crow[lo], 0), p.nblocks);
  const int row_last = min(max(p.crow[lo + 1], row_first), p.nblocks);
  const int first = min(row_first + chunk * kChunk, row_last);
  return {lo, first, min(first + kChunk, row_last), row_last - row_first > kChunk};
}

template <typename T>
__device__ T from_acc(float v) {
  if constexpr (std::is_same_v<T, at::Half>) return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, at::BFloat16>) return __float2bfloat16_rn(v);
  else return static_cast<T>(v);
}
template <typename T>
__device__ T from_acc(double v) { return static_cast<T>(v); }

// C[row_perm[rb·br + r], column] = v, or its share into the workspace when the
// block row is split over several CTAs.
template <typename out_t, typename acc_t>
__device__ void store_result(const Problem<acc_t>& p, out_t* out, const Chunk& chunk, int r, int64_t column,
                             acc_t v) {
  const int64_t stored_row = static_cast<int64_t>(chunk.block_row) * p.br + r;
  if (stored_row >= p.m || column >= p.n) return;
  if (chunk.split) {
    atomicAdd(p.workspace + (static_cast<int64_t>(p.split_slot[chunk.block_row]) * p.br + r) * p.n + column, v);
    return;
  }
  const int64_t row = p.row_perm != nullptr ? p.row_perm[stored_row] : stored_row;
  if (row >= 0 && row < p.m) out[row * p.n + column] = from_acc<out_t>(v);
}

// Rows of split block rows: workspace → C (through row_perm). One CTA per block row.
template <typename out_t, typename acc_t>
__global__ void store_split_rows_kernel(Problem<acc_t> p, out_t* out) {
  const int rb = blockIdx.x;
  const int blocks_here = p.crow[rb + 1] - p.crow[rb];
  if (blocks_here <= kChunk) return;
  const acc_t* rows = p.workspace + static_cast<int64_t>(p.split_slot[rb]) * p.br * p.n;
  for (int64_t i = threadIdx.x; i < static_cast<int64_t>(p.br) * p.n; i += blockDim.x) {
    const int r = static_cast<int>(i / p.n);
    const int64_t stored_row = static_cast<int64_t>(rb) * p.br + r;
    if (stored_row >= p.m) break;
    const int64_t row = p.row_perm != nullptr ? p.row_perm[stored_row] : stored_row;
    if (row >= 0 && row < p.m) out[row * p.n + i % p.n] = from_acc<out_t>(rows[i]);
  }
}

// --- tensor-core kernel (fp16/bf16, 16 × 16 or 16 × 8 blocks) ----------------------

constexpr int kMmaRows = 16;    // br
constexpr int kMmaK = 16;       // k per mma.sync
constexpr int kStageSteps = 4;  // k-steps per shared-memory stage
constexpr int kCtaN = 64;       // columns of C per CTA
constexpr int kWarpN = 16;      // columns per warp: two n = 8 MMAs
constexpr int kPad = 8;         // halves of row padding: conflict-free fragment loads

// 8 consecutive values of B's row `row` from column `column` (zeros outside B);
// v must be 16-byte aligned.
template <typename T>
__device__ void load_b8(const T* b, int64_t row, int64_t column, int64_t k, int64_t n, bool vector_ok,
                        T (&v)[8]) {
  if (row >= 0 && row < k && vector_ok && column + 8 <= n) {
    *reinterpret_cast<uint4*>(v) = *reinterpret_cast<const uint4*>(b + row * n + column);
    return;
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    v[e] = (row >= 0 && row < k && column + e < n) ? b[row * n + column + e] : T(0.0f);
  }
}

template <typename T, int BC>
__global__ void __launch_bounds__(kThreads) bsr_spmm_mma_kernel(Problem<float> p, const T* __restrict__ blocks,
                                                                const T* __restrict__ b, T* out, bool b_vector_ok) {
  static_assert(BC == 8 || BC == 16, "blocks are 16 × 16 or 16 × 8");
  constexpr int kBlocksPerStep = kMmaK / BC;
  constexpr int kBlocksPerStage = kStageSteps * kBlocksPerStep;
  static_assert(kStageSteps * kMmaRows * 2 == kThreads, "one 8-value piece of A per thread and stage");
  __shared__ __align__(16) T a_tile[kStageSteps][kMmaRows][kMmaK + kPad];
  __shared__ __align__(16) T b_tile[kStageSteps][kCtaN][kMmaK + kPad];  // transposed: [column][k]

  const Chunk chunk = find_chunk(p, blockIdx.x);
  if (chunk.block_row < 0) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kCtaN;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = lane / 4, quad = lane % 4;  // MMA fragment coordinates

  float acc[kWarpN / 8][4] = {};
  for (int stage_first = chunk.first; stage_first < chunk.last; stage_first += kBlocksPerStage) {
    __syncthreads();  // the previous stage is consumed
    {
      // A: one 8-value (16-byte) piece of one block row per thread.
      const int step = tid / 32, r = (tid / 2) % kMmaRows, piece = tid % 2;
      const int k_in_stage = step * kMmaK + piece * 8;
      const int j = stage_first + k_in_stage / BC;
      uint4 v = make_uint4(0, 0, 0, 0);
      if (j < chunk.last) {
        v = *reinterpret_cast<const uint4*>(blocks + (static_cast<int64_t>(j) * kMmaRows + r) * BC + k_in_stage % BC);
      }
      *reinterpret_cast<uint4*>(&a_tile[step][r][piece * 8]) = v;
    }
    // B: the 64 k-rows of the stage × 64 columns, 8 columns per piece.
    for (int piece = tid; piece < kStageSteps * kMmaK * (kCtaN / 8); piece += kThreads) {
      const int k_in_stage = piece / (kCtaN / 8), column8 = (piece % (kCtaN / 8)) * 8;
      const int j = stage_first + k_in_stage / BC;
      const int64_t b_row = j < chunk.last ? static_cast<int64_t>(p.col[j]) * BC + k_in_stage % BC : -1;
      alignas(16) T v[8];
      load_b8(b, b_row, n0 + column8, p.k, p.n, b_vector_ok, v);
      const int step = k_in_stage / kMmaK, kk = k_in_stage % kMmaK;
#pragma unroll
      for (int e = 0; e < 8; ++e) b_tile[step][column8 + e][kk] = v[e];
    }
    __syncthreads();

#pragma unroll
    for (int step = 0; step < kStageSteps; ++step) {
      if (stage_first + step * kBlocksPerStep >= chunk.last) break;  // uniform across the CTA
      uint32_t a[4];
      a[0] = *reinterpret_cast<const uint32_t*>(&a_tile[step][group][quad * 2]);
      a[1] = *reinterpret_cast<const uint32_t*>(&a_tile[step][group + 8][quad * 2]);
      a[2] = *reinterpret_cast<const uint32_t*>(&a_tile[step][group][quad * 2 + 8]);
      a[3] = *reinterpret_cast<const uint32_t*>(&a_tile[step][group + 8][quad * 2 + 8]);
#pragma unroll
      for (int t = 0; t < kWarpN / 8; ++t) {
        const int column = warp * kWarpN + t * 8 + group;
        uint32_t bf[2];
        bf[0] = *reinterpret_cast<const uint32_t*>(&b_tile[step][column][quad * 2]);
        bf[1] = *reinterpret_cast<const uint32_t*>(&b_tile[step][column][quad * 2 + 8]);
        mma_m16n8k16<T>(acc[t], a, bf[0], bf[1]);
      }
    }
  }

  // Accumulator layout of m16n8: c0, c1 at (group, 2·quad + {0, 1}); c2, c3 at row group + 8.
#pragma unroll
  for (int t = 0; t < kWarpN / 8; ++t) {
    const int64_t column = n0 + warp * kWarpN + t * 8 + quad * 2;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      store_result(p, out, chunk, group + 8 * (i / 2), column + i % 2, acc[t][i]);
    }
  }
}

// --- SIMT kernel (fp64 FMA for fp32/fp64 inputs, any block up to 64 × 64) ----------

constexpr int kSimtCtaN = 32;               // one column per lane
constexpr int kSimtWarps = kThreads / 32;   // warp w takes block rows w, w + 4, ...
constexpr int kSimtMaxSide = 64;
constexpr int kSimtMaxEntries = 2048;       // br · bc
constexpr int kSimtRowsPerThread = kSimtMaxSide / kSimtWarps;

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) bsr_spmm_simt_kernel(Problem<acc_t> p, const T* __restrict__ blocks,
                                                                 const T* __restrict__ b, T* out) {
  __shared__ acc_t a_tile[kSimtMaxEntries];
  __shared__ acc_t b_tile[kSimtMaxSide][kSimtCtaN];

  const Chunk chunk = find_chunk(p, blockIdx.x);
  if (chunk.block_row < 0) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kSimtCtaN;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int entries = p.br * p.bc;

  acc_t acc[kSimtRowsPerThread] = {};
  for (int j = chunk.first; j < chunk.last; ++j) {
    __syncthreads();
    for (int i = tid; i < entries; i += kThreads) {
      a_tile[i] = static_cast<acc_t>(blocks[static_cast<int64_t>(j) * entries + i]);
    }
    const int64_t k0 = static_cast<int64_t>(p.col[j]) * p.bc;
    for (int i = tid; i < p.bc * kSimtCtaN; i += kThreads) {
      const int64_t row = k0 + i / kSimtCtaN, column = n0 + i % kSimtCtaN;
      b_tile[i / kSimtCtaN][i % kSimtCtaN] =
          (row >= 0 && row < p.k && column < p.n) ? static_cast<acc_t>(b[row * p.n + column]) : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kSimtRowsPerThread; ++i) {
      const int r = warp + kSimtWarps * i;
      if (r < p.br) {
        for (int c = 0; c < p.bc; ++c) acc[i] = fma(a_tile[r * p.bc + c], b_tile[c][lane], acc[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kSimtRowsPerThread; ++i) {
    const int r = warp + kSimtWarps * i;
    if (r < p.br) store_result(p, out, chunk, r, n0 + lane, acc[i]);
  }
}

// --- host ----------------------------------------------------------------------------

template <typename T, typename acc_t>
void launch(Problem<acc_t>& p, const at::Tensor& blocks, const at::Tensor& b, at::Tensor& out, int64_t max_items,
            cudaStream_t stream) {
  const T* blocks_ptr = reinterpret_cast<const T*>(blocks.data_ptr());
  const T* b_ptr = reinterpret_cast<const T*>(b.data_ptr());
  T* out_ptr = reinterpret_cast<T*>(out.data_ptr());
  constexpr bool kHalfType = std::is_same_v<T, at::Half> || std::is_same_v<T, at::BFloat16>;
  const bool mma = kHalfType && p.br == kMmaRows && (p.bc == 16 || p.bc == 8);
  const int64_t cta_n = mma ? kCtaN : kSimtCtaN;
  const int64_t column_tiles = ceil_div_dev<int64_t>(p.n, cta_n);
  MLX_CHECK(column_tiles <= 65535, kSpmmOp, "n = ", p.n, " is too large (at most ", 65535 * cta_n,
            " columns for ", mma ? "tensor-core" : "SIMT", " blocks)");
  const dim3 grid(static_cast<unsigned>(max_items), static_cast<unsigned>(column_tiles));
  if constexpr (kHalfType) {
    if (mma) {
      MLX_CHECK(is_aligned_16(blocks), kSpmmOp, "internal: blocks must be 16-byte aligned");
      const bool b_vector_ok = is_aligned_16(b) && p.n % 8 == 0;
      if (p.bc == 16) {
        bsr_spmm_mma_kernel<T, 16><<<grid, kThreads, 0, stream>>>(p, blocks_ptr, b_ptr, out_ptr, b_vector_ok);
      } else {
        bsr_spmm_mma_kernel<T, 8><<<grid, kThreads, 0, stream>>>(p, blocks_ptr, b_ptr, out_ptr, b_vector_ok);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  bsr_spmm_simt_kernel<T, acc_t><<<grid, kThreads, 0, stream>>>(p, blocks_ptr, b_ptr, out_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor bsr_spmm_cuda(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& blocks_in,
                         const at::Tensor& b_in, int64_t m, const c10::optional<at::Tensor>& row_perm_in) {
  constexpr const char* op = kSpmmOp;
  // Shapes, dtypes and devices only: the value checks of the CPU op (crow
  // monotone, col range, row_perm a permutation) would need a device sync.
  check_bsr_spmm_shapes(crow_in, col_in, blocks_in, b_in, m, row_perm_in);
  const c10::cuda::CUDAGuard guard(b_in.device());
  const int64_t nblocks = col_in.numel(), br = blocks_in.size(1), bc = blocks_in.size(2);
  const int64_t k = b_in.size(0), n = b_in.size(1), block_rows = crow_in.numel() - 1;
  check_fits_int32(op, "nblocks", nblocks);
  check_fits_int32(op, "ceil(m / br) (block rows)", block_rows);
  const bool half_type = blocks_in.scalar_type() == at::kHalf || blocks_in.scalar_type() == at::kBFloat16;
  const bool mma = half_type && br == kMmaRows && (bc == 16 || bc == 8);
  MLX_CHECK(mma || (br <= kSimtMaxSide && bc <= kSimtMaxSide && br * bc <= kSimtMaxEntries), op,
            "block shape ", br, " × ", bc, " is not supported on CUDA (16 × 16 and 16 × 8 use tensor cores; ",
            "other shapes need br, bc <= ", kSimtMaxSide, " and br · bc <= ", kSimtMaxEntries, ")");

  at::Tensor out = at::empty({m, n}, b_in.options());
  if (m == 0 || n == 0) return out;
  at::Tensor blocks = blocks_in.contiguous(), b = b_in.contiguous();
  if (!is_aligned_16(blocks)) blocks = blocks.clone();  // a fresh allocation is aligned
  if (!is_aligned_16(b)) b = b.clone();
  const at::Tensor crow = crow_in.to(at::kInt).contiguous(), col = col_in.to(at::kInt).contiguous();
  c10::optional<at::Tensor> row_perm;
  if (row_perm_in.has_value()) row_perm = row_perm_in->contiguous();

  // Chunks per block row (an empty row is one empty chunk), their running
  // total, and a workspace slot for every block row longer than one chunk.
  const at::Tensor blocks_per_row = crow.slice(0, 1) - crow.slice(0, 0, block_rows);
  const at::Tensor chunks = (blocks_per_row + (kChunk - 1)).div(kChunk, "floor").clamp_min(1);
  const at::Tensor chunk_end = chunks.cumsum(0, at::kInt);
  const at::Tensor split = blocks_per_row.gt(kChunk);
  const at::Tensor split_slot = split.cumsum(0, at::kInt) - 1;
  // Σ ceil(len / kChunk) over rows (≥ 1 each) ≤ block_rows + nblocks / kChunk;
  // a split row holds more than kChunk blocks. The workspace is sized by that
  // bound without a host sync while it is small; past kWorkspaceSyncBytes the
  // exact count is worth one sync.
  const int64_t max_items = block_rows + nblocks / kChunk;
  check_fits_int32(op, "work items", max_items);
  const auto workspace_dtype = acc_dtype(b.scalar_type());
  int64_t split_rows = std::min<int64_t>(block_rows, nblocks / (kChunk + 1));
  if (split_rows * br * n * at::elementSize(workspace_dtype) > kWorkspaceSyncBytes) {
    split_rows = split.sum().item<int64_t>();
  }
  at::Tensor workspace = at::zeros({split_rows * br, n}, b.options().dtype(workspace_dtype));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "bsr_spmm_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    Problem<acc_t> p{crow.data_ptr<int>(),
                     col.data_ptr<int>(),
                     chunk_end.data_ptr<int>(),
                     split_slot.data_ptr<int>(),
                     row_perm.has_value() ? row_perm->data_ptr<int64_t>() : nullptr,
                     workspace.data_ptr<acc_t>(),
                     m, k, n,
                     static_cast<int>(block_rows), static_cast<int>(nblocks), static_cast<int>(br),
                     static_cast<int>(bc)};
    if (block_rows == 0) return;
    launch<scalar_t, acc_t>(p, blocks, b, out, max_items, stream);
    if (split_rows > 0) {
      store_split_rows_kernel<scalar_t, acc_t><<<static_cast<unsigned>(block_rows), 256, 0, stream>>>(
          p, reinterpret_cast<scalar_t*>(out.data_ptr()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) { m.impl("bsr_spmm", &bsr_spmm_cuda); }

}  // namespace mlx_kernels::bsr
