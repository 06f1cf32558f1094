// CUDA helpers shared by several kernel families.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/kernel_launch.cuh"

namespace mlx_kernels {

template <typename T>
__host__ __device__ constexpr T ceil_div_dev(T a, T b) {
  return (a + b - 1) / b;
}

// The GPU's global memory for check_alloc (common/checks.h): registered at load
// time by every CUDA translation unit (the same function each time).
inline int64_t cuda_global_memory_bytes(c10::DeviceIndex index) {
  return static_cast<int64_t>(at::cuda::getDeviceProperties(index)->totalGlobalMem);
}
[[maybe_unused]] static const bool cuda_memory_query_registered = (cuda_memory_query() = &cuda_global_memory_bytes, true);

// Whether machine code built for sm_90a (wgmma, setmaxnreg) runs on a device:
// arch-specific targets run on their exact compute capability only.
inline bool runs_sm90a_code(const cudaDeviceProp& props) { return props.major == 9 && props.minor == 0; }

// Zero-pads `t` along `dim` up to a multiple of `multiple` (no copy when it
// already is one). Tensor-core kernels need 16-byte aligned rows; padding with
// zeros keeps GEMM results exact.
inline at::Tensor pad_dim_to_multiple(const at::Tensor& t, int64_t dim, int64_t multiple) {
  const int64_t size = t.size(dim);
  const int64_t padded = (size + multiple - 1) / multiple * multiple;
  if (padded == size) return t;
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  shape[dim] = padded;
  at::Tensor out = at::zeros(shape, t.options());
  out.narrow(dim, 0, size).copy_(t);
  return out;
}

// True when the tensor's data starts on a 16-byte boundary (cp.async / ldmatrix).
inline bool is_aligned_16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// An fp32 or fp64 accumulator written out as the tensor's element type T: fp16 and
// bf16 round to nearest (the intrinsics; a plain cast would go through c10's
// host-side conversion), wider types are a cast.
template <typename T>
__device__ T from_acc(float v) {
  if constexpr (std::is_same_v<T, at::Half>) return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, at::BFloat16>) return __float2bfloat16_rn(v);
  else return static_cast<T>(v);
}
template <typename T>
__device__ T from_acc(double v) { return static_cast<T>(v); }

}  // namespace mlx_kernels
