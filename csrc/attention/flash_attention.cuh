// The tensor-core attention pass (flash_attention.cu), called by attention.cu.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

#include "attention/attention.h"

namespace mlx_kernels::attention {

// Query rows per thread block of the tensor-core kernel.
constexpr int kFlashTileRows = 64;

// True when the mma.sync kernel handles this pass: fp16/bf16, head_dim 64 or
// 128, 16-byte aligned rows (cp.async).
bool flash_attention_supports(const AttentionParams& p, at::ScalarType dtype);

// Runs the pass on `stream`; requires flash_attention_supports(p, dtype).
void flash_attention_pass(const AttentionParams& p, at::ScalarType dtype, cudaStream_t stream);

}  // namespace mlx_kernels::attention
