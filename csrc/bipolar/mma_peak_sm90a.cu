// The wgmma half of bipolar_mma_peak (sm_90a only, see mma_peak.cu): the raw
// throughput of one warpgroup MMA shape, operands in shared memory, so the b1
// AND-popc rate of Hopper's wgmma can be set next to its s8 and f16 rates (and
// next to the mma.sync ones) before a bipolar wgmma GEMM is written.
//
// Each CTA is one warpgroup (128 threads) that issues `iterations` rounds of
// kWgmmasPerRound back-to-back m64n128 MMAs into one accumulator, keeping at
// most two rounds in flight (commit_group / wait_group 1), which is how a
// GEMM mainloop issues them. The operands are a 16 KiB shared buffer read
// through no-swizzle descriptors (A at 0, B at 2 KiB; core matrices of 8 rows ×
// 16 bytes, 128 bytes apart along K, 256 along M/N): what they hold does not
// change the rate.

#include <cuda_runtime.h>

#include <cstdint>

#include "bipolar/wgmma_peak.cuh"

namespace mlx_kernels::bipolar {
namespace {

constexpr int kWgmmaThreads = 128;
constexpr int kWgmmasPerRound = 4;
constexpr int kOperandBytes = 16384;
constexpr int kBOffsetBytes = 2048;

// A shared-memory matrix descriptor: start address, leading (K) and stride
// (M/N) byte offsets, each >> 4; swizzle mode 0 (none).
__device__ __forceinline__ uint64_t smem_descriptor(const void* smem, uint32_t offset_bytes) {
  const uint64_t address = static_cast<uint64_t>(__cvta_generic_to_shared(smem)) + offset_bytes;
  return ((address >> 4) & 0x3FFF) | (uint64_t{128 >> 4} << 16) | (uint64_t{256 >> 4} << 32);
}

// The 64 accumulator registers of an m64n128 MMA, per thread of the warpgroup.
#define MLX_WGMMA_D_REGS                                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "  \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "    \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "    \
  "%56, %57, %58, %59, %60, %61, %62, %63}"
#define MLX_WGMMA_D_OPERANDS(c)                                                                        \
  c(d[0]), c(d[1]), c(d[2]), c(d[3]), c(d[4]), c(d[5]), c(d[6]), c(d[7]), c(d[8]), c(d[9]), c(d[10]),   \
  c(d[11]), c(d[12]), c(d[13]), c(d[14]), c(d[15]), c(d[16]), c(d[17]), c(d[18]), c(d[19]), c(d[20]),  \
  c(d[21]), c(d[22]), c(d[23]), c(d[24]), c(d[25]), c(d[26]), c(d[27]), c(d[28]), c(d[29]), c(d[30]),  \
  c(d[31]), c(d[32]), c(d[33]), c(d[34]), c(d[35]), c(d[36]), c(d[37]), c(d[38]), c(d[39]), c(d[40]),  \
  c(d[41]), c(d[42]), c(d[43]), c(d[44]), c(d[45]), c(d[46]), c(d[47]), c(d[48]), c(d[49]), c(d[50]),  \
  c(d[51]), c(d[52]), c(d[53]), c(d[54]), c(d[55]), c(d[56]), c(d[57]), c(d[58]), c(d[59]), c(d[60]),  \
  c(d[61]), c(d[62]), c(d[63])
#define MLX_INT_ACC(x) "+r"(x)
#define MLX_FLOAT_ACC(x) "+f"(x)

template <WgmmaKind Kind>
struct Wgmma;

template <>
struct Wgmma<WgmmaKind::kB1And> {
  using Acc = uint32_t;
  __device__ __forceinline__ static void issue(Acc (&d)[64], uint64_t desc_a, uint64_t desc_b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc " MLX_WGMMA_D_REGS ", %64, %65, 1;\n"
                 : MLX_WGMMA_D_OPERANDS(MLX_INT_ACC)
                 : "l"(desc_a), "l"(desc_b));
  }
};

template <>
struct Wgmma<WgmmaKind::kS8> {
  using Acc = uint32_t;
  __device__ __forceinline__ static void issue(Acc (&d)[64], uint64_t desc_a, uint64_t desc_b) {
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 " MLX_WGMMA_D_REGS ", %64, %65, 1;\n"
                 : MLX_WGMMA_D_OPERANDS(MLX_INT_ACC)
                 : "l"(desc_a), "l"(desc_b));
  }
};

template <>
struct Wgmma<WgmmaKind::kF16> {
  using Acc = float;
  __device__ __forceinline__ static void issue(Acc (&d)[64], uint64_t desc_a, uint64_t desc_b) {
    // scale-d 1 (accumulate), scale-a/b 1, both operands K-major (no transpose).
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " MLX_WGMMA_D_REGS ", %64, %65, 1, 1, 1, 0, 0;\n"
                 : MLX_WGMMA_D_OPERANDS(MLX_FLOAT_ACC)
                 : "l"(desc_a), "l"(desc_b));
  }
};

#undef MLX_FLOAT_ACC
#undef MLX_INT_ACC
#undef MLX_WGMMA_D_OPERANDS
#undef MLX_WGMMA_D_REGS

template <WgmmaKind Kind>
__global__ void __launch_bounds__(kWgmmaThreads) wgmma_peak_kernel(int iterations, int32_t* sink) {
  __shared__ __align__(128) uint8_t operands[kOperandBytes];
  for (int i = threadIdx.x; i < kOperandBytes; i += kWgmmaThreads) operands[i] = static_cast<uint8_t>(i * 37 + 11);
  // Generic-proxy writes must be made visible to the async proxy that wgmma reads through.
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();

  using Acc = typename Wgmma<Kind>::Acc;
  Acc d[64] = {};
  const uint64_t desc_a = smem_descriptor(operands, 0), desc_b = smem_descriptor(operands, kBOffsetBytes);
  for (int it = 0; it < iterations; ++it) {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");  // as a GEMM mainloop does per k-tile
#pragma unroll
    for (int i = 0; i < kWgmmasPerRound; ++i) Wgmma<Kind>::issue(d, desc_a, desc_b);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
  }
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");

  uint32_t sum = 0;
#pragma unroll
  for (int i = 0; i < 64; ++i) sum += static_cast<uint32_t>(d[i]);
  if (threadIdx.x == 0) sink[blockIdx.x] = static_cast<int32_t>(sum);
}

}  // namespace

void launch_wgmma_peak(WgmmaKind kind, int blocks, int iterations, int32_t* sink, cudaStream_t stream) {
  switch (kind) {
    case WgmmaKind::kB1And:
      wgmma_peak_kernel<WgmmaKind::kB1And><<<blocks, kWgmmaThreads, 0, stream>>>(iterations, sink);
      break;
    case WgmmaKind::kS8:
      wgmma_peak_kernel<WgmmaKind::kS8><<<blocks, kWgmmaThreads, 0, stream>>>(iterations, sink);
      break;
    case WgmmaKind::kF16:
      wgmma_peak_kernel<WgmmaKind::kF16><<<blocks, kWgmmaThreads, 0, stream>>>(iterations, sink);
      break;
  }
}

}  // namespace mlx_kernels::bipolar
