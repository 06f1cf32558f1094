// The fp16/bf16 instantiations of the CUDA convolution (tensor-core Monarch
// stages), in their own translation unit to keep compile times short.

#include "fftconv/fftconv_kernels.cuh"

namespace mlx_kernels::fftconv::detail {

void convolve_half(const Signal<at::Half>& signal, int64_t tasks, int64_t N, const float* spectrum,
                   int64_t keep_blocks, const at::TensorOptions& options) {
  run_tasks<at::Half, true, false>(signal, tasks, N, spectrum, nullptr, keep_blocks, options);
}

void convolve_bfloat16(const Signal<at::BFloat16>& signal, int64_t tasks, int64_t N, const float* spectrum,
                       int64_t keep_blocks, const at::TensorOptions& options) {
  run_tasks<at::BFloat16, true, false>(signal, tasks, N, spectrum, nullptr, keep_blocks, options);
}

}  // namespace mlx_kernels::fftconv::detail
