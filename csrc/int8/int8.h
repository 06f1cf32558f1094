// int8 mixed-precision GEMM family (LLM.int8): argument checks shared by the
// CPU and CUDA implementations.
#pragma once

#include <ATen/ATen.h>

#include "common/checks.h"

namespace mlx_kernels::int8 {

// int8_mm(a_i8 [M, K], b_i8 [N, K]) -> int32 [M, N]. Every |a·b| term is at most
// 127·128, so the int32 accumulator is exact while K·127·128 < 2^31.
inline void check_int8_mm_args(const at::Tensor& a, const at::Tensor& b) {
  constexpr const char* op = MLX_OP_NAME("int8_mm");
  check_same_device(op, {{"a_i8", &a}, {"b_i8", &b}});
  check_dtype(op, "a_i8", a, {at::kChar});
  check_dtype(op, "b_i8", b, {at::kChar});
  check_dim(op, "a_i8", a, 2);
  check_dim(op, "b_i8", b, 2);
  MLX_CHECK(a.size(1) == b.size(1), op, "K mismatch: a_i8 is ", a.sizes(), " and b_i8 is ",
            b.sizes(), " (a_i8 [M, K] @ b_i8 [N, K].T needs equal K)");
  MLX_CHECK(a.size(1) < (int64_t{1} << 31) / (127 * 128), op, "K = ", a.size(1),
            " can overflow the int32 accumulator (needs K < ", (int64_t{1} << 31) / (127 * 128), ")");
  check_fits_int32(op, "M", a.size(0));
  check_fits_int32(op, "N", b.size(0));
}

}  // namespace mlx_kernels::int8
