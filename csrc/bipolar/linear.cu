// bipolar_linear on CUDA: quantize the activations per row (planes.cu's
// kernel), then the bit-plane tensor-core GEMM of gemm_kernel.cuh with a
// dequantizing epilogue, x_scale[m]·w_scale[n]·C + bias[n] in x's dtype, so the
// int32 product never reaches global memory. Under split-K (decode-sized M,
// where the grid alone cannot fill the GPU) the splits add exact int32 partial
// results into a small M × N buffer that one elementwise pass then dequantizes.

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "bipolar/gemm_kernel.cuh"
#include "bipolar/planes_cuda.cuh"
#include "common/registration.h"

namespace mlx_kernels::bipolar {
namespace {

// bipolar_linear's epilogue: x_scale[m]·w_scale[n]·C (+ bias[n]) in the output dtype.
template <typename T>
struct StoreDequant {
  T* out;
  const float* x_scale;
  const float* w_scale;
  const T* bias;
  int N;
  __device__ void operator()(int m, int n, int32_t c) const {
    float y = static_cast<float>(c) * x_scale[m] * w_scale[n];
    if (bias != nullptr) y += static_cast<float>(bias[n]);
    out[static_cast<int64_t>(m) * N + n] = static_cast<T>(y);
  }
};

template <typename T>
__global__ void dequant_kernel(const int32_t* __restrict__ c, int64_t M, int N, StoreDequant<T> store) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    store(static_cast<int>(i / N), static_cast<int>(i % N), c[i]);
  }
}

// T is the CUDA type with the layout of out's (and bias's) dtype.
template <typename T>
void run_linear(const at::Tensor& x_planes, const at::Tensor& x_scale, const at::Tensor& w_planes,
                const at::Tensor& w_scale, const at::Tensor& bias, int64_t K, at::Tensor& out) {
  const int64_t M = out.size(0), N = out.size(1);
  const StoreDequant<T> store{static_cast<T*>(out.data_ptr()), x_scale.data_ptr<float>(), w_scale.data_ptr<float>(),
                              bias.defined() ? static_cast<const T*>(bias.data_ptr()) : nullptr, static_cast<int>(N)};
  const GemmPlan plan = plan_gemm(x_planes.size(0), M, w_planes.size(0), N, K);
  if (plan.splits == 1) {
    run_gemm(x_planes, w_planes, K, plan, store);
    return;
  }
  at::Tensor c = at::zeros({M, N}, out.options().dtype(at::kInt));
  run_gemm(x_planes, w_planes, K, plan, StoreInt32{c.data_ptr<int32_t>(), static_cast<int>(N), true});
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div_dev<int64_t>(M * N, kThreads), 65535));
  MLX_LAUNCH_KERNEL(dequant_kernel<T>, blocks, kThreads, 0, at::cuda::getCurrentCUDAStream(), c.data_ptr<int32_t>(), M,
                                                                              static_cast<int>(N), store);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor bipolar_linear_cuda(const at::Tensor& x, const at::Tensor& w_planes, const at::Tensor& w_scale_in,
                               int64_t x_bits, const c10::optional<at::Tensor>& bias_in) {
  check_linear_args(x, w_planes, w_scale_in, x_bits, bias_in);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = x.size(-1), N = w_planes.size(1);
  check_gemm_launch(MLX_OP_NAME("bipolar_linear"), N);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  const at::Tensor x2d = x.reshape({leading_rows(x), K});
  const int64_t M = x2d.size(0);
  if (M == 0 || N == 0) return at::empty(out_shape, x.options());
  if (K == 0) {
    at::Tensor out = at::zeros({M, N}, x.options());
    if (bias_in) out.add_(*bias_in);
    return out.view(out_shape);
  }
  at::Tensor out = at::empty({M, N}, x.options());
  const auto [x_planes, x_scale] = quantize_rows_cuda(x2d, x_bits);
  const at::Tensor w_scale = w_scale_in.contiguous();
  const at::Tensor bias = bias_in ? bias_in->contiguous() : at::Tensor();
  switch (x.scalar_type()) {  // the dtypes check_linear_args admits
    case at::kHalf: run_linear<__half>(x_planes, x_scale, w_planes, w_scale, bias, K, out); break;
    case at::kBFloat16: run_linear<__nv_bfloat16>(x_planes, x_scale, w_planes, w_scale, bias, K, out); break;
    default: run_linear<float>(x_planes, x_scale, w_planes, w_scale, bias, K, out); break;
  }
  return out.view(out_shape);
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) { m.impl("bipolar_linear", &bipolar_linear_cuda); }

}  // namespace mlx_kernels::bipolar
