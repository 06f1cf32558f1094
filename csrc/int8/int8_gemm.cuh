// int8_gemm on CUDA: what the dispatcher (int8_gemm.cu) and the per-dtype
// CUTLASS translation units (int8_gemm_sm80_*.cu) share.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace mlx_kernels::int8 {

// out[m, n] = acc[m, n] · row_absmax[m] · col_scale[n] + bias[n], acc the exact
// int32 x_i8[m, :] · w_i8[n, :]. Both operands K-contiguous with row stride K.
struct Int8DequantProblem {
  const int8_t* x_i8;       // [M, K]
  const int8_t* w_i8;       // [N, K]
  const float* row_absmax;  // [M]
  const float* col_scale;   // [N]: absmax_w / 127²
  const float* bias;        // [N] or nullptr
  void* out;                // [M, N] in the output dtype, row stride N
  int M, N, K;
};

// CUTLASS 2.x tensor-core GEMM (mma.sync s8, sm80+) with the dequantization in
// an epilogue visitor tree. Needs K % 16 == 0, N % 4 == 0, 16-byte aligned
// operands, and the vectors padded to N. ElementD: cutlass::half_t or
// cutlass::bfloat16_t; TileM: 64 (small M) or 128. Each (ElementD, TileM) is
// instantiated in its own TU (int8_gemm_sm80_<dtype>_m<TileM>.cu).
template <typename ElementD, int TileM>
void run_int8_dequant_gemm_sm80(const Int8DequantProblem& problem, cudaStream_t stream);

// The arguments of the dequantizing epilogue tree, (acc · row_absmax[m]) ·
// col_scale[n] + bias[n], in the nesting both the Sm80 and the Sm90 visitor
// trees take (each node's children first, then its own, empty, arguments).
template <typename DequantizeArguments>
DequantizeArguments dequantize_arguments(const Int8DequantProblem& p) {
  return {{{},                        // acc
           {p.row_absmax, 0.0f, {}},  // row_absmax[m]
           {}},                       // multiply
          {p.col_scale, 0.0f, {}},    // col_scale[n]
          {p.bias, 0.0f, {}},         // bias[n] (null -> 0)
          {}};                        // multiply_add
}

// The same two GEMMs on wgmma + TMA (CUTLASS 3.x, int8_gemm_sm90.cuh): int8_mm's
// int32 product and int8_gemm's fused dequantization. Built only when the arch
// list has 9.0a (MLX_WITH_SM90A), run only on cc 9.0 (use_sm90_int8_kernels).
// Need N % 4 == 0 (int32) or N % 8 == 0 (fp16/bf16) besides the above. TileM:
// 64 (M <= kSm90SmallTileMaxM) or 128; each (output, TileM) in its own TU,
// int8_gemm_sm90a_*.cu.
constexpr int kSm90SmallTileMaxM = 64;
template <int TileM>
void run_int8_mm_sm90(const int8_t* a, const int8_t* b, int32_t* c, int M, int N, int K, cudaStream_t stream);
template <typename ElementD, int TileM>
void run_int8_dequant_gemm_sm90(const Int8DequantProblem& problem, cudaStream_t stream);

// Whether int8_mm and int8_gemm run the sm90 kernels on this device: a build
// with them, a cc 9.0 device, and MLX_INT8_SM80 unset (MLX_INT8_SM80=1 keeps
// the sm80 kernels, to compare the two or to step around a problem).
bool use_sm90_int8_kernels(const at::Tensor& on);

// The exact int32 product of int8_mm (int8_mm.cu) without its argument checks:
// int8_gemm's fp32-output path, whose own K limit (terms of at most 127·128) is
// looser than int8_mm's and whose K is already padded to a multiple of 16.
at::Tensor int8_mm_unchecked_cuda(const at::Tensor& a, const at::Tensor& b);

}  // namespace mlx_kernels::int8
