// int8 mixed-precision GEMM family (LLM.int8): argument checks shared by the
// CPU and CUDA implementations.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/full.h>

#include <algorithm>
#include <cmath>

#include "common/checks.h"
#include "common/host_device.h"

namespace mlx_kernels::int8 {

// int8_mm(a_i8 [M, K], b_i8 [N, K]) -> int32 [M, N]. Every |a·b| term is at most
// (-128)·(-128) = 2^14, so the int32 accumulator is exact while K·2^14 < 2^31.
inline void check_int8_mm_args(const at::Tensor& a, const at::Tensor& b) {
  constexpr const char* op = MLX_OP_NAME("int8_mm");
  check_same_device(op, {{"a_i8", &a}, {"b_i8", &b}});
  check_dtype(op, "a_i8", a, {at::kChar});
  check_dtype(op, "b_i8", b, {at::kChar});
  check_dim(op, "a_i8", a, 2);
  check_dim(op, "b_i8", b, 2);
  MLX_CHECK(a.size(1) == b.size(1), op, "K mismatch: a_i8 is ", a.sizes(), " and b_i8 is ",
            b.sizes(), " (a_i8 [M, K] @ b_i8 [N, K].T needs equal K)");
  MLX_CHECK(a.size(1) < (int64_t{1} << 31) / (128 * 128), op, "K = ", a.size(1),
            " can overflow the int32 accumulator (needs K < ", (int64_t{1} << 31) / (128 * 128), ")");
  check_fits_int32(op, "M", a.size(0));
  check_fits_int32(op, "N", b.size(0));
  check_alloc(op, "the output", {a.size(0), b.size(0)}, sizeof(int32_t), a.device());
}

// LLM.int8 quantization scale: x_i8 = round(x * 127 / absmax), and an int32
// dot product of two such rows dequantizes with absmax_x * absmax_w / 127².
constexpr float kInt8Max = 127.0f;
constexpr float kInvInt8MaxSquared = 1.0f / (127.0f * 127.0f);

// The row absmax, one |x| at a time. fmaxf and std::max skip NaN; here a NaN
// stays, so a row holding one dequantizes to NaN, as nn.Linear's output would.
MLX_HOST_DEVICE inline float absmax_with(float absmax, float abs_value) {
  return (absmax != absmax || abs_value != abs_value) ? abs_value + absmax : fmaxf(absmax, abs_value);
}

// x_i8 = round(x · 127 / absmax), computed as (x · pre) · (127 / (absmax · pre))
// with pre = 2^100 (exact) for rows whose absmax is below 2^-100, where
// 127 / absmax would overflow to inf. A row with absmax 0 quantizes to zeros.
struct RowScale {
  float pre, scale;
};
MLX_HOST_DEVICE inline RowScale row_scale(float absmax) {
  const float pre = absmax < 0x1p-100f ? 0x1p100f : 1.0f;
  return {pre, absmax > 0.0f ? kInt8Max / (absmax * pre) : 0.0f};
}

// Round to nearest even and clamp to [-127, 127]; NaN (a NaN row) gives 0.
MLX_HOST_DEVICE inline int quantize_value(float x, RowScale s) {
  const float v = (x * s.pre) * s.scale;
#if defined(__CUDA_ARCH__)
  return min(127, max(-127, __float2int_rn(v)));  // cvt.rni: NaN -> 0
#else
  return v != v ? 0 : static_cast<int>(std::clamp(std::nearbyint(v), -kInt8Max, kInt8Max));
#endif
}

// The outlier half of LLM.int8: the weight columns that meet x's outlier
// columns, dequantized (w_i8 · (absmax_w / 127)) and rounded to x's dtype as the
// 16-bit matmul sees them. [N, n_outliers]; small, so plain ATen ops. The 127
// is a tensor: ATen's CUDA division by a scalar multiplies by its reciprocal,
// which rounds differently from the CPU (and the decode GEMV's) true division.
inline at::Tensor dequantized_weight_columns(const at::Tensor& w_i8, const at::Tensor& w_absmax,
                                             const at::Tensor& cols, at::ScalarType dtype) {
  const at::Tensor int8_max = at::full({1}, kInt8Max, w_absmax.options());
  return (w_i8.index_select(1, cols).to(at::kFloat) * (w_absmax.unsqueeze(1) / int8_max)).to(dtype);
}

inline void check_threshold(const char* op, double threshold) {
  MLX_CHECK_VALUE(std::isfinite(threshold) && threshold >= 0.0, op,
                  "argument 'threshold' must be a finite number >= 0 (0 disables outlier columns), got ",
                  threshold);
}

// int8_vectorwise_quant(x [..., K] float, threshold).
inline void check_int8_vectorwise_quant_args(const at::Tensor& x, double threshold) {
  constexpr const char* op = MLX_OP_NAME("int8_vectorwise_quant");
  check_same_device(op, {{"x", &x}});  // (and its size: an expanded x larger than memory is refused)
  check_dtype(op, "x", x, {at::kHalf, at::kBFloat16, at::kFloat});
  check_min_dim(op, "x", x, 1);
  check_threshold(op, threshold);
  check_fits_int32(op, "K (x.shape[-1])", x.size(-1));
  check_fits_int32(op, "rows (x.numel() / K)", leading_rows(x));
}

// int8_gemm(x [..., K] float, w_i8 [N, K] int8, w_absmax [N] fp32, bias [N]?, threshold).
inline void check_int8_gemm_args(const at::Tensor& x, const at::Tensor& w_i8, const at::Tensor& w_absmax,
                                 const std::optional<at::Tensor>& bias, double threshold) {
  constexpr const char* op = MLX_OP_NAME("int8_gemm");
  const at::Tensor no_bias;
  check_same_device(op, {{"x", &x}, {"w_i8", &w_i8}, {"w_absmax", &w_absmax},
                         {"bias", bias ? &*bias : &no_bias}});
  check_dtype(op, "x", x, {at::kHalf, at::kBFloat16, at::kFloat});
  check_min_dim(op, "x", x, 1);
  check_dtype(op, "w_i8", w_i8, {at::kChar});
  check_dim(op, "w_i8", w_i8, 2);
  MLX_CHECK(x.size(-1) == w_i8.size(1), op, "K mismatch: x is ", x.sizes(), " and w_i8 is ",
            w_i8.sizes(), " (x [..., K] @ w_i8 [N, K].T needs equal K)");
  check_dtype(op, "w_absmax", w_absmax, {at::kFloat});
  check_dim(op, "w_absmax", w_absmax, 1);
  check_size(op, "w_absmax", w_absmax, 0, w_i8.size(0), "one absmax per row of w_i8 [N, K]");
  if (bias) {
    check_dtype(op, "bias", *bias, {at::kHalf, at::kBFloat16, at::kFloat});
    check_dim(op, "bias", *bias, 1);
    check_size(op, "bias", *bias, 0, w_i8.size(0), "one bias per row of w_i8 [N, K]");
  }
  check_threshold(op, threshold);
  // x_i8 lies in [-127, 127] and w_i8 in [-128, 127]: each term is at most 127·128.
  MLX_CHECK(x.size(-1) < (int64_t{1} << 31) / (127 * 128), op, "K = ", x.size(-1),
            " can overflow the int32 accumulator (needs K < ", (int64_t{1} << 31) / (127 * 128), ")");
  check_fits_int32(op, "N", w_i8.size(0));
  check_fits_int32(op, "rows of x (x.numel() / K)", leading_rows(x));
  check_alloc(op, "the output", {leading_rows(x), w_i8.size(0)}, x.element_size(), x.device());
}

}  // namespace mlx_kernels::int8
