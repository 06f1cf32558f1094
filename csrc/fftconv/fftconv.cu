// CUDA kernels of the FFT-as-matmul convolution family: the Monarch FFT of
// fftconv.h (the same stages and spectrum order as cpu.cpp).
//
// One task = one head h and a pair of batch rows (b, b+1) packed as one complex
// signal v[b] + i·v[b+1] (the kernel is real, so the two convolutions separate
// as the real and imaginary parts): half the FFTs.
//
// Fused kernel (one CTA per task and block of at most kMaxBlock = 16K points,
// i.e. L <= 8K in one pass; 8K points on GPUs with 99 KiB of shared memory per
// CTA): the block lives in shared memory as fp32 SoA
// (re[M], im[M], 128 KiB at 16K points) for the whole pipeline:
//   load u·pregate (zero padded) -> forward column stages -> last stage fused
//   with the spectrum multiply and the first inverse stage, per 16-point row ->
//   inverse column stages -> store y·postgate (t < L).
// Column stages of radix 16 run on tensor cores for fp16/bf16 inputs:
//   out[f, m] = Σ_j F16[f, j]·x[j, m] as mma.sync m16n8k16 (A = F16 real,
//   imaginary and negated imaginary parts, B = a 16×8 tile of the fp32 data,
//   fp32 accumulators), complex as four real products (Yr = Fr·Xr - Fi·Xi,
//   Yi = Fi·Xr + Fr·Xi), twiddles applied to the fp32 accumulators. Each
//   operand is split into bf16 hi + lo and each real product is three MMAs
//   (hi·hi + hi·lo + lo·hi): 16-bit operands, where a single fp16/bf16 rounding
//   per stage would give 2-2.5x the error of the fp32 FFT the tolerance rule
//   compares with. The forward tensor-core stages carry an exact 1/4 scale
//   each, which the spectrum multiply undoes.
// fp32 inputs run every stage in fp32 FFMA: even split bf16 operands (16 bits)
// would exceed the tolerance rule for fp32 inputs.
// Small radices (2, 4, 8) and the last stage (stride 1) use FFMA in both paths.
//
// Two-pass path (N > 16K, up to L = 1M and beyond): the leading stages whose
// blocks exceed 16K points run as FFMA column stages through a global scratch
// buffer [tasks, 2, N] (one thread per column, the radix points in registers;
// the first reads u·pregate, the last inverse writes y·postgate), and the fused
// kernel processes each remaining block of the scratch buffer. Tasks are
// processed in chunks so the scratch stays under 1 GiB.
//
// The kernel spectrum (fft_conv_spectrum) is the same forward transform of k in
// FFMA (imaginary part 0), scaled by 1/N and masked to the kept blocks.


#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include "common/registration.h"
#include "fftconv/fftconv_kernels.cuh"

namespace mlx_kernels::fftconv {
namespace {

using namespace detail;

at::Tensor fft_conv_spectrum_cuda(const at::Tensor& k_in, int64_t seqlen, int64_t keep_blocks) {
  check_spectrum_args(k_in, seqlen, keep_blocks, /*allow_double=*/false);
  const c10::cuda::CUDAGuard guard(k_in.device());
  const at::Tensor k = k_in.contiguous();
  const int64_t N = fft_size_for(seqlen), H = k.size(0);
  at::Tensor k_f = at::zeros({H, 2, N}, k.options());
  if (k.numel() == 0) return k_f;
  const Signal<float> signal{k.data_ptr<float>(), nullptr, nullptr, nullptr, {1, H, k.size(1), false}};
  run_tasks<float, false, true>(signal, H, N, nullptr, k_f.data_ptr<float>(), keep_blocks, k.options());
  return k_f;
}

template <typename scalar_t>
Signal<scalar_t> make_signal(const at::Tensor& u, const at::Tensor& pre, const at::Tensor& post, at::Tensor& y) {
  return {u.data_ptr<scalar_t>(), pre.defined() ? pre.data_ptr<scalar_t>() : nullptr,
          post.defined() ? post.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
          {u.size(0), u.size(1), u.size(2), true}};
}

at::Tensor spectral_cuda(const at::Tensor& u_in, const at::Tensor& k_f_in, int64_t keep_blocks,
                         const std::optional<at::Tensor>& pregate, const std::optional<at::Tensor>& postgate) {
  const at::Tensor u = u_in.contiguous();
  const at::Tensor k_f = k_f_in.contiguous();
  const at::Tensor pre = pregate ? pregate->contiguous() : at::Tensor();
  const at::Tensor post = postgate ? postgate->contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(u, at::MemoryFormat::Contiguous);
  if (u.numel() == 0) return y;
  const int64_t N = k_f.size(2), tasks = u.size(1) * ceil_div(u.size(0), 2);
  const float* spectrum = k_f.data_ptr<float>();
  // The checks admit fp16, bf16 and fp32 u only.
  switch (u.scalar_type()) {
    case at::kHalf:
      convolve_half(make_signal<at::Half>(u, pre, post, y), tasks, N, spectrum, keep_blocks, u.options());
      break;
    case at::kBFloat16:
      convolve_bfloat16(make_signal<at::BFloat16>(u, pre, post, y), tasks, N, spectrum, keep_blocks, u.options());
      break;
    default:
      run_tasks<float, false, false>(make_signal<float>(u, pre, post, y), tasks, N, spectrum, nullptr, keep_blocks,
                                     u.options());
  }
  return y;
}

at::Tensor fft_conv_spectral_cuda(const at::Tensor& u, const at::Tensor& k_f, int64_t keep_blocks,
                                  const std::optional<at::Tensor>& pregate, const std::optional<at::Tensor>& postgate) {
  check_spectral_args(u, k_f, keep_blocks, pregate, postgate, /*allow_double=*/false);
  const c10::cuda::CUDAGuard guard(u.device());
  return spectral_cuda(u, k_f, keep_blocks, pregate, postgate);
}

at::Tensor fft_conv_cuda(const at::Tensor& u, const at::Tensor& k, const std::optional<at::Tensor>& pregate,
                         const std::optional<at::Tensor>& postgate) {
  check_fft_conv_args(u, k, pregate, postgate, /*allow_double=*/false);
  const c10::cuda::CUDAGuard guard(u.device());
  if (u.numel() == 0) return at::empty_like(u, at::MemoryFormat::Contiguous);
  return spectral_cuda(u, fft_conv_spectrum_cuda(k, u.size(2), kDenseKeep), kDenseKeep, pregate, postgate);
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) {
  m.impl("fft_conv", &fft_conv_cuda);
  m.impl("fft_conv_spectrum", &fft_conv_spectrum_cuda);
  m.impl("fft_conv_spectral", &fft_conv_spectral_cuda);
}

}  // namespace mlx_kernels::fftconv

