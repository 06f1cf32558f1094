// CPU kernels of the int8 family: the algorithmic twins of the CUDA kernels.
//
// int8_vectorwise_quant (LLM.int8 activation quantization), two passes:
//   1. outlier columns (threshold > 0): a column is an outlier when any |x| in
//      it exceeds the threshold. Parallel over column blocks, so no merging.
//   2. per row block: absmax over the non-outlier columns, then
//      x_i8 = round(x * 127 / absmax) (round half to even), outliers -> 0.
//
// int8_mm / int8_gemm share one tiled int8 GEMM driver, C = A[M, K] · B[N, K]ᵀ.
// Both operands are K-contiguous, so every output is a dot product of two int8
// rows. The output is split into MC×NC tiles run in parallel; each tile walks
// K in KC chunks so the NC rows of B it reuses stay in L2, accumulating into an
// int32 tile buffer. The tile then goes to an epilogue, as on the GPU:
//   int8_mm:   copy the exact int32 tile out.
//   int8_gemm: out = acc · absmax_x[m] · absmax_w[n] / 127²
//                    + Σ_{c ∈ outliers} x[m, c] · w_deq[n, c]  + bias[n],
//              w_deq = w_i8 · absmax_w / 127 rounded to x's dtype (LLM.int8's
//              16-bit outlier matmul), summed in fp32, one rounding to x's dtype.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/cpu_utils.h"
#include "common/registration.h"
#include "int8/int8.h"

namespace mlx_kernels::int8 {
namespace {

// --- int8_vectorwise_quant ---------------------------------------------------

constexpr int64_t kOutlierColumnBlock = 256;
constexpr int64_t kQuantRowGrain = 16;

// mask[c] = 1 when any |x[r, c]| > threshold, for x [rows, K] row-major.
template <typename scalar_t>
std::vector<uint8_t> outlier_column_mask(const scalar_t* x, int64_t rows, int64_t K, float threshold) {
  std::vector<uint8_t> mask(K, 0);
  at::parallel_for(0, ceil_div(K, kOutlierColumnBlock), 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * kOutlierColumnBlock, c1 = std::min(K, c0 + kOutlierColumnBlock);
      for (int64_t r = 0; r < rows; ++r) {
        const scalar_t* row = x + r * K;
        for (int64_t c = c0; c < c1; ++c) {
          mask[c] |= std::abs(static_cast<float>(row[c])) > threshold;
        }
      }
    }
  });
  return mask;
}

// Per row: absmax over non-outlier columns, then round(x * 127 / absmax).
// A row whose absmax is 0 quantizes to zeros.
template <typename scalar_t>
void quantize_rows(const scalar_t* x, int64_t rows, int64_t K, const uint8_t* outlier_mask, int8_t* x_i8,
                   float* row_absmax) {
  at::parallel_for(0, rows, kQuantRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = x + r * K;
      int8_t* q = x_i8 + r * K;
      float absmax = 0.0f;
      for (int64_t c = 0; c < K; ++c) {
        const float v = std::abs(static_cast<float>(row[c]));
        absmax = std::max(absmax, (outlier_mask != nullptr && outlier_mask[c]) ? 0.0f : v);
      }
      row_absmax[r] = absmax;
      const float scale = absmax > 0.0f ? kInt8Max / absmax : 0.0f;
      for (int64_t c = 0; c < K; ++c) {
        const float v = std::nearbyint(static_cast<float>(row[c]) * scale);
        const bool outlier = outlier_mask != nullptr && outlier_mask[c];
        q[c] = outlier ? int8_t{0} : static_cast<int8_t>(std::clamp(v, -kInt8Max, kInt8Max));
      }
    }
  });
}

struct QuantizedRows {
  at::Tensor x_i8;          // int8 [rows, K]
  at::Tensor row_absmax;    // fp32 [rows]
  at::Tensor outlier_cols;  // int64 [n_outliers], sorted
};

// x: contiguous [rows, K].
QuantizedRows quantize_activations(const at::Tensor& x, double threshold) {
  const int64_t rows = x.size(0), K = x.size(1);
  QuantizedRows out{at::empty({rows, K}, x.options().dtype(at::kChar)),
                    at::empty({rows}, x.options().dtype(at::kFloat)), at::Tensor()};
  std::vector<int64_t> outlier_cols;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "int8_vectorwise_quant", [&] {
    const scalar_t* x_ptr = x.data_ptr<scalar_t>();
    std::vector<uint8_t> mask;
    if (threshold > 0.0) {
      mask = outlier_column_mask(x_ptr, rows, K, static_cast<float>(threshold));
      for (int64_t c = 0; c < K; ++c) {
        if (mask[c]) outlier_cols.push_back(c);
      }
    }
    quantize_rows(x_ptr, rows, K, outlier_cols.empty() ? nullptr : mask.data(), out.x_i8.data_ptr<int8_t>(),
                  out.row_absmax.data_ptr<float>());
  });
  out.outlier_cols = at::tensor(outlier_cols, x.options().dtype(at::kLong));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_vectorwise_quant_cpu(const at::Tensor& x, double threshold) {
  check_int8_vectorwise_quant_args(x, threshold);
  const int64_t K = x.size(-1);
  QuantizedRows q = quantize_activations(x.reshape({leading_rows(x), K}).contiguous(), threshold);
  return {q.x_i8.view(x.sizes()), q.row_absmax, q.outlier_cols};
}

// --- tiled int8 GEMM driver --------------------------------------------------

constexpr int64_t kTileM = 32;
constexpr int64_t kTileN = 64;
constexpr int64_t kChunkK = 1024;

// c[i, j] += Σ_k a[i, k]·b[j, k] over one K chunk, for an mb×nb tile.
MLX_CPU_MULTIVERSION
void int8_dot_tile(const int8_t* a, const int8_t* b, int32_t* c, int64_t lda, int64_t ldb,
                   int64_t ldc, int64_t mb, int64_t nb, int64_t kb) {
  for (int64_t i = 0; i < mb; ++i) {
    const int8_t* a_row = a + i * lda;
    for (int64_t j = 0; j < nb; ++j) {
      const int8_t* b_row = b + j * ldb;
      int32_t sum = 0;
      for (int64_t k = 0; k < kb; ++k) {
        sum += static_cast<int16_t>(a_row[k]) * static_cast<int16_t>(b_row[k]);
      }
      c[i * ldc + j] += sum;
    }
  }
}

// Runs A[M, K] · B[N, K]ᵀ tile by tile (both contiguous) and hands each finished
// int32 tile to epilogue(m0, n0, mb, nb, acc) with acc row stride kTileN.
template <typename Epilogue>
void int8_gemm_tiles(const int8_t* a, const int8_t* b, int64_t M, int64_t N, int64_t K, const Epilogue& epilogue) {
  const int64_t tiles_m = ceil_div(M, kTileM), tiles_n = ceil_div(N, kTileN);
  at::parallel_for(0, tiles_m * tiles_n, 1, [&](int64_t begin, int64_t end) {
    int32_t acc[kTileM * kTileN];
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t m0 = (tile / tiles_n) * kTileM, n0 = (tile % tiles_n) * kTileN;
      const int64_t mb = std::min(kTileM, M - m0), nb = std::min(kTileN, N - n0);
      std::fill(acc, acc + kTileM * kTileN, 0);
      for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
        int8_dot_tile(a + m0 * K + k0, b + n0 * K + k0, acc, K, K, kTileN, mb, nb, std::min(kChunkK, K - k0));
      }
      epilogue(m0, n0, mb, nb, acc);
    }
  });
}

// --- int8_mm -----------------------------------------------------------------

at::Tensor int8_mm_cpu(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_int8_mm_args(a_in, b_in);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.contiguous();
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  at::Tensor c = at::zeros({M, N}, a.options().dtype(at::kInt));
  if (M == 0 || N == 0 || K == 0) return c;

  int32_t* c_ptr = c.data_ptr<int32_t>();
  int8_gemm_tiles(a.data_ptr<int8_t>(), b.data_ptr<int8_t>(), M, N, K,
                  [&](int64_t m0, int64_t n0, int64_t mb, int64_t nb, const int32_t* acc) {
                    for (int64_t i = 0; i < mb; ++i) {
                      std::copy(acc + i * kTileN, acc + i * kTileN + nb, c_ptr + (m0 + i) * N + n0);
                    }
                  });
  return c;
}

// --- int8_gemm ---------------------------------------------------------------

// Outlier columns of x and of the dequantized weight, gathered once (small:
// [rows, n_outliers] and [N, n_outliers]) in fp32 for the epilogue.
struct OutlierOperands {
  at::Tensor x_cols;  // fp32 [M, n_outliers]: x[:, cols] (exact in fp32)
  at::Tensor w_cols;  // fp32 [N, n_outliers]: w_i8[:, cols] * absmax_w / 127, rounded to x's dtype
};

OutlierOperands gather_outlier_operands(const at::Tensor& x, const at::Tensor& w_i8, const at::Tensor& w_absmax,
                                        const at::Tensor& cols) {
  return {x.index_select(1, cols).to(at::kFloat).contiguous(),
          dequantized_weight_columns(w_i8, w_absmax, cols, x.scalar_type()).to(at::kFloat).contiguous()};
}

at::Tensor int8_gemm_cpu(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& w_absmax_in,
                         const std::optional<at::Tensor>& bias_in, double threshold) {
  check_int8_gemm_args(x_in, w_in, w_absmax_in, bias_in, threshold);
  const int64_t M = leading_rows(x_in), K = x_in.size(-1), N = w_in.size(0);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = N;
  at::Tensor out = at::empty(out_shape, x_in.options());
  if (M == 0 || N == 0) return out;

  const at::Tensor x = x_in.reshape({M, K}).contiguous();
  const at::Tensor w = w_in.contiguous();
  const at::Tensor w_absmax = w_absmax_in.contiguous();
  const at::Tensor bias = bias_in ? bias_in->to(at::kFloat).contiguous() : at::Tensor();
  const QuantizedRows q = quantize_activations(x, threshold);
  const int64_t n_outliers = q.outlier_cols.numel();
  const OutlierOperands outliers =
      n_outliers > 0 ? gather_outlier_operands(x, w, w_absmax, q.outlier_cols) : OutlierOperands{};

  const float* row_absmax = q.row_absmax.data_ptr<float>();
  const float* col_absmax = w_absmax.data_ptr<float>();
  const float* bias_ptr = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const float* x_cols = n_outliers > 0 ? outliers.x_cols.data_ptr<float>() : nullptr;
  const float* w_cols = n_outliers > 0 ? outliers.w_cols.data_ptr<float>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "int8_gemm", [&] {
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    int8_gemm_tiles(
        q.x_i8.data_ptr<int8_t>(), w.data_ptr<int8_t>(), M, N, K,
        [&](int64_t m0, int64_t n0, int64_t mb, int64_t nb, const int32_t* acc) {
          for (int64_t i = 0; i < mb; ++i) {
            const int64_t m = m0 + i;
            const float row_scale = row_absmax[m] * kInvInt8MaxSquared;
            for (int64_t j = 0; j < nb; ++j) {
              const int64_t n = n0 + j;
              float value = static_cast<float>(acc[i * kTileN + j]) * row_scale * col_absmax[n];
              for (int64_t o = 0; o < n_outliers; ++o) {
                value += x_cols[m * n_outliers + o] * w_cols[n * n_outliers + o];
              }
              if (bias_ptr != nullptr) value += bias_ptr[n];
              out_ptr[m * N + n] = static_cast<scalar_t>(value);
            }
          }
        });
  });
  return out;
}

}  // namespace

MLX_LIBRARY_IMPL(CPU, m) {
  m.impl("int8_mm", &int8_mm_cpu);
  m.impl("int8_vectorwise_quant", &int8_vectorwise_quant_cpu);
  m.impl("int8_gemm", &int8_gemm_cpu);
}

}  // namespace mlx_kernels::int8
