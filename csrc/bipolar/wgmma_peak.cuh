// The wgmma microbenchmark kernels of bipolar_mma_peak (mma_peak_sm90a.cu,
// built for sm_90a alone: callers check MLX_WITH_SM90A and a cc 9.0 device).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mlx_kernels::bipolar {

// m64n128 MMAs whose K is one 32-byte row of each operand.
enum class WgmmaKind {
  kB1And,  // m64n128k256 b1 AND-popc, s32 accumulate
  kS8,     // m64n128k32 s8, s32 accumulate
  kF16,    // m64n128k16 f16, f32 accumulate
};

// `blocks` one-warpgroup CTAs, each writing one value to sink[block].
void launch_wgmma_peak(WgmmaKind kind, int blocks, int iterations, int32_t* sink, cudaStream_t stream);

}  // namespace mlx_kernels::bipolar
