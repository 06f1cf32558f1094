// The bit-plane GEMM kernel on 1-bit tensor cores (sm_80+), shared by
// bipolar_gemm (gemm.cu, int32 epilogue) and bipolar_linear (linear.cu, dequant epilogue).
//
// What it computes: C[m, n] = Σ_k A[m, k]·W[n, k] for p-bit A and q-bit W in
// bipolar-INT, through bipolar.h's identity
//   C = 4·S − 2(2^q−1)·RA[m] − 2(2^p−1)·RW[n] + K(2^p−1)(2^q−1),
//   S = Σ_{j<p, i<q} 2^(i+j)·popc(a_j[m] ∧ w_i[n]),
// with every popc(a ∧ w) on `mma.sync.m16n8k256.row.col.s32.b1.b1.s32.and.popc`
// (AND-popc: sm_90 dropped XOR-popc). Nothing of the p·q plane pairs goes to
// global memory: one kernel, the recombination in registers.
//
// Tiling. A CTA owns a BM × BN output tile and stages, per 512-bit K slice, all
// p planes of its BM A rows and all q planes of its BN W rows in shared memory
// (cp.async, double buffered, zero-filled past M, N and the last word; the
// partial last word is masked so padding bits never count). Each warp owns
// FragsM × FragsN m16n8 fragments. Smem holds each 256-bit MMA step of a plane
// as [rows][8 words]: a lane's A fragment (rows g, g+8; words t, t+4 in PTX's
// numbering) is two 64-bit loads of words 2t, 2t+1 — a permutation of K that
// A and W share, so the popcounts are unchanged — and conflict-free.
//
// Main loop (per K slice): Horner over the weight level l = i + j, highest
// first: T ← 2·T, then T += popc(a_j ∧ w_i) for every pair on level l, straight
// into the MMA's accumulator. T = S restricted to the slice (< 2^31 by the
// overflow check); acc += T. RA and RW come from the fragments already in
// registers: popc of the A fragment when it meets w_0, of the B fragment when
// it meets a_0, summed over a lane quad at the end.
//
// Epilogue: the identity in uint32 (exact modulo 2^32, and C fits in int32),
// then a functor `store(m, n, c)` given by the op writes the output.
//
// Split-K, for grids too small to fill the GPU (decode-sized M): blockIdx.z
// takes a range of K slices. The identity is linear in (S, RA, RW, K), so each
// split applies it to its own partial sums with K = its count of valid
// positions, and the int32 partial results simply add up (atomicAdd into a
// zeroed output; wrap-around is exact for the same reason as above).

#pragma once

#include "bipolar/bipolar.h"
#include "common/cuda_utils.cuh"
#include "common/mma.cuh"

namespace mlx_kernels::bipolar {

constexpr int kStepWords = 8;    // one m16n8k256 MMA step: 256 bits of a row
constexpr int kSliceSteps = 2;   // MMA steps per pipeline stage
constexpr int kSliceWords = kStepWords * kSliceSteps;
constexpr int kChunkWords = 4;   // one 16-byte cp.async
constexpr int kStages = 2;

template <int WarpsM_, int WarpsN_, int FragsM_, int FragsN_>
struct TileConfig {
  static constexpr int WarpsM = WarpsM_, WarpsN = WarpsN_, FragsM = FragsM_, FragsN = FragsN_;
  static constexpr int BM = WarpsM * FragsM * 16, BN = WarpsN * FragsN * 8;
  static constexpr int Threads = WarpsM * WarpsN * 32;
};
using LargeTile = TileConfig<2, 2, 2, 4>;  // 64 × 64, 4 warps of 32 × 32
using SmallTile = TileConfig<1, 4, 1, 1>;  // 16 × 32 for decode-sized M: more CTAs along N

// Shared-memory words of one stage: all planes of the A and W rows of a K slice.
inline int64_t stage_words(int64_t p, int64_t q, int bm, int bn) { return (p * bm + q * bn) * kSliceWords; }

// Copies rows [row0, row0 + tile_rows) of every plane, words [slice·16, +16), of
// planes [planes, rows, words] into smem laid out [plane][step][tile_rows][8].
template <int Threads>
__device__ __forceinline__ void load_slice(uint32_t* smem, const uint32_t* __restrict__ planes, int num_planes,
                                           int rows, int words, int row0, int tile_rows, int slice) {
  constexpr int kChunksPerRow = kSliceWords / kChunkWords;
  const int chunks = num_planes * tile_rows * kChunksPerRow;
  for (int c = threadIdx.x; c < chunks; c += Threads) {
    const int chunk = c % kChunksPerRow, row = (c / kChunksPerRow) % tile_rows;
    const int plane = c / (kChunksPerRow * tile_rows);
    const int word = slice * kSliceWords + chunk * kChunkWords;
    const bool valid = row0 + row < rows && word < words;  // words is a multiple of 4
    const uint32_t* src = valid ? planes + (static_cast<int64_t>(plane) * rows + row0 + row) * words + word : planes;
    const int step = chunk / (kStepWords / kChunkWords);
    uint32_t* dst = smem + ((plane * kSliceSteps + step) * tile_rows + row) * kStepWords +
                    (chunk % (kStepWords / kChunkWords)) * kChunkWords;
    cp_async_16(dst, src, valid);
  }
}

// Clears the bits at or past K in a staged slice (only the last slice has any).
template <int Threads>
__device__ __forceinline__ void mask_slice(uint32_t* smem, int num_planes, int tile_rows, int slice, int K) {
  const int total = num_planes * kSliceSteps * tile_rows * kStepWords;
  for (int i = threadIdx.x; i < total; i += Threads) {
    const int step = (i / (tile_rows * kStepWords)) % kSliceSteps;
    smem[i] &= valid_bits(slice * kSliceWords + step * kStepWords + i % kStepWords, K);
  }
}

template <typename Tile, typename Epilogue>
__global__ void __launch_bounds__(Tile::Threads)
    bipolar_gemm_kernel(const uint32_t* __restrict__ a_planes, const uint32_t* __restrict__ w_planes, int M,
                        int N, int words, int K, int p, int q, int slices_per_split, Epilogue store) {
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) || defined(MLX_EMU)
  constexpr int BM = Tile::BM, BN = Tile::BN, FragsM = Tile::FragsM, FragsN = Tile::FragsN;
  MLX_DYNAMIC_SHARED(uint32_t, smem);
  const int stage_size = (p * BM + q * BN) * kSliceWords;
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad_lane = lane % 4;  // PTX's groupID, threadID_in_group
  const int warp_row = (warp / Tile::WarpsN) * FragsM * 16, warp_col = (warp % Tile::WarpsN) * FragsN * 8;

  uint32_t acc[FragsM][FragsN][4] = {};
  uint32_t row_a[FragsM][2] = {};  // Σ_j 2^j·popc(a_j) of rows group, group + 8 (this lane's words)
  uint32_t row_w[FragsN] = {};     // Σ_i 2^i·popc(w_i) of column group (this lane's words)

  const int slices = (words + kSliceWords - 1) / kSliceWords;
  const int first_slice = blockIdx.z * slices_per_split;
  const int end_slice = min(slices, first_slice + slices_per_split);
  constexpr int64_t kSliceBits = kSliceWords * 32;
  const int split_K = static_cast<int>(min(static_cast<int64_t>(K), end_slice * kSliceBits) - first_slice * kSliceBits);
  auto load = [&](int slice) {
    uint32_t* stage = smem + (slice % kStages) * stage_size;
    load_slice<Tile::Threads>(stage, a_planes, p, M, words, m0, BM, slice);
    load_slice<Tile::Threads>(stage + p * BM * kSliceWords, w_planes, q, N, words, n0, BN, slice);
  };
  load(first_slice);
  cp_async_commit();

  for (int slice = first_slice; slice < end_slice; ++slice) {
    if (slice + 1 < end_slice) load(slice + 1);
    cp_async_commit();  // possibly empty, so "all but one group done" always means this slice
    cp_async_wait<1>();
    __syncthreads();
    uint32_t* stage_a = smem + (slice % kStages) * stage_size;
    uint32_t* stage_w = stage_a + p * BM * kSliceWords;
    if (slice == slices - 1 && K % (kSliceWords * 32) != 0) {
      mask_slice<Tile::Threads>(stage_a, p, BM, slice, K);
      mask_slice<Tile::Threads>(stage_w, q, BN, slice, K);
      __syncthreads();
    }

    uint32_t horner[FragsM][FragsN][4] = {};
    for (int level = p + q - 2; level >= 0; --level) {
#pragma unroll
      for (int fm = 0; fm < FragsM; ++fm)
#pragma unroll
        for (int fn = 0; fn < FragsN; ++fn)
#pragma unroll
          for (int r = 0; r < 4; ++r) horner[fm][fn][r] <<= 1;
      const int j_end = min(p - 1, level);
      for (int j = max(0, level - (q - 1)); j <= j_end; ++j) {
        const int i = level - j;
#pragma unroll
        for (int step = 0; step < kSliceSteps; ++step) {
          const uint32_t* tile_a = stage_a + (j * kSliceSteps + step) * BM * kStepWords;
          const uint32_t* tile_w = stage_w + (i * kSliceSteps + step) * BN * kStepWords;
          uint32_t frag_a[FragsM][4], frag_w[FragsN][2];
#pragma unroll
          for (int fm = 0; fm < FragsM; ++fm) {
            const int row = warp_row + fm * 16 + group;
            const uint2 lo = *reinterpret_cast<const uint2*>(tile_a + row * kStepWords + 2 * quad_lane);
            const uint2 hi = *reinterpret_cast<const uint2*>(tile_a + (row + 8) * kStepWords + 2 * quad_lane);
            frag_a[fm][0] = lo.x, frag_a[fm][1] = hi.x, frag_a[fm][2] = lo.y, frag_a[fm][3] = hi.y;
            if (i == 0) {
              row_a[fm][0] += static_cast<uint32_t>(__popc(lo.x) + __popc(lo.y)) << j;
              row_a[fm][1] += static_cast<uint32_t>(__popc(hi.x) + __popc(hi.y)) << j;
            }
          }
#pragma unroll
          for (int fn = 0; fn < FragsN; ++fn) {
            const int col = warp_col + fn * 8 + group;
            const uint2 b = *reinterpret_cast<const uint2*>(tile_w + col * kStepWords + 2 * quad_lane);
            frag_w[fn][0] = b.x, frag_w[fn][1] = b.y;
            if (j == 0) row_w[fn] += static_cast<uint32_t>(__popc(b.x) + __popc(b.y)) << i;
          }
#pragma unroll
          for (int fm = 0; fm < FragsM; ++fm)
#pragma unroll
            for (int fn = 0; fn < FragsN; ++fn) mma_m16n8k256_and_popc(horner[fm][fn], frag_a[fm], frag_w[fn]);
        }
      }
    }
#pragma unroll
    for (int fm = 0; fm < FragsM; ++fm)
#pragma unroll
      for (int fn = 0; fn < FragsN; ++fn)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[fm][fn][r] += horner[fm][fn][r];
    __syncthreads();  // the next iteration's load overwrites this stage
  }

  // Row popcounts: each lane of a quad counted a quarter of the words.
#pragma unroll
  for (int offset = 1; offset < 4; offset *= 2) {
#pragma unroll
    for (int fm = 0; fm < FragsM; ++fm) {
      row_a[fm][0] += __shfl_xor_sync(0xffffffffu, row_a[fm][0], offset);
      row_a[fm][1] += __shfl_xor_sync(0xffffffffu, row_a[fm][1], offset);
    }
#pragma unroll
    for (int fn = 0; fn < FragsN; ++fn) row_w[fn] += __shfl_xor_sync(0xffffffffu, row_w[fn], offset);
  }
#pragma unroll
  for (int fn = 0; fn < FragsN; ++fn) {
    // Accumulator columns 2t, 2t+1; column c's count lives in the quad of group c.
    const uint32_t col_w[2] = {__shfl_sync(0xffffffffu, row_w[fn], (2 * quad_lane) * 4),
                               __shfl_sync(0xffffffffu, row_w[fn], (2 * quad_lane + 1) * 4)};
#pragma unroll
    for (int fm = 0; fm < FragsM; ++fm) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int m = m0 + warp_row + fm * 16 + group + 8 * half;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int n = n0 + warp_col + fn * 8 + 2 * quad_lane + e;
          if (m < M && n < N) {
            store(m, n, combine(acc[fm][fn][2 * half + e], row_a[fm][half], col_w[e], split_K, p, q));
          }
        }
      }
    }
  }
#else
  __trap();  // built only for sm_80+; the host refuses older devices first
#endif
}

// Planes as the kernel reads them: contiguous, words a multiple of 4 (zero
// words appended when not: exact, and only for K not a multiple of 128), 16-byte aligned.
inline at::Tensor kernel_planes(const at::Tensor& planes) {
  at::Tensor out = pad_dim_to_multiple(planes.contiguous(), 2, kChunkWords);
  return is_aligned_16(out) ? out : out.clone();
}

// What only the device (current under the op's CUDAGuard) and the grid can
// refuse, checked before any kernel runs.
inline void check_gemm_launch(const char* op, int64_t N) {
  const auto* props = at::cuda::getCurrentDeviceProperties();
  MLX_CHECK(props->major >= 8, op, "needs a GPU of compute capability 8.0 or newer (1-bit tensor cores with "
            "AND-popc), got ", props->major, ".", props->minor);
  MLX_CHECK(ceil_div_dev<int64_t>(N, SmallTile::BN) <= 65535, op, "N = ", N, " needs more than 65535 CTA "
            "columns; at most ", 65535 * SmallTile::BN, " is supported");
}

// Tile and split-K choice for one problem.
struct GemmPlan {
  bool large_tile;
  int splits;            // > 1: the epilogue must accumulate (atomicAdd) into a zeroed output
  int slices_per_split;  // 512-bit K slices per split
};

inline GemmPlan plan_gemm(int64_t p, int64_t M, int64_t q, int64_t N, int64_t K) {
  const auto* props = at::cuda::getCurrentDeviceProperties();
  // The large tile at 8×8 bits needs 128 KiB of smem: more than sm_86/sm_89 give
  // a block (~100 KiB); the small tile (48 KiB at most) always fits.
  const int64_t large_smem = kStages * stage_words(p, q, LargeTile::BM, LargeTile::BN) * sizeof(uint32_t);
  const bool large_tile = M > 32 && large_smem <= static_cast<int64_t>(props->sharedMemPerBlockOptin);
  const int64_t ctas = large_tile ? ceil_div_dev<int64_t>(M, LargeTile::BM) * ceil_div_dev<int64_t>(N, LargeTile::BN)
                                  : ceil_div_dev<int64_t>(M, SmallTile::BM) * ceil_div_dev<int64_t>(N, SmallTile::BN);
  const int64_t slices = ceil_div_dev<int64_t>(K, kSliceWords * 32);
  // Aim at two CTAs per SM, keeping at least 4 slices (2048 bits of K) per split.
  const int64_t wanted = std::min(ceil_div_dev<int64_t>(2 * props->multiProcessorCount, ctas), slices / 4);
  const int64_t per_split = ceil_div_dev<int64_t>(slices, std::max<int64_t>(wanted, 1));
  return {large_tile, static_cast<int>(ceil_div_dev<int64_t>(slices, per_split)), static_cast<int>(per_split)};
}

template <typename Tile, typename Epilogue>
void launch_tile(const at::Tensor& a, const at::Tensor& w, int64_t K, const GemmPlan& plan, const Epilogue& store) {
  const int64_t p = a.size(0), M = a.size(1), q = w.size(0), N = w.size(1);
  const dim3 grid(ceil_div_dev<int64_t>(M, Tile::BM), ceil_div_dev<int64_t>(N, Tile::BN), plan.splits);
  const size_t smem = kStages * stage_words(p, q, Tile::BM, Tile::BN) * sizeof(uint32_t);
  auto kernel = bipolar_gemm_kernel<Tile, Epilogue>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  MLX_LAUNCH_KERNEL(kernel, grid, Tile::Threads, smem, at::cuda::getCurrentCUDAStream(),
      reinterpret_cast<const uint32_t*>(a.data_ptr<int32_t>()), reinterpret_cast<const uint32_t*>(w.data_ptr<int32_t>()),
      static_cast<int>(M), static_cast<int>(N), static_cast<int>(a.size(2)), static_cast<int>(K),
      static_cast<int>(p), static_cast<int>(q), plan.slices_per_split, store);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs the GEMM planned by plan_gemm with `store` as epilogue (after check_gemm_launch).
template <typename Epilogue>
void run_gemm(const at::Tensor& a_planes, const at::Tensor& w_planes, int64_t K, const GemmPlan& plan,
              const Epilogue& store) {
  const at::Tensor a = kernel_planes(a_planes), w = kernel_planes(w_planes);
  if (plan.large_tile) {
    launch_tile<LargeTile>(a, w, K, plan, store);
  } else {
    launch_tile<SmallTile>(a, w, K, plan, store);
  }
}

// The int32 epilogue: C itself (bipolar_gemm), or split-K partial results
// added into a zeroed int32 buffer.
struct StoreInt32 {
  int32_t* out;
  int N;
  bool accumulate;
  __device__ void operator()(int m, int n, int32_t c) const {
    int32_t* dst = out + static_cast<int64_t>(m) * N + n;
    if (accumulate) {
      atomicAdd(dst, c);
    } else {
      *dst = c;
    }
  }
};

}  // namespace mlx_kernels::bipolar
