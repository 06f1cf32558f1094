// FFT-as-matmul long convolution (FlashFFTConv): the Monarch plan and the
// argument checks shared by the CPU and CUDA implementations.
//
// The FFT of size N = 2^k (k >= 4) is a sequence of decimation-in-frequency
// Monarch stages with radices [16, r0, 16, ..., 16] (r0 in {2, 4, 8} takes the
// leftover bits, absent when k is a multiple of 4; [r0, 16] for N < 256). Stage s views the N points
// as [rows, radix, stride] (n = row·radix·stride + j·stride + m) and multiplies
// every [radix, stride] block by the radix×radix DFT matrix along j, then by
// the twiddles W_{radix·stride}^{f·m}. The last stage has stride 1 (a batch of
// 16-point DFTs over contiguous rows). The spectrum comes out in "Monarch
// order": position Σ_s f_s·stride_s holds natural frequency Σ_s f_s·(r0·…·r_{s-1}).
// Spectra are produced and consumed only by this family's kernels in that order.
//
// Frequency blocks: the last stage's output index f_last (the most significant
// digit of the frequency) splits the spectrum into 16 blocks of N/16 frequencies.
// keep_blocks = K < 8 keeps the frequencies f with min(f, N - f) < K·N/16 (the
// low band, Hermitian so the output stays real): blocks [0, K) and [16 - K, 16)
// minus frequency (16 - K)·N/16; the other 16 - 2K blocks are zero, so their
// matmul columns are skipped. K = 8 is the dense (exact) convolution.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "common/checks.h"

#if defined(__CUDACC__)
#define MLX_FFTCONV_HOST_DEVICE __host__ __device__
// The radix-16 helpers below: inlined into the kernels, fully unrolled (the
// points live in registers).
#define MLX_FFTCONV_INLINE __host__ __device__ __forceinline__
#define MLX_FFTCONV_UNROLL _Pragma("unroll")
#else
#define MLX_FFTCONV_HOST_DEVICE
// always_inline: GCC inlines only always_inline helpers into cpu.cpp's per-ISA
// copies (MLX_CPU_ISA_DISPATCH, common/cpu_isa.h).
#define MLX_FFTCONV_INLINE __attribute__((always_inline)) inline
#define MLX_FFTCONV_UNROLL
#endif

namespace mlx_kernels::fftconv {

constexpr int64_t kRadix = 16;       // DFT matrix size of every full Monarch stage
constexpr int64_t kFreqBlocks = 16;  // spectrum blocks (outputs of the last stage)
constexpr int64_t kDenseKeep = kFreqBlocks / 2;
constexpr int64_t kMinFFTSize = 16;
constexpr int kMaxStages = 8;  // N up to 16^7·8 = 2^31

// The FFT size used for sequence length L: the smallest power of two >= 2L
// (>= 16), so the circular convolution of the zero-padded signals is the causal
// linear one on [0, L).
inline int64_t fft_size_for(int64_t L) {
  int64_t n = kMinFFTSize;
  while (n < 2 * L) n *= 2;
  return n;
}

struct Stage {
  int64_t rows;    // independent [radix, stride] blocks
  int64_t radix;   // DFT size along the middle axis
  int64_t stride;  // contiguous points per DFT input (vector length of the matmul)
};

inline std::vector<Stage> monarch_stages(int64_t N) {
  // N = r0 · 16^full with r0 in {1, 2, 4, 8}. The first stage is a 16-point DFT
  // whenever N >= 256, so the zero half of the padded input (and of the inverse's
  // output) halves a full 16×16 matmul; the small factor goes second; the last
  // stage is always a 16-point DFT.
  int64_t full = 0, rest = N;
  while (rest % kRadix == 0) {
    rest /= kRadix;
    ++full;
  }
  std::vector<int64_t> radices(full, kRadix);
  if (rest > 1) radices.insert(radices.begin() + (full >= 2 ? 1 : 0), rest);
  std::vector<Stage> stages;
  int64_t rows = 1;
  for (int64_t r : radices) {
    stages.push_back({rows, r, N / (rows * r)});
    rows *= r;
  }
  return stages;
}

// Whether the spectrum keeps Monarch position pos. The last stage's output
// (pos % 16, stride 1) is the most significant frequency digit, so in Monarch
// order the rule min(f, N - f) < K·N/16 reads: column pos % 16 in [0, K) or
// [16 - K, 16), except position 16 - K itself (frequency (16 - K)·N/16, whose
// mirror K·N/16 is not kept).
MLX_FFTCONV_HOST_DEVICE inline bool position_kept(int64_t pos, int64_t keep_blocks) {
  if (keep_blocks >= kDenseKeep) return true;
  const int64_t column = pos % kFreqBlocks;
  return (column < keep_blocks || column >= kFreqBlocks - keep_blocks) && pos != kFreqBlocks - keep_blocks;
}

// ---- the 16-point DFT factored as 4 × 4, shared by cpu.cpp and the CUDA kernels ----
// The points travel as separate real and imaginary parts of type V: a SIMD vector
// of T on the CPU (one DFT per lane), a float in a CUDA thread's registers. V
// needs +, - and multiplication by a T scalar.

// cos(2π·e/16) and sin(2π·e/16) for e = f1·j2 in [0, 9]: the inner twiddles of
// a 16-point DFT factored as 4 × 4 (a switch rather than a table: no array
// lookup in device code, and constants once unrolled).
MLX_FFTCONV_HOST_DEVICE constexpr double cos16(int64_t e) {
  switch (e) {
    case 0: return 1.0;
    case 1: return 0.92387953251128674;
    case 2: return 0.70710678118654757;
    case 3: return 0.38268343236508978;
    case 4: return 0.0;
    case 5: return -0.38268343236508978;
    case 6: return -0.70710678118654757;
    case 7: return -0.92387953251128674;
    case 8: return -1.0;
    default: return -0.92387953251128674;  // 9
  }
}
// sin(2π·e/16) = cos(2π·(e - 4)/16), and cos is even.
MLX_FFTCONV_HOST_DEVICE constexpr double sin16(int64_t e) { return e >= 4 ? cos16(e - 4) : cos16(4 - e); }

// (a, b) <- (a + ib)·W_16^{±e} (W_16 = exp(-2πi/16); the + sign is the inverse's).
template <typename V, typename T, bool kInverse>
MLX_FFTCONV_INLINE void rotate16(V& a, V& b, int64_t e) {
  const T c = static_cast<T>(cos16(e)), sn = static_cast<T>(kInverse ? sin16(e) : -sin16(e));
  const V real = a * c - b * sn;
  b = a * sn + b * c;
  a = real;
}

// In place 4-point DFT of (x0, x1, x2, x3): its matrix holds only ±1 and ±i
// (W_4 = -i forward, +i inverse), so it is eight complex additions.
template <typename V, bool kInverse>
MLX_FFTCONV_INLINE void dft4(V& r0, V& i0, V& r1, V& i1, V& r2, V& i2, V& r3, V& i3) {
  const V ar = r0 + r2, ai = i0 + i2, br = r0 - r2, bi = i0 - i2;
  const V cr = r1 + r3, ci = i1 + i3, dr = r1 - r3, di = i1 - i3;
  r0 = ar + cr, i0 = ai + ci;
  r2 = ar - cr, i2 = ai - ci;
  // y1 = b + W_4·d, y3 = b - W_4·d with W_4·d = (d_i, -d_r) forward, (-d_i, d_r) inverse.
  const V wr = kInverse ? -di : di, wi = kInverse ? dr : -dr;
  r1 = br + wr, i1 = bi + wi;
  r3 = br - wr, i3 = bi - wi;
}

// The 16-point DFT of 16 points in registers (X[f] = Σ_j x[j]·W_16^{±f·j}),
// with the 16×16 DFT matrix factored as a 4 × 4 Monarch product,
// F_16 = (F_4 ⊗ I_4)·T·(I_4 ⊗ F_4) up to the digit permutation: with
// j = 4·j1 + j2 and f = f1 + 4·f2,
// X[f] = Σ_j2 W_4^{f2·j2}·W_16^{f1·j2}·Σ_j1 W_4^{f1·j1}·x[j]. The 4-point DFTs
// are additions only, so it costs 64 + 36 + 64 operations instead of the ~380
// of the 16×16 matmul, and each output carries the rounding of two radix-4
// passes and one twiddle instead of a 16-term sum (in fp32 the direct sum has
// 2-3x the error of an FFT). X[f] is left in register dft16_slot(f).
MLX_FFTCONV_HOST_DEVICE constexpr int64_t dft16_slot(int64_t f) { return 4 * (f % 4) + f / 4; }

template <typename V, typename T, bool kInverse>
MLX_FFTCONV_INLINE void dft16(V (&xr)[kRadix], V (&xi)[kRadix]) {
  // Inner DFTs over j1 (registers j2, j2 + 4, j2 + 8, j2 + 12), then the inner
  // twiddles W_16^{f1·j2}: register 4·f1 + j2 holds output digit f1 of column j2.
  MLX_FFTCONV_UNROLL
  for (int64_t j2 = 0; j2 < 4; ++j2) {
    dft4<V, kInverse>(xr[j2], xi[j2], xr[j2 + 4], xi[j2 + 4], xr[j2 + 8], xi[j2 + 8], xr[j2 + 12], xi[j2 + 12]);
    MLX_FFTCONV_UNROLL
    for (int64_t f1 = 1; f1 < 4; ++f1) {
      if (j2 > 0) rotate16<V, T, kInverse>(xr[4 * f1 + j2], xi[4 * f1 + j2], f1 * j2);
    }
  }
  // Outer DFTs over j2 (registers 4·f1 .. 4·f1 + 3) give X[f1 + 4·f2] in 4·f1 + f2.
  MLX_FFTCONV_UNROLL
  for (int64_t f1 = 0; f1 < 4; ++f1) {
    const int64_t r = 4 * f1;
    dft4<V, kInverse>(xr[r], xi[r], xr[r + 1], xi[r + 1], xr[r + 2], xi[r + 2], xr[r + 3], xi[r + 3]);
  }
}

inline void check_keep_blocks(const char* op, int64_t keep_blocks) {
  MLX_CHECK_VALUE(keep_blocks >= 1 && keep_blocks <= kDenseKeep, op, "keep_blocks must be in [1, ",
                  kDenseKeep, "], got ", keep_blocks);
}

// u [B, H, L] and the optional gates (u's shape and dtype). float64 u is accepted
// on CPU only (gradcheck), where the kernel may then be float64 too.
inline void check_signal_and_gates(const char* op, const at::Tensor& u, const std::optional<at::Tensor>& pregate,
                                   const std::optional<at::Tensor>& postgate, bool allow_double) {
  if (allow_double) {
    check_dtype(op, "u", u, {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  } else {
    check_dtype(op, "u", u, {at::kHalf, at::kBFloat16, at::kFloat});
  }
  check_dim(op, "u", u, 3);
  for (auto [name, gate] : {std::pair{"pregate", &pregate}, std::pair{"postgate", &postgate}}) {
    if (!gate->has_value()) continue;
    const at::Tensor& g = **gate;
    MLX_CHECK(g.scalar_type() == u.scalar_type(), op, "argument '", name, "' must have u's dtype ",
              dtype_name(u.scalar_type()), ", got ", dtype_name(g.scalar_type()));
    MLX_CHECK(g.sizes() == u.sizes(), op, "argument '", name, "' must have u's shape ", u.sizes(), ", got ",
              g.sizes());
  }
}

inline void check_kernel_dtype(const char* op, const char* arg, const at::Tensor& k, const at::Tensor* u) {
  if (u != nullptr && u->scalar_type() == at::kDouble) {
    check_dtype(op, arg, k, {at::kFloat, at::kDouble});
  } else {
    check_dtype(op, arg, k, {at::kFloat});
  }
}

// fft_conv(u [B, H, L], k [H, Lk] fp32, pregate?, postgate?)
inline void check_fft_conv_args(const at::Tensor& u, const at::Tensor& k, const std::optional<at::Tensor>& pregate,
                                const std::optional<at::Tensor>& postgate, bool allow_double) {
  constexpr const char* op = MLX_OP_NAME("fft_conv");
  check_same_device(op, {{"u", &u}, {"k", &k}, {"pregate", pregate ? &*pregate : nullptr},
                         {"postgate", postgate ? &*postgate : nullptr}});
  check_signal_and_gates(op, u, pregate, postgate, allow_double);
  check_dim(op, "k", k, 2);
  check_kernel_dtype(op, "k", k, &u);
  check_size(op, "k", k, 0, u.size(1), "u's H (u is [B, H, L], k is [H, Lk])");
  const int64_t L = u.size(2), Lk = k.size(1);
  MLX_CHECK(Lk <= L && (Lk >= 1 || L == 0), op, "argument 'k' must have 1 <= Lk <= L = ", L, " (u is [B, H, L]), got Lk = ",
            Lk);
}

// fft_conv_spectrum(k [H, Lk], seqlen, keep_blocks)
inline void check_spectrum_args(const at::Tensor& k, int64_t seqlen, int64_t keep_blocks, bool allow_double) {
  constexpr const char* op = MLX_OP_NAME("fft_conv_spectrum");
  check_same_device(op, {{"k", &k}});
  check_dim(op, "k", k, 2);
  if (allow_double) {
    check_dtype(op, "k", k, {at::kFloat, at::kDouble});
  } else {
    check_dtype(op, "k", k, {at::kFloat});
  }
  MLX_CHECK(seqlen >= 0 && k.size(1) <= seqlen && (k.size(1) >= 1 || seqlen == 0), op,
            "argument 'k' must have 1 <= Lk <= seqlen = ", seqlen, ", got Lk = ", k.size(1));
  check_keep_blocks(op, keep_blocks);
  // The spectrum [H, 2, N] with N in [2·seqlen, 4·seqlen): bounded before N is computed.
  check_alloc(op, "the output (the spectrum [H, 2, N >= 2·seqlen])", {std::max<int64_t>(k.size(0), 1), 2, seqlen, 2},
              k.element_size(), k.device());
}

// fft_conv_spectral(u [B, H, L], k_f [H, 2, N], keep_blocks, pregate?, postgate?)
inline void check_spectral_args(const at::Tensor& u, const at::Tensor& k_f, int64_t keep_blocks,
                                const std::optional<at::Tensor>& pregate, const std::optional<at::Tensor>& postgate,
                                bool allow_double) {
  constexpr const char* op = MLX_OP_NAME("fft_conv_spectral");
  check_same_device(op, {{"u", &u}, {"k_f", &k_f}, {"pregate", pregate ? &*pregate : nullptr},
                         {"postgate", postgate ? &*postgate : nullptr}});
  check_signal_and_gates(op, u, pregate, postgate, allow_double);
  check_kernel_dtype(op, "k_f", k_f, &u);
  check_dim(op, "k_f", k_f, 3);
  check_size(op, "k_f", k_f, 0, u.size(1), "u's H (k_f is [H, 2, N])");
  check_size(op, "k_f", k_f, 1, 2, "the real/imaginary planes (k_f is [H, 2, N])");
  check_size(op, "k_f", k_f, 2, fft_size_for(u.size(2)), "the FFT size for u's L");
  check_keep_blocks(op, keep_blocks);
}

}  // namespace mlx_kernels::fftconv
