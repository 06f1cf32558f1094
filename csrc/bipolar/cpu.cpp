// CPU kernels of the bipolar-INT family: the bit-serial twin of the CUDA
// tensor-core kernel (see bipolar.h for the format and the GEMM identity).
//
// bipolar_gemm: the kernels read each operand as uint64 words through a view
// (row stride, plane stride). The activations are re-laid out per call as
// [rows, planes, words], padding bits masked off and words padded with zeros to
// whole 512-bit vectors; the weight planes are read in place when K is a
// multiple of 512 and N of 4 (usable_in_place), else copied the same way. The
// weighted row popcounts RA/RW come from one pass over each view.
//
// The output is split into 32×64 tiles run in parallel; a tile runs R-row ×
// 4-column register blocks (one-row blocks for the rows left over). A block
// keeps its accumulators in vector registers across all p·q plane pairs:
// S = Σ 2^(i+j)·popc(a_j ∧ w_i) by Horner's rule in e = i + j (pairs in falling
// e, accumulators doubled before each new e, horner_steps), so no pair needs a
// horizontal sum or a shift of its own. Per ISA path (block_kernels_for):
// AVX-512 with VPOPCNTDQ ANDs, vpopcntq's and adds 8 words at once (4×4
// blocks); AVX2 counts 4 words at once by nibble lookup (vpshufb) on
// activations stored nibble-split, byte counts widened every 31 steps (2×4
// blocks); scalar uses popcount on one word (4×4 blocks). The epilogue applies
// C = 4·S − 2(2^q−1)·RA − 2(2^p−1)·RW + K(2^p−1)(2^q−1), exactly as the GPU does.
//
// bipolar_quantize: per row, absmax and the codes of all elements in one loop
// each that vectorizes (quantize_codes), then packed into plane words eight
// codes per multiply (pack_plane_words).
//
// bipolar_linear runs quantize -> GEMM -> dequant (+ bias) with the dequant in
// the GEMM's epilogue, so the int32 product is never materialized.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#ifdef __x86_64__
#include <immintrin.h>
#endif

#include "bipolar/bipolar.h"
#include "common/cpu_isa.h"
#include "common/cpu_utils.h"
#include "common/registration.h"

namespace mlx_kernels::bipolar {
namespace {

constexpr int kBlockN = 4;         // register block columns (weight rows)
constexpr int kMaxBlockM = 4;      // register block rows, at most (activation rows)
constexpr int64_t kVecWords = 8;   // a row's uint64 words are padded to a multiple of one 512-bit vector
constexpr int64_t kTileM = 32;
constexpr int64_t kTileN = 64;

// Below ~2^16 elementary steps a parallel region costs more than it saves:
// at::parallel_for runs ranges shorter than the grain inline.
int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, work_per_item));
}

// --- plane writers shared by pack and quantize --------------------------------

// Bit t of plane word b = bit b of codes[t], for 32 codes u < 2^bits. Eight codes
// at a time: their bit b moved to bit 0 of each byte, then one multiply gathers
// the eight bytes' low bits into the top byte (byte t lands on bit 56 + t).
inline void pack_plane_words(const uint8_t* codes, int bits, uint32_t* plane_words) {
  uint64_t lanes[kWordBits / 8];
  std::memcpy(lanes, codes, sizeof(lanes));
  for (int b = 0; b < bits; ++b) {
    uint32_t word = 0;
    for (int g = 0; g < kWordBits / 8; ++g) {
      const uint64_t low_bits = (lanes[g] >> b) & 0x0101010101010101ull;
      word |= static_cast<uint32_t>((low_bits * 0x0102040810204080ull) >> 56) << (8 * g);
    }
    plane_words[b] = word;
  }
}

// Writes one row of codes u ∈ [0, 2^bits) (codes[k] for k < K) as bit-planes:
// planes[b, row, k/32] bit k%32 = bit b of u; padding bits stay 0.
inline void write_plane_row(int32_t* planes, int64_t rows, int64_t row, int64_t K, int bits, const uint8_t* codes) {
  const int64_t words = words_for(K);
  for (int64_t w = 0; w < words; ++w) {
    uint8_t word_codes[kWordBits] = {};
    const int64_t k0 = w * kWordBits;
    std::memcpy(word_codes, codes + k0, std::min<int64_t>(kWordBits, K - k0));
    uint32_t plane_words[kMaxBits];
    pack_plane_words(word_codes, bits, plane_words);
    for (int b = 0; b < bits; ++b) planes[(b * rows + row) * words + w] = static_cast<int32_t>(plane_words[b]);
  }
}

at::Tensor bipolar_pack_cpu(const at::Tensor& values_in, int64_t bits) {
  check_pack_args(values_in, bits);
  const at::Tensor values = values_in.contiguous();
  const int64_t R = values.size(0), K = values.size(1);
  at::Tensor planes = at::zeros({bits, R, words_for(K)}, values.options().dtype(at::kInt));
  if (planes.numel() == 0) return planes;
  const int64_t top = (int64_t{1} << bits) - 1;
  int32_t* out = planes.data_ptr<int32_t>();
  AT_DISPATCH_INTEGRAL_TYPES(values.scalar_type(), "bipolar_pack_cpu", [&] {
    const scalar_t* v = values.data_ptr<scalar_t>();
    at::parallel_for(0, R, grain_for(K * bits), [&](int64_t begin, int64_t end) {
      std::vector<uint8_t> codes(K);
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t k = 0; k < K; ++k) codes[k] = static_cast<uint8_t>((static_cast<int64_t>(v[r * K + k]) + top) / 2);
        write_plane_row(out, R, r, K, bits, codes.data());
      }
    });
  });
  return planes;
}

at::Tensor bipolar_unpack_cpu(const at::Tensor& planes_in, int64_t K) {
  check_unpack_args(planes_in, K);
  const at::Tensor planes = planes_in.contiguous();
  const int64_t bits = planes.size(0), R = planes.size(1), words = planes.size(2);
  at::Tensor values = at::empty({R, K}, planes.options());
  if (values.numel() == 0) return values;
  const int32_t top = (1 << bits) - 1;
  const uint32_t* in = reinterpret_cast<const uint32_t*>(planes.data_ptr<int32_t>());
  int32_t* out = values.data_ptr<int32_t>();
  at::parallel_for(0, R, grain_for(K * bits), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t k = 0; k < K; ++k) {
        int32_t u = 0;
        for (int64_t b = 0; b < bits; ++b) {
          u |= static_cast<int32_t>((in[(b * R + r) * words + k / kWordBits] >> (k % kWordBits)) & 1u) << b;
        }
        out[r * K + k] = 2 * u - top;
      }
    }
  });
  return values;
}

// --- quantize ------------------------------------------------------------------

// nearest_level_code(v, bits) for a finite |v| < 2^22, in a form GCC vectorizes
// (it vectorizes neither floorf nor a float -> int conversion under the default
// -ftrapping-math): y = v/2 rounded to an integer by the 1.5·2^23 shift, minus
// one where that rounded up, is floor(y); the code is floor(y) + 2^(bits-1)
// clamped to [0, 2^bits − 1]. Equal to nearest_level_code for every float in
// [−1024, 1024] and every bits (checked exhaustively); quantize's |x / scale| is
// at most about 2^bits.
__attribute__((always_inline)) inline uint8_t nearest_level_code_finite(float v, int bits) {
  constexpr float kShift = 12582912.0f;  // 1.5·2^23
  const float y = v * 0.5f, shifted = y + kShift;
  int32_t rounded;
  std::memcpy(&rounded, &shifted, sizeof(rounded));
  rounded -= 0x4B400000;  // the bits of kShift
  const int32_t floor_y = rounded - (shifted - kShift > y ? 1 : 0);
  return static_cast<uint8_t>(std::min(std::max(floor_y + (1 << (bits - 1)), 0), (1 << bits) - 1));
}

// The codes of one row into codes[k], its scale into *scale.
template <typename scalar_t>
__attribute__((always_inline)) inline void quantize_codes(const scalar_t* row, int64_t K, int bits, float* scale,
                                                          uint8_t* codes) {
  // absmax_keep_nan's result, in a form that vectorizes: the largest |x| as
  // int32 bits (their order is the order of |x|), above Inf's if there was a NaN.
  int32_t absmax_bits = 0;
  for (int64_t k = 0; k < K; ++k) {
    const float v = static_cast<float>(row[k]);
    int32_t v_bits;
    std::memcpy(&v_bits, &v, sizeof(v_bits));
    absmax_bits = std::max(absmax_bits, v_bits & 0x7fffffff);
  }
  float absmax;
  std::memcpy(&absmax, &absmax_bits, sizeof(absmax));
  const float s = row_scale_for(absmax, bits);
  *scale = s;
  // A row of zeros or a non-finite row (s = 0 or NaN): level +1 everywhere.
  if (s > 0.0f) {
    for (int64_t k = 0; k < K; ++k) codes[k] = nearest_level_code_finite(static_cast<float>(row[k]) / s, bits);
  } else {
    std::fill_n(codes, K, static_cast<uint8_t>(nearest_level_code(0.0f, bits)));  // K may be 0: codes null
  }
}
// Compiled per path: both loops vectorize on AVX2 and AVX-512.
MLX_CPU_ISA_DISPATCH(quantize_codes_isa, quantize_codes)

// Per-row scale = absmax / (2^bits − 1) and planes of the nearest odd levels of
// x / scale. A row of zeros gets scale 0 and level +1 everywhere; a row with a
// NaN or ±Inf gets scale NaN and level +1 everywhere (row_scale_for).
template <typename scalar_t>
void quantize_rows(CpuIsa isa, const scalar_t* x, int64_t R, int64_t K, int bits, int32_t* planes, float* scale) {
  at::parallel_for(0, R, grain_for(K * bits), [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> codes(K);
    for (int64_t r = begin; r < end; ++r) {
      quantize_codes_isa(isa, x + r * K, K, bits, scale + r, codes.data());
      write_plane_row(planes, R, r, K, bits, codes.data());
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_cpu(CpuIsa isa, const at::Tensor& x_in, int64_t bits) {
  const at::Tensor x = x_in.contiguous();
  const int64_t R = x.size(0), K = x.size(1);
  at::Tensor planes = at::zeros({bits, R, words_for(K)}, x.options().dtype(at::kInt));
  at::Tensor scale = at::zeros({R}, x.options().dtype(at::kFloat));
  if (R == 0) return {planes, scale};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bipolar_quantize_cpu", [&] {
    quantize_rows(isa, x.data_ptr<scalar_t>(), R, K, static_cast<int>(bits), planes.data_ptr<int32_t>(),
                  scale.data_ptr<float>());
  });
  return {planes, scale};
}

std::tuple<at::Tensor, at::Tensor> bipolar_quantize_cpu(const at::Tensor& x, int64_t bits) {
  check_quantize_args(MLX_OP_NAME("bipolar_quantize"), x, bits);
  return quantize_cpu(cpu_isa(MLX_OP_NAME("bipolar_quantize")), x, bits);
}

// --- GEMM ----------------------------------------------------------------------

// One operand's planes as uint64 words, as the block kernels read them: plane b
// of row r at bits + r·row_stride + b·plane_stride, words64 words (a multiple
// of kVecWords), the bits past K zero. Nibble-split (the AVX2 kernel's
// activations): stored plane 2b holds plane b's bits & 0x0f per byte, 2b + 1
// its (bits >> 4) & 0x0f.
struct PlaneView {
  const uint64_t* bits = nullptr;
  int64_t row_stride = 0, plane_stride = 0, words64 = 0;

  const uint64_t* plane(int64_t r, int64_t b) const { return bits + r * row_stride + b * plane_stride; }
};

// An operand re-laid out as [rows_padded, stored planes, words64] (padding rows zero).
struct RowPlanes {
  std::vector<uint64_t> storage;
  PlaneView view;
};

// Rows [begin, end) of planes `in` [bits, rows, words] into `out`, RowPlanes' layout.
void relayout_rows(const uint32_t* in, int64_t bits, int64_t rows, int64_t words, int64_t K, bool nibble_split,
                   uint64_t* out, int64_t words64, int64_t begin, int64_t end) {
  constexpr uint64_t kLowNibbles = 0x0f0f0f0f0f0f0f0full;
  const int64_t planes = nibble_split ? 2 * bits : bits;
  for (int64_t r = begin; r < end; ++r) {
    for (int64_t b = 0; b < bits; ++b) {
      const uint32_t* src = in + (b * rows + r) * words;
      uint64_t* dst = out + (r * planes + (nibble_split ? 2 * b : b)) * words64;
      for (int64_t w = 0; w < words; w += 2) {
        const uint64_t high = w + 1 < words ? src[w + 1] & valid_bits(w + 1, K) : 0;
        const uint64_t word = (high << 32) | (src[w] & valid_bits(w, K));
        if (nibble_split) {
          dst[w / 2] = word & kLowNibbles;
          dst[words64 + w / 2] = (word >> 4) & kLowNibbles;
        } else {
          dst[w / 2] = word;
        }
      }
    }
  }
}

RowPlanes to_row_planes(const at::Tensor& planes, int64_t K, int64_t row_multiple, bool nibble_split) {
  const int64_t bits = planes.size(0), rows = planes.size(1), words = planes.size(2);
  RowPlanes out;
  const int64_t stored_planes = nibble_split ? 2 * bits : bits;
  const int64_t words64 = ceil_div(ceil_div(words, 2), kVecWords) * kVecWords;
  out.storage.assign(ceil_div(rows, row_multiple) * row_multiple * stored_planes * words64, 0);
  out.view = {out.storage.data(), stored_planes * words64, words64, words64};
  const uint32_t* in = reinterpret_cast<const uint32_t*>(planes.data_ptr<int32_t>());
  at::parallel_for(0, rows, grain_for(bits * words), [&](int64_t begin, int64_t end) {
    relayout_rows(in, bits, rows, words, K, nibble_split, out.storage.data(), words64, begin, end);
  });
  return out;
}

// The weight planes [q, N, W] read in place, when they already are what the
// kernels want: no padding bits (K a multiple of 64), whole vectors per row
// (K a multiple of 512), whole column blocks (N a multiple of kBlockN), 8-byte
// aligned. Saves copying the weights on every call (a GEMV's main cost).
bool usable_in_place(const at::Tensor& planes, int64_t K) {
  return K % (64 * kVecWords) == 0 && planes.size(1) % kBlockN == 0 &&
         reinterpret_cast<uintptr_t>(planes.data_ptr<int32_t>()) % alignof(uint64_t) == 0;
}

PlaneView in_place_view(const at::Tensor& planes, int64_t K) {
  const int64_t words64 = K / 64;
  return {reinterpret_cast<const uint64_t*>(planes.data_ptr<int32_t>()), words64, planes.size(1) * words64, words64};
}

// out[r] = Σ_b 2^b·popc(plane_b of row r) for r < rows, `split` stored planes per plane.
__attribute__((always_inline)) inline void weighted_popcounts(const PlaneView& v, int64_t planes, int split,
                                                              int64_t begin, int64_t end, uint32_t* out) {
  for (int64_t r = begin; r < end; ++r) {
    uint32_t weighted = 0;
    for (int64_t b = 0; b < planes * split; ++b) {
      const uint64_t* words = v.plane(r, b);
      uint32_t count = 0;
      for (int64_t w = 0; w < v.words64; ++w) count += static_cast<uint32_t>(__builtin_popcountll(words[w]));
      weighted += count << (b / split);
    }
    out[r] = weighted;
  }
}
// Compiled per path: POPCNT is one instruction on the AVX2 and AVX-512 paths.
MLX_CPU_ISA_DISPATCH(weighted_popcounts_isa, weighted_popcounts)

std::vector<uint32_t> weighted_popcounts_of(CpuIsa isa, const PlaneView& v, int64_t rows, int64_t planes, int split) {
  std::vector<uint32_t> out(rows);
  at::parallel_for(0, rows, grain_for(planes * split * v.words64), [&](int64_t begin, int64_t end) {
    weighted_popcounts_isa(isa, v, planes, split, begin, end, out.data());
  });
  return out;
}

// S = Σ_{j<p, i<q} 2^(i+j)·popc(a_j ∧ w_i) by Horner's rule in e = i + j: the
// plane pairs in order of falling e, the accumulators doubled before each new e.
// So every pair adds its popcounts straight into the block's accumulators.
struct PairStep {
  int a_plane, w_plane;
  bool double_first;
};

std::vector<PairStep> horner_steps(int p, int q) {
  std::vector<PairStep> steps;
  for (int e = p + q - 2; e >= 0; --e) {
    for (int j = std::max(0, e - q + 1); j <= std::min(e, p - 1); ++j) {
      steps.push_back({j, e - j, j == std::max(0, e - q + 1) && e != p + q - 2});
    }
  }
  return steps;
}

struct GemmOperands {
  const PlaneView& a;
  const PlaneView& w;
  const std::vector<PairStep>& steps;
};

// A block kernel: s[r·kBlockN + c] = S[m0 + r, n0 + c] for its R rows and kBlockN columns.
using BlockFn = void (*)(const GemmOperands&, int64_t m0, int64_t n0, uint64_t* s);

// Baseline x86-64: 64-bit words, popcount of libgcc.
template <int R>
void block_popcount(const GemmOperands& g, int64_t m0, int64_t n0, uint64_t* s) {
  uint64_t acc[R][kBlockN] = {};
  for (const PairStep& step : g.steps) {
    if (step.double_first)
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < kBlockN; ++c) acc[r][c] *= 2;
    const uint64_t* a[R];
    const uint64_t* w[kBlockN];
    for (int r = 0; r < R; ++r) a[r] = g.a.plane(m0 + r, step.a_plane);
    for (int c = 0; c < kBlockN; ++c) w[c] = g.w.plane(n0 + c, step.w_plane);
    for (int64_t k = 0; k < g.a.words64; ++k) {
      for (int c = 0; c < kBlockN; ++c) {
        const uint64_t y = w[c][k];
        for (int r = 0; r < R; ++r) acc[r][c] += __builtin_popcountll(a[r][k] & y);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kBlockN; ++c) s[r * kBlockN + c] = acc[r][c];
}

#ifdef MLX_CPU_HAS_ISA_PATHS
__attribute__((always_inline)) inline uint64_t sum_lanes(const uint64_t* lanes, int count) {
  uint64_t sum = 0;
  for (int i = 0; i < count; ++i) sum += lanes[i];
  return sum;
}

// AVX2: popcounts of 256 bits by nibble lookup (vpshufb, Muła), AND and lookup
// per nibble half: the activations come nibble-split, so (a ∧ w) & 0x0f.. is
// a_lo ∧ w and ((a ∧ w) >> 4) & 0x0f.. is a_hi ∧ (w >> 4). The counts add up
// in bytes (at most 8 per 256-bit step) and go to 64-bit lanes (vpsadbw) every
// 31 steps, before a byte can overflow.
template <int R>
MLX_TARGET_AVX2 void block_nibble_lut(const GemmOperands& g, int64_t m0, int64_t n0, uint64_t* s) {
  constexpr int64_t kStepWords = 4, kFlushWords = 31 * kStepWords;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i zero = _mm256_setzero_si256();
  __m256i acc[R][kBlockN];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kBlockN; ++c) acc[r][c] = zero;
  for (const PairStep& step : g.steps) {
    if (step.double_first)
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < kBlockN; ++c) acc[r][c] = _mm256_add_epi64(acc[r][c], acc[r][c]);
    const uint64_t *lo[R], *hi[R];
    const uint64_t* w[kBlockN];
    for (int r = 0; r < R; ++r) {
      lo[r] = g.a.plane(m0 + r, 2 * step.a_plane);
      hi[r] = g.a.plane(m0 + r, 2 * step.a_plane + 1);
    }
    for (int c = 0; c < kBlockN; ++c) w[c] = g.w.plane(n0 + c, step.w_plane);
    for (int64_t k0 = 0; k0 < g.a.words64; k0 += kFlushWords) {
      const int64_t k1 = std::min(g.a.words64, k0 + kFlushWords);
      __m256i counts[R][kBlockN];
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < kBlockN; ++c) counts[r][c] = zero;
      for (int64_t k = k0; k < k1; k += kStepWords) {
        for (int c = 0; c < kBlockN; ++c) {
          const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[c] + k));
          const __m256i y_hi = _mm256_srli_epi64(y, 4);
          for (int r = 0; r < R; ++r) {
            const __m256i x_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo[r] + k));
            const __m256i x_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi[r] + k));
            const __m256i n = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(x_lo, y)),
                                              _mm256_shuffle_epi8(lut, _mm256_and_si256(x_hi, y_hi)));
            counts[r][c] = _mm256_add_epi8(counts[r][c], n);
          }
        }
      }
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < kBlockN; ++c) acc[r][c] = _mm256_add_epi64(acc[r][c], _mm256_sad_epu8(counts[r][c], zero));
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < kBlockN; ++c) {
      alignas(32) uint64_t lanes[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[r][c]);
      s[r * kBlockN + c] = sum_lanes(lanes, 4);
    }
  }
}

// AVX-512 VPOPCNTDQ (Ice Lake, Zen 4): AND, vpopcntq and add on 8 words at once,
// 64-bit lane accumulators in registers across all plane pairs.
template <int R>
__attribute__((target(MLX_AVX512_FEATURES ",avx512vpopcntdq"))) void block_vpopcntdq(const GemmOperands& g,
                                                                                     int64_t m0, int64_t n0,
                                                                                     uint64_t* s) {
  __m512i acc[R][kBlockN];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kBlockN; ++c) acc[r][c] = _mm512_setzero_si512();
  for (const PairStep& step : g.steps) {
    if (step.double_first)
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < kBlockN; ++c) acc[r][c] = _mm512_add_epi64(acc[r][c], acc[r][c]);
    const uint64_t* a[R];
    const uint64_t* w[kBlockN];
    for (int r = 0; r < R; ++r) a[r] = g.a.plane(m0 + r, step.a_plane);
    for (int c = 0; c < kBlockN; ++c) w[c] = g.w.plane(n0 + c, step.w_plane);
    for (int64_t k = 0; k < g.a.words64; k += kVecWords) {
      __m512i x[R];
      for (int r = 0; r < R; ++r) x[r] = _mm512_loadu_si512(a[r] + k);
      for (int c = 0; c < kBlockN; ++c) {
        const __m512i y = _mm512_loadu_si512(w[c] + k);
        for (int r = 0; r < R; ++r)
          acc[r][c] = _mm512_add_epi64(acc[r][c], _mm512_popcnt_epi64(_mm512_and_si512(x[r], y)));
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < kBlockN; ++c) {
      alignas(64) uint64_t lanes[kVecWords];
      _mm512_store_si512(lanes, acc[r][c]);
      s[r * kBlockN + c] = sum_lanes(lanes, kVecWords);
    }
}
#endif

// The block kernels of an ISA path: blocks of `rows` rows and their one-row
// tails, and whether they want the activations nibble-split.
struct BlockKernels {
  BlockFn block;
  int64_t rows;
  BlockFn one_row;
  bool nibble_split;
};

// VPOPCNTDQ on the AVX-512 path of a CPU that has it, the nibble lookup on the
// AVX2 path (and on AVX-512 without VPOPCNTDQ), else baseline.
BlockKernels block_kernels_for(CpuIsa isa) {
#ifdef MLX_CPU_HAS_ISA_PATHS
  if (cpu_path_has(isa, CpuFeature::kAvx512Vpopcntdq))
    return {block_vpopcntdq<4>, 4, block_vpopcntdq<1>, false};
  if (isa != CpuIsa::kScalar) return {block_nibble_lut<2>, 2, block_nibble_lut<1>, true};
#endif
  return {block_popcount<4>, 4, block_popcount<1>, false};
}

// Runs the bit-serial GEMM on ISA path `isa` and hands every exact int32 C[m, n] to store(m, n, c).
template <typename Store>
void bipolar_gemm_core(CpuIsa isa, const at::Tensor& a_planes, const at::Tensor& w_planes, int64_t K, Store&& store) {
  const BlockKernels kernels = block_kernels_for(isa);
  const int64_t M = a_planes.size(1), N = w_planes.size(1);
  const int p = static_cast<int>(a_planes.size(0)), q = static_cast<int>(w_planes.size(0));
  const at::Tensor w_contiguous = w_planes.contiguous();
  const RowPlanes a = to_row_planes(a_planes.contiguous(), K, 1, kernels.nibble_split);
  const bool w_in_place = usable_in_place(w_contiguous, K);
  const RowPlanes w_copy = w_in_place ? RowPlanes{} : to_row_planes(w_contiguous, K, kBlockN, false);
  const PlaneView w = w_in_place ? in_place_view(w_contiguous, K) : w_copy.view;
  const std::vector<uint32_t> ra = weighted_popcounts_of(isa, a.view, M, p, kernels.nibble_split ? 2 : 1);
  const std::vector<uint32_t> rw = weighted_popcounts_of(isa, w, N, q, 1);
  const std::vector<PairStep> steps = horner_steps(p, q);
  const GemmOperands g{a.view, w, steps};
  const int64_t tiles_m = ceil_div(M, kTileM), tiles_n = ceil_div(N, kTileN);
  const int64_t tile_work = std::min(kTileM, M) * std::min(kTileN, N) * p * q * std::max<int64_t>(w.words64, 1) / 4;
  at::parallel_for(0, tiles_m * tiles_n, grain_for(tile_work), [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t m_end = std::min(M, (tile / tiles_n + 1) * kTileM);
      const int64_t n_end = std::min(N, (tile % tiles_n + 1) * kTileN);
      int64_t rows = kernels.rows;
      for (int64_t m0 = (tile / tiles_n) * kTileM; m0 < m_end; m0 += rows) {
        rows = m0 + kernels.rows <= m_end ? kernels.rows : 1;
        const BlockFn block = rows == kernels.rows ? kernels.block : kernels.one_row;
        for (int64_t n0 = (tile % tiles_n) * kTileN; n0 < n_end; n0 += kBlockN) {
          uint64_t s[kMaxBlockM * kBlockN];
          block(g, m0, n0, s);
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t c = 0; c < std::min<int64_t>(kBlockN, N - n0); ++c) {
              store(m0 + r, n0 + c,
                    combine(static_cast<uint32_t>(s[r * kBlockN + c]), ra[m0 + r], rw[n0 + c],
                            static_cast<uint32_t>(K), p, q));
            }
          }
        }
      }
    }
  });
}

at::Tensor bipolar_gemm_cpu(const at::Tensor& a_planes, const at::Tensor& w_planes, int64_t K) {
  check_gemm_args(a_planes, w_planes, K);
  const int64_t M = a_planes.size(1), N = w_planes.size(1);
  at::Tensor c = at::empty({M, N}, a_planes.options());
  if (c.numel() == 0) return c;
  const CpuIsa isa = cpu_isa(MLX_OP_NAME("bipolar_gemm"));
  int32_t* out = c.data_ptr<int32_t>();
  bipolar_gemm_core(isa, a_planes, w_planes, K, [&](int64_t m, int64_t n, int32_t v) { out[m * N + n] = v; });
  return c;
}

// --- linear --------------------------------------------------------------------

at::Tensor bipolar_linear_cpu(const at::Tensor& x, const at::Tensor& w_planes, const at::Tensor& w_scale_in,
                              int64_t x_bits, const c10::optional<at::Tensor>& bias_in) {
  check_linear_args(x, w_planes, w_scale_in, x_bits, bias_in);
  const int64_t K = x.size(-1), N = w_planes.size(1);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  const at::Tensor x2d = x.reshape({leading_rows(x), K});
  const int64_t M = x2d.size(0);
  at::Tensor out = at::empty({M, N}, x.options());
  if (out.numel() == 0) return out.view(out_shape);

  const CpuIsa isa = cpu_isa(MLX_OP_NAME("bipolar_linear"));
  const auto [x_planes, x_scale] = quantize_cpu(isa, x2d, x_bits);
  const at::Tensor w_scale = w_scale_in.contiguous();
  const at::Tensor bias = bias_in ? bias_in->contiguous().to(at::kFloat) : at::Tensor();
  const float* xs = x_scale.data_ptr<float>();
  const float* ws = w_scale.data_ptr<float>();
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bipolar_linear_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    bipolar_gemm_core(isa, x_planes, w_planes, K, [&](int64_t m, int64_t n, int32_t c) {
      const float y = static_cast<float>(c) * xs[m] * ws[n];
      o[m * N + n] = static_cast<scalar_t>(b ? y + b[n] : y);
    });
  });
  return out.view(out_shape);
}

// The tensor-core microbenchmark has nothing to measure on a CPU.
at::Tensor bipolar_mma_peak_cpu(const at::Tensor&, c10::string_view, int64_t, int64_t) {
  MLX_CHECK(false, MLX_OP_NAME("bipolar_mma_peak"), "measures GPU tensor cores; it needs a CUDA tensor");
}

}  // namespace

MLX_LIBRARY_IMPL(CPU, m) {
  m.impl("bipolar_pack", &bipolar_pack_cpu);
  m.impl("bipolar_unpack", &bipolar_unpack_cpu);
  m.impl("bipolar_gemm", &bipolar_gemm_cpu);
  m.impl("bipolar_quantize", &bipolar_quantize_cpu);
  m.impl("bipolar_linear", &bipolar_linear_cpu);
  m.impl("bipolar_mma_peak", &bipolar_mma_peak_cpu);
}

}  // namespace mlx_kernels::bipolar
