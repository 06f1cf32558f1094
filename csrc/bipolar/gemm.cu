// bipolar_gemm on CUDA: the bit-plane tensor-core kernel of gemm_kernel.cuh
// with an epilogue that stores the exact int32 result (adds it, under split-K).

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "bipolar/gemm_kernel.cuh"
#include "common/registration.h"

namespace mlx_kernels::bipolar {
namespace {

at::Tensor bipolar_gemm_cuda(const at::Tensor& a_planes, const at::Tensor& w_planes, int64_t K) {
  check_gemm_args(a_planes, w_planes, K);
  const c10::cuda::CUDAGuard guard(a_planes.device());
  const int64_t M = a_planes.size(1), N = w_planes.size(1);
  check_gemm_launch(MLX_OP_NAME("bipolar_gemm"), N);
  if (M == 0 || N == 0 || K == 0) return at::zeros({M, N}, a_planes.options());
  const GemmPlan plan = plan_gemm(a_planes.size(0), M, w_planes.size(0), N, K);
  at::Tensor c = plan.splits > 1 ? at::zeros({M, N}, a_planes.options()) : at::empty({M, N}, a_planes.options());
  run_gemm(a_planes, w_planes, K, plan, StoreInt32{c.data_ptr<int32_t>(), static_cast<int>(N), plan.splits > 1});
  return c;
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) { m.impl("bipolar_gemm", &bipolar_gemm_cuda); }

}  // namespace mlx_kernels::bipolar
