// CPU kernels of the bipolar-INT family: the bit-serial twin of the CUDA
// tensor-core kernel (see bipolar.h for the format and the GEMM identity).
//
// bipolar_gemm: both operands are first re-laid out as uint64 words per row,
// all of a row's planes next to each other ([rows, planes, ceil(W/2)]), with the
// padding bits of the last word masked off and the row count rounded up to the
// 4×4 register block. Their weighted row popcounts RA/RW come out of the same
// pass. The output is split into 32×64 tiles run in parallel; within a tile a
// 4-row × 4-column block keeps 16 AND-popcount sums in registers while it
// streams one plane pair over K (vpopcntq on the AVX-512 path of a CPU that
// has it, popcnt on the AVX2 path, see and_popc_block_for), and shifts
// them by 2^(i+j) into the block's S. The epilogue applies the identity
// C = 4·S − 2(2^q−1)·RA − 2(2^p−1)·RW + K(2^p−1)(2^q−1), exactly as the GPU does.
//
// bipolar_linear runs quantize -> GEMM -> dequant (+ bias) with the dequant in
// the GEMM's epilogue, so the int32 product is never materialized.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "bipolar/bipolar.h"
#include "common/cpu_isa.h"
#include "common/cpu_utils.h"
#include "common/registration.h"

namespace mlx_kernels::bipolar {
namespace {

constexpr int64_t kBlock = 4;  // register block: kBlock rows × kBlock columns
constexpr int64_t kTileM = 32;
constexpr int64_t kTileN = 64;

// Below ~2^16 elementary steps a parallel region costs more than it saves:
// at::parallel_for runs ranges shorter than the grain inline.
int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, work_per_item));
}

// --- plane writers shared by pack and quantize --------------------------------

// Writes one row of codes u ∈ [0, 2^bits) (code(k) for k < K) as bit-planes:
// planes[b, row, k/32] bit k%32 = bit b of u; padding bits stay 0.
template <typename CodeOf>
void write_plane_row(int32_t* planes, int64_t rows, int64_t row, int64_t K, int bits, CodeOf&& code) {
  const int64_t words = words_for(K);
  for (int64_t w = 0; w < words; ++w) {
    uint32_t plane_words[kMaxBits] = {};
    const int64_t k_end = std::min(K, (w + 1) * kWordBits);
    for (int64_t k = w * kWordBits; k < k_end; ++k) {
      const uint32_t u = code(k);
      for (int b = 0; b < bits; ++b) plane_words[b] |= ((u >> b) & 1u) << (k % kWordBits);
    }
    for (int b = 0; b < bits; ++b) {
      planes[(b * rows + row) * words + w] = static_cast<int32_t>(plane_words[b]);
    }
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
      for (int64_t r = begin; r < end; ++r) {
        write_plane_row(out, R, r, K, bits, [&](int64_t k) {
          return static_cast<uint32_t>((static_cast<int64_t>(v[r * K + k]) + top) / 2);
        });
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

// Per-row scale = absmax / (2^bits − 1) and planes of the nearest odd levels of
// x / scale. A row of zeros gets scale 0 and level +1 everywhere; a row with a
// NaN or ±Inf gets scale NaN and level +1 everywhere (row_scale_for).
template <typename scalar_t>
void quantize_rows(const scalar_t* x, int64_t R, int64_t K, int bits, int32_t* planes, float* scale) {
  at::parallel_for(0, R, grain_for(K * bits), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = x + r * K;
      float absmax = 0.0f;
      for (int64_t k = 0; k < K; ++k) absmax = absmax_keep_nan(absmax, std::abs(static_cast<float>(row[k])));
      const float s = row_scale_for(absmax, bits);
      scale[r] = s;
      write_plane_row(planes, R, r, K, bits, [&](int64_t k) {
        return nearest_level_code(s > 0.0f ? static_cast<float>(row[k]) / s : 0.0f, bits);
      });
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_cpu(const at::Tensor& x_in, int64_t bits) {
  const at::Tensor x = x_in.contiguous();
  const int64_t R = x.size(0), K = x.size(1);
  at::Tensor planes = at::zeros({bits, R, words_for(K)}, x.options().dtype(at::kInt));
  at::Tensor scale = at::zeros({R}, x.options().dtype(at::kFloat));
  if (R == 0) return {planes, scale};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bipolar_quantize_cpu", [&] {
    quantize_rows(x.data_ptr<scalar_t>(), R, K, static_cast<int>(bits), planes.data_ptr<int32_t>(),
                  scale.data_ptr<float>());
  });
  return {planes, scale};
}

std::tuple<at::Tensor, at::Tensor> bipolar_quantize_cpu(const at::Tensor& x, int64_t bits) {
  check_quantize_args(MLX_OP_NAME("bipolar_quantize"), x, bits);
  return quantize_cpu(x, bits);
}

// --- GEMM ----------------------------------------------------------------------

// One operand's planes as uint64 words, [rows_padded, planes, words64], padding
// bits and padding rows zero, with the weighted popcount Σ_b 2^b·popc(plane_b) of each row.
struct RowPlanes {
  std::vector<uint64_t> bits;
  std::vector<uint32_t> weighted_popc;
  int64_t planes = 0, rows = 0, words64 = 0;

  const uint64_t* row(int64_t r) const { return bits.data() + r * planes * words64; }
};

RowPlanes to_row_planes(const at::Tensor& planes_in, int64_t K) {
  const at::Tensor planes = planes_in.contiguous();
  RowPlanes out;
  out.planes = planes.size(0);
  out.rows = planes.size(1);
  const int64_t words = planes.size(2);
  out.words64 = ceil_div(words, 2);
  const int64_t rows_padded = ceil_div(out.rows, kBlock) * kBlock;
  out.bits.assign(rows_padded * out.planes * out.words64, 0);
  out.weighted_popc.assign(rows_padded, 0);
  const uint32_t* in = reinterpret_cast<const uint32_t*>(planes.data_ptr<int32_t>());
  at::parallel_for(0, out.rows, grain_for(out.planes * words), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      uint32_t weighted = 0;
      for (int64_t b = 0; b < out.planes; ++b) {
        const uint32_t* src = in + (b * out.rows + r) * words;
        uint64_t* dst = out.bits.data() + (r * out.planes + b) * out.words64;
        uint32_t count = 0;
        for (int64_t w = 0; w < words; ++w) {
          const uint64_t word = src[w] & valid_bits(w, K);
          dst[w / 2] |= word << (32 * (w % 2));
          count += static_cast<uint32_t>(__builtin_popcountll(word));
        }
        weighted += count << b;
      }
      out.weighted_popc[r] = weighted;
    }
  });
  return out;
}

// s[r][c] = Σ_k popc(a_r[k] ∧ w_c[k]) over `words` uint64 words for a kBlock × kBlock
// block, where a_r = a + r·a_stride and w_c = w + c·w_stride.
__attribute__((always_inline)) inline void and_popc_block_body(const uint64_t* a, int64_t a_stride,
                                                               const uint64_t* w, int64_t w_stride, int64_t words,
                                                               uint64_t s[kBlock][kBlock]) {
  const uint64_t *a0 = a, *a1 = a + a_stride, *a2 = a + 2 * a_stride, *a3 = a + 3 * a_stride;
  const uint64_t *w0 = w, *w1 = w + w_stride, *w2 = w + 2 * w_stride, *w3 = w + 3 * w_stride;
  uint64_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
  uint64_t s20 = 0, s21 = 0, s22 = 0, s23 = 0, s30 = 0, s31 = 0, s32 = 0, s33 = 0;
  for (int64_t k = 0; k < words; ++k) {
    const uint64_t x0 = a0[k], x1 = a1[k], x2 = a2[k], x3 = a3[k];
    const uint64_t y0 = w0[k], y1 = w1[k], y2 = w2[k], y3 = w3[k];
    s00 += __builtin_popcountll(x0 & y0), s01 += __builtin_popcountll(x0 & y1);
    s02 += __builtin_popcountll(x0 & y2), s03 += __builtin_popcountll(x0 & y3);
    s10 += __builtin_popcountll(x1 & y0), s11 += __builtin_popcountll(x1 & y1);
    s12 += __builtin_popcountll(x1 & y2), s13 += __builtin_popcountll(x1 & y3);
    s20 += __builtin_popcountll(x2 & y0), s21 += __builtin_popcountll(x2 & y1);
    s22 += __builtin_popcountll(x2 & y2), s23 += __builtin_popcountll(x2 & y3);
    s30 += __builtin_popcountll(x3 & y0), s31 += __builtin_popcountll(x3 & y1);
    s32 += __builtin_popcountll(x3 & y2), s33 += __builtin_popcountll(x3 & y3);
  }
  s[0][0] = s00, s[0][1] = s01, s[0][2] = s02, s[0][3] = s03;
  s[1][0] = s10, s[1][1] = s11, s[1][2] = s12, s[1][3] = s13;
  s[2][0] = s20, s[2][1] = s21, s[2][2] = s22, s[2][3] = s23;
  s[3][0] = s30, s[3][1] = s31, s[3][2] = s32, s[3][3] = s33;
}

// The AND-popcount loop compiled for AVX-512 VPOPCNTDQ (Ice Lake, Zen 4: vpopcntq on
// 8 words at once), for the AVX2 path (POPCNT), and for baseline x86-64.
using AndPopcBlockFn = void (*)(const uint64_t*, int64_t, const uint64_t*, int64_t, int64_t, uint64_t[kBlock][kBlock]);
#ifdef MLX_CPU_HAS_ISA_PATHS
__attribute__((target(MLX_AVX512_FEATURES ",avx512vpopcntdq"))) void and_popc_block_vpopcntdq(
    const uint64_t* a, int64_t a_stride, const uint64_t* w, int64_t w_stride, int64_t words,
    uint64_t s[kBlock][kBlock]) {
  and_popc_block_body(a, a_stride, w, w_stride, words, s);
}
MLX_TARGET_AVX2 void and_popc_block_popcnt(const uint64_t* a, int64_t a_stride, const uint64_t* w, int64_t w_stride,
                                           int64_t words, uint64_t s[kBlock][kBlock]) {
  and_popc_block_body(a, a_stride, w, w_stride, words, s);
}
#endif
void and_popc_block_baseline(const uint64_t* a, int64_t a_stride, const uint64_t* w, int64_t w_stride, int64_t words,
                             uint64_t s[kBlock][kBlock]) {
  and_popc_block_body(a, a_stride, w, w_stride, words, s);
}

// The loop of an ISA path: VPOPCNTDQ on the AVX-512 path of a CPU that has it,
// POPCNT on the AVX2 path (and on AVX-512 without VPOPCNTDQ), else baseline.
AndPopcBlockFn and_popc_block_for(CpuIsa isa) {
#ifdef MLX_CPU_HAS_ISA_PATHS
  if (cpu_path_has(isa, CpuFeature::kAvx512Vpopcntdq)) return and_popc_block_vpopcntdq;
  if (isa != CpuIsa::kScalar) return and_popc_block_popcnt;
#endif
  return and_popc_block_baseline;
}

// Runs the bit-serial GEMM on ISA path `isa` and hands every exact int32 C[m, n] to store(m, n, c).
template <typename Store>
void bipolar_gemm_core(CpuIsa isa, const at::Tensor& a_planes, const at::Tensor& w_planes, int64_t K, Store&& store) {
  const RowPlanes a = to_row_planes(a_planes, K), w = to_row_planes(w_planes, K);
  const int64_t M = a.rows, N = w.rows, words = a.words64;
  const int p = static_cast<int>(a.planes), q = static_cast<int>(w.planes);
  // Consecutive rows of an operand are all of its planes apart.
  const int64_t a_row_stride = a.planes * words, w_row_stride = w.planes * words;
  const int64_t tiles_m = ceil_div(M, kTileM), tiles_n = ceil_div(N, kTileN);
  const AndPopcBlockFn and_popc_block = and_popc_block_for(isa);
  const int64_t tile_work = std::min(kTileM, M) * std::min(kTileN, N) * p * q * std::max<int64_t>(words, 1) / 4;
  at::parallel_for(0, tiles_m * tiles_n, grain_for(tile_work), [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t m_end = std::min(M, (tile / tiles_n + 1) * kTileM);
      const int64_t n_end = std::min(N, (tile % tiles_n + 1) * kTileN);
      for (int64_t m0 = (tile / tiles_n) * kTileM; m0 < m_end; m0 += kBlock) {
        for (int64_t n0 = (tile % tiles_n) * kTileN; n0 < n_end; n0 += kBlock) {
          uint64_t s[kBlock][kBlock] = {};
          for (int j = 0; j < p; ++j) {
            for (int i = 0; i < q; ++i) {
              uint64_t pair[kBlock][kBlock];
              and_popc_block(a.row(m0) + j * words, a_row_stride, w.row(n0) + i * words, w_row_stride,
                             words, pair);
              for (int64_t r = 0; r < kBlock; ++r)
                for (int64_t c = 0; c < kBlock; ++c) s[r][c] += pair[r][c] << (i + j);
            }
          }
          for (int64_t r = 0; r < std::min(kBlock, M - m0); ++r) {
            for (int64_t c = 0; c < std::min(kBlock, N - n0); ++c) {
              store(m0 + r, n0 + c,
                    combine(static_cast<uint32_t>(s[r][c]), a.weighted_popc[m0 + r], w.weighted_popc[n0 + c],
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
  const auto [x_planes, x_scale] = quantize_cpu(x2d, x_bits);
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
