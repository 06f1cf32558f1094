// CPU kernels of the int8 family: the algorithmic twins of the CUDA kernels.
//
// int8_vectorwise_quant (LLM.int8 activation quantization), two passes:
//   1. outlier columns (threshold > 0): a column is an outlier when any |x| in
//      it exceeds the threshold. Parallel over column blocks, so no merging.
//      Compiled per ISA path, like pass 2.
//   2. per row block: absmax over the non-outlier columns, then
//      x_i8 = round(x * 127 / absmax) (round half to even), outliers -> 0.
//      Rows compiled per ISA path, so that both loops vectorize.
//
// int8_mm / int8_gemm share one int8 GEMM driver, C = A[M, K] · B[N, K]ᵀ with
// both operands K-contiguous (see "int8 GEMM driver" below: by ISA path, AVX-512
// VNNI or AVX2 kernels, dot kernels over B in place for small M and packed
// micro-kernels above, or a portable tiled loop). It hands every finished
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
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/cpu_isa.h"
#include "common/cpu_vector.h"
#include "common/cpu_utils.h"
#include "common/registration.h"
#include "int8/int8.h"

namespace mlx_kernels::int8 {
namespace {

// --- int8_vectorwise_quant ---------------------------------------------------

constexpr int64_t kOutlierColumnBlock = 256;
constexpr int64_t kQuantRowGrain = 16;

// mask[c] |= |row[c]| > threshold for c < n. Compiled per ISA path
// (mark_outliers_isa); __restrict, so that the loop vectorizes.
template <typename scalar_t>
inline __attribute__((always_inline)) void mark_outliers(const scalar_t* __restrict row, int64_t n, float threshold,
                                                          uint8_t* __restrict mask) {
  for (int64_t c = 0; c < n; ++c) mask[c] |= std::abs(static_cast<float>(row[c])) > threshold;
}

MLX_CPU_ISA_DISPATCH(mark_outliers_isa, mark_outliers)

// mask[c] = 1 when any |x[r, c]| > threshold, for x [rows, K] row-major.
template <typename scalar_t>
std::vector<uint8_t> outlier_column_mask(CpuIsa isa, const scalar_t* x, int64_t rows, int64_t K, float threshold) {
  std::vector<uint8_t> mask(K, 0);
  at::parallel_for(0, ceil_div(K, kOutlierColumnBlock), 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * kOutlierColumnBlock, c1 = std::min(K, c0 + kOutlierColumnBlock);
      for (int64_t r = 0; r < rows; ++r) mark_outliers_isa(isa, x + r * K + c0, c1 - c0, threshold, mask.data() + c0);
    }
  });
  return mask;
}

// float / int32 lanes of one register of the ISA path whose width kBytes is
// (common/cpu_vector.h). At 64 bytes on AVX2, GCC lowered the compares and
// selects of row_absmax lane by lane.
template <int kBytes>
struct Lanes {
  using F = typename CpuVector<float, kBytes>::V;
  using I = typename CpuVector<int32_t, kBytes>::V;
  static constexpr int64_t kCount = CpuVector<float, kBytes>::kLanes;

  template <typename scalar_t>
  __attribute__((always_inline)) static F load(const scalar_t* p) {
    float values[kCount];
    for (int64_t l = 0; l < kCount; ++l) values[l] = static_cast<float>(p[l]);
    F v;
    std::memcpy(&v, values, sizeof(v));
    return v;
  }

  // All ones in the lanes of kept (non-outlier) columns, 0 in the others.
  __attribute__((always_inline)) static I kept(const uint8_t* outlier_mask) {
    int32_t kept[kCount];
    for (int64_t l = 0; l < kCount; ++l) kept[l] = outlier_mask[l] == 0 ? -1 : 0;
    I v;
    std::memcpy(&v, kept, sizeof(v));
    return v;
  }
};

// absmax_with folded over the non-outlier |x| of one row: the largest, or NaN
// when one is NaN. Whole vectors through LaneMaxKeepingNan, so that the loop
// vectorizes; the tail one value at a time.
template <int kBytes, typename scalar_t>
inline __attribute__((always_inline)) float row_absmax(const scalar_t* row, int64_t K, const uint8_t* outlier_mask) {
  using L = Lanes<kBytes>;
  using F = typename L::F;
  using I = typename L::I;
  constexpr int64_t kCount = L::kCount;
  LaneMaxKeepingNan<kBytes> running_max(0.0f);
  int64_t c = 0;
  for (; c + kCount <= K; c += kCount) {
    I bits = std::bit_cast<I>(L::load(row + c)) & 0x7fffffff;
    if (outlier_mask != nullptr) bits &= L::kept(outlier_mask + c);
    running_max.add(std::bit_cast<F>(bits));
  }
  float absmax = running_max.max();
  for (; c < K; ++c) {
    const bool outlier = outlier_mask != nullptr && outlier_mask[c];
    absmax = absmax_with(absmax, outlier ? 0.0f : std::abs(static_cast<float>(row[c])));
  }
  return absmax;
}

// One row: absmax over non-outlier columns, then round(x * 127 / absmax)
// (row_scale and quantize_value: the CUDA kernel's arithmetic). Compiled per
// ISA path (quantize_row_isa), where the rounding loop vectorizes.
template <int kBytes, typename scalar_t>
inline __attribute__((always_inline)) float quantize_row(const scalar_t* row, int64_t K, const uint8_t* outlier_mask,
                                                         int8_t* q) {
  const float absmax = row_absmax<kBytes>(row, K, outlier_mask);
  const RowScale scale = row_scale(absmax);
  for (int64_t c = 0; c < K; ++c) {
    const bool outlier = outlier_mask != nullptr && outlier_mask[c];
    q[c] = outlier ? int8_t{0} : static_cast<int8_t>(quantize_value(static_cast<float>(row[c]), scale));
  }
  return absmax;
}

MLX_CPU_ISA_DISPATCH_VECTORS(quantize_row_isa, quantize_row)

template <typename scalar_t>
void quantize_rows(CpuIsa isa, const scalar_t* x, int64_t rows, int64_t K, const uint8_t* outlier_mask,
                   int8_t* x_i8, float* row_absmax) {
  at::parallel_for(0, rows, kQuantRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      row_absmax[r] = quantize_row_isa(isa, x + r * K, K, outlier_mask, x_i8 + r * K);
    }
  });
}

struct QuantizedRows {
  at::Tensor x_i8;          // int8 [rows, K]
  at::Tensor row_absmax;    // fp32 [rows]
  at::Tensor outlier_cols;  // int64 [n_outliers], sorted
};

// x: contiguous [rows, K].
QuantizedRows quantize_activations(CpuIsa isa, const at::Tensor& x, double threshold) {
  const int64_t rows = x.size(0), K = x.size(1);
  QuantizedRows out{at::empty({rows, K}, x.options().dtype(at::kChar)),
                    at::empty({rows}, x.options().dtype(at::kFloat)), at::Tensor()};
  std::vector<int64_t> outlier_cols;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "int8_vectorwise_quant", [&] {
    const scalar_t* x_ptr = x.data_ptr<scalar_t>();
    std::vector<uint8_t> mask;
    if (threshold > 0.0) {
      mask = outlier_column_mask(isa, x_ptr, rows, K, static_cast<float>(threshold));
      for (int64_t c = 0; c < K; ++c) {
        if (mask[c]) outlier_cols.push_back(c);
      }
    }
    quantize_rows(isa, x_ptr, rows, K, outlier_cols.empty() ? nullptr : mask.data(), out.x_i8.data_ptr<int8_t>(),
                  out.row_absmax.data_ptr<float>());
  });
  out.outlier_cols = at::tensor(outlier_cols, x.options().dtype(at::kLong));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_vectorwise_quant_cpu(const at::Tensor& x, double threshold) {
  check_int8_vectorwise_quant_args(x, threshold);
  const int64_t K = x.size(-1);
  const CpuIsa isa = cpu_isa(MLX_OP_NAME("int8_vectorwise_quant"));
  QuantizedRows q = quantize_activations(isa, x.reshape({leading_rows(x), K}).contiguous(), threshold);
  return {q.x_i8.view(x.sizes()), q.row_absmax, q.outlier_cols};
}

// --- int8 GEMM driver -----------------------------------------------------------
//
// Three implementations of C = A[M, K] · B[N, K]ᵀ, all handing finished int32
// blocks to epilogue(m0, n0, mb, nb, acc) with acc row stride kPanelN. The ISA
// path picks the instructions (int8_kernel_for), M the algorithm:
//
// Dot kernels, M up to the kMaxM of their ISA (decode and small batches): B
// rows are read where they are, so the weight streams from memory once and is
// never copied; at small M that stream is the whole cost, and packing B (one
// more pass over it) costs more than the dot kernels lose to the packed ones
// until M ≈ 32 (VNNI) or 20 (AVX2), as measured at 4096 × 4096. A tile of a
// few A rows × 4 B rows keeps one vector accumulator per output over K (summed
// horizontally at the end), and all A rows pass the B tile while it sits in L1.
//   AVX-512 VNNI: vpdpbusd multiplies unsigned×signed bytes, so B is flipped to
//     b + 128 (xor 0x80) as it is loaded and 128·Σ_k a[m, k], per row, is
//     subtracted at the end. K's tail is a masked load (zeros). 4 × 4 tiles.
//   AVX2: vpmaddwd on int16: A converted once, B sign-extended as it is loaded;
//     2 × 4 tiles (8 of the 16 ymm accumulate); K's tail in scalar code.
//
// Packed micro-kernels, larger M: a task takes a 64-column panel of B (and a
// range of M rows when there are too few panels for the threads) and packs the
// panel once into the layout the multiply instruction eats: one 32-bit lane per
// (k-group, column), so one vector load feeds 16 or 8 columns (a transpose of
// 32-bit lanes, done 16 × 16 or 8 × 8 at a time in registers). A then streams
// kMicroRows rows at a time through a register-blocked micro-kernel (6 rows ×
// 64 columns). K is cut into blocks of kBlockGroups groups, so the 16 KB of
// panel the micro-kernels reread stays in L1; the int32 accumulators of a
// 256-row block wait in a buffer between K blocks.
//   AVX-512 VNNI: A is stored as a + 128 (u8) and the accumulators start at
//     -128·Σ_k b[j, k], which cancels what the offset adds. Lane: 4 k's.
//   AVX2: vpmaddwd on int16, A and B sign-extended. Lane: 2 k's.
// All are exact: int32 adds wrap modulo 2³², so VNNI's offset sums (which can
// pass 2³¹ for long K) and the compensation cancel exactly whenever the true
// result fits int32, which int8_mm's K bound guarantees.
//
// Portable fallback, the scalar path: MC×NC output tiles, K in KC chunks, plain
// dot products in baseline x86-64 code.

constexpr int64_t kPanelN = 64;
constexpr int64_t kPanelM = 256;
constexpr int64_t kMicroRows = 6;
constexpr int64_t kBlockGroups = 64;
constexpr int64_t kDotCols = 4;

enum class Int8Isa { kPortable, kAvx2, kAvx512Vnni };

// The kernel of an ISA path: VNNI on the AVX-512 path of a CPU that has it, the
// AVX2 kernels on the AVX2 path (and on AVX-512 without VNNI), the portable
// loop on the scalar path.
Int8Isa int8_kernel_for(CpuIsa isa) {
  if (cpu_path_has(isa, CpuFeature::kAvx512Vnni)) return Int8Isa::kAvx512Vnni;
  return isa == CpuIsa::kScalar ? Int8Isa::kPortable : Int8Isa::kAvx2;
}

#if defined(__GNUC__) && defined(__x86_64__)
#define MLX_INT8_HAS_X86_KERNELS 1
#define MLX_INT8_TARGET_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define MLX_INT8_TARGET_AVX2 __attribute__((target("avx2")))

// The kernels' loops over rows and columns of accumulators carry
// "#pragma GCC unroll": unrolled early, the accumulator arrays become registers;
// left to GCC, the kernels of 3 or more rows kept them in memory (spilling every
// accumulator in every k step).

// The 4 bytes (or 2 int16) at p as one 32-bit lane.
inline int32_t load_lane(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Calls f(std::integral_constant<int, rows>) for 1 <= rows <= kMax: kernels
// are instantiated per row count so that their accumulators are registers.
template <int kMax, typename F>
void with_rows(int64_t rows, const F& f) {
  if constexpr (kMax > 1) {
    if (rows < kMax) return with_rows<kMax - 1>(rows, f);
  }
  f(std::integral_constant<int, kMax>{});
}

// One row of A in a kernel's element type. __restrict: int8 pointers may alias
// anything, and GCC left the loop scalar behind its aliasing check.
template <typename Ops>
void convert_row(const int8_t* __restrict a, int64_t K, typename Ops::AElement* __restrict out) {
  for (int64_t k = 0; k < K; ++k) out[k] = Ops::a_value(a[k]);
}

// A converted to a kernel's element type (Ops::a_value), [M, lda] with K
// padded to lda by the value of a 0.
template <typename Ops>
std::vector<typename Ops::AElement> converted_a(const int8_t* a, int64_t M, int64_t K, int64_t lda) {
  std::vector<typename Ops::AElement> out(M * lda, Ops::a_value(0));
  typename Ops::AElement* out_ptr = out.data();
  at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) convert_row<Ops>(a + i * K, K, out_ptr + i * lda);
  });
  return out;
}

// A and B in the element type and k-group width a kernel reads: VNNI: u8
// (a + 128) × s8 in groups of 4, AVX2: int16 in groups of 2.
template <Int8Isa kIsa>
struct PackedOperands {
  using AElement = std::conditional_t<kIsa == Int8Isa::kAvx512Vnni, uint8_t, int16_t>;
  static constexpr int64_t kGroup = kIsa == Int8Isa::kAvx512Vnni ? 4 : 2;
  static constexpr int64_t kPackBlock = kIsa == Int8Isa::kAvx512Vnni ? 16 : 8;

  static AElement a_value(int8_t v) {
    if constexpr (kIsa == Int8Isa::kAvx512Vnni) {
      return static_cast<uint8_t>(static_cast<int>(v) + 128);
    } else {
      return v;
    }
  }
  // The panel lane of the kGroup k's of one B row at p.
  static int32_t b_lane(const int8_t* p) {
    if constexpr (kIsa == Int8Isa::kAvx512Vnni) {
      return load_lane(p);
    } else {
      const auto widened = [](int8_t v) { return static_cast<uint32_t>(static_cast<uint16_t>(int16_t{v})); };
      return static_cast<int32_t>(widened(p[0]) | widened(p[1]) << 16);
    }
  }
};

// --- dot kernels (small M) ---

// The wrapping sum of v's 16 int32 lanes. (The merge-masked forms with a full
// mask: the plain ones, and _mm512_reduce_add_epi32, pass an "undefined"
// operand that GCC 12 warns is uninitialized.)
MLX_INT8_TARGET_VNNI inline uint32_t sum_lanes(__m512i v) {
  v = _mm512_add_epi32(v, _mm512_mask_shuffle_i32x4(v, 0xFFFF, v, v, 0x4E));
  v = _mm512_add_epi32(v, _mm512_mask_shuffle_i32x4(v, 0xFFFF, v, v, 0xB1));
  __m128i s = _mm512_mask_extracti32x4_epi32(_mm_setzero_si128(), 0xF, v, 0);
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(s));
}

// c[r, j] = Σ_k a[r, k]·b[j, k] for r < kRows, j < kCols (A and B rows K
// apart, c rows kPanelN apart); a_offset[r] = 128·Σ_k a[r, k] mod 2³².
template <int kRows, int kCols>
MLX_INT8_TARGET_VNNI void vnni_dot_tile(const int8_t* a, const int8_t* b, int64_t K, const uint32_t* a_offset,
                                        int32_t* c) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[kRows][kCols];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < kCols; ++j) acc[r][j] = _mm512_setzero_si512();
  }
  for (int64_t k = 0; k < K; k += 64) {
    const __mmask64 live = K - k >= 64 ? ~__mmask64{0} : (__mmask64{1} << (K - k)) - 1;
    __m512i b_u8[kCols];
#pragma GCC unroll 8
    for (int j = 0; j < kCols; ++j) b_u8[j] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(live, b + j * K + k), flip);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512i a_s8 = _mm512_maskz_loadu_epi8(live, a + r * K + k);
#pragma GCC unroll 8
      for (int j = 0; j < kCols; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], b_u8[j], a_s8);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < kCols; ++j) {
      c[r * kPanelN + j] = static_cast<int32_t>(sum_lanes(acc[r][j]) - a_offset[r]);
    }
  }
}

// The wrapping sum of v's 8 int32 lanes.
MLX_INT8_TARGET_AVX2 inline uint32_t sum_lanes(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(s));
}

// c[r, j] = Σ_k a16[r, k]·b[j, k] for r < kRows, j < kCols (A rows lda apart,
// B rows K apart, c rows kPanelN apart). Sums in uint32: they wrap, as int32
// adds do in vector registers.
template <int kRows, int kCols>
MLX_INT8_TARGET_AVX2 void avx2_dot_tile(const int16_t* a, int64_t lda, const int8_t* b, int64_t K, int32_t* c) {
  __m256i acc[kRows][kCols];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < kCols; ++j) acc[r][j] = _mm256_setzero_si256();
  }
  const int64_t k_vectors = K / 16 * 16;
  for (int64_t k = 0; k < k_vectors; k += 16) {
    __m256i b16[kCols];
#pragma GCC unroll 8
    for (int j = 0; j < kCols; ++j) {
      b16[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + j * K + k)));
    }
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m256i a16 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * lda + k));
#pragma GCC unroll 8
      for (int j = 0; j < kCols; ++j) acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(a16, b16[j]));
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < kCols; ++j) {
      uint32_t sum = sum_lanes(acc[r][j]);
      for (int64_t k = k_vectors; k < K; ++k) sum += static_cast<uint32_t>(a[r * lda + k] * b[j * K + k]);
      c[r * kPanelN + j] = static_cast<int32_t>(sum);
    }
  }
}

// Calls kernel(integral_constant rows, integral_constant cols) for a tile of
// 1..kMaxRows rows and kDotCols or 1 columns.
template <int kMaxRows, typename Kernel>
void run_dot_tile(int64_t rows, int64_t cols, const Kernel& kernel) {
  with_rows<kMaxRows>(rows, [&](auto r) {
    if (cols == kDotCols) {
      kernel(r, std::integral_constant<int, kDotCols>{});
    } else {
      kernel(r, std::integral_constant<int, 1>{});
    }
  });
}

// The VNNI dot tiles over A as it is, with its rows' offsets.
class VnniDotTiles {
 public:
  static constexpr int64_t kMaxM = 32;
  static constexpr int kMaxRows = 4;

  VnniDotTiles(const int8_t* a, int64_t M, int64_t K) : a_(a), K_(K), a_offset_(M) {
    for (int64_t i = 0; i < M; ++i) {
      const int32_t row_sum = std::accumulate(a + i * K, a + (i + 1) * K, int32_t{0});
      a_offset_[i] = 128u * static_cast<uint32_t>(row_sum);
    }
  }
  void run(int64_t m0, int64_t rows, int64_t cols, const int8_t* b, int32_t* c) const {
    run_dot_tile<kMaxRows>(rows, cols, [&](auto r, auto j) {
      vnni_dot_tile<decltype(r)::value, decltype(j)::value>(a_ + m0 * K_, b, K_, a_offset_.data() + m0, c);
    });
  }

 private:
  const int8_t* a_;
  int64_t K_;
  std::vector<uint32_t> a_offset_;
};

// The AVX2 dot tiles over A converted to int16.
class Avx2DotTiles {
 public:
  static constexpr int64_t kMaxM = 20;
  static constexpr int kMaxRows = 2;

  Avx2DotTiles(const int8_t* a, int64_t M, int64_t K)
      : K_(K), a16_(converted_a<PackedOperands<Int8Isa::kAvx2>>(a, M, K, K)) {}
  void run(int64_t m0, int64_t rows, int64_t cols, const int8_t* b, int32_t* c) const {
    run_dot_tile<kMaxRows>(rows, cols, [&](auto r, auto j) {
      avx2_dot_tile<decltype(r)::value, decltype(j)::value>(a16_.data() + m0 * K_, K_, b, K_, c);
    });
  }

 private:
  int64_t K_;
  std::vector<int16_t> a16_;
};

// Per 64-column panel: 4 B rows at a time, every A row against them.
template <typename Tiles, typename Epilogue>
void int8_gemm_dot(const Tiles& tiles, const int8_t* b, int64_t M, int64_t N, int64_t K, const Epilogue& epilogue) {
  at::parallel_for(0, ceil_div(N, kPanelN), 1, [&](int64_t begin, int64_t end) {
    int32_t acc[Tiles::kMaxM * kPanelN];
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t n0 = panel * kPanelN, nb = std::min(kPanelN, N - n0);
      for (int64_t j = 0; j < nb;) {
        const int64_t cols = nb - j >= kDotCols ? kDotCols : 1;
        for (int64_t m0 = 0; m0 < M; m0 += Tiles::kMaxRows) {
          tiles.run(m0, std::min<int64_t>(Tiles::kMaxRows, M - m0), cols, b + (n0 + j) * K, acc + m0 * kPanelN + j);
        }
        j += cols;
      }
      epilogue(0, n0, M, nb, static_cast<const int32_t*>(acc));
    }
  });
}

// --- packed micro-kernels (larger M) ---

// c[r, 0:64] = start[r, 0:64] + Σ_g a_u8[r, 4g:4g+4] · panel[g], r < kRows
// (start rows start_stride apart: 0 repeats one row, the columns' initial values).
template <int kRows>
MLX_INT8_TARGET_VNNI void vnni_micro_kernel(const uint8_t* a, int64_t lda, const int8_t* panel, int64_t groups,
                                            const int32_t* start, int64_t start_stride, int32_t* c) {
  __m512i acc[kRows][4];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_loadu_si512(start + r * start_stride + 16 * j);
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int8_t* b = panel + g * 4 * kPanelN;
    const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 64);
    const __m512i b2 = _mm512_loadu_si512(b + 128), b3 = _mm512_loadu_si512(b + 192);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512i a4 = _mm512_set1_epi32(load_lane(a + r * lda + 4 * g));
      acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a4, b0);
      acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a4, b1);
      acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], a4, b2);
      acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], a4, b3);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < 4; ++j) _mm512_storeu_si512(c + r * kPanelN + 16 * j, acc[r][j]);
  }
}

// c[r, 0:64] = start[r, 0:64] + Σ_g a16[r, 2g:2g+2] · panel[g], r < kRows, as
// vnni_micro_kernel; 16 columns per pass so the accumulators fit 16 ymm registers.
template <int kRows>
MLX_INT8_TARGET_AVX2 void avx2_micro_kernel(const int16_t* a, int64_t lda, const int16_t* panel, int64_t groups,
                                            const int32_t* start, int64_t start_stride, int32_t* c) {
  for (int64_t col = 0; col < kPanelN; col += 16) {
    __m256i acc[kRows][2];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
      for (int j = 0; j < 2; ++j) {
        acc[r][j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(start + r * start_stride + col + 8 * j));
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      const int16_t* b = panel + g * 2 * kPanelN + 2 * col;
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const __m256i a2 = _mm256_set1_epi32(load_lane(a + r * lda + 2 * g));
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(a2, b0));
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(a2, b1));
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 8
      for (int j = 0; j < 2; ++j) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * kPanelN + col + 8 * j), acc[r][j]);
      }
    }
  }
}

// panel[g·kPanelN + j] = the lane of k-group g of B row j, for 16 rows × 16
// groups (B rows K apart): a 16×16 transpose of 32-bit lanes in four butterfly
// stages, each swapping one bit of the row index with that bit of the lane
// index (vpermt2d), in place of 256 scalar moves.
MLX_INT8_TARGET_VNNI void vnni_pack_block(const int8_t* b, int64_t K, int32_t* panel) {
  __m512i v[16];
#pragma GCC unroll 16
  for (int r = 0; r < 16; ++r) v[r] = _mm512_loadu_si512(b + r * K);
#pragma GCC unroll 4
  for (int bit = 0; bit < 4; ++bit) {
    const int s = 1 << bit;
    int32_t low_index[16], high_index[16];
    for (int c = 0; c < 16; ++c) {
      low_index[c] = (c & s) != 0 ? 16 + c - s : c;
      high_index[c] = (c & s) != 0 ? 16 + c : c + s;
    }
    const __m512i low = _mm512_loadu_si512(low_index), high = _mm512_loadu_si512(high_index);
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
      if ((i & s) != 0) continue;
      const __m512i first = v[i], second = v[i + s];
      v[i] = _mm512_permutex2var_epi32(first, low, second);
      v[i + s] = _mm512_permutex2var_epi32(first, high, second);
    }
  }
#pragma GCC unroll 16
  for (int g = 0; g < 16; ++g) _mm512_storeu_si512(panel + g * kPanelN, v[g]);
}

// The same for 8 rows × 8 groups of int16 pairs: each row's 16 bytes
// sign-extended, then the 8×8 transpose of 32-bit lanes (unpack 32, unpack 64,
// swap 128-bit halves).
MLX_INT8_TARGET_AVX2 void avx2_pack_block(const int8_t* b, int64_t K, int32_t* panel) {
  __m256i v[8], t[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) {
    v[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + r * K)));
  }
#pragma GCC unroll 4
  for (int r = 0; r < 8; r += 2) {
    t[r] = _mm256_unpacklo_epi32(v[r], v[r + 1]);
    t[r + 1] = _mm256_unpackhi_epi32(v[r], v[r + 1]);
  }
  // v[4h + s] (h: rows 4h..4h+3): group s of each 128-bit half.
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    v[4 * h] = _mm256_unpacklo_epi64(t[4 * h], t[4 * h + 2]);
    v[4 * h + 1] = _mm256_unpackhi_epi64(t[4 * h], t[4 * h + 2]);
    v[4 * h + 2] = _mm256_unpacklo_epi64(t[4 * h + 1], t[4 * h + 3]);
    v[4 * h + 3] = _mm256_unpackhi_epi64(t[4 * h + 1], t[4 * h + 3]);
  }
#pragma GCC unroll 4
  for (int s = 0; s < 4; ++s) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel + s * kPanelN),
                        _mm256_permute2x128_si256(v[s], v[s + 4], 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel + (s + 4) * kPanelN),
                        _mm256_permute2x128_si256(v[s], v[s + 4], 0x31));
  }
}

// Ops::kPackBlock rows × groups of the panel, by the ISA's transpose.
template <typename Ops>
void pack_block(const int8_t* b, int64_t K, int32_t* panel) {
  if constexpr (std::is_same_v<Ops, PackedOperands<Int8Isa::kAvx512Vnni>>) {
    vnni_pack_block(b, K, panel);
  } else {
    avx2_pack_block(b, K, panel);
  }
}

// panel[g·kPanelN + j] = the lane of k-group g of B row j (rows K apart);
// rows past nb and k's past K are 0. Whole blocks of Ops::kPackBlock rows ×
// groups are transposed in registers; the rest lane by lane, group-major, so
// the writes are in order and the 64 rows' lines are read while in L1.
template <typename Ops>
void pack_panel(const int8_t* b, int64_t nb, int64_t K, int64_t groups, int32_t* panel) {
  const int64_t full_groups = K / Ops::kGroup;
  const int64_t block_rows = nb / Ops::kPackBlock * Ops::kPackBlock;
  const int64_t block_groups = full_groups / Ops::kPackBlock * Ops::kPackBlock;
  for (int64_t j = 0; j < block_rows; j += Ops::kPackBlock) {
    for (int64_t g = 0; g < block_groups; g += Ops::kPackBlock) {
      pack_block<Ops>(b + j * K + g * Ops::kGroup, K, panel + g * kPanelN + j);
    }
  }
  for (int64_t g = 0; g < full_groups; ++g) {
    for (int64_t j = g < block_groups ? block_rows : 0; j < nb; ++j) {
      panel[g * kPanelN + j] = Ops::b_lane(b + j * K + g * Ops::kGroup);
    }
    std::fill(panel + g * kPanelN + nb, panel + (g + 1) * kPanelN, 0);
  }
  if (full_groups < groups) {
    const int64_t k0 = full_groups * Ops::kGroup;
    for (int64_t j = 0; j < kPanelN; ++j) {
      int8_t tail[4] = {};
      if (j < nb) std::memcpy(tail, b + j * K + k0, K - k0);
      panel[full_groups * kPanelN + j] = Ops::b_lane(tail);
    }
  }
}

// What each accumulator of panel column j starts at: on VNNI -128·Σ_k b[j, k]
// (mod 2³²: it cancels A's +128 offset in the wrapping vpdpbusd sums), else 0.
template <Int8Isa kIsa>
void initial_accumulators(const int8_t* b, int64_t nb, int64_t K, int32_t* init) {
  std::fill(init, init + kPanelN, 0);
  if constexpr (kIsa == Int8Isa::kAvx512Vnni) {
    for (int64_t j = 0; j < nb; ++j) {
      const int32_t row_sum = std::accumulate(b + j * K, b + (j + 1) * K, int32_t{0});
      init[j] = static_cast<int32_t>(0u - 128u * static_cast<uint32_t>(row_sum));
    }
  }
}

// acc[0:mb, 0:64] = init + a[0:mb, :] · panel, K in blocks of kBlockGroups
// groups, each passed by all mb rows while its panel slice is in L1. The first
// block starts from init, the others from the accumulators the last one left;
// K = 0 still takes one (empty) block, which writes init.
template <Int8Isa kIsa>
void multiply_block(const typename PackedOperands<kIsa>::AElement* a, int64_t lda, int64_t mb, const int32_t* panel,
                    int64_t groups, const int32_t* init, int32_t* acc) {
  constexpr int64_t kGroup = PackedOperands<kIsa>::kGroup;
  for (int64_t g0 = 0; g0 == 0 || g0 < groups; g0 += kBlockGroups) {
    const int64_t gb = std::min(kBlockGroups, groups - g0);
    for (int64_t m0 = 0; m0 < mb; m0 += kMicroRows) {
      with_rows<kMicroRows>(std::min(kMicroRows, mb - m0), [&](auto rows) {
        const auto* a_rows = a + m0 * lda + g0 * kGroup;
        const int32_t* slice = panel + g0 * kPanelN;
        int32_t* c = acc + m0 * kPanelN;
        const int32_t* start = g0 == 0 ? init : c;
        const int64_t start_stride = g0 == 0 ? 0 : kPanelN;
        if constexpr (kIsa == Int8Isa::kAvx512Vnni) {
          vnni_micro_kernel<decltype(rows)::value>(a_rows, lda, reinterpret_cast<const int8_t*>(slice), gb, start,
                                                   start_stride, c);
        } else {
          avx2_micro_kernel<decltype(rows)::value>(a_rows, lda, reinterpret_cast<const int16_t*>(slice), gb, start,
                                                   start_stride, c);
        }
      });
    }
  }
}

template <Int8Isa kIsa, typename Epilogue>
void int8_gemm_packed(const int8_t* a, const int8_t* b, int64_t M, int64_t N, int64_t K, const Epilogue& epilogue) {
  using Ops = PackedOperands<kIsa>;
  const int64_t groups = ceil_div(K, Ops::kGroup), lda = groups * Ops::kGroup;
  const auto a_conv = converted_a<Ops>(a, M, K, lda);
  const int64_t panels_n = ceil_div(N, kPanelN), blocks_m = ceil_div(M, kPanelM);
  // M is split only when there are too few panels to keep the threads busy:
  // each split packs its panel again.
  const int64_t splits_m =
      std::clamp<int64_t>(ceil_div(2 * static_cast<int64_t>(at::get_num_threads()), panels_n), 1, blocks_m);
  at::parallel_for(0, panels_n * splits_m, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> panel(groups * kPanelN);
    std::vector<int32_t> acc(kPanelM * kPanelN);
    int32_t init[kPanelN];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = (task % panels_n) * kPanelN, nb = std::min(kPanelN, N - n0);
      const int64_t split = task / panels_n;
      const int64_t m_begin = split * blocks_m / splits_m * kPanelM;
      const int64_t m_end = std::min(M, (split + 1) * blocks_m / splits_m * kPanelM);
      pack_panel<Ops>(b + n0 * K, nb, K, groups, panel.data());
      initial_accumulators<kIsa>(b + n0 * K, nb, K, init);
      for (int64_t m0 = m_begin; m0 < m_end; m0 += kPanelM) {
        const int64_t mb = std::min(kPanelM, m_end - m0);
        multiply_block<kIsa>(a_conv.data() + m0 * lda, lda, mb, panel.data(), groups, init, acc.data());
        epilogue(m0, n0, mb, nb, static_cast<const int32_t*>(acc.data()));
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
  if (kernel == Int8Isa::kAvx512Vnni) {
    if (M <= VnniDotTiles::kMaxM) return int8_gemm_dot(VnniDotTiles(a, M, K), b, M, N, K, epilogue);
    return int8_gemm_packed<Int8Isa::kAvx512Vnni>(a, b, M, N, K, epilogue);
  }
  if (kernel == Int8Isa::kAvx2) {
    if (M <= Avx2DotTiles::kMaxM) return int8_gemm_dot(Avx2DotTiles(a, M, K), b, M, N, K, epilogue);
    return int8_gemm_packed<Int8Isa::kAvx2>(a, b, M, N, K, epilogue);
  }
#endif
  int8_gemm_portable(a, b, M, N, K, epilogue);
}

// --- int8_mm -----------------------------------------------------------------

at::Tensor int8_mm_cpu(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_int8_mm_args(a_in, b_in);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.contiguous();
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  at::Tensor c = at::empty({M, N}, a.options().dtype(at::kInt));  // the epilogue writes every element
  if (M == 0 || N == 0 || K == 0) return c.zero_();

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
// [rows, n_outliers] and [n_outliers, N]) in fp32 for the epilogue.
struct OutlierOperands {
  at::Tensor x_cols;  // fp32 [M, n_outliers]: x[:, cols] (exact in fp32)
  at::Tensor w_cols;  // fp32 [n_outliers, N]: (w_i8[:, cols] * absmax_w / 127)ᵀ, rounded to x's dtype
};

OutlierOperands gather_outlier_operands(const at::Tensor& x, const at::Tensor& w_i8, const at::Tensor& w_absmax,
                                        const at::Tensor& cols) {
  return {x.index_select(1, cols).to(at::kFloat).contiguous(),
          dequantized_weight_columns(w_i8, w_absmax, cols, x.scalar_type()).to(at::kFloat).t().contiguous()};
}

// What int8_gemm's epilogue reads besides the int32 block.
template <typename scalar_t>
struct DequantOperands {
  const float* row_absmax;  // [M]
  const float* col_absmax;  // [N]
  const float* bias;        // [N] or nullptr
  const float* x_cols;      // OutlierOperands, or nullptr with n_outliers 0
  const float* w_cols;
  int64_t n_outliers;
  int64_t N;
  scalar_t* out;  // [M, N]
};

// out[m, n0:n0 + nb] = acc · absmax_x[m] · absmax_w[n] / 127², then + each
// outlier column's product, then + bias, in fp32 (the GPU epilogue's order)
// and rounded once. Column loops inside, so that they vectorize.
template <typename scalar_t>
void dequantize_row(const DequantOperands<scalar_t>& d, int64_t m, int64_t n0, int64_t nb, const int32_t* acc) {
  float values[kPanelN];
  const float row_scale = d.row_absmax[m] * kInvInt8MaxSquared;
  for (int64_t j = 0; j < nb; ++j) values[j] = static_cast<float>(acc[j]) * row_scale * d.col_absmax[n0 + j];
  for (int64_t o = 0; o < d.n_outliers; ++o) {
    const float x = d.x_cols[m * d.n_outliers + o];
    const float* w = d.w_cols + o * d.N + n0;
    for (int64_t j = 0; j < nb; ++j) values[j] += x * w[j];
  }
  if (d.bias != nullptr) {
    for (int64_t j = 0; j < nb; ++j) values[j] += d.bias[n0 + j];
  }
  scalar_t* out_row = d.out + m * d.N + n0;
  for (int64_t j = 0; j < nb; ++j) out_row[j] = static_cast<scalar_t>(values[j]);
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
  const QuantizedRows q = quantize_activations(isa, x, threshold);
  const int64_t n_outliers = q.outlier_cols.numel();
  const OutlierOperands outliers =
      n_outliers > 0 ? gather_outlier_operands(x, w, w_absmax, q.outlier_cols) : OutlierOperands{};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "int8_gemm", [&] {
    const DequantOperands<scalar_t> d{q.row_absmax.data_ptr<float>(),
                                      w_absmax.data_ptr<float>(),
                                      bias.defined() ? bias.data_ptr<float>() : nullptr,
                                      n_outliers > 0 ? outliers.x_cols.data_ptr<float>() : nullptr,
                                      n_outliers > 0 ? outliers.w_cols.data_ptr<float>() : nullptr,
                                      n_outliers,
                                      N,
                                      out.data_ptr<scalar_t>()};
    int8_gemm_tiles(isa, q.x_i8.data_ptr<int8_t>(), w.data_ptr<int8_t>(), M, N, K,
                    [&](int64_t m0, int64_t n0, int64_t mb, int64_t nb, const int32_t* acc) {
                      for (int64_t i = 0; i < mb; ++i) dequantize_row(d, m0 + i, n0, nb, acc + i * kPanelN);
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
