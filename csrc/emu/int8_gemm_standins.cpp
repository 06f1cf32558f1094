// Stand-ins, in the SIMT emulator build only, for the int8 GEMMs that are
// CUTLASS kernels on the GPU (int8_mm.cu, int8_gemm_sm80_*.cu). The emulator
// runs our hand-written kernels, not CUTLASS's: so that int8_gemm's own
// kernels around the GEMM (quantization, outlier columns, the decode GEMV, the
// host dispatch) run emulated on every shape, its M > 16 product comes from
// here: the exact int32 product and the sm80 epilogue's arithmetic,
// (acc · row_absmax[m]) · col_scale[n] + bias[n] as one FMA. int8_mm itself has
// no emulated kernel (its CUDA tests are GPU-only).

#include <ATen/ATen.h>
#include <cutlass/numeric_types.h>

#include <cmath>
#include <type_traits>

#include "int8/int8_gemm.cuh"

namespace mlx_kernels::int8 {

bool use_sm90_int8_kernels(const at::Tensor&) { return false; }

at::Tensor int8_mm_unchecked_cuda(const at::Tensor& a, const at::Tensor& b) {
  return at::mm(a.to(at::kLong), b.to(at::kLong).t()).to(at::kInt);
}

template <typename ElementD, int TileM>
void run_int8_dequant_gemm_sm80(const Int8DequantProblem& p, cudaStream_t) {
  using Out = std::conditional_t<std::is_same_v<ElementD, cutlass::half_t>, at::Half, at::BFloat16>;
  auto* out = static_cast<Out*>(p.out);
  for (int m = 0; m < p.M; ++m) {
    for (int n = 0; n < p.N; ++n) {
      int32_t acc = 0;
      for (int k = 0; k < p.K; ++k) {
        acc += int32_t{p.x_i8[static_cast<int64_t>(m) * p.K + k]} * int32_t{p.w_i8[static_cast<int64_t>(n) * p.K + k]};
      }
      const float bias = p.bias != nullptr ? p.bias[n] : 0.0f;
      out[static_cast<int64_t>(m) * p.N + n] =
          static_cast<Out>(std::fma(static_cast<float>(acc) * p.row_absmax[m], p.col_scale[n], bias));
    }
  }
}

template void run_int8_dequant_gemm_sm80<cutlass::half_t, 64>(const Int8DequantProblem&, cudaStream_t);
template void run_int8_dequant_gemm_sm80<cutlass::half_t, 128>(const Int8DequantProblem&, cudaStream_t);
template void run_int8_dequant_gemm_sm80<cutlass::bfloat16_t, 64>(const Int8DequantProblem&, cudaStream_t);
template void run_int8_dequant_gemm_sm80<cutlass::bfloat16_t, 128>(const Int8DequantProblem&, cudaStream_t);

}  // namespace mlx_kernels::int8
