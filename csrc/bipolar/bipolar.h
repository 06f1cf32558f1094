// bipolar-INT arbitrary-precision GEMM family: the plane format, the
// popcount identity both the CPU and the CUDA kernels build on, and the
// argument checks they share.
//
// A p-bit bipolar-INT value is v = Σ_{i<p} 2^i·s_i with s_i ∈ {−1, +1}, stored
// as bit-planes b_i = (s_i + 1)/2: int32 [p, R, W], W = ceil(K/32), element k of
// a row in bit k%32 of word k/32. Equivalently u = (v + 2^p − 1)/2 ∈ [0, 2^p)
// and b_i is bit i of u, which is how pack and quantize produce the planes.
//
// GEMM identity. Over K positions, Σ_k s_a·s_w = Σ (2a − 1)(2w − 1)
//   = 4·popc(a ∧ w) − 2·popc(a) − 2·popc(w) + K,
// and AND-popc is what the tensor cores have on sm_80+ (XOR-popc is gone from
// sm_90 on). Summing over plane pairs with weights 2^(i+j):
//   C[m, n] = 4·S[m, n] − 2·(2^q − 1)·RA[m] − 2·(2^p − 1)·RW[n] + K·(2^p − 1)(2^q − 1)
// with S = Σ_{j<p, i<q} 2^(i+j)·popc(a_j[m] ∧ w_i[n]) (the MMA part) and the
// per-row weighted popcounts RA[m] = Σ_j 2^j·popc(a_j[m]), RW[n] = Σ_i 2^i·popc(w_i[n]).
// Only K's valid bits may count: the kernels mask the padding bits of the last
// word, so planes with garbage padding still give the exact answer.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/logical_or.h>
#include <ATen/ops/remainder.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "common/checks.h"

#if defined(__CUDACC__)
#define MLX_BIPOLAR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MLX_BIPOLAR_HOST_DEVICE inline
#endif

namespace mlx_kernels::bipolar {

constexpr int64_t kMaxBits = 8;
constexpr int kWordBits = 32;

// (K - 1) / 32 + 1, not (K + 31) / 32: K = 2^63 - 1 must get an error, not an overflow.
MLX_BIPOLAR_HOST_DEVICE int64_t words_for(int64_t K) { return K > 0 ? (K - 1) / kWordBits + 1 : 0; }

// Mask of the valid bits of word `word` of a K-long row (all ones except in the last word).
MLX_BIPOLAR_HOST_DEVICE uint32_t valid_bits(int64_t word, int64_t K) {
  const int64_t remaining = K - word * kWordBits;
  if (remaining >= kWordBits) return 0xffffffffu;
  if (remaining <= 0) return 0u;
  return (1u << remaining) - 1u;
}

// The identity above. Intermediate terms (4·S) may exceed int32 even when C
// does not, so everything is computed modulo 2^32 in uint32, which is exact
// because the checks guarantee |C| <= K·(2^p − 1)(2^q − 1) < 2^31.
MLX_BIPOLAR_HOST_DEVICE int32_t combine(uint32_t s, uint32_t row_a, uint32_t row_w, uint32_t K,
                                        int p, int q) {
  const uint32_t levels_a = (1u << p) - 1u, levels_w = (1u << q) - 1u;
  const uint32_t c = 4u * s - 2u * levels_w * row_a - 2u * levels_a * row_w + K * levels_a * levels_w;
  return static_cast<int32_t>(c);
}

// The row absmax of a quantizer, one |x| at a time. fmaxf and std::max drop a
// NaN; here it sticks, so that a row holding one is flagged by its scale.
MLX_BIPOLAR_HOST_DEVICE float absmax_keep_nan(float absmax, float abs_value) {
  return (absmax != absmax || abs_value != abs_value) ? absmax + abs_value : fmaxf(absmax, abs_value);
}

// Per-row quantization scale absmax / (2^bits − 1). A row holding a NaN or an
// ±Inf (absmax not finite) gets scale NaN: its levels are then all +1 (as for
// a row of zeros) and every product it enters dequantizes to NaN, never to a
// finite, plausible value.
MLX_BIPOLAR_HOST_DEVICE float row_scale_for(float absmax, int bits) {
  return absmax <= FLT_MAX ? absmax / static_cast<float>((1 << bits) - 1) : absmax * 0.0f;  // Inf·0 = NaN
}

// Odd level nearest to v, clamped to ±(2^bits − 1), as u = (level + 2^bits − 1)/2.
// Ties (v even) go up; a NaN goes to the lowest level. Shared by every quantizer.
MLX_BIPOLAR_HOST_DEVICE uint32_t nearest_level_code(float v, int bits) {
  const float top = static_cast<float>((1 << bits) - 1);
  const float level = 2.0f * floorf(v * 0.5f) + 1.0f;  // the nearest odd integer
  const float clamped = level > top ? top : (level >= -top ? level : -top);
  return static_cast<uint32_t>((clamped + top) * 0.5f);
}

// --- argument checks -------------------------------------------------------

inline void check_bits(const char* op, const char* arg, int64_t bits) {
  MLX_CHECK_VALUE(bits >= 1 && bits <= kMaxBits, op, "argument '", arg, "' must be in 1..", kMaxBits,
                  " (bits per bipolar-INT value), got ", bits);
}

// planes int32 [bits, R, ceil(K/32)] for a given K.
inline void check_planes(const char* op, const char* arg, const at::Tensor& planes, int64_t K) {
  check_dtype(op, arg, planes, {at::kInt});
  check_dim(op, arg, planes, 3);
  check_bits(op, (std::string(arg) + ".shape[0]").c_str(), planes.size(0));
  MLX_CHECK_VALUE(K >= 0, op, "argument 'K' must be >= 0, got ", K);
  MLX_CHECK(planes.size(2) == words_for(K), op, "argument '", arg, "' has ", planes.size(2),
            " words per row in dim 2 but K = ", K, " packed 32 per int32 word needs ", words_for(K),
            " (shape ", planes.sizes(), ")");
  check_fits_int32(op, (std::string(arg) + " rows").c_str(), planes.size(1));
}

inline void check_pack_args(const at::Tensor& values, int64_t bits) {
  constexpr const char* op = MLX_OP_NAME("bipolar_pack");
  check_same_device(op, {{"values", &values}});  // (and its size: an expanded input larger than memory is refused)
  check_bits(op, "bits", bits);
  check_dtype(op, "values", values, {at::kChar, at::kShort, at::kInt, at::kLong});
  check_dim(op, "values", values, 2);
  check_fits_int32(op, "values rows", values.size(0));
  if (values.numel() == 0) return;
  // Odd and within ±(2^bits − 1): a cheap elementwise test (one reduction).
  const int64_t top = (int64_t{1} << bits) - 1;
  const at::Tensor v = values.to(at::kLong);
  const at::Tensor bad = at::logical_or(at::remainder(v, 2).eq(0), v.abs().gt(top));
  if (!bad.any().item<bool>()) return;
  const at::Tensor where = bad.nonzero().select(0, 0).cpu();
  const int64_t r = where[0].item<int64_t>(), k = where[1].item<int64_t>();
  MLX_CHECK_VALUE(false, op, "argument 'values' must hold odd integers in [", -top, ", ", top,
                  "] for bits = ", bits, ", got ", v[r][k].item<int64_t>(), " at [", r, ", ", k, "]");
}

inline void check_unpack_args(const at::Tensor& planes, int64_t K) {
  check_same_device(MLX_OP_NAME("bipolar_unpack"), {{"planes", &planes}});
  check_planes(MLX_OP_NAME("bipolar_unpack"), "planes", planes, K);
}

inline void check_quantize_args(const char* op, const at::Tensor& x, int64_t bits) {
  check_same_device(op, {{"x", &x}});
  check_bits(op, "bits", bits);
  check_dtype(op, "x", x, {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  check_dim(op, "x", x, 2);
  check_fits_int32(op, "x rows", x.size(0));
}

// w_planes [q, N, W] against p-bit activations: the int32 result must not overflow.
inline void check_weight_planes(const char* op, const at::Tensor& w_planes, int64_t K, int64_t a_bits) {
  check_planes(op, "w_planes", w_planes, K);
  const int64_t q = w_planes.size(0);
  const int64_t levels = ((int64_t{1} << a_bits) - 1) * ((int64_t{1} << q) - 1);
  MLX_CHECK(K * levels < (int64_t{1} << 31), op, "K = ", K, " with ", a_bits, "-bit activations and ", q,
            "-bit weights can overflow the int32 result (needs K·(2^p − 1)·(2^q − 1) < 2^31, got ",
            K * levels, ")");
}

// bipolar_gemm(a_planes [p, M, W], w_planes [q, N, W], K).
inline void check_gemm_args(const at::Tensor& a_planes, const at::Tensor& w_planes, int64_t K) {
  constexpr const char* op = MLX_OP_NAME("bipolar_gemm");
  check_same_device(op, {{"a_planes", &a_planes}, {"w_planes", &w_planes}});
  check_planes(op, "a_planes", a_planes, K);
  check_weight_planes(op, w_planes, K, a_planes.size(0));
  check_alloc(op, "the output", {a_planes.size(1), w_planes.size(1)}, sizeof(int32_t), a_planes.device());
}

// bipolar_linear(x [..., K], w_planes [q, N, W], w_scale fp32 [N], x_bits, bias [N]?).
inline void check_linear_args(const at::Tensor& x, const at::Tensor& w_planes, const at::Tensor& w_scale,
                              int64_t x_bits, const c10::optional<at::Tensor>& bias) {
  constexpr const char* op = MLX_OP_NAME("bipolar_linear");
  check_same_device(op, {{"x", &x}, {"w_planes", &w_planes}, {"w_scale", &w_scale},
                         {"bias", bias ? &*bias : nullptr}});
  check_bits(op, "x_bits", x_bits);
  check_dtype(op, "x", x, {at::kHalf, at::kBFloat16, at::kFloat});
  check_min_dim(op, "x", x, 1);
  const int64_t K = x.size(-1);
  // w_planes' own format first (blamed on it), then x's K against its word count
  // (blamed on x: the planes fix K only to within a word, x fixes it exactly).
  check_dtype(op, "w_planes", w_planes, {at::kInt});
  check_dim(op, "w_planes", w_planes, 3);
  check_bits(op, "w_planes.shape[0]", w_planes.size(0));
  const int64_t words = w_planes.size(2);
  MLX_CHECK(words_for(K) == words, op, "argument 'x' has K = ", K, " (x.shape[-1], x is ", x.sizes(),
            ") but w_planes ", w_planes.sizes(), " [q, N, W] has W = ", words, " words per row, packed from K in ",
            words == 0 ? 0 : (words - 1) * kWordBits + 1, "..", words * kWordBits,
            " (x [..., K] @ w [N, K].T needs equal K)");
  check_weight_planes(op, w_planes, K, x_bits);
  const int64_t N = w_planes.size(1);
  check_dtype(op, "w_scale", w_scale, {at::kFloat});
  check_dim(op, "w_scale", w_scale, 1);
  check_size(op, "w_scale", w_scale, 0, N, "w_planes [q, N, W]");
  if (bias) {
    check_dtype(op, "bias", *bias, {x.scalar_type()});
    check_dim(op, "bias", *bias, 1);
    check_size(op, "bias", *bias, 0, N, "w_planes [q, N, W]");
  }
  check_fits_int32(op, "x rows", leading_rows(x));
  // the int32 product [M, N] the output is dequantized from (at least as large as the output)
  check_alloc(op, "the int32 product", {leading_rows(x), N}, sizeof(int32_t), x.device());
}

}  // namespace mlx_kernels::bipolar
