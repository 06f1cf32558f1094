// bipolar_gemm on CUDA: the bit-plane tensor-core kernel of gemm_kernel.cuh
// with an epilogue that stores the exact int32 result.

#include "bipolar/gemm_kernel.cuh"
#include "common/registration.h"

namespace mlx_kernels::bipolar {
namespace {

struct StoreInt32 {
  int32_t* out;
  int N;
  __device__ void operator()(int m, int n, int32_t c) const { out[static_cast<int64_t>(m) * N + n] = c; }
};

at::Tensor bipolar_gemm_cuda(const at::Tensor& a_planes, const at::Tensor& w_planes, int64_t K) {
  check_gemm_args(a_planes, w_planes, K);
  const c10::cuda::CUDAGuard guard(a_planes.device());
  const int64_t M = a_planes.size(1), N = w_planes.size(1);
  check_gemm_launch(MLX_OP_NAME("bipolar_gemm"), N);
  if (M == 0 || N == 0 || K == 0) return at::zeros({M, N}, a_planes.options());
  at::Tensor c = at::empty({M, N}, a_planes.options());
  run_gemm(a_planes, w_planes, K, StoreInt32{c.data_ptr<int32_t>(), static_cast<int>(N)});
  return c;
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) { m.impl("bipolar_gemm", &bipolar_gemm_cuda); }

}  // namespace mlx_kernels::bipolar
