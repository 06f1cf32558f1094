// One attention pass on tensor cores: FlashAttention-2 with mma.sync m16n8k16
// (fp16/bf16 operands, fp32 accumulation), the CUDA twin of cpu.cpp.
//
// Grid: (query-row tiles, KV heads, batch). A thread block owns kTileRows = 64
// rows of one (batch, KV head); a row is one (query position, query head of
// the KV group), so GQA packs the group's query heads into the M dimension and
// every K/V tile loaded serves all of them. In the prefix pass of
// shared_prefix_attention the "batch" is 1 and the rows are all B·Sq queries ×
// the group's heads, against the single prefix copy: Hydragen's batched
// matrix multiply instead of B matrix-vector products.
//
// Each of the 4 warps owns 16 rows. Q is loaded once into registers (A
// fragments). The block walks the visible keys in tiles of 64:
//   S = Q·Kᵀ (16×64 per warp, in registers) → mask (ragged length, causal) →
//   online softmax in the log2 domain (row max/sum across the 4 lanes of a
//   quad) → P (the S accumulators repacked as A fragments, no shared-memory
//   round trip) → O += P·V.
// K and V tiles go to shared memory with cp.async, overlapped FA2-style: V of
// tile t loads while S = Q·Kᵀ runs, K of tile t+1 while O += P·V runs. Rows
// are padded by 16 bytes so ldmatrix's 8 row addresses hit distinct banks.
// Keys past the visible range are zero-filled (never read out of bounds, and
// masked P = 0 never meets uninitialized V).
//
// Epilogue: O / rowsum, natural-log LSE, optional merge with a previous fp32
// state (the prefix pass's) — the suffix pass's fused merge.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention/flash_attention.cuh"
#include "attention/softmax_math.h"
#include "common/cuda_utils.cuh"
#include "common/mma.cuh"

namespace mlx_kernels::attention {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTileRows = kFlashTileRows;  // one mma M (16 rows) per warp
static_assert(kTileRows == 16 * kWarps);
constexpr int kTileKeys = 64;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int HeadDim>
struct TileLayout {
  static constexpr int kStride = HeadDim + 8;          // elements per shared-memory row (+16 bytes)
  static constexpr int kChunksPerRow = HeadDim / 8;    // 16-byte cp.async chunks per row
  static constexpr int kSmemElems = (kTileRows + 2 * kTileKeys) * kStride;  // Q, K, V tiles
};

// --- the kernel -----------------------------------------------------------------

// Copies Rows rows of HeadDim elements into shared memory; row r comes from
// row_source(r), or is zero-filled when that is null (`any_valid` is only
// there to give the zero-fill copy a legal address).
template <int HeadDim, int Rows, typename T, typename RowSource>
__device__ inline void load_tile_async(T* smem, const T* any_valid, RowSource row_source) {
  using Layout = TileLayout<HeadDim>;
  for (int chunk = threadIdx.x; chunk < Rows * Layout::kChunksPerRow; chunk += kThreads) {
    const int row = chunk / Layout::kChunksPerRow, col = chunk % Layout::kChunksPerRow * 8;
    const T* src = row_source(row);
    cp_async_16(smem + row * Layout::kStride + col, src != nullptr ? src + col : any_valid, src != nullptr);
  }
}

template <typename T, int HeadDim>
__global__ void __launch_bounds__(kThreads) flash_attention_kernel(const AttentionParams p) {
  using Layout = TileLayout<HeadDim>;
  constexpr int kStride = Layout::kStride;
  constexpr int kKeySteps = HeadDim / 16;    // mma k-steps of S = Q·Kᵀ
  constexpr int kKeyTiles8 = kTileKeys / 8;  // n-tiles of S
  constexpr int kDimTiles8 = HeadDim / 8;    // n-tiles of O

  MLX_DYNAMIC_SHARED(unsigned char, smem_bytes);
  T* q_smem = reinterpret_cast<T*>(smem_bytes);
  T* k_smem = q_smem + kTileRows * kStride;
  T* v_smem = k_smem + kTileKeys * kStride;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y, b = blockIdx.z;
  const int group = static_cast<int>(p.heads_q / p.heads_kv);
  const int seq_q = static_cast<int>(p.seq_q);
  const int rows = seq_q * group;
  const int row0 = blockIdx.x * kTileRows;
  const int key_len = static_cast<int>(p.key_len(b));
  // Rows are ordered by query position: the tile's last row sees the most keys.
  const int last_row = min(rows, row0 + kTileRows) - 1;
  const int tile_keys = static_cast<int>(visible_keys(key_len, seq_q, last_row / group, p.causal));
  const int key_tiles = (tile_keys + kTileKeys - 1) / kTileKeys;

  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + int64_t{h} * group * HeadDim;
  const T* k = static_cast<const T*>(p.k) + b * p.kv_batch_stride + int64_t{h} * HeadDim;
  const T* v = static_cast<const T*>(p.v) + b * p.kv_batch_stride + int64_t{h} * HeadDim;

  // Row r of the tile: query position (row0 + r) / group, head h·group + (row0 + r) % group.
  load_tile_async<HeadDim, kTileRows>(q_smem, q, [&](int r) -> const T* {
    const int row = row0 + r;
    return row < rows ? q + int64_t{row / group} * p.q_seq_stride + (row % group) * HeadDim : nullptr;
  });
  auto load_kv_tile = [&](T* smem, const T* src, int key0) {
    load_tile_async<HeadDim, kTileKeys>(smem, src, [&](int j) -> const T* {
      return key0 + j < tile_keys ? src + int64_t{key0 + j} * p.kv_seq_stride : nullptr;
    });
  };
  if (key_tiles > 0) load_kv_tile(k_smem, k, 0);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  // Q as A fragments, held for the whole key loop.
  uint32_t q_frag[kKeySteps][4];
  #pragma unroll
  for (int ks = 0; ks < kKeySteps; ++ks) {
    ldmatrix_x4(q_frag[ks], q_smem + (warp * 16 + lane % 16) * kStride + ks * 16 + lane / 16 * 8);
  }

  // This thread's accumulator rows: warp·16 + lane/4 (c0, c1) and +8 (c2, c3).
  int row_keys[2];
  #pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + warp * 16 + lane / 4 + 8 * half;
    row_keys[half] = row < rows ? static_cast<int>(visible_keys(key_len, seq_q, row / group, p.causal)) : 0;
  }
  float o[kDimTiles8][4] = {};
  float row_max[2] = {-INFINITY, -INFINITY};  // log2 domain: scores · scale · log2(e)
  float row_sum[2] = {0.0f, 0.0f};            // this thread's partial sums; the quad's are added at the end
  const float scale_log2 = p.scale * kLog2e;
  const int quad_lane = lane % 4, matrix = lane / 8;  // ldmatrix.x4: lanes 8m..8m+7 address matrix m

  for (int tile = 0; tile < key_tiles; ++tile) {
    const int key0 = tile * kTileKeys;
    load_kv_tile(v_smem, v, key0);
    cp_async_commit();
    cp_async_wait<1>();  // K tile landed (V still in flight)
    __syncthreads();

    // S = Q·Kᵀ. K is [key][dim] in shared memory, i.e. Kᵀ column-major: plain
    // ldmatrix gives B fragments; matrices (keys +0/+8) × (dims +0/+8).
    float s[kKeyTiles8][4] = {};
    #pragma unroll
    for (int ks = 0; ks < kKeySteps; ++ks) {
      #pragma unroll
      for (int pair = 0; pair < kKeyTiles8 / 2; ++pair) {
        uint32_t kb[4];
        ldmatrix_x4(kb, k_smem + (pair * 16 + matrix / 2 * 8 + lane % 8) * kStride + ks * 16 + matrix % 2 * 8);
        mma_m16n8k16<T>(s[2 * pair], q_frag[ks], kb[0], kb[1]);
        mma_m16n8k16<T>(s[2 * pair + 1], q_frag[ks], kb[2], kb[3]);
      }
    }

    // Mask and online softmax, per accumulator row.
    #pragma unroll
    for (int half = 0; half < 2; ++half) {
      float tile_max = -INFINITY;
      #pragma unroll
      for (int nt = 0; nt < kKeyTiles8; ++nt) {
        #pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][2 * half + e];
          x = key0 + nt * 8 + quad_lane * 2 + e < row_keys[half] ? x * scale_log2 : -INFINITY;
          tile_max = fmaxf(tile_max, x);
        }
      }
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(row_max[half], tile_max);
      // Nothing visible yet: subtract 0, so masked p = exp2(−inf) = 0 and no −inf − (−inf).
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      const float rescale = exp2f(row_max[half] - base);
      float tile_sum = 0.0f;
      #pragma unroll
      for (int nt = 0; nt < kKeyTiles8; ++nt) {
        #pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[nt][2 * half + e];
          x = exp2f(x - base);
          tile_sum += x;
        }
      }
      row_sum[half] = row_sum[half] * rescale + tile_sum;
      row_max[half] = new_max;
      #pragma unroll
      for (int dt = 0; dt < kDimTiles8; ++dt) {
        o[dt][2 * half] *= rescale;
        o[dt][2 * half + 1] *= rescale;
      }
    }

    __syncthreads();  // every warp is done with the K tile
    if (tile + 1 < key_tiles) load_kv_tile(k_smem, k, key0 + kTileKeys);
    cp_async_commit();
    cp_async_wait<1>();  // V tile landed (next K still in flight)
    __syncthreads();

    // O += P·V. The accumulators of S n-tiles 2kk and 2kk+1 are exactly the A
    // fragment of k-step kk. V is [key][dim]: ldmatrix.trans gives B
    // fragments; matrices (keys +0/+8) × (dims +0/+8).
    #pragma unroll
    for (int kk = 0; kk < kTileKeys / 16; ++kk) {
      const uint32_t p_frag[4] = {pack_float2<T>(s[2 * kk][0], s[2 * kk][1]), pack_float2<T>(s[2 * kk][2], s[2 * kk][3]),
                                  pack_float2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                  pack_float2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      #pragma unroll
      for (int pair = 0; pair < kDimTiles8 / 2; ++pair) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, v_smem + (kk * 16 + matrix % 2 * 8 + lane % 8) * kStride + pair * 16 + matrix / 2 * 8);
        mma_m16n8k16<T>(o[2 * pair], p_frag, vb[0], vb[1]);
        mma_m16n8k16<T>(o[2 * pair + 1], p_frag, vb[2], vb[3]);
      }
    }
    __syncthreads();  // every warp is done with the V tile before the next one lands
  }

  // Epilogue: normalize, LSE, merge the previous state in, store.
  #pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = row_sum[half];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = row0 + warp * 16 + lane / 4 + 8 * half;
    if (row >= rows) continue;
    const int i = row / group, head = h * group + row % group;
    const float* prev_lse =
        p.prev_lse != nullptr ? p.prev_lse + b * p.prev_lse_batch_stride + head * p.prev_lse_head_stride + i : nullptr;
    const RowEpilogue e = finish_row(row_max[half] * kLn2, sum, prev_lse);
    const int64_t out_offset = b * p.out_batch_stride + i * p.out_seq_stride + int64_t{head} * HeadDim;
    #pragma unroll
    for (int dt = 0; dt < kDimTiles8; ++dt) {
      const int64_t offset = out_offset + dt * 8 + quad_lane * 2;
      float2 value = make_float2(e.w_this * o[dt][2 * half], e.w_this * o[dt][2 * half + 1]);
      if (prev_lse != nullptr) {
        const float2 prev = *reinterpret_cast<const float2*>(p.prev_out + offset);
        value.x += e.w_prev * prev.x;
        value.y += e.w_prev * prev.y;
      }
      if (p.out_fp32) {
        *reinterpret_cast<float2*>(static_cast<float*>(p.out) + offset) = value;
      } else {
        *reinterpret_cast<uint32_t*>(static_cast<T*>(p.out) + offset) = pack_float2<T>(value.x, value.y);
      }
    }
    if (quad_lane == 0) p.lse[b * p.lse_batch_stride + head * p.lse_head_stride + i] = e.lse;
  }
}

template <typename T, int HeadDim>
void launch(const AttentionParams& p, cudaStream_t stream) {
  constexpr int smem_bytes = TileLayout<HeadDim>::kSmemElems * sizeof(T);
  auto* kernel = flash_attention_kernel<T, HeadDim>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  // grid.z is at most 65535: larger batches go in slices, each a pass over
  // batch entries [b0, b0 + slice) with every per-batch pointer moved along.
  constexpr int64_t kMaxBatchPerLaunch = 65535;
  for (int64_t b0 = 0; b0 < p.batch; b0 += kMaxBatchPerLaunch) {
    AttentionParams slice = p;
    slice.batch = std::min(kMaxBatchPerLaunch, p.batch - b0);
    slice.q = static_cast<const T*>(p.q) + b0 * p.q_batch_stride;
    slice.k = static_cast<const T*>(p.k) + b0 * p.kv_batch_stride;
    slice.v = static_cast<const T*>(p.v) + b0 * p.kv_batch_stride;
    slice.out = p.out_fp32 ? static_cast<void*>(static_cast<float*>(p.out) + b0 * p.out_batch_stride)
                           : static_cast<void*>(static_cast<T*>(p.out) + b0 * p.out_batch_stride);
    slice.lse = p.lse + b0 * p.lse_batch_stride;
    if (p.prev_out != nullptr) slice.prev_out = p.prev_out + b0 * p.out_batch_stride;
    if (p.prev_lse != nullptr) slice.prev_lse = p.prev_lse + b0 * p.prev_lse_batch_stride;
    if (p.key_lens != nullptr) slice.key_lens = p.key_lens + b0;
    if (p.split_total_keys >= 0) slice.split_total_keys = p.split_total_keys - b0 * p.seq_k;
    const dim3 grid(static_cast<unsigned>(ceil_div_dev<int64_t>(p.rows(), kTileRows)),
                    static_cast<unsigned>(p.heads_kv), static_cast<unsigned>(slice.batch));
    MLX_LAUNCH_KERNEL(kernel, grid, kThreads, smem_bytes, stream, slice);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T>
void launch_head_dim(const AttentionParams& p, cudaStream_t stream) {
  if (p.head_dim == 64) {
    launch<T, 64>(p, stream);
  } else {
    launch<T, 128>(p, stream);
  }
}

bool aligned_16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

bool flash_attention_supports(const AttentionParams& p, at::ScalarType dtype) {
  return (dtype == at::kHalf || dtype == at::kBFloat16) && (p.head_dim == 64 || p.head_dim == 128) &&
         aligned_16(p.q) && aligned_16(p.k) && aligned_16(p.v) && p.q_seq_stride % 8 == 0 &&
         p.q_batch_stride % 8 == 0 && p.kv_seq_stride % 8 == 0 && p.kv_batch_stride % 8 == 0;
}

void flash_attention_pass(const AttentionParams& p, at::ScalarType dtype, cudaStream_t stream) {
  if (dtype == at::kHalf) {
    launch_head_dim<__half>(p, stream);
  } else {
    launch_head_dim<__nv_bfloat16>(p, stream);
  }
}

}  // namespace mlx_kernels::attention
