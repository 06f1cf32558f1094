// bipolar_mma_peak (internal, benchmark only): the raw throughput of one
// mma.sync shape, so a GPU session can see what 1-bit tensor cores deliver next
// to int4/int8 on its device before tuning bipolar_gemm (the b1 rate on Hopper
// is undocumented). Every warp keeps kChains independent accumulator chains in
// flight, issuing `iterations` rounds of back-to-back MMAs on register operands
// (no memory traffic); `asm volatile` keeps every MMA, the sink keeps the result.
// The "wgmma_*" kinds run Hopper's warpgroup MMAs instead (mma_peak_sm90a.cu).

#include <ATen/ops/empty.h>

#include "bipolar/wgmma_peak.cuh"
#include "common/cuda_utils.cuh"
#include "common/registration.h"

namespace mlx_kernels::bipolar {
namespace {

constexpr int kChains = 8;
constexpr int kThreads = 128;

enum class MmaKind { kB1And, kS4, kS8 };

template <MmaKind Kind>
__device__ __forceinline__ void mma(uint32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#define MLX_MMA_ASM(shape)                                                                              \
  asm volatile("mma.sync.aligned." shape " {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n" \
               : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])                                       \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
  if constexpr (Kind == MmaKind::kB1And) {
    MLX_MMA_ASM("m16n8k256.row.col.s32.b1.b1.s32.and.popc");
  } else if constexpr (Kind == MmaKind::kS4) {
    MLX_MMA_ASM("m16n8k64.row.col.s32.s4.s4.s32");
  } else {
    MLX_MMA_ASM("m16n8k32.row.col.s32.s8.s8.s32");
  }
#undef MLX_MMA_ASM
}

template <MmaKind Kind>
__global__ void __launch_bounds__(kThreads) mma_peak_kernel(int iterations, int32_t* sink) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t seed = threadIdx.x * 0x9e3779b9u + blockIdx.x;
  const uint32_t a[4] = {seed, seed * 3u, ~seed, seed ^ 0x55555555u};
  const uint32_t b[2] = {seed * 7u, seed ^ 0x33333333u};
  uint32_t d[kChains][4] = {};
  for (int it = 0; it < iterations; ++it) {
#pragma unroll
    for (int c = 0; c < kChains; ++c) mma<Kind>(d[c], a, b);
  }
  uint32_t sum = 0;
#pragma unroll
  for (int c = 0; c < kChains; ++c) sum += d[c][0] + d[c][1] + d[c][2] + d[c][3];
  if (threadIdx.x == 0) sink[blockIdx.x] = static_cast<int32_t>(sum);
#else
  __trap();
#endif
}

at::Tensor bipolar_mma_peak_cuda(const at::Tensor& like, c10::string_view kind, int64_t blocks, int64_t iterations) {
  constexpr const char* op = MLX_OP_NAME("bipolar_mma_peak");
  MLX_CHECK_VALUE(blocks >= 1 && blocks <= (int64_t{1} << 31) - 1, op, "'blocks' must be in 1..2^31-1, got ", blocks);
  MLX_CHECK_VALUE(iterations >= 1 && iterations <= (int64_t{1} << 31) - 1, op,
                  "'iterations' must be in 1..2^31-1, got ", iterations);
  const c10::cuda::CUDAGuard guard(like.device());
  const auto* props = at::cuda::getCurrentDeviceProperties();
  MLX_CHECK(props->major >= 8, op, "needs compute capability 8.0 or newer, got ", props->major, ".", props->minor);
  at::Tensor sink = at::empty({blocks}, like.options().dtype(at::kInt));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int iters = static_cast<int>(iterations);
  if (kind == "b1_and") {
    MLX_LAUNCH_KERNEL(mma_peak_kernel<MmaKind::kB1And>, blocks, kThreads, 0, stream, iters, sink.data_ptr<int32_t>());
  } else if (kind == "s4") {
    MLX_LAUNCH_KERNEL(mma_peak_kernel<MmaKind::kS4>, blocks, kThreads, 0, stream, iters, sink.data_ptr<int32_t>());
  } else if (kind == "s8") {
    MLX_LAUNCH_KERNEL(mma_peak_kernel<MmaKind::kS8>, blocks, kThreads, 0, stream, iters, sink.data_ptr<int32_t>());
  } else if (kind == "wgmma_b1_and" || kind == "wgmma_s8" || kind == "wgmma_f16") {
#ifdef MLX_WITH_SM90A
    MLX_CHECK(runs_sm90a_code(*props), op, "'kind' \"", kind,
              "\" needs a compute capability 9.0 GPU, got ", props->major, ".", props->minor);
    const WgmmaKind wgmma_kind = kind == "wgmma_b1_and" ? WgmmaKind::kB1And
                                 : kind == "wgmma_s8"   ? WgmmaKind::kS8
                                                        : WgmmaKind::kF16;
    launch_wgmma_peak(wgmma_kind, static_cast<int>(blocks), iters, sink.data_ptr<int32_t>(), stream);
#else
    MLX_CHECK(false, op, "'kind' \"", kind, "\" needs a build with 9.0a in TORCH_CUDA_ARCH_LIST");
#endif
  } else {
    MLX_CHECK_VALUE(false, op, "'kind' must be \"b1_and\", \"s4\", \"s8\", \"wgmma_b1_and\", \"wgmma_s8\" or ",
                    "\"wgmma_f16\", got \"", kind, "\"");
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return sink;
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) { m.impl("bipolar_mma_peak", &bipolar_mma_peak_cuda); }

}  // namespace mlx_kernels::bipolar
