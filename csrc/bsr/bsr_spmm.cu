// CUDA kernels of bsr_spmm: C [m, n] = A · B, A in BCSR (br × bc blocks), B dense.
//
// Index checks. bsr_spmm checks its index values on the device in one pass
// (crow a row pointer, col in range, row_perm a permutation) and reads one flag
// back: a sync, as in every op whose checks read device data. Only when the flag
// is set do the indices come to the host, where the CPU checks name the bad
// entry, so both devices raise the same message. bsr_spmm_unchecked (what
// BlockSparseMatrix calls: it checks its indices once, when it is built) skips
// that pass and never syncs. The kernels below clamp every index they read
// (block ranges into [0, nblocks], B rows into [0, k), output rows into [0, m),
// workspace slots into the workspace), so an unchecked bad index gives a wrong
// result, never an access out of bounds.
//
// Work split. Block row rb (blocks crow[rb] .. crow[rb+1]-1) is cut into
// chunks of at most kChunk blocks; a CTA computes one chunk for one kCtaN-wide
// column tile of C. An empty block row is one (empty) chunk, so its rows of C
// are written as zeros. Rows with more than kChunk blocks therefore spread over
// several CTAs instead of stalling the grid behind one long row: their partial
// sums go with atomicAdd into a workspace in the accumulation type (one slot
// per split block row, zeroed by a small kernel that clears only the slots
// handed out) and a second kernel converts those rows to C.
// Rows that fit one chunk are stored directly. One single-CTA kernel scans the
// block rows for the chunk → block row map (a prefix sum of chunks per block
// row) and the workspace slots; each CTA finds its block row by binary search,
// so no count has to travel back to the host: the grid is sized by an upper
// bound and surplus CTAs exit (only a workspace bound over 256 MiB is replaced
// by the exact split-row count, at the cost of a sync).
//
// Tensor-core path (fp16/bf16, br = 16, bc = 16 or 8): 4 warps, each owning 16
// columns of the CTA's 64. A stage holds 4 k-steps of 16: the A rows of the
// next 64/bc blocks (16 × 16 per k-step; two 16 × 8 blocks side by side when
// bc = 8, which is exactly a k = 16 MMA over both blocks' B rows) and the
// matching B rows (gathered through col[], zero past row k and column n),
// copied with cp.async three stages deep, so the gathers of two stages are in
// flight while one is multiplied. Fragments come by ldmatrix (B row-major,
// .trans); each k-step is one mma.sync.m16n8k16 per 8 columns, accumulating in
// fp32.
//
// SIMT path (fp32, fp64, and other block shapes): FMA in fp64 for fp32/fp64
// inputs (fp32 for 16-bit ones, see acc_type), one thread per column and a
// strided set of the block row's rows, the block and its B tile staged in
// shared memory. fp32 is never rounded to TF32 (that would not meet fp32
// accuracy); H100's fp64 FMA rate is half its fp32 rate.
//
// Epilogue: stored row r of block row rb is A's row row_perm[rb·br + r] (when
// given), so the un-permutation is the store's address; rows ≥ m are dropped.

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <type_traits>

#include "bsr/bsr.h"
#include "bsr/index_checks.cuh"
#include "common/cuda_utils.cuh"
#include "common/mma.cuh"
#include "common/registration.h"

namespace mlx_kernels::bsr {
namespace {

constexpr int kChunk = 32;   // blocks per CTA at most
constexpr int kThreads = 128;
// The workspace is allocated by an upper bound on the split rows (never cleared
// whole, so only its footprint grows with the bound); past this size the exact
// count is read back instead.
constexpr int64_t kWorkspaceSyncBytes = int64_t{256} << 20;

// --- work split and epilogue (shared by both kernels) -------------------------------

template <typename acc_t>
struct Problem {
  const int* crow;          // [block_rows + 1]
  const int* col;           // [nblocks]
  const int* chunk_end;     // [block_rows]: inclusive prefix sum of chunks per block row
  const int* split_slot;    // [block_rows]: workspace slot of a split block row
  const int64_t* row_perm;  // [m] or nullptr
  acc_t* workspace;         // [split_rows · br, n]
  int64_t m, k, n;
  int block_rows, nblocks, br, bc;
  int split_rows;           // workspace slots
  int chunk;                // blocks per CTA at most: kChunk, or nblocks (no row split) when deterministic
};

// Blocks [first, last) of block row rb, clamped into [0, nblocks].
struct BlockRange {
  int first, last;
};
template <typename acc_t>
__device__ BlockRange block_range(const Problem<acc_t>& p, int rb) {
  const int first = min(max(p.crow[rb], 0), p.nblocks);
  return {first, min(max(p.crow[rb + 1], first), p.nblocks)};
}

struct Chunk {
  int block_row, first, last;  // blocks [first, last) of block_row
  int split_slot;              // workspace slot when the block row has several chunks, else -1
};

// The work-split table, by one CTA: per block row its chunks (ceil(blocks /
// kChunk), and one for an empty row), summed into chunk_end, capped at
// max_items (the grid size), and a workspace slot (split_slot) for a row of
// several chunks, -1 for the others. A slot past the split_rows allotted is
// -1 too: only an unchecked, malformed crow gets there, and such a row's
// chunks then store straight into C (a wrong result, never a write out of
// bounds). *split_count gets the number of split rows.
constexpr int kSplitThreads = 512;
constexpr int kSplitRowsPerThread = 8;  // consecutive block rows per thread and pass

template <typename acc_t>
__global__ void __launch_bounds__(kSplitThreads) split_work_kernel(Problem<acc_t> p, int max_items, int* chunk_end,
                                                                  int* split_slot, int* split_count) {
  using Scan = cub::BlockScan<int64_t, kSplitThreads>;
  MLX_SHARED(typename Scan::TempStorage, scan_storage);
  int64_t chunks_before = 0, splits_before = 0;
  for (int64_t pass_first = 0; pass_first < p.block_rows; pass_first += kSplitThreads * kSplitRowsPerThread) {
    const int64_t first_row = pass_first + threadIdx.x * kSplitRowsPerThread;
    int64_t chunks[kSplitRowsPerThread], split[kSplitRowsPerThread];
#pragma unroll
    for (int i = 0; i < kSplitRowsPerThread; ++i) {
      chunks[i] = split[i] = 0;
      if (first_row + i < p.block_rows) {
        const BlockRange range = block_range(p, static_cast<int>(first_row + i));
        const int blocks = range.last - range.first;
        chunks[i] = max(1, ceil_div_dev(blocks, p.chunk));
        split[i] = blocks > p.chunk;
      }
    }
    int64_t chunk_sum[kSplitRowsPerThread], split_index[kSplitRowsPerThread], chunk_total, split_total;
    Scan(scan_storage).InclusiveSum(chunks, chunk_sum, chunk_total);
    __syncthreads();  // scan_storage is reused
    Scan(scan_storage).ExclusiveSum(split, split_index, split_total);
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kSplitRowsPerThread; ++i) {
      const int64_t rb = first_row + i;
      if (rb >= p.block_rows) break;
      chunk_end[rb] = static_cast<int>(min(chunks_before + chunk_sum[i], static_cast<int64_t>(max_items)));
      const int64_t slot = splits_before + split_index[i];
      split_slot[rb] = split[i] && slot < p.split_rows ? static_cast<int>(slot) : -1;
    }
    chunks_before += chunk_total;
    splits_before += split_total;
  }
  if (threadIdx.x == 0) *split_count = static_cast<int>(min(splits_before, static_cast<int64_t>(INT32_MAX)));
}

// The chunk of work item `item`, or block_row = -1 past the last one.
template <typename acc_t>
__device__ Chunk find_chunk(const Problem<acc_t>& p, int item) {
  int lo = 0, hi = p.block_rows;  // first block row whose chunk_end > item
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (p.chunk_end[mid] > item) hi = mid; else lo = mid + 1;
  }
  if (lo == p.block_rows) return {-1, 0, 0, -1};
  const int chunk = item - (lo > 0 ? p.chunk_end[lo - 1] : 0);  // in [0, chunks of row lo)
  const BlockRange range = block_range(p, lo);
  const int first = static_cast<int>(min(range.first + static_cast<int64_t>(chunk) * p.chunk,
                                          static_cast<int64_t>(range.last)));
  return {lo, first, static_cast<int>(min(static_cast<int64_t>(first) + p.chunk, static_cast<int64_t>(range.last))),
          p.split_slot[lo]};
}

// C[row_perm[rb·br + r], column] = v, or its share into the workspace when the
// block row is split over several CTAs.
template <typename out_t, typename acc_t>
__device__ void store_result(const Problem<acc_t>& p, out_t* out, const Chunk& chunk, int r, int64_t column,
                             acc_t v) {
  const int64_t stored_row = static_cast<int64_t>(chunk.block_row) * p.br + r;
  if (stored_row >= p.m || column >= p.n) return;
  if (chunk.split_slot >= 0) {
    atomicAdd(p.workspace + (static_cast<int64_t>(chunk.split_slot) * p.br + r) * p.n + column, v);
    return;
  }
  const int64_t row = p.row_perm != nullptr ? p.row_perm[stored_row] : stored_row;
  if (row >= 0 && row < p.m) out[row * p.n + column] = from_acc<out_t>(v);
}

// Clears the workspace slots handed out (split_slot >= 0) before the products
// add into them; the rest of the workspace is never read.
template <typename acc_t>
__global__ void zero_split_rows_kernel(Problem<acc_t> p) {
  const int64_t slot_size = static_cast<int64_t>(p.br) * p.n;
  for (int64_t rb = blockIdx.x; rb < p.block_rows; rb += gridDim.x) {
    const int slot = p.split_slot[rb];
    if (slot < 0) continue;
    acc_t* rows = p.workspace + slot * slot_size;
    for (int64_t i = threadIdx.x; i < slot_size; i += blockDim.x) rows[i] = acc_t(0);
  }
}

// Rows of split block rows: workspace → C (through row_perm). One CTA per block row.
template <typename out_t, typename acc_t>
__global__ void store_split_rows_kernel(Problem<acc_t> p, out_t* out) {
  const int rb = blockIdx.x;
  const int slot = p.split_slot[rb];
  if (slot < 0) return;
  const acc_t* rows = p.workspace + static_cast<int64_t>(slot) * p.br * p.n;
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
constexpr int kStageK = kStageSteps * kMmaK;
constexpr int kPipeline = 3;    // stages in shared memory: two in flight while one is consumed
constexpr int kCtaN = 64;       // columns of C per CTA
constexpr int kWarpN = 16;      // columns per warp: two n = 8 MMAs
// Rows padded by 16 bytes: the 8 row addresses of each ldmatrix (48- and
// 144-byte strides) fall in distinct bank groups.
constexpr int kARowStride = kMmaK + 8;
constexpr int kBRowStride = kCtaN + 8;

// 8 consecutive values of B's row `row` from column `column`, one at a time
// (zeros outside B): for B whose rows are not 16-byte aligned.
template <typename T>
__device__ void load_b8(const T* b, int64_t row, int64_t column, int64_t k, int64_t n, T (&v)[8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    v[e] = (row >= 0 && row < k && column + e < n) ? b[row * n + column + e] : T(0.0f);
  }
}

template <typename T>
struct MmaTiles {
  T a[kPipeline][kStageSteps][kMmaRows][kARowStride];  // the stage's A rows, k-step by k-step
  T b[kPipeline][kStageK][kBRowStride];                // the matching B rows, row-major
};

// Issues the copies of one stage (the A values and gathered B rows of blocks
// stage_first ..) into buffer `buf`: cp.async, zero-filled past the chunk's
// last block, past A's column k, past B's row k and past column n. B goes through registers when its
// rows are not 16-byte aligned (b_async false: n % 8 != 0 or an unaligned b).
template <typename T, int BC>
__device__ void load_stage(MmaTiles<T>& tiles, int buf, const Problem<float>& p, const Chunk& chunk,
                           int stage_first, const T* __restrict__ blocks, const T* __restrict__ b, int64_t n0,
                           bool b_async) {
  static_assert(kStageSteps * kMmaRows * 2 == kThreads, "one 8-value piece of A per thread and stage");
  const int tid = threadIdx.x;
  {
    const int step = tid / 32, r = (tid / 2) % kMmaRows, piece = tid % 2;
    const int k_in_stage = step * kMmaK + piece * 8;
    const int j = stage_first + k_in_stage / BC;
    const bool valid = j < chunk.last;
    const T* src = blocks + (static_cast<int64_t>(valid ? j : 0) * kMmaRows + r) * BC + k_in_stage % BC;
    T* dst = &tiles.a[buf][step][r][piece * 8];
    // A's padding columns (at and past k) may hold anything, and 0 · NaN is
    // NaN: they are zeroed, element by element in the piece that straddles k.
    const int64_t before_k = valid ? p.k - (static_cast<int64_t>(p.col[j]) * BC + k_in_stage % BC) : 8;
    if (before_k >= 8) {
      cp_async_16(dst, src, valid);
    } else {
      alignas(16) T v[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = e < before_k ? src[e] : T(0.0f);
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
    }
  }
  for (int piece = tid; piece < kStageK * (kCtaN / 8); piece += kThreads) {
    const int k_in_stage = piece / (kCtaN / 8), column8 = (piece % (kCtaN / 8)) * 8;
    const int j = stage_first + k_in_stage / BC;
    const int64_t b_row = j < chunk.last ? static_cast<int64_t>(p.col[j]) * BC + k_in_stage % BC : -1;
    const int64_t column = n0 + column8;
    T* dst = &tiles.b[buf][k_in_stage][column8];
    if (b_async) {
      const bool valid = b_row >= 0 && b_row < p.k && column < p.n;  // n % 8 == 0: all 8 columns or none
      cp_async_16(dst, valid ? b + b_row * p.n + column : b, valid);
    } else {
      alignas(16) T v[8];
      load_b8(b, b_row, column, p.k, p.n, v);
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
    }
  }
}

template <typename T, int BC>
__global__ void __launch_bounds__(kThreads) bsr_spmm_mma_kernel(Problem<float> p, const T* __restrict__ blocks,
                                                                const T* __restrict__ b, T* out, bool b_async) {
  static_assert(BC == 8 || BC == 16, "blocks are 16 × 16 or 16 × 8");
  constexpr int kBlocksPerStep = kMmaK / BC;
  constexpr int kBlocksPerStage = kStageSteps * kBlocksPerStep;
  MLX_SHARED(MmaTiles<T>, tiles);

  const Chunk chunk = find_chunk(p, blockIdx.x);
  if (chunk.block_row < 0) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kCtaN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;  // MMA fragment coordinates
  const int matrix = lane / 8;                  // ldmatrix.x4: lanes 8m .. 8m+7 address matrix m
  const int stages = ceil_div_dev(chunk.last - chunk.first, kBlocksPerStage);

  // Main loop, kPipeline-stage cp.async pipeline: stage s + kPipeline − 1 is
  // issued while stage s is multiplied. One commit group per stage (empty past
  // the last), so "stage s has landed" is "at most kPipeline − 2 groups pending".
  float acc[kWarpN / 8][4] = {};
  for (int s = 0; s < kPipeline - 1; ++s) {
    if (s < stages) load_stage<T, BC>(tiles, s, p, chunk, chunk.first + s * kBlocksPerStage, blocks, b, n0, b_async);
    cp_async_commit();
  }
  for (int s = 0; s < stages; ++s) {
    cp_async_wait<kPipeline - 2>();
    __syncthreads();  // stage s is visible to every warp, and stage s − 1's buffer is consumed
    const int next = s + kPipeline - 1;
    if (next < stages) {
      load_stage<T, BC>(tiles, next % kPipeline, p, chunk, chunk.first + next * kBlocksPerStage, blocks, b, n0,
                        b_async);
    }
    cp_async_commit();

    const int buf = s % kPipeline, stage_first = chunk.first + s * kBlocksPerStage;
#pragma unroll
    for (int step = 0; step < kStageSteps; ++step) {
      if (stage_first + step * kBlocksPerStep >= chunk.last) break;  // uniform across the CTA
      // A: matrices (rows +0/+8) × (k +0/+8). B is [k][n]: ldmatrix.trans gives
      // the column-major fragments, matrices (k +0/+8) × (columns +0/+8).
      uint32_t a[4], bf[4];
      ldmatrix_x4(a, &tiles.a[buf][step][lane % 16][lane / 16 * 8]);
      ldmatrix_x4_trans(bf, &tiles.b[buf][step * kMmaK + matrix % 2 * 8 + lane % 8][warp * kWarpN + matrix / 2 * 8]);
      mma_m16n8k16<T>(acc[0], a, bf[0], bf[1]);
      mma_m16n8k16<T>(acc[1], a, bf[2], bf[3]);
    }
  }
  cp_async_wait<0>();

  // Epilogue. Accumulator layout of m16n8: c0, c1 at (group, 2·quad + {0, 1}); c2, c3 at row group + 8.
#pragma unroll
  for (int t = 0; t < kWarpN / 8; ++t) {
    const int64_t column = n0 + warp * kWarpN + t * 8 + quad * 2;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      store_result(p, out, chunk, group + 8 * (i / 2), column + i % 2, acc[t][i]);
    }
  }
}

// --- SIMT kernel (fp64 FMA for fp32/fp64 inputs, and any other block shape) ------

constexpr int kSimtCtaN = 32;                 // one column per lane
constexpr int kSimtWarps = kThreads / 32;     // warp w takes block rows w, w + 4, ...
constexpr int kSimtSliceRows = 64;            // a block is taken in slices of at most
constexpr int kSimtSliceCols = 32;            // 64 rows × 32 columns (any br, bc)
constexpr int kSimtRowsPerThread = kSimtSliceRows / kSimtWarps;

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) bsr_spmm_simt_kernel(Problem<acc_t> p, const T* __restrict__ blocks,
                                                                 const T* __restrict__ b, T* out) {
  MLX_SHARED(acc_t[kSimtSliceRows][kSimtSliceCols], a_tile);
  MLX_SHARED(acc_t[kSimtSliceCols][kSimtCtaN], b_tile);

  const Chunk chunk = find_chunk(p, blockIdx.x);
  if (chunk.block_row < 0) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kSimtCtaN;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t entries = static_cast<int64_t>(p.br) * p.bc;

  // Row slices, then the chunk's blocks, then column slices: every loop bound
  // is uniform over the CTA, so every thread meets every barrier.
  for (int r0 = 0; r0 < p.br; r0 += kSimtSliceRows) {
    const int rows = min(kSimtSliceRows, p.br - r0);
    acc_t acc[kSimtRowsPerThread] = {};
    for (int j = chunk.first; j < chunk.last; ++j) {
      const T* block = blocks + j * entries + static_cast<int64_t>(r0) * p.bc;
      const int64_t k0 = static_cast<int64_t>(p.col[j]) * p.bc;
      for (int c0 = 0; c0 < p.bc; c0 += kSimtSliceCols) {
        const int cols = min(kSimtSliceCols, p.bc - c0);
        __syncthreads();  // the previous slice has been read
        // A's padding columns (at and past k) may hold anything, and 0 · NaN is NaN.
        for (int i = tid; i < rows * cols; i += kThreads) {
          const int64_t column = k0 + c0 + i % cols;
          a_tile[i / cols][i % cols] =
              column < p.k ? static_cast<acc_t>(block[static_cast<int64_t>(i / cols) * p.bc + c0 + i % cols]) : acc_t(0);
        }
        for (int i = tid; i < cols * kSimtCtaN; i += kThreads) {
          const int64_t row = k0 + c0 + i / kSimtCtaN, column = n0 + i % kSimtCtaN;
          b_tile[i / kSimtCtaN][i % kSimtCtaN] =
              (row >= 0 && row < p.k && column < p.n) ? static_cast<acc_t>(b[row * p.n + column]) : acc_t(0);
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kSimtRowsPerThread; ++i) {
          const int r = warp + kSimtWarps * i;
          if (r < rows) {
            for (int c = 0; c < cols; ++c) acc[i] = fma(a_tile[r][c], b_tile[c][lane], acc[i]);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kSimtRowsPerThread; ++i) {
      const int r = warp + kSimtWarps * i;
      if (r < rows) store_result(p, out, chunk, r0 + r, n0 + lane, acc[i]);
    }
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
  const int64_t column_tiles = ceil_div_dev<int64_t>(p.n, mma ? kCtaN : kSimtCtaN);
  const dim3 grid(static_cast<unsigned>(max_items), static_cast<unsigned>(column_tiles));
  if constexpr (kHalfType) {
    if (mma) {
      MLX_CHECK(is_aligned_16(blocks), kSpmmOp, "internal: blocks must be 16-byte aligned");
      // cp.async needs 16-byte aligned B rows (and a real address even for its zero-fills).
      const bool b_async = is_aligned_16(b) && p.n % 8 == 0 && p.k > 0;
      if (p.bc == 16) {
        MLX_LAUNCH_KERNEL(bsr_spmm_mma_kernel<T, 16>, grid, kThreads, 0, stream, p, blocks_ptr, b_ptr, out_ptr, b_async);
      } else {
        MLX_LAUNCH_KERNEL(bsr_spmm_mma_kernel<T, 8>, grid, kThreads, 0, stream, p, blocks_ptr, b_ptr, out_ptr, b_async);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  MLX_LAUNCH_KERNEL(bsr_spmm_simt_kernel<T, acc_t>, grid, kThreads, 0, stream, p, blocks_ptr, b_ptr, out_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The product, on arguments whose shapes are checked: what bsr_spmm runs after
// its index checks and bsr_spmm_unchecked runs directly.
at::Tensor run_bsr_spmm(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& blocks_in,
                        const at::Tensor& b_in, int64_t m, const c10::optional<at::Tensor>& row_perm_in) {
  constexpr const char* op = kSpmmOp;
  const int64_t nblocks = col_in.numel(), br = blocks_in.size(1), bc = blocks_in.size(2);
  const int64_t k = b_in.size(0), n = b_in.size(1), block_rows = crow_in.numel() - 1;
  check_fits_int32(op, "nblocks", nblocks);
  check_fits_int32(op, "ceil(m / br) (block rows)", block_rows);

  at::Tensor out = at::empty({m, n}, b_in.options());
  if (m == 0 || n == 0) return out;  // m > 0 means block_rows > 0
  check_fits_int32(op, "ceil(k / bc) (block columns)", ceil_div_dev(k, bc));
  // The SIMT kernel steps through a block by whole slices in int.
  check_fits_int32(op, "br + 64 (the block height, sliced)", br + kSimtSliceRows);
  check_fits_int32(op, "bc + 32 (the block width, sliced)", bc + kSimtSliceCols);
  const bool half_type = blocks_in.scalar_type() == at::kHalf || blocks_in.scalar_type() == at::kBFloat16;
  const bool mma = half_type && br == kMmaRows && (bc == 16 || bc == 8);
  const int64_t cta_n = mma ? kCtaN : kSimtCtaN;
  MLX_CHECK(ceil_div_dev(n, cta_n) <= 65535, op, "n = ", n, " is too large (at most ", 65535 * cta_n,
            " columns for ", mma ? "tensor-core" : "SIMT", " blocks)");
  at::Tensor blocks = blocks_in.contiguous(), b = b_in.contiguous();
  if (!is_aligned_16(blocks)) blocks = blocks.clone();  // a fresh allocation is aligned
  if (!is_aligned_16(b)) b = b.clone();
  const at::Tensor crow = crow_in.to(at::kInt).contiguous(), col = col_in.to(at::kInt).contiguous();
  c10::optional<at::Tensor> row_perm;
  if (row_perm_in.has_value()) row_perm = row_perm_in->contiguous();

  // Σ ceil(len / kChunk) over rows (≥ 1 each) ≤ block_rows + nblocks / kChunk,
  // and a split row holds more than kChunk blocks. The workspace is sized by
  // that bound without a host sync while it is small; past kWorkspaceSyncBytes
  // the exact count is worth one sync.
  // Under torch.use_deterministic_algorithms(True) no block row is split: each
  // is summed by one CTA in block order (no atomics), bitwise reproducible.
  const int64_t chunk = at::globalContext().deterministicAlgorithms() ? std::max<int64_t>(nblocks, 1) : kChunk;
  const int64_t max_items = block_rows + nblocks / chunk;
  check_fits_int32(op, "work items", max_items);
  const auto workspace_dtype = acc_dtype(b.scalar_type());
  int64_t split_rows = std::min<int64_t>(block_rows, nblocks / (chunk + 1));
  const bool count_split_rows = split_rows * br * n * at::elementSize(workspace_dtype) > kWorkspaceSyncBytes;
  // chunk_end, split_slot, then the split-row count.
  const at::Tensor table = at::empty({2 * block_rows + 1}, crow.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "bsr_spmm_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    int* chunk_end = table.data_ptr<int>();
    Problem<acc_t> p{crow.data_ptr<int>(),
                     col.data_ptr<int>(),
                     chunk_end,
                     chunk_end + block_rows,
                     row_perm.has_value() ? row_perm->data_ptr<int64_t>() : nullptr,
                     nullptr,
                     m, k, n,
                     static_cast<int>(block_rows), static_cast<int>(nblocks), static_cast<int>(br),
                     static_cast<int>(bc), static_cast<int>(split_rows), static_cast<int>(chunk)};
    MLX_LAUNCH_KERNEL(split_work_kernel<acc_t>, 1, kSplitThreads, 0, stream, p, static_cast<int>(max_items), chunk_end,
                                                              chunk_end + block_rows, chunk_end + 2 * block_rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (count_split_rows) {
      split_rows = std::min<int64_t>(split_rows, table[2 * block_rows].item<int>());
      p.split_rows = static_cast<int>(split_rows);  // every slot handed out is below the count
    }
    const at::Tensor workspace = at::empty({split_rows * br, n}, b.options().dtype(workspace_dtype));
    p.workspace = workspace.data_ptr<acc_t>();
    if (split_rows > 0) {
      const int64_t grid = std::min<int64_t>(block_rows, 4 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
      MLX_LAUNCH_KERNEL(zero_split_rows_kernel<acc_t>, static_cast<unsigned>(grid), 256, 0, stream, p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    launch<scalar_t, acc_t>(p, blocks, b, out, max_items, stream);
    if (split_rows > 0) {
      MLX_LAUNCH_KERNEL(store_split_rows_kernel<scalar_t, acc_t>, static_cast<unsigned>(block_rows), 256, 0, stream,
          p, reinterpret_cast<scalar_t*>(out.data_ptr()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

at::Tensor bsr_spmm_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& blocks,
                         const at::Tensor& b, int64_t m, const c10::optional<at::Tensor>& row_perm) {
  check_bsr_spmm_shapes(crow, col, blocks, b, m, row_perm);
  const c10::cuda::CUDAGuard guard(b.device());
  check_bsr_values_cuda(kSpmmOp, crow, col, b.size(0), blocks.size(2), row_perm);
  return run_bsr_spmm(crow, col, blocks, b, m, row_perm);
}

at::Tensor bsr_spmm_unchecked_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& blocks,
                                   const at::Tensor& b, int64_t m, const c10::optional<at::Tensor>& row_perm) {
  check_bsr_spmm_shapes(crow, col, blocks, b, m, row_perm);
  const c10::cuda::CUDAGuard guard(b.device());
  return run_bsr_spmm(crow, col, blocks, b, m, row_perm);
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) {
  m.impl("bsr_spmm", &bsr_spmm_cuda);
  m.impl("bsr_spmm_unchecked", &bsr_spmm_unchecked_cuda);
}

}  // namespace mlx_kernels::bsr
