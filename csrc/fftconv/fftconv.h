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

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "common/checks.h"

#if defined(__CUDACC__)
#define MLX_FFTCONV_HOST_DEVICE __host__ __device__
#else
#define MLX_FFTCONV_HOST_DEVICE
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
  check_dim(op, "k", k, 2);
  if (allow_double) {
    check_dtype(op, "k", k, {at::kFloat, at::kDouble});
  } else {
    check_dtype(op, "k", k, {at::kFloat});
  }
  MLX_CHECK(seqlen >= 0 && k.size(1) <= seqlen && (k.size(1) >= 1 || seqlen == 0), op,
            "argument 'k' must have 1 <= Lk <= seqlen = ", seqlen, ", got Lk = ", k.size(1));
  check_keep_blocks(op, keep_blocks);
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
