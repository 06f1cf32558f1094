// Entry points shared between the CUDA translation units of the bipolar family.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace mlx_kernels::bipolar {

// bipolar_quantize's kernel without the argument checks (x [R, K] on a CUDA
// device, already checked): (planes int32 [bits, R, ceil(K/32)], scale fp32 [R]).
std::tuple<at::Tensor, at::Tensor> quantize_rows_cuda(const at::Tensor& x, int64_t bits);

}  // namespace mlx_kernels::bipolar
