// CPU kernels of the FFT-as-matmul convolution family: the Monarch FFT of
// fftconv.h written as batched small complex matmuls, the twin of the CUDA
// kernels.
//
// One task = one head h and a pair of batch rows (b, b+1): both rows share the
// kernel spectrum, so they travel as one complex signal v[b] + i·v[b+1]
// (conv(k, x + iy) = conv(k, x) + i·conv(k, y) for real k): half the FFTs.
// Per task, in a thread-local SoA buffer of N complex points:
//   1. load: v = u·pregate into [0, L), zeros up to what stage 0 reads;
//   2. forward column stages: out[f, m] = Σ_j F[f, j]·x[j, m] over every
//      [radix, stride] block, vectorized along the stride (m), then twiddles;
//      stage 0 reads only the ceil(L / stride) rows that hold data. Radix-16
//      stages factor F_16 itself as a 4 × 4 Monarch product (4-point DFTs are
//      additions only); after stage 0, each stage-1 block runs every later
//      stage and back while it is cached;
//   3. the last stage (16-point DFTs on contiguous rows), the multiply by the
//      kernel spectrum (pre-scaled by 1/N, zero outside the kept blocks) and
//      the first inverse stage fused, in registers: a vector's width of rows
//      at a time through an in-register transpose in fp32 with a dense
//      spectrum, else row by row, where frequency blocks outside keep_blocks
//      are neither computed nor read;
//   4. inverse column stages in reverse order (conj twiddles, then conj DFT);
//      the last one writes only the rows that hold outputs t < L;
//   5. store y = real/imag parts · postgate.
// The kernel spectrum is the same forward transform, two heads at a time
// (z = k[h] + i·k[h+1]), separated by Hermitian symmetry:
// K_h[f] = (Z[f] + conj(Z[-f]))/2, K_{h+1}[f] = (Z[f] - conj(Z[-f]))/(2i).
//
// Vectors are CpuVector<T, kBytes>, each ISA path's register width: the column
// stages keep 32 vectors live, which fit AVX-512's 32 registers and, at 64
// bytes on AVX2 (two registers each), would be spilled and reloaded.
//
// Non-finite input: an FFT spreads a NaN or Inf over its whole row, and the
// complex arithmetic would carry it into the other row sharing the signal, a
// different sequence (or head). So a row holding one is transformed as zeros and
// its whole result set to NaN: that row comes out NaN, as any FFT convolution
// (torch.fft's) makes it, and its partner stays exact.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <numbers>
#include <type_traits>
#include <utility>

#include "common/cpu_isa.h"
#include "common/cpu_vector.h"
#include "common/cpu_utils.h"
#include "common/registration.h"
#include "fftconv/fftconv.h"

namespace mlx_kernels::fftconv {
namespace {

#define MLX_ALWAYS_INLINE __attribute__((always_inline)) inline

// Per-size constants of every stage, in T: the twiddles, and for the last stage
// (the row DFTs of the row-by-row path) the 16×16 DFT matrix and the imaginary
// part of its conjugate; the column stages compute their DFTs in registers
// (dft16, small_dft). The hot loops see only the plain-pointer StageView: GCC
// does not inline ordinary (non always_inline) helpers such as std::vector
// accessors into the per-ISA entry points.
template <typename T>
struct StageView {
  int64_t rows, radix, stride;
  const T *dft_re, *dft_im, *idft_im;  // last stage only: [f·radix + j] = W_radix^{±f·j}
  const T *tw_re, *tw_im;              // [f·stride + m] = W_{radix·stride}^{f·m}
};

template <typename T>
struct PlanView {
  int64_t N;
  int64_t num_stages;
  StageView<T> stage[kMaxStages];
};

template <typename T>
struct Plan {
  std::vector<std::vector<T>> tables;  // storage behind view's pointers
  PlanView<T> view;
  std::vector<int64_t> mirror;         // Monarch position of -f for the position of f
};

// Monarch position of natural frequency f: its mixed-radix digits (first stage
// least significant) times the strides at which the stages write them.
int64_t monarch_position(int64_t f, const std::vector<Stage>& stages) {
  int64_t pos = 0;
  for (const Stage& s : stages) {
    pos += (f % s.radix) * s.stride;
    f /= s.radix;
  }
  return pos;
}

// exp(-2πi·num/den), computed in double from the exact integer phase.
inline std::pair<double, double> unit_root(int64_t num, int64_t den) {
  const double angle = -2.0 * std::numbers::pi * static_cast<double>(num % den) / static_cast<double>(den);
  return {std::cos(angle), std::sin(angle)};
}

template <typename T>
std::shared_ptr<const Plan<T>> make_plan(int64_t N) {
  auto plan = std::make_shared<Plan<T>>();
  const std::vector<Stage> stages = monarch_stages(N);
  TORCH_INTERNAL_ASSERT(static_cast<int64_t>(stages.size()) <= kMaxStages);
  plan->view.N = N;
  plan->view.num_stages = static_cast<int64_t>(stages.size());
  plan->tables.reserve(5 * stages.size());
  plan->mirror.resize(N);
  for (int64_t f = 0; f < N; ++f) plan->mirror[monarch_position(f, stages)] = monarch_position((N - f) % N, stages);
  for (size_t i = 0; i < stages.size(); ++i) {
    const Stage& s = stages[i];
    const bool last = i + 1 == stages.size();
    std::vector<T> fr(last ? kRadix * s.radix : 0), fi(fr.size()), ifi(fr.size());
    for (int64_t f = 0; f < (last ? s.radix : 0); ++f) {
      for (int64_t j = 0; j < s.radix; ++j) {
        auto [c, sn] = unit_root(f * j, s.radix);
        fr[f * s.radix + j] = static_cast<T>(c);
        fi[f * s.radix + j] = static_cast<T>(sn);
        ifi[f * s.radix + j] = static_cast<T>(-sn);
      }
    }
    std::vector<T> tr(s.radix * s.stride), ti(s.radix * s.stride);
    for (int64_t f = 0; f < s.radix; ++f) {
      for (int64_t m = 0; m < s.stride; ++m) {
        auto [c, sn] = unit_root(f * m, s.radix * s.stride);
        tr[f * s.stride + m] = static_cast<T>(c);
        ti[f * s.stride + m] = static_cast<T>(sn);
      }
    }
    StageView<T>& v = plan->view.stage[i];
    v.rows = s.rows;
    v.radix = s.radix;
    v.stride = s.stride;
    for (auto [table, ptr] : {std::pair{&fr, &v.dft_re}, std::pair{&fi, &v.dft_im}, std::pair{&ifi, &v.idft_im},
                              std::pair{&tr, &v.tw_re}, std::pair{&ti, &v.tw_im}}) {
      plan->tables.push_back(std::move(*table));
      *ptr = plan->tables.back().data();
    }
  }
  return plan;
}

// Plans are cached per (N, T): building one costs O(N) sin/cos.
template <typename T>
std::shared_ptr<const Plan<T>> get_plan(int64_t N) {
  static std::mutex mutex;
  static std::map<int64_t, std::shared_ptr<const Plan<T>>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[N];
  if (!slot) slot = make_plan<T>(N);
  return slot;
}

// (a, b) <- (a + ib)·w in registers (conj(w) when kConj), w loaded from memory.
template <int kBytes, typename T, bool kConj>
MLX_ALWAYS_INLINE void rotate(typename CpuVector<T, kBytes>::V& a, typename CpuVector<T, kBytes>::V& b, const T* wr,
                              const T* wi) {
  using S = CpuVector<T, kBytes>;
  const auto c = S::load(wr), d = kConj ? -S::load(wi) : S::load(wi);
  const auto real = a * c - b * d;
  b = a * d + b * c;
  a = real;
}

// rotate16, dft4 and the 4 × 4-factored dft16 (X[f] left in register
// dft16_slot(f)) are fftconv.h's, shared with the CUDA kernels.

// The R-point DFT (R = 2, 4, 8) of R vectors in registers; X[f] is left in
// register small_dft_slot<R>(f). R = 8 is factored as 2 × 4 the way dft16 is
// as 4 × 4 (j = 2·j1 + j2, f = f1 + 4·f2).
template <int64_t R>
constexpr int64_t small_dft_slot(int64_t f) {
  return R == 8 ? 2 * (f % 4) + f / 4 : f;
}

template <typename V, typename T, bool kInverse, int64_t R>
MLX_ALWAYS_INLINE void small_dft(V (&xr)[kRadix], V (&xi)[kRadix]) {
  if constexpr (R == 2) {
    const V ar = xr[0], ai = xi[0];
    xr[0] = ar + xr[1], xi[0] = ai + xi[1];
    xr[1] = ar - xr[1], xi[1] = ai - xi[1];
  } else if constexpr (R == 4) {
    dft4<V, kInverse>(xr[0], xi[0], xr[1], xi[1], xr[2], xi[2], xr[3], xi[3]);
  } else {
    for (int64_t j2 = 0; j2 < 2; ++j2) {
      dft4<V, kInverse>(xr[j2], xi[j2], xr[j2 + 2], xi[j2 + 2], xr[j2 + 4], xi[j2 + 4], xr[j2 + 6], xi[j2 + 6]);
    }
    for (int64_t f1 = 1; f1 < 4; ++f1) {  // W_8^{f1} = W_16^{2·f1} on column j2 = 1 (register 2·f1 + 1)
      rotate16<V, T, kInverse>(xr[2 * f1 + 1], xi[2 * f1 + 1], 2 * f1);
    }
    for (int64_t f1 = 0; f1 < 4; ++f1) {
      const V ar = xr[2 * f1], ai = xi[2 * f1];
      xr[2 * f1] = ar + xr[2 * f1 + 1], xi[2 * f1] = ai + xi[2 * f1 + 1];
      xr[2 * f1 + 1] = ar - xr[2 * f1 + 1], xi[2 * f1 + 1] = ai - xi[2 * f1 + 1];
    }
  }
}

// One column stage on one [R, stride] block, in place: out[f, m] =
// Σ_j W_R^{±f·j}·x[j, m] on each [R, W] tile in registers (dft16, or small_dft
// for the one smaller factor of N). Rows j >= rows_in are zero; rows
// f >= rows_out are not stored. Twiddles are applied in registers (conj before
// the inverse DFT, after the forward one), never in place: with power-of-two
// strides a store and a later load of another row 4 KB away alias, and the
// load waits for it.
template <int kBytes, typename T, bool kInverse, int64_t R>
MLX_ALWAYS_INLINE void column_stage_radix(T* re, T* im, int64_t stride, const T* tw_re, const T* tw_im,
                                          int64_t rows_in, int64_t rows_out) {
  using S = CpuVector<T, kBytes>;
  using V = typename S::V;
  constexpr int64_t W = S::kLanes;
  V xr[kRadix], xi[kRadix];
  for (int64_t m0 = 0; m0 < stride; m0 += W) {
    for (int64_t j = 0; j < R; ++j) {
      if (j >= rows_in) {
        xr[j] = xi[j] = V{};
        continue;
      }
      xr[j] = S::load(re + j * stride + m0);
      xi[j] = S::load(im + j * stride + m0);
      if (kInverse) rotate<kBytes, T, true>(xr[j], xi[j], tw_re + j * stride + m0, tw_im + j * stride + m0);
    }
    if constexpr (R == kRadix) {
      dft16<V, T, kInverse>(xr, xi);
    } else {
      small_dft<V, T, kInverse, R>(xr, xi);
    }
    for (int64_t f = 0; f < rows_out; ++f) {
      const int64_t slot = R == kRadix ? dft16_slot(f) : small_dft_slot<R>(f);
      if (!kInverse) rotate<kBytes, T, false>(xr[slot], xi[slot], tw_re + f * stride + m0, tw_im + f * stride + m0);
      S::store(re + f * stride + m0, xr[slot]);
      S::store(im + f * stride + m0, xi[slot]);
    }
  }
}

template <int kBytes, typename T, bool kInverse>
MLX_ALWAYS_INLINE void column_stage(T* re, T* im, int64_t radix, int64_t stride, const T* tw_re, const T* tw_im,
                                    int64_t rows_in, int64_t rows_out) {
  switch (radix) {
    case 2: return column_stage_radix<kBytes, T, kInverse, 2>(re, im, stride, tw_re, tw_im, rows_in, rows_out);
    case 4: return column_stage_radix<kBytes, T, kInverse, 4>(re, im, stride, tw_re, tw_im, rows_in, rows_out);
    case 8: return column_stage_radix<kBytes, T, kInverse, 8>(re, im, stride, tw_re, tw_im, rows_in, rows_out);
    default:  // 16: monarch_stages uses radices 2, 4, 8 and 16 only
      return column_stage_radix<kBytes, T, kInverse, kRadix>(re, im, stride, tw_re, tw_im, rows_in, rows_out);
  }
}

// The last stage's 16-point DFT of one contiguous row, X[f] = Σ_j x[j]·F[j, f],
// vectorized along f. Rows j and 16 - j of F are conjugate, so with
// e_j = x_j + x_{16-j} and o_j = x_j - x_{16-j} (e_0 = x_0, e_8 = x_8),
// X = Σ_{j <= 8} e_j·Re F[j, :] + i·Σ_{0 < j < 8} o_j·Im F[j, :]: half the
// multiply-adds. Also the inverse row DFT, with F's conjugate as the table.
template <int kBytes, typename T>
MLX_ALWAYS_INLINE void row_dft(const T* xr, const T* xi, const T* dft_re, const T* dft_im,
                               typename CpuVector<T, kBytes>::V (&fr)[kRadix / CpuVector<T, kBytes>::kLanes],
                               typename CpuVector<T, kBytes>::V (&fi)[kRadix / CpuVector<T, kBytes>::kLanes]) {
  using S = CpuVector<T, kBytes>;
  constexpr int64_t C = kRadix / S::kLanes, half = kRadix / 2;
  for (int64_t c = 0; c < C; ++c) fr[c] = fi[c] = typename S::V{};
  for (int64_t j = 0; j <= half; ++j) {
    const bool paired = j > 0 && j < half;
    const T er = paired ? xr[j] + xr[kRadix - j] : xr[j], ei = paired ? xi[j] + xi[kRadix - j] : xi[j];
    for (int64_t c = 0; c < C; ++c) {
      const auto wr = S::load(dft_re + j * kRadix + c * S::kLanes);
      fr[c] += er * wr;
      fi[c] += ei * wr;
    }
  }
  for (int64_t j = 1; j < half; ++j) {
    const T odd_r = xr[j] - xr[kRadix - j], odd_i = xi[j] - xi[kRadix - j];
    for (int64_t c = 0; c < C; ++c) {
      const auto wi = S::load(dft_im + j * kRadix + c * S::kLanes);
      fr[c] -= odd_i * wi;
      fi[c] += odd_r * wi;
    }
  }
}

// z += Y[f]·conj(F[f, :]), one term of the inverse row DFT, vectorized along n.
template <int kBytes, typename T>
MLX_ALWAYS_INLINE void inverse_row_term(T yr, T yi, const T* w_re, const T* w_im,
                                        typename CpuVector<T, kBytes>::V (&zr)[kRadix / CpuVector<T, kBytes>::kLanes],
                                        typename CpuVector<T, kBytes>::V (&zi)[kRadix / CpuVector<T, kBytes>::kLanes]) {
  using S = CpuVector<T, kBytes>;
  for (int64_t c = 0; c < kRadix / S::kLanes; ++c) {
    const auto wr = S::load(w_re + c * S::kLanes), wi = S::load(w_im + c * S::kLanes);
    zr[c] += yr * wr - yi * wi;
    zi[c] += yr * wi + yi * wr;
  }
}

// The kept output columns of the last stage: [0, K) and [16 - K, 16).
struct KeptBlocks {
  int64_t low_end, high_begin;
};

// Last stage, spectrum multiply and first inverse stage, fused per 16-point
// row: X = x·F, Y = X·spectrum, y = Y·conj(F) summed over the kept columns f
// only (the spectrum is zero elsewhere), written back in place.
template <int kBytes, typename T>
MLX_ALWAYS_INLINE void last_stage_convolve(T* re, T* im, int64_t rows, const T* dft_re, const T* dft_im,
                                           const T* idft_im, KeptBlocks kept, const T* spec_re, const T* spec_im) {
  using S = CpuVector<T, kBytes>;
  using V = typename S::V;
  constexpr int64_t W = S::kLanes, C = kRadix / W;
  for (int64_t p = 0; p < rows; ++p) {
    T* xr = re + p * kRadix;
    T* xi = im + p * kRadix;
    V fr[C], fi[C];
    row_dft<kBytes>(xr, xi, dft_re, dft_im, fr, fi);
    alignas(64) T yr[kRadix], yi[kRadix];
    for (int64_t c = 0; c < C; ++c) {
      const V sr = S::load(spec_re + p * kRadix + c * W), si = S::load(spec_im + p * kRadix + c * W);
      S::store(yr + c * W, fr[c] * sr - fi[c] * si);
      S::store(yi + c * W, fr[c] * si + fi[c] * sr);
    }
    // The symmetric row DFT costs as much as 8 plain terms: it wins from 4 kept blocks a side.
    V zr[C] = {}, zi[C] = {};
    if (4 * kept.low_end >= kRadix) {
      row_dft<kBytes>(yr, yi, dft_re, idft_im, zr, zi);
    } else {
      for (int64_t f = 0; f < kept.low_end; ++f) {
        inverse_row_term<kBytes>(yr[f], yi[f], dft_re + f * kRadix, idft_im + f * kRadix, zr, zi);
      }
      for (int64_t f = kept.high_begin; f < kRadix; ++f) {
        inverse_row_term<kBytes>(yr[f], yi[f], dft_re + f * kRadix, idft_im + f * kRadix, zr, zi);
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      S::store(xr + c * W, zr[c]);
      S::store(xi + c * W, zi[c]);
    }
  }
}

// In-register transpose of a W × W float tile (W lanes a vector): log2(W)
// passes, the one for swap distance s exchanging that bit of the row index with
// the same bit of the lane index (rows i and i + s, lanes l and l ± s).
template <int W, int kSwap, typename V, size_t... L>
MLX_ALWAYS_INLINE V swap_low(V a, V b, std::index_sequence<L...>) {
  return __builtin_shufflevector(a, b, ((L & kSwap) ? W + L - kSwap : L)...);
}
template <int W, int kSwap, typename V, size_t... L>
MLX_ALWAYS_INLINE V swap_high(V a, V b, std::index_sequence<L...>) {
  return __builtin_shufflevector(a, b, ((L & kSwap) ? W + L : L + kSwap)...);
}
template <int W, int kSwap = W / 2, typename V>
MLX_ALWAYS_INLINE void transpose(V* r) {
  if constexpr (kSwap >= 1) {
    for (int i = 0; i < W; ++i) {
      if (i & kSwap) continue;
      const V a = r[i], b = r[i + kSwap];
      r[i] = swap_low<W, kSwap>(a, b, std::make_index_sequence<W>{});
      r[i + kSwap] = swap_high<W, kSwap>(a, b, std::make_index_sequence<W>{});
    }
    transpose<W, kSwap / 2>(r);
  }
}

// A tile of W contiguous 16-point rows (W = lanes of V) as 16 registers, and
// back: register j holds point j of every row. Points [h·W, (h+1)·W) of the W
// rows are one W × W block, transposed in registers.
template <int kBytes>
MLX_ALWAYS_INLINE void load_tile(const float* p, typename CpuVector<float, kBytes>::V (&r)[kRadix]) {
  using S = CpuVector<float, kBytes>;
  constexpr int W = S::kLanes;
  for (int h = 0; h < kRadix / W; ++h) {
    for (int i = 0; i < W; ++i) r[h * W + i] = S::load(p + i * kRadix + h * W);
    transpose<W>(r + h * W);
  }
}
template <int kBytes>
MLX_ALWAYS_INLINE void store_tile(float* p, typename CpuVector<float, kBytes>::V (&r)[kRadix]) {
  using S = CpuVector<float, kBytes>;
  constexpr int W = S::kLanes;
  for (int h = 0; h < kRadix / W; ++h) {
    transpose<W>(r + h * W);
    for (int i = 0; i < W; ++i) S::store(p + i * kRadix + h * W, r[h * W + i]);
  }
}

// The dense last stage of W rows at a time in fp32: transposed so that the
// 16-point row DFTs become dft16 across registers (one row per lane), the
// spectrum multiply, the inverse dft16, transposed back. Rows past a multiple
// of W go through last_stage_convolve.
template <int kBytes>
MLX_ALWAYS_INLINE int64_t last_stage_convolve_tiles(float* re, float* im, int64_t rows, const float* spec_re,
                                                    const float* spec_im) {
  using V = typename CpuVector<float, kBytes>::V;
  constexpr int64_t W = CpuVector<float, kBytes>::kLanes;
  int64_t p0 = 0;
  for (; p0 + W <= rows; p0 += W) {
    const int64_t offset = p0 * kRadix;
    V xr[kRadix], xi[kRadix], sr[kRadix], si[kRadix], yr[kRadix], yi[kRadix];
    load_tile<kBytes>(re + offset, xr);
    load_tile<kBytes>(im + offset, xi);
    dft16<V, float, false>(xr, xi);
    load_tile<kBytes>(spec_re + offset, sr);
    load_tile<kBytes>(spec_im + offset, si);
    for (int64_t f = 0; f < kRadix; ++f) {
      const int64_t slot = dft16_slot(f);
      yr[f] = xr[slot] * sr[f] - xi[slot] * si[f];
      yi[f] = xr[slot] * si[f] + xi[slot] * sr[f];
    }
    dft16<V, float, true>(yr, yi);
    for (int64_t n = 0; n < kRadix; ++n) {
      xr[n] = yr[dft16_slot(n)];
      xi[n] = yi[dft16_slot(n)];
    }
    store_tile<kBytes>(re + offset, xr);
    store_tile<kBytes>(im + offset, xi);
  }
  return p0;
}

// The last stage: fp32 with every frequency block kept goes a tile of rows at a
// time (last_stage_convolve_tiles); the rest (fp64, frequency-sparse spectra,
// whose dropped blocks the row kernel skips, and leftover rows) row by row.
template <int kBytes, typename T>
MLX_ALWAYS_INLINE void last_stage(T* re, T* im, int64_t rows, const StageView<T>& last, KeptBlocks kept,
                                  const T* spec_re, const T* spec_im) {
  int64_t done = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (kept.low_end == kDenseKeep) done = last_stage_convolve_tiles<kBytes>(re, im, rows, spec_re, spec_im);
  }
  const int64_t offset = done * kRadix;
  last_stage_convolve<kBytes>(re + offset, im + offset, rows - done, last.dft_re, last.dft_im, last.idft_im, kept,
                      spec_re + offset, spec_im + offset);
}

template <typename T>
MLX_ALWAYS_INLINE int64_t rows_holding(int64_t L, int64_t stride) {
  return (L + stride - 1) / stride;
}

template <int kBytes, typename T>
MLX_ALWAYS_INLINE void forward_column_stages(const PlanView<T>& plan, T* re, T* im, int64_t L) {
  for (int64_t s = 0; s + 1 < plan.num_stages; ++s) {
    const StageView<T>& st = plan.stage[s];
    const int64_t rows_in = s == 0 ? rows_holding<T>(L, st.stride) : st.radix;
    for (int64_t p = 0; p < st.rows; ++p) {
      const int64_t offset = p * st.radix * st.stride;
      column_stage<kBytes, T, false>(re + offset, im + offset, st.radix, st.stride, st.tw_re, st.tw_im, rows_in,
                                     st.radix);
    }
  }
}

// Steps 2-4 of the header on one task's buffer. After the first forward
// column stage the buffer splits into independent chunks, one per block of
// stage 1 (later stages' blocks nest inside them), so each chunk runs every
// later stage, the spectrum multiply and the inverse stages back to stage 1
// while it is in L1/L2: at N = 128K the buffer (1 MB) would otherwise stream
// through L3 once per stage, forward and inverse.
template <int kBytes, typename T>
MLX_ALWAYS_INLINE void convolve_buffer(const PlanView<T>& plan, T* re, T* im, int64_t L, const T* spec_re,
                                       const T* spec_im, KeptBlocks kept) {
  const int64_t S = plan.num_stages;
  const StageView<T>& last = plan.stage[S - 1];
  if (S == 1) {
    last_stage<kBytes>(re, im, last.rows, last, kept, spec_re, spec_im);
    return;
  }
  const StageView<T>& first = plan.stage[0];  // one [radix, stride] block: rows == 1
  const int64_t live_rows = rows_holding<T>(L, first.stride);
  column_stage<kBytes, T, false>(re, im, first.radix, first.stride, first.tw_re, first.tw_im, live_rows, first.radix);
  // Chunks hold whole stage-1 blocks and at least 16 last-stage rows (the fp32
  // last stage goes up to 16 rows at a time).
  const int64_t chunk = std::max(plan.N / plan.stage[1].rows, std::min(plan.N, kRadix * kRadix));
  const int64_t chunks = plan.N / chunk;
  for (int64_t c = 0; c < chunks; ++c) {
    T* cre = re + c * chunk;
    T* cim = im + c * chunk;
    for (int64_t s = 1; s + 1 < S; ++s) {
      const StageView<T>& st = plan.stage[s];
      for (int64_t offset = 0; offset < chunk; offset += st.radix * st.stride) {
        column_stage<kBytes, T, false>(cre + offset, cim + offset, st.radix, st.stride, st.tw_re, st.tw_im, st.radix,
                               st.radix);
      }
    }
    last_stage<kBytes>(cre, cim, chunk / kRadix, last, kept, spec_re + c * chunk, spec_im + c * chunk);
    for (int64_t s = S - 2; s >= 1; --s) {
      const StageView<T>& st = plan.stage[s];
      for (int64_t offset = 0; offset < chunk; offset += st.radix * st.stride) {
        column_stage<kBytes, T, true>(cre + offset, cim + offset, st.radix, st.stride, st.tw_re, st.tw_im, st.radix,
                              st.radix);
      }
    }
  }
  column_stage<kBytes, T, true>(re, im, first.radix, first.stride, first.tw_re, first.tw_im, first.radix, live_rows);
}

// The forward transform alone (the kernel spectrum): in place, Monarch order.
template <int kBytes, typename T>
MLX_ALWAYS_INLINE void forward_buffer(const PlanView<T>& plan, T* re, T* im, int64_t L) {
  using S = CpuVector<T, kBytes>;
  constexpr int64_t W = S::kLanes, C = kRadix / W;
  forward_column_stages<kBytes>(plan, re, im, L);
  const StageView<T>& last = plan.stage[plan.num_stages - 1];
  for (int64_t p = 0; p < last.rows; ++p) {
    typename S::V fr[C], fi[C];
    row_dft<kBytes>(re + p * kRadix, im + p * kRadix, last.dft_re, last.dft_im, fr, fi);
    for (int64_t c = 0; c < C; ++c) {
      S::store(re + p * kRadix + c * W, fr[c]);
      S::store(im + p * kRadix + c * W, fi[c]);
    }
  }
}

// Compiled per ISA path (see common/cpu_isa.h); the templates above inline into each.
MLX_CPU_ISA_DISPATCH_VECTORS(convolve, convolve_buffer)
MLX_CPU_ISA_DISPATCH_VECTORS(forward, forward_buffer)

// Points stage 0 reads: whole rows of its [radix, stride] view that hold data.
template <typename T>
int64_t loaded_length(const PlanView<T>& plan, int64_t L) {
  const int64_t stride = plan.stage[0].stride;
  return plan.num_stages == 1 ? plan.N : ceil_div(L, stride) * stride;
}

// The op named by an MLX_CPU_ISA error: the family's (fft_conv, fft_conv_spectrum
// and fft_conv_spectral share the transforms).
constexpr const char* kIsaOp = MLX_OP_NAME("fft_conv");

// ---- the kernel spectrum ---------------------------------------------------

// k_f [H, 2, N] in Monarch order: FFT_N(k zero-padded) / N, zero outside the kept band.
// NaN when some x[i] is NaN or ±Inf, else 0 (x·0 is NaN exactly then; vectorizes).
template <typename T>
T nonfinite_probe(const T* x, int64_t n) {
  T probe = T(0);
  for (int64_t i = 0; i < n; ++i) probe += x[i] * T(0);
  return probe;
}

// The row's result after its input was found non-finite (see the top of the file).
template <typename T>
void poison_row(T* x, int64_t n) {
  std::fill(x, x + n, std::numeric_limits<T>::quiet_NaN());
}

template <typename T>
void spectrum_cpu(const at::Tensor& k, int64_t N, int64_t keep_blocks, at::Tensor& k_f) {
  const auto plan = get_plan<T>(N);
  const int64_t H = k.size(0), Lk = k.size(1);
  const T* k_ptr = k.data_ptr<T>();
  T* out = k_f.data_ptr<T>();
  const T half_scale = T(0.5) / static_cast<T>(N);
  const int64_t* mirror = plan->mirror.data();
  const CpuIsa isa = cpu_isa(kIsaOp);
  at::parallel_for(0, ceil_div(H, 2), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> re(N), im(N);
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t h = 2 * pair;
      const bool has_second = h + 1 < H;
      std::fill(re.begin(), re.end(), T(0));
      std::fill(im.begin(), im.end(), T(0));
      const bool bad_first = std::isnan(nonfinite_probe(k_ptr + h * Lk, Lk));
      const bool bad_second = has_second && std::isnan(nonfinite_probe(k_ptr + (h + 1) * Lk, Lk));
      if (!bad_first) std::copy(k_ptr + h * Lk, k_ptr + (h + 1) * Lk, re.begin());
      if (has_second && !bad_second) std::copy(k_ptr + (h + 1) * Lk, k_ptr + (h + 2) * Lk, im.begin());
      forward(isa, plan->view, re.data(), im.data(), Lk);
      T* first = out + h * 2 * N;
      T* second = first + 2 * N;
      for (int64_t pos = 0; pos < N; ++pos) {
        const T mask = position_kept(pos, keep_blocks) ? half_scale : T(0);
        const T zr = re[pos], zi = im[pos], mr = re[mirror[pos]], mi = -im[mirror[pos]];
        first[pos] = (zr + mr) * mask;
        first[N + pos] = (zi + mi) * mask;
        if (has_second) {
          second[pos] = (zi - mi) * mask;
          second[N + pos] = (mr - zr) * mask;
        }
      }
      // A non-finite head's spectrum is NaN on the kept blocks (zero outside, as always).
      for (auto [bad, spectrum] : {std::pair{bad_first, first}, std::pair{bad_second, second}}) {
        if (!bad) continue;
        for (int64_t pos = 0; pos < N; ++pos) {
          spectrum[pos] = spectrum[N + pos] =
              position_kept(pos, keep_blocks) ? std::numeric_limits<T>::quiet_NaN() : T(0);
        }
      }
    }
  });
}

at::Tensor fft_conv_spectrum_cpu(const at::Tensor& k_in, int64_t seqlen, int64_t keep_blocks) {
  check_spectrum_args(k_in, seqlen, keep_blocks, /*allow_double=*/true);
  const at::Tensor k = k_in.contiguous();
  const int64_t N = fft_size_for(seqlen);
  at::Tensor k_f = at::empty({k.size(0), 2, N}, k.options());
  if (k.numel() == 0) return k_f.zero_();
  if (k.scalar_type() == at::kDouble) {
    spectrum_cpu<double>(k, N, keep_blocks, k_f);
  } else {
    spectrum_cpu<float>(k, N, keep_blocks, k_f);
  }
  return k_f;
}

// ---- the convolution -------------------------------------------------------

template <typename scalar_t, typename T>
void spectral_cpu(const at::Tensor& u, const at::Tensor& k_f, int64_t keep_blocks, const scalar_t* pre,
                  const scalar_t* post, at::Tensor& y) {
  const int64_t B = u.size(0), H = u.size(1), L = u.size(2), N = k_f.size(2);
  const auto plan = get_plan<T>(N);
  const int64_t pairs = ceil_div(B, 2), load_len = loaded_length(plan->view, L);
  const KeptBlocks kept{keep_blocks, kFreqBlocks - keep_blocks};
  const CpuIsa isa = cpu_isa(kIsaOp);
  const scalar_t* u_ptr = u.data_ptr<scalar_t>();
  const T* spec = k_f.data_ptr<T>();
  scalar_t* y_ptr = y.data_ptr<scalar_t>();
  at::parallel_for(0, H * pairs, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> re(N), im(N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t h = task / pairs, b0 = 2 * (task % pairs);
      const bool has_second = b0 + 1 < B;
      const int64_t row0 = (b0 * H + h) * L, row1 = ((b0 + 1) * H + h) * L;
      for (int64_t t = 0; t < L; ++t) {
        const T g0 = pre ? static_cast<T>(pre[row0 + t]) : T(1);
        re[t] = static_cast<T>(u_ptr[row0 + t]) * g0;
        if (has_second) {
          const T g1 = pre ? static_cast<T>(pre[row1 + t]) : T(1);
          im[t] = static_cast<T>(u_ptr[row1 + t]) * g1;
        } else {
          im[t] = T(0);
        }
      }
      const bool bad0 = std::isnan(nonfinite_probe(re.data(), L));
      const bool bad1 = std::isnan(nonfinite_probe(im.data(), L));
      std::fill(re.begin() + (bad0 ? 0 : L), re.begin() + load_len, T(0));
      std::fill(im.begin() + (bad1 ? 0 : L), im.begin() + load_len, T(0));
      convolve(isa, plan->view, re.data(), im.data(), L, spec + h * 2 * N, spec + h * 2 * N + N, kept);
      if (bad0) poison_row(re.data(), L);
      if (bad1) poison_row(im.data(), L);
      for (int64_t t = 0; t < L; ++t) {
        const T g0 = post ? static_cast<T>(post[row0 + t]) : T(1);
        y_ptr[row0 + t] = static_cast<scalar_t>(re[t] * g0);
        if (has_second) {
          const T g1 = post ? static_cast<T>(post[row1 + t]) : T(1);
          y_ptr[row1 + t] = static_cast<scalar_t>(im[t] * g1);
        }
      }
    }
  });
}

at::Tensor spectral_dispatch(const at::Tensor& u_in, const at::Tensor& k_f_in, int64_t keep_blocks,
                             const std::optional<at::Tensor>& pregate, const std::optional<at::Tensor>& postgate) {
  const at::Tensor u = u_in.contiguous();
  // The spectrum's precision follows u: float64 u computes in float64.
  const at::Tensor k_f = k_f_in.to(u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
  const at::Tensor pre = pregate ? pregate->contiguous() : at::Tensor();
  const at::Tensor post = postgate ? postgate->contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(u);
  if (u.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "fft_conv_cpu", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    spectral_cpu<scalar_t, T>(u, k_f, keep_blocks, pre.defined() ? pre.data_ptr<scalar_t>() : nullptr,
                              post.defined() ? post.data_ptr<scalar_t>() : nullptr, y);
  });
  return y;
}

at::Tensor fft_conv_spectral_cpu(const at::Tensor& u, const at::Tensor& k_f, int64_t keep_blocks,
                                 const std::optional<at::Tensor>& pregate, const std::optional<at::Tensor>& postgate) {
  check_spectral_args(u, k_f, keep_blocks, pregate, postgate, /*allow_double=*/true);
  return spectral_dispatch(u, k_f, keep_blocks, pregate, postgate);
}

at::Tensor fft_conv_cpu(const at::Tensor& u, const at::Tensor& k, const std::optional<at::Tensor>& pregate,
                        const std::optional<at::Tensor>& postgate) {
  check_fft_conv_args(u, k, pregate, postgate, /*allow_double=*/true);
  if (u.numel() == 0) return at::empty_like(u, at::MemoryFormat::Contiguous);
  const at::Tensor k_f = fft_conv_spectrum_cpu(u.scalar_type() == at::kDouble ? k.to(at::kDouble) : k, u.size(2),
                                               kDenseKeep);
  return spectral_dispatch(u, k_f, kDenseKeep, pregate, postgate);
}

}  // namespace

MLX_LIBRARY_IMPL(CPU, m) {
  m.impl("fft_conv", &fft_conv_cpu);
  m.impl("fft_conv_spectrum", &fft_conv_spectrum_cpu);
  m.impl("fft_conv_spectral", &fft_conv_spectral_cpu);
}

}  // namespace mlx_kernels::fftconv
