// CUDA kernels that move between values and bit-planes: bipolar_pack,
// bipolar_unpack, bipolar_quantize (format in bipolar.h).
//
// Packing is warp-cooperative: the 32 lanes of a warp take the 32 elements of
// one plane word (coalesced reads), compute their codes u, and one
// __ballot_sync per plane gathers bit b of every lane's u into that plane's
// word, which lane b writes. Lanes past K vote 0, so padding bits are 0.
// Quantize is one block per row: a block-wide absmax, then the same packing.

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include "bipolar/bipolar.h"
#include "bipolar/planes_cuda.cuh"
#include "common/cuda_utils.cuh"
#include "common/registration.h"

namespace mlx_kernels::bipolar {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Lane k of the warp holds the code u of element word·32 + k (valid when < K);
// lane b < bits writes plane b's word.
__device__ __forceinline__ void write_plane_word(uint32_t u, bool valid, int bits, int32_t* planes,
                                                 int64_t rows, int64_t row, int64_t words, int64_t word) {
  const int lane = threadIdx.x % 32;
  for (int b = 0; b < bits; ++b) {
    const uint32_t plane_word = __ballot_sync(0xffffffffu, valid && ((u >> b) & 1u));
    if (lane == b) planes[(b * rows + row) * words + word] = static_cast<int32_t>(plane_word);
  }
}

template <typename scalar_t>
__global__ void pack_kernel(const scalar_t* __restrict__ values, int64_t rows, int64_t K, int bits,
                            int32_t* __restrict__ planes) {
  const int64_t words = words_for(K);
  const int64_t top = (int64_t{1} << bits) - 1;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t item = warp; item < rows * words; item += warps) {  // warp-uniform loop
    const int64_t row = item / words, word = item % words;
    const int64_t k = word * 32 + threadIdx.x % 32;
    const bool valid = k < K;
    const uint32_t u = valid ? static_cast<uint32_t>((static_cast<int64_t>(values[row * K + k]) + top) / 2) : 0u;
    write_plane_word(u, valid, bits, planes, rows, row, words, word);
  }
}

__global__ void unpack_kernel(const uint32_t* __restrict__ planes, int64_t rows, int64_t K, int bits,
                              int32_t* __restrict__ values) {
  const int64_t words = words_for(K);
  const int32_t top = (1 << bits) - 1;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * K;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / K, k = i % K;
    int32_t u = 0;
    for (int b = 0; b < bits; ++b) {
      u |= static_cast<int32_t>((planes[(b * rows + row) * words + k / 32] >> (k % 32)) & 1u) << b;
    }
    values[i] = 2 * u - top;
  }
}

// One block per row: scale = absmax / (2^bits − 1) (NaN for a row with a NaN or
// ±Inf: row_scale_for), then the nearest odd level of x / scale per element
// (bipolar.h's nearest_level_code, shared with the CPU).
template <typename scalar_t>
__global__ void quantize_kernel(const scalar_t* __restrict__ x, int64_t rows, int64_t K, int bits,
                                int32_t* __restrict__ planes, float* __restrict__ scale) {
  MLX_SHARED(float[kWarps], warp_max);
  const int64_t row = blockIdx.x;
  const scalar_t* x_row = x + row * K;
  float absmax = 0.0f;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    absmax = absmax_keep_nan(absmax, fabsf(static_cast<float>(x_row[k])));
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    absmax = absmax_keep_nan(absmax, __shfl_xor_sync(0xffffffffu, absmax, offset));
  }
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = absmax;
  __syncthreads();
  absmax = 0.0f;
  for (int w = 0; w < kWarps; ++w) absmax = absmax_keep_nan(absmax, warp_max[w]);
  const float s = row_scale_for(absmax, bits);  // NaN for a row with a NaN or ±Inf
  if (threadIdx.x == 0) scale[row] = s;

  const int64_t words = words_for(K);
  for (int64_t word = threadIdx.x / 32; word < words; word += kWarps) {
    const int64_t k = word * 32 + threadIdx.x % 32;
    const bool valid = k < K;
    const float v = valid && s > 0.0f ? static_cast<float>(x_row[k]) / s : 0.0f;
    write_plane_word(nearest_level_code(v, bits), valid, bits, planes, rows, row, words, word);
  }
}

int grid_for(int64_t threads_needed) {
  return static_cast<int>(std::min<int64_t>(ceil_div_dev<int64_t>(threads_needed, kThreads), 65535 * 8));
}

at::Tensor bipolar_pack_cuda(const at::Tensor& values_in, int64_t bits) {
  check_pack_args(values_in, bits);
  const c10::cuda::CUDAGuard guard(values_in.device());
  const at::Tensor values = values_in.contiguous();
  const int64_t R = values.size(0), K = values.size(1);
  at::Tensor planes = at::empty({bits, R, words_for(K)}, values.options().dtype(at::kInt));
  if (planes.numel() == 0) return planes;
  AT_DISPATCH_INTEGRAL_TYPES(values.scalar_type(), "bipolar_pack_cuda", [&] {
    MLX_LAUNCH_KERNEL(pack_kernel<scalar_t>, grid_for(R * words_for(K) * 32), kThreads, 0, at::cuda::getCurrentCUDAStream(),
        values.data_ptr<scalar_t>(), R, K, static_cast<int>(bits), planes.data_ptr<int32_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return planes;
}

at::Tensor bipolar_unpack_cuda(const at::Tensor& planes_in, int64_t K) {
  check_unpack_args(planes_in, K);
  const c10::cuda::CUDAGuard guard(planes_in.device());
  const at::Tensor planes = planes_in.contiguous();
  const int64_t R = planes.size(1);
  at::Tensor values = at::empty({R, K}, planes.options());
  if (values.numel() == 0) return values;
  MLX_LAUNCH_KERNEL(unpack_kernel, grid_for(R * K), kThreads, 0, at::cuda::getCurrentCUDAStream(),
      reinterpret_cast<const uint32_t*>(planes.data_ptr<int32_t>()), R, K, static_cast<int>(planes.size(0)),
      values.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return values;
}

std::tuple<at::Tensor, at::Tensor> bipolar_quantize_cuda(const at::Tensor& x, int64_t bits) {
  check_quantize_args(MLX_OP_NAME("bipolar_quantize"), x, bits);
  const c10::cuda::CUDAGuard guard(x.device());
  return quantize_rows_cuda(x, bits);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_rows_cuda(const at::Tensor& x_in, int64_t bits) {
  const at::Tensor x = x_in.contiguous();
  const int64_t R = x.size(0), K = x.size(1);
  at::Tensor planes = at::empty({bits, R, words_for(K)}, x.options().dtype(at::kInt));
  at::Tensor scale = at::empty({R}, x.options().dtype(at::kFloat));
  if (R == 0) return {planes, scale};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bipolar_quantize_cuda", [&] {
    MLX_LAUNCH_KERNEL(quantize_kernel<scalar_t>, R, kThreads, 0, at::cuda::getCurrentCUDAStream(),
        x.data_ptr<scalar_t>(), R, K, static_cast<int>(bits), planes.data_ptr<int32_t>(), scale.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {planes, scale};
}

MLX_LIBRARY_IMPL(CUDA, m) {
  m.impl("bipolar_pack", &bipolar_pack_cuda);
  m.impl("bipolar_unpack", &bipolar_unpack_cuda);
  m.impl("bipolar_quantize", &bipolar_quantize_cuda);
}

}  // namespace mlx_kernels::bipolar
