// CPU kernels of the int8 family: the algorithmic twins of the CUDA kernels.
//
// int8_vectorwise_quant (LLM.int8 activation quantization), two passes:
//   1. outlier columns (threshold > 0): a column is an outlier when any |x| in
//      it exceeds the threshold. Parallel over column blocks, so no merging.
//   2. per row block: absmax over the non-outlier columns, then
//      x_i8 = round(x * 127 / absmax) (round half to even), outliers -> 0.
//
// int8_mm / int8_gemm share one int8 GEMM driver, C = A[M, K] · B[N, K]ᵀ with
// both operands K-contiguous (see "int8 GEMM driver" below: packed AVX-512
// VNNI / AVX2 micro-kernels, or a portable tiled loop, by ISA path). It hands every finished
// block of int32 accumulators to an epilogue, as on the GPU:
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
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/cpu_isa.h"
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

// Per row: absmax over non-outlier columns, then round(x * 127 / absmax)
// (absmax_with, row_scale and quantize_value: the CUDA kernel's arithmetic).
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
        absmax = absmax_with(absmax, (outlier_mask != nullptr && outlier_mask[c]) ? 0.0f : v);
      }
      row_absmax[r] = absmax;
      const RowScale scale = row_scale(absmax);
      for (int64_t c = 0; c < K; ++c) {
        const bool outlier = outlier_mask != nullptr && outlier_mask[c];
        q[c] = outlier ? int8_t{0} : static_cast<int8_t>(quantize_value(static_cast<float>(row[c]), scale));
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

// --- int8 GEMM driver -----------------------------------------------------------
//
// Two implementations of C = A[M, K] · B[N, K]ᵀ, both handing finished int32
// blocks to epilogue(m0, n0, mb, nb, acc) with acc row stride kPanelN:
//
// Packed micro-kernels (AVX-512 VNNI or AVX2, by ISA path: see int8_kernel_for):
// the work is split into (64-column panel of B) × (256-row block of A) tasks.
// Each task packs its B panel once into the layout the multiply instruction
// eats (so one vector load feeds 16 or 8 columns), then streams A four rows at
// a time through a register-blocked micro-kernel: 4 rows × 64 columns of int32
// accumulators live in registers across the whole K loop.
//   AVX-512 VNNI: vpdpbusd multiplies unsigned×signed bytes, so A is stored
//     as a + 128 (u8) and the extra 128·Σ_k b[j, k] is subtracted per column.
//     B panel: for each group of 4 k's, 64 columns × 4 bytes (4 zmm).
//   AVX2: vpmaddwd on int16: A and B sign-extended, pairs of k's.
//     B panel: for each pair of k's, 64 columns × 2 int16 (8 ymm).
// Both are exact: int32 adds wrap modulo 2³², so VNNI's offset sums (which can
// pass 2³¹ for long K) and the compensation cancel exactly whenever the true
// result fits int32, which int8_mm's K bound guarantees.
//
// Portable fallback, the scalar path: MC×NC output tiles, K in KC chunks, plain
// dot products in baseline x86-64 code.

constexpr int64_t kPanelN = 64;
constexpr int64_t kPanelM = 256;
constexpr int64_t kMicroRows = 4;

enum class Int8Isa { kPortable, kAvx2, kAvx512Vnni };

// The kernel of an ISA path: VNNI on the AVX-512 path of a CPU that has it, the
// AVX2 micro-kernel on the AVX2 path (and on AVX-512 without VNNI), the
// portable loop on the scalar path.
Int8Isa int8_kernel_for(CpuIsa isa) {
  if (cpu_path_has(isa, CpuFeature::kAvx512Vnni)) return Int8Isa::kAvx512Vnni;
  return isa == CpuIsa::kScalar ? Int8Isa::kPortable : Int8Isa::kAvx2;
}

#if defined(__GNUC__) && defined(__x86_64__)
#define MLX_INT8_HAS_X86_KERNELS 1

// The 4 bytes (or 2 int16) of A at p as one 32-bit lane to broadcast.
inline int32_t load_lane(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// c[r, 0:64] = Σ_g a_u8[r, 4g:4g+4] · panel[g] - compensation, r < kRows.
template <int kRows>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void vnni_micro_kernel(
    const uint8_t* a, int64_t lda, const int8_t* panel, int64_t groups, const int32_t* compensation,
    int32_t* c) {
  __m512i acc[kRows][4];
  for (int r = 0; r < kRows; ++r) {
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_si512();
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* b = panel + g * 4 * kPanelN;
    const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 64);
    const __m512i b2 = _mm512_loadu_si512(b + 128), b3 = _mm512_loadu_si512(b + 192);
    for (int r = 0; r < kRows; ++r) {
      const __m512i a4 = _mm512_set1_epi32(load_lane(a + r * lda + 4 * g));
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a4, b0);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a4, b1);
      acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], a4, b2);
      acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], a4, b3);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int j = 0; j < 4; ++j) {
      const __m512i comp = _mm512_loadu_si512(compensation + 16 * j);
      _mm512_storeu_si512(c + r * kPanelN + 16 * j, _mm512_sub_epi32(acc[r][j], comp));
    }
  }
}

// c[r, 0:64] = Σ_g a16[r, 2g:2g+2] · panel[g], r < kRows; 16 columns per pass
// so the accumulators fit the 16 ymm registers.
template <int kRows>
__attribute__((target("avx2"))) void avx2_micro_kernel(const int16_t* a, int64_t lda, const int16_t* panel,
                                                       int64_t groups, int32_t* c) {
  for (int64_t col = 0; col < kPanelN; col += 16) {
    __m256i acc[kRows][2];
    for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t g = 0; g < groups; ++g) {
      const int16_t* b = panel + g * 2 * kPanelN + 2 * col;
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
      for (int r = 0; r < kRows; ++r) {
        const __m256i a2 = _mm256_set1_epi32(load_lane(a + r * lda + 2 * g));
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(a2, b0));
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(a2, b1));
      }
    }
    for (int r = 0; r < kRows; ++r) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * kPanelN + col), acc[r][0]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * kPanelN + col + 8), acc[r][1]);
    }
  }
}

// Dispatches a block of 1..4 rows to the micro-kernel instantiated for it.
template <template <int> class Kernel, typename... Args>
void run_micro_kernel(int64_t rows, Args... args) {
  switch (rows) {
    case 4: Kernel<4>::run(args...); break;
    case 3: Kernel<3>::run(args...); break;
    case 2: Kernel<2>::run(args...); break;
    default: Kernel<1>::run(args...); break;
  }
}
template <int kRows>
struct VnniKernel {
  static void run(const uint8_t* a, int64_t lda, const int8_t* panel, int64_t groups, const int32_t* comp,
                  int32_t* c) {
    vnni_micro_kernel<kRows>(a, lda, panel, groups, comp, c);
  }
};
template <int kRows>
struct Avx2Kernel {
  static void run(const int16_t* a, int64_t lda, const int16_t* panel, int64_t groups, int32_t* c) {
    avx2_micro_kernel<kRows>(a, lda, panel, groups, c);
  }
};

// A and B rows in the element type and k-group width a micro-kernel reads:
// VNNI: u8 (a + 128) in groups of 4, AVX2: int16 in groups of 2. K is padded to
// whole groups with A = "0" and B = 0, which adds nothing.
template <Int8Isa kIsa>
struct PackedOperands {
  using AElement = std::conditional_t<kIsa == Int8Isa::kAvx512Vnni, uint8_t, int16_t>;
  using BElement = std::conditional_t<kIsa == Int8Isa::kAvx512Vnni, int8_t, int16_t>;
  static constexpr int64_t kGroup = kIsa == Int8Isa::kAvx512Vnni ? 4 : 2;

  static AElement a_value(int8_t v) {
    if constexpr (kIsa == Int8Isa::kAvx512Vnni) {
      return static_cast<uint8_t>(static_cast<int>(v) + 128);
    } else {
      return v;
    }
  }
};

template <Int8Isa kIsa, typename Epilogue>
void int8_gemm_packed(const int8_t* a, const int8_t* b, int64_t M, int64_t N, int64_t K, const Epilogue& epilogue) {
  using Ops = PackedOperands<kIsa>;
  using AElement = typename Ops::AElement;
  using BElement = typename Ops::BElement;
  const int64_t groups = ceil_div(K, Ops::kGroup), lda = groups * Ops::kGroup;

  // A converted once: [M, lda].
  std::vector<AElement> a_conv(M * lda, Ops::a_value(0));
  at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t k = 0; k < K; ++k) a_conv[i * lda + k] = Ops::a_value(a[i * K + k]);
    }
  });

  const int64_t panels_n = ceil_div(N, kPanelN), blocks_m = ceil_div(M, kPanelM);
  at::parallel_for(0, panels_n * blocks_m, 1, [&](int64_t begin, int64_t end) {
    std::vector<BElement> panel(groups * Ops::kGroup * kPanelN);
    int32_t compensation[kPanelN];
    int32_t acc[kMicroRows * kPanelN];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = (task % panels_n) * kPanelN, nb = std::min(kPanelN, N - n0);
      const int64_t m_begin = (task / panels_n) * kPanelM, m_end = std::min(M, m_begin + kPanelM);
      // panel[g][j][t] = b[n0 + j, g·kGroup + t]; missing columns and k's are 0.
      std::fill(panel.begin(), panel.end(), BElement{0});
      // VNNI compensation: 128·Σ_k b[j, k], what A's +128 offset adds.
      std::fill(compensation, compensation + kPanelN, 0);
      for (int64_t j = 0; j < nb; ++j) {
        const int8_t* b_row = b + (n0 + j) * K;
        BElement* dst = panel.data() + j * Ops::kGroup;
        for (int64_t k0 = 0; k0 < K; k0 += Ops::kGroup, dst += Ops::kGroup * kPanelN) {
          for (int64_t t = 0; t < std::min(Ops::kGroup, K - k0); ++t) dst[t] = b_row[k0 + t];
        }
        if constexpr (kIsa == Int8Isa::kAvx512Vnni) {
          // Modulo 2^32, as the VNNI sums it adds to: 128·Σ b can pass 2^31 (K near its
          // limit) while the final a·b does not, and signed int overflow is undefined.
          compensation[j] = static_cast<int32_t>(128u * static_cast<uint32_t>(std::accumulate(b_row, b_row + K, int32_t{0})));
        }
      }
      for (int64_t m0 = m_begin; m0 < m_end; m0 += kMicroRows) {
        const int64_t rows = std::min(kMicroRows, m_end - m0);
        const AElement* a_rows = a_conv.data() + m0 * lda;
        if constexpr (kIsa == Int8Isa::kAvx512Vnni) {
          run_micro_kernel<VnniKernel>(rows, a_rows, lda, panel.data(), groups,
                                       static_cast<const int32_t*>(compensation), static_cast<int32_t*>(acc));
        } else {
          run_micro_kernel<Avx2Kernel>(rows, a_rows, lda, panel.data(), groups, static_cast<int32_t*>(acc));
        }
        epilogue(m0, n0, rows, nb, acc);
      }
    }
  });
}
#endif  // x86 kernels

constexpr int64_t kTileM = 32;
constexpr int64_t kChunkK = 1024;

// c[i, j] += Σ_k a[i, k]·b[j, k] over one K chunk, for an mb×nb tile.
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

template <typename Epilogue>
void int8_gemm_portable(const int8_t* a, const int8_t* b, int64_t M, int64_t N, int64_t K, const Epilogue& epilogue) {
  const int64_t tiles_m = ceil_div(M, kTileM), tiles_n = ceil_div(N, kPanelN);
  at::parallel_for(0, tiles_m * tiles_n, 1, [&](int64_t begin, int64_t end) {
    int32_t acc[kTileM * kPanelN];
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t m0 = (tile / tiles_n) * kTileM, n0 = (tile % tiles_n) * kPanelN;
      const int64_t mb = std::min(kTileM, M - m0), nb = std::min(kPanelN, N - n0);
      std::fill(acc, acc + kTileM * kPanelN, 0);
      for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
        int8_dot_tile(a + m0 * K + k0, b + n0 * K + k0, acc, K, K, kPanelN, mb, nb, std::min(kChunkK, K - k0));
      }
      epilogue(m0, n0, mb, nb, acc);
    }
  });
}

// Runs A[M, K] · B[N, K]ᵀ (both contiguous) with the kernel of ISA path `isa`.
template <typename Epilogue>
void int8_gemm_tiles(CpuIsa isa, const int8_t* a, const int8_t* b, int64_t M, int64_t N, int64_t K,
                     const Epilogue& epilogue) {
#ifdef MLX_INT8_HAS_X86_KERNELS
  const Int8Isa kernel = int8_kernel_for(isa);
  if (kernel == Int8Isa::kAvx512Vnni) return int8_gemm_packed<Int8Isa::kAvx512Vnni>(a, b, M, N, K, epilogue);
  if (kernel == Int8Isa::kAvx2) return int8_gemm_packed<Int8Isa::kAvx2>(a, b, M, N, K, epilogue);
#endif
  int8_gemm_portable(a, b, M, N, K, epilogue);
}

// --- int8_mm -----------------------------------------------------------------

at::Tensor int8_mm_cpu(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_int8_mm_args(a_in, b_in);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.contiguous();
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  at::Tensor c = at::zeros({M, N}, a.options().dtype(at::kInt));
  if (M == 0 || N == 0 || K == 0) return c;

  const CpuIsa isa = cpu_isa(MLX_OP_NAME("int8_mm"));
  int32_t* c_ptr = c.data_ptr<int32_t>();
  int8_gemm_tiles(isa, a.data_ptr<int8_t>(), b.data_ptr<int8_t>(), M, N, K,
                  [&](int64_t m0, int64_t n0, int64_t mb, int64_t nb, const int32_t* acc) {
                    for (int64_t i = 0; i < mb; ++i) {
                      std::copy(acc + i * kPanelN, acc + i * kPanelN + nb, c_ptr + (m0 + i) * N + n0);
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

  const CpuIsa isa = cpu_isa(MLX_OP_NAME("int8_gemm"));
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
        isa, q.x_i8.data_ptr<int8_t>(), w.data_ptr<int8_t>(), M, N, K,
        [&](int64_t m0, int64_t n0, int64_t mb, int64_t nb, const int32_t* acc) {
          for (int64_t i = 0; i < mb; ++i) {
            const int64_t m = m0 + i;
            const float row_scale = row_absmax[m] * kInvInt8MaxSquared;
            for (int64_t j = 0; j < nb; ++j) {
              const int64_t n = n0 + j;
              float value = static_cast<float>(acc[i * kPanelN + j]) * row_scale * col_absmax[n];
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
