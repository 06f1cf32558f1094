// int8_vectorwise_quant and int8_gemm on CUDA (LLM.int8).
//
// int8_vectorwise_quant, two kernels:
//   1. outlier_column_mask_kernel (threshold > 0 only): one thread per column
//      and row block, coalesced along the row; a column with any |x| > threshold
//      sets its bit of outlier_bits (a warp's 32 columns are one word).
//      outlier_cols = the set bits' columns (sorted): a sync, since the count
//      sizes that tensor.
//   2. quantize_rows_kernel: one CTA per row: block-wide absmax over the
//      non-outlier columns, then x_i8 = round_half_even(x · 127 / absmax)
//      (the CPU kernel's exact arithmetic), outliers and padding columns -> 0.
//      It can write into a row stride padded to 16 bytes, so the GEMM operand
//      needs no extra copy.
//
// int8_gemm = quantize x, one int8 GEMM with the dequantization fused into its
// epilogue, and, only when there are outlier columns, one small 16-bit GEMM of
// the gathered outlier columns accumulated into the output:
//   M <= 16 (decode): int8_gemv_kernel, a weight-streaming dp4a kernel; each
//     warp owns 4 output features and walks K with 16-byte loads, so every
//     activation load feeds 4 weight rows. Epilogue in registers, outlier
//     columns included: it walks outlier_bits itself, so decode never syncs
//     (and can be captured in a CUDA graph).
//   M > 16: a CUTLASS tensor-core GEMM with an epilogue visitor tree for
//     fp16/bf16 outputs: wgmma + TMA on cc 9.0 (int8_gemm_sm90.cuh), mma.sync
//     elsewhere (int8_gemm_sm80.cuh), the same epilogue arithmetic in both;
//     fp32 outputs use the exact int8_mm then an elementwise dequantization
//     (fp32 LLM inference is rare, and it saves heavy instantiations).
//   outliers (M > 16): out += x[:, cols] @ w_deq[:, cols]ᵀ via cuBLAS (addmm_,
//     beta = 1) in x's dtype; x is never copied densely, only its outlier columns.
// threshold = 0 runs no outlier work at all.

#include <ATen/Dispatch.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>

#include <cutlass/numeric_types.h>

#include "common/cuda_utils.cuh"
#include "common/registration.h"
#include "int8/int8.h"
#include "int8/int8_gemm.cuh"

namespace mlx_kernels::int8 {
namespace {

// --- int8_vectorwise_quant kernels -------------------------------------------

constexpr int kMaskThreads = 256;
constexpr int kMaskMinRowsPerBlock = 64;
constexpr int kMaxGridY = 65535;
constexpr int kQuantThreads = 256;

__device__ __forceinline__ bool is_outlier_column(const uint32_t* bits, int64_t c) {
  return (bits[c >> 5] >> (c & 31)) & 1u;
}

// outlier_bits: one bit per column, zeroed before the launch.
template <typename scalar_t>
__global__ void outlier_column_mask_kernel(const scalar_t* __restrict__ x, int rows, int K, int rows_per_block,
                                           float threshold, uint32_t* __restrict__ outlier_bits) {
  const int64_t c = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;  // K may be near INT32_MAX
  const int r0 = blockIdx.y * rows_per_block;
  const int r1 = static_cast<int>(min(int64_t{rows}, int64_t{r0} + rows_per_block));  // rows may be near INT32_MAX
  bool outlier = false;
  for (int r = r0; c < K && r < r1; ++r) {
    outlier |= fabsf(static_cast<float>(x[static_cast<int64_t>(r) * K + c])) > threshold;
  }
  // Blocks are whole warps from a multiple of 32 columns: one word per warp.
  const uint32_t word = __ballot_sync(0xffffffffu, outlier);
  if (threadIdx.x % 32 == 0 && word != 0) atomicOr(outlier_bits + (c >> 5), word);
}

__device__ float block_max(float value) {
  MLX_SHARED(float[kQuantThreads / 32], warp_max);
  for (int offset = 16; offset > 0; offset /= 2) {
    value = absmax_with(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_max[warp] = value;
  __syncthreads();
  value = lane < blockDim.x / 32 ? warp_max[lane] : 0.0f;
  for (int offset = 16; offset > 0; offset /= 2) {
    value = absmax_with(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

// One CTA per row of x [rows, K]; writes x_i8 [rows, ld_i8] (ld_i8 >= K, the
// tail zero) and row_absmax [rows]. outlier_bits may be null (no outliers).
template <typename scalar_t>
__global__ void __launch_bounds__(kQuantThreads)
    quantize_rows_kernel(const scalar_t* __restrict__ x, int K, const uint32_t* __restrict__ outlier_bits,
                         int8_t* __restrict__ x_i8, int ld_i8, float* __restrict__ row_absmax) {
  const scalar_t* row = x + static_cast<int64_t>(blockIdx.x) * K;
  float absmax = 0.0f;
  for (int64_t c = threadIdx.x; c < K; c += blockDim.x) {  // int64: K may be near INT32_MAX
    const bool outlier = outlier_bits != nullptr && is_outlier_column(outlier_bits, c);
    absmax = absmax_with(absmax, outlier ? 0.0f : fabsf(static_cast<float>(row[c])));
  }
  absmax = block_max(absmax);
  if (threadIdx.x == 0) row_absmax[blockIdx.x] = absmax;

  const RowScale scale = row_scale(absmax);
  int8_t* q = x_i8 + static_cast<int64_t>(blockIdx.x) * ld_i8;
  for (int64_t c = threadIdx.x; c < ld_i8; c += blockDim.x) {
    int value = 0;
    if (c < K && !(outlier_bits != nullptr && is_outlier_column(outlier_bits, c))) {
      value = quantize_value(static_cast<float>(row[c]), scale);
    }
    q[c] = static_cast<int8_t>(value);
  }
}

struct QuantizedRows {
  at::Tensor x_i8;          // int8 [rows, ld]
  at::Tensor row_absmax;    // fp32 [rows]
  at::Tensor outlier_bits;  // int32 [ceil(K / 32)] (bit c % 32 of word c / 32), or undefined: no outliers
  at::Tensor outlier_cols;  // int64 [n_outliers], sorted (only when asked for: it syncs)

  uint32_t* outlier_words() const {
    return outlier_bits.defined() ? reinterpret_cast<uint32_t*>(outlier_bits.data_ptr<int32_t>()) : nullptr;
  }
};

// x: contiguous [rows, K] on the current device. ld >= K: x_i8's row stride.
// with_cols: also list the outlier columns, which reads their count back (a sync).
QuantizedRows quantize_activations(const at::Tensor& x, double threshold, int64_t ld, bool with_cols) {
  const int rows = static_cast<int>(x.size(0)), K = static_cast<int>(x.size(1));
  const auto int_options = x.options().dtype(at::kInt);
  QuantizedRows out{at::empty({rows, ld}, x.options().dtype(at::kChar)),
                    at::empty({rows}, x.options().dtype(at::kFloat)), at::Tensor(),
                    at::empty({0}, x.options().dtype(at::kLong))};
  if (rows == 0) return out;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "int8_vectorwise_quant", [&] {
    const scalar_t* x_ptr = x.data_ptr<scalar_t>();
    if (threshold > 0.0 && K > 0) {
      out.outlier_bits = at::zeros({ceil_div_dev<int64_t>(K, 32)}, int_options);
      // int64: rows may be near INT32_MAX.
      const int rows_per_block =
          static_cast<int>(std::max<int64_t>(kMaskMinRowsPerBlock, ceil_div_dev<int64_t>(rows, kMaxGridY)));
      const dim3 grid(static_cast<unsigned>(ceil_div_dev<int64_t>(K, kMaskThreads)),
                      static_cast<unsigned>(ceil_div_dev<int64_t>(rows, rows_per_block)));
      MLX_LAUNCH_KERNEL(outlier_column_mask_kernel<scalar_t>, grid, kMaskThreads, 0, stream, x_ptr, rows, K, rows_per_block,
                                                                    static_cast<float>(threshold), out.outlier_words());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (with_cols) {
        const at::Tensor bit_of_column = out.outlier_bits.unsqueeze(1).bitwise_right_shift(at::arange(32, int_options))
                                             .bitwise_and(1).view({-1}).narrow(0, 0, K);
        out.outlier_cols = at::nonzero(bit_of_column).view({-1});
      }
    }
    MLX_LAUNCH_KERNEL(quantize_rows_kernel<scalar_t>, rows, kQuantThreads, 0, stream, x_ptr, K, out.outlier_words(),
                                                             out.x_i8.data_ptr<int8_t>(), static_cast<int>(ld),
                                                             out.row_absmax.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> int8_vectorwise_quant_cuda(const at::Tensor& x, double threshold) {
  check_int8_vectorwise_quant_args(x, threshold);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t K = x.size(-1);
  QuantizedRows q = quantize_activations(x.reshape({leading_rows(x), K}).contiguous(), threshold, K,
                                         /*with_cols=*/true);
  return {q.x_i8.view(x.sizes()), q.row_absmax, q.outlier_cols};
}

// --- int8_gemm: decode GEMV (M <= 16) ------------------------------------------

constexpr int kGemvMaxRows = 16;
constexpr int kGemvFeaturesPerWarp = 4;
constexpr int kGemvWarps = 8;

__device__ __forceinline__ void dp4a_16_bytes(const int4& x, const int4& w, int32_t& acc) {
  acc = __dp4a(x.x, w.x, acc);
  acc = __dp4a(x.y, w.y, acc);
  acc = __dp4a(x.z, w.z, acc);
  acc = __dp4a(x.w, w.w, acc);
}

// Each lane ends up owning the outputs (m, j) with m·4 + j = lane or lane + 32.
constexpr int kGemvOutputsPerLane = kGemvMaxRows * kGemvFeaturesPerWarp / 32;
static_assert(kGemvOutputsPerLane == 2, "the epilogue's lane -> output map");

// out[m, n] = (x_i8[m] · w_i8[n]) · row_absmax[m] · w_absmax[n] / 127²
//             + Σ_{outlier c} x[m, c] · w_deq[n, c] + bias[n]
// for m < M <= 16: x_i8 [M, K16], w_i8 [N, K16], K16 % 16 == 0, 16-byte aligned
// rows; x [M, K] the activations, outlier_bits their outlier columns (or null),
// w_deq = w_i8 · (w_absmax / 127) rounded to x's dtype, as the CPU op and the
// 16-bit matmul of the M > 16 path see it (dequantized_weight_columns).
// Weights stream through once (the decode bottleneck); the tiny x stays in L1.
template <typename scalar_t>
__global__ void __launch_bounds__(kGemvWarps * 32)
    int8_gemv_kernel(const int8_t* __restrict__ x_i8, const int8_t* __restrict__ w_i8, int M, int N, int K16,
                     const float* __restrict__ row_absmax, const float* __restrict__ w_absmax,
                     const scalar_t* __restrict__ x, int K, const uint32_t* __restrict__ outlier_bits,
                     const float* __restrict__ bias, scalar_t* __restrict__ out) {
  const int lane = threadIdx.x % 32;
  const int n0 = (blockIdx.x * kGemvWarps + threadIdx.x / 32) * kGemvFeaturesPerWarp;
  if (n0 >= N) return;

  int32_t acc[kGemvMaxRows][kGemvFeaturesPerWarp] = {};
  const int4* x_vec = reinterpret_cast<const int4*>(x_i8);
  const int4* w_vec = reinterpret_cast<const int4*>(w_i8);
  const int vecs_per_row = K16 / 16;
#pragma unroll 2
  for (int v = lane; v < vecs_per_row; v += 32) {
    int4 w[kGemvFeaturesPerWarp];
#pragma unroll
    for (int j = 0; j < kGemvFeaturesPerWarp; ++j) {
      w[j] = n0 + j < N ? __ldg(w_vec + static_cast<int64_t>(n0 + j) * vecs_per_row + v) : make_int4(0, 0, 0, 0);
    }
#pragma unroll
    for (int m = 0; m < kGemvMaxRows; ++m) {
      if (m < M) {
        const int4 x = __ldg(x_vec + static_cast<int64_t>(m) * vecs_per_row + v);
#pragma unroll
        for (int j = 0; j < kGemvFeaturesPerWarp; ++j) dp4a_16_bytes(x, w[j], acc[m][j]);
      }
    }
  }

  // Warp all-reduce; lane (m·4 + j) % 32 keeps output (m, n0 + j) as value[(m·4 + j) / 32].
  float value[kGemvOutputsPerLane] = {};
#pragma unroll
  for (int m = 0; m < kGemvMaxRows; ++m) {
#pragma unroll
    for (int j = 0; j < kGemvFeaturesPerWarp; ++j) {
      if (m < M) {
        int32_t sum = acc[m][j];
        for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        const int n = n0 + j, output = m * kGemvFeaturesPerWarp + j;
        if (output % 32 == lane && n < N) {  // the CPU op's order and roundings (no FMA contraction)
          value[output / 32] = __fmul_rn(__fmul_rn(static_cast<float>(sum), row_absmax[m] * kInvInt8MaxSquared),
                                         w_absmax[n]);
        }
      }
    }
  }

  // Outlier columns in ascending order (the CPU op's order, and like it one
  // rounding per multiply and add), found from the bits: 32 words per step,
  // then each set word's bits, all lanes in step.
  if (outlier_bits != nullptr) {
    float dequant_scale[kGemvOutputsPerLane];  // w_absmax[n] / 127 of each output this lane owns
#pragma unroll
    for (int e = 0; e < kGemvOutputsPerLane; ++e) {
      const int n = n0 + (lane + 32 * e) % kGemvFeaturesPerWarp;
      dequant_scale[e] = n < N ? w_absmax[n] / kInt8Max : 0.0f;
    }
    const int words = (K + 31) / 32;
    for (int w0 = 0; w0 < words; w0 += 32) {
      const uint32_t my_word = w0 + lane < words ? outlier_bits[w0 + lane] : 0u;
      for (uint32_t lanes = __ballot_sync(0xffffffffu, my_word != 0); lanes != 0; lanes &= lanes - 1) {
        const int source = __ffs(lanes) - 1;
        for (uint32_t bits = __shfl_sync(0xffffffffu, my_word, source); bits != 0; bits &= bits - 1) {
          const int c = (w0 + source) * 32 + __ffs(bits) - 1;
#pragma unroll
          for (int e = 0; e < kGemvOutputsPerLane; ++e) {
            const int output = lane + 32 * e, m = output / kGemvFeaturesPerWarp, n = n0 + output % kGemvFeaturesPerWarp;
            if (m < M && n < N) {
              const scalar_t w_deq =
                  static_cast<scalar_t>(static_cast<float>(w_i8[static_cast<int64_t>(n) * K16 + c]) * dequant_scale[e]);
              value[e] = __fadd_rn(value[e], __fmul_rn(static_cast<float>(x[static_cast<int64_t>(m) * K + c]),
                                                       static_cast<float>(w_deq)));
            }
          }
        }
      }
    }
  }

#pragma unroll
  for (int e = 0; e < kGemvOutputsPerLane; ++e) {
    const int output = lane + 32 * e, m = output / kGemvFeaturesPerWarp, n = n0 + output % kGemvFeaturesPerWarp;
    if (m < M && n < N) {
      out[static_cast<int64_t>(m) * N + n] = static_cast<scalar_t>(bias != nullptr ? value[e] + bias[n] : value[e]);
    }
  }
}

// --- int8_gemm: host side ------------------------------------------------------

// Weight-side operands padded to what the kernels need (copies only when the
// shapes are odd: K % 16 or, for CUTLASS, N % 4, or N % 8 for TMA stores of
// 16-bit outputs).
struct WeightOperands {
  at::Tensor w_i8;       // int8 [N_pad, K16], 16-byte aligned rows
  at::Tensor col_scale;  // fp32 [N_pad]: absmax_w / 127² (tensor-core path only)
  at::Tensor bias;       // fp32 [N_pad] or undefined
};

WeightOperands prepare_weight(const at::Tensor& w_i8, const at::Tensor& w_absmax,
                              const std::optional<at::Tensor>& bias, int64_t n_multiple, bool with_col_scale) {
  // The epilogue reads the vectors 16 bytes at a time: a user's fp32 bias may
  // be a view that starts off that boundary.
  const auto aligned = [](at::Tensor t) { return is_aligned_16(t) ? t : t.clone(); };
  WeightOperands out;
  out.w_i8 = aligned(pad_dim_to_multiple(pad_dim_to_multiple(w_i8.contiguous(), 1, 16), 0, n_multiple));
  if (with_col_scale) {
    out.col_scale = aligned(pad_dim_to_multiple(w_absmax * kInvInt8MaxSquared, 0, n_multiple));
  }
  if (bias) out.bias = aligned(pad_dim_to_multiple(bias->to(at::kFloat).contiguous(), 0, n_multiple));
  return out;
}

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// out [M, N] = dequantized x_i8 @ w_i8ᵀ + x's outlier columns @ w_deq's (+ bias),
// x [M, K] and x_i8 [M, K16] from the quant kernel.
void int8_gemv(const at::Tensor& x, const QuantizedRows& q, const at::Tensor& w_i8, const at::Tensor& w_absmax,
               const std::optional<at::Tensor>& bias, at::Tensor& out) {
  // The GEMV folds 1/127² into its epilogue: no extra launch on the decode path.
  const WeightOperands w = prepare_weight(w_i8, w_absmax, bias, 1, /*with_col_scale=*/false);
  const at::Tensor w_absmax_c = w_absmax.contiguous();
  const int M = static_cast<int>(out.size(0)), N = static_cast<int>(out.size(1));
  const int K16 = static_cast<int>(q.x_i8.size(1));
  const int blocks = ceil_div_dev(N, kGemvWarps * kGemvFeaturesPerWarp);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "int8_gemm", [&] {
    MLX_LAUNCH_KERNEL(int8_gemv_kernel<scalar_t>, blocks, kGemvWarps * 32, 0, at::cuda::getCurrentCUDAStream(),
        q.x_i8.data_ptr<int8_t>(), w.w_i8.data_ptr<int8_t>(), M, N, K16, q.row_absmax.data_ptr<float>(),
        w_absmax_c.data_ptr<float>(), x.data_ptr<scalar_t>(), static_cast<int>(x.size(1)),
        q.outlier_words(), data_or_null(w.bias), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// The wgmma kernels, which only a build with 9.0a has (use_sm90_int8_kernels
// is false in any other, so this is never called there).
void run_dequant_gemm_sm90(const Int8DequantProblem& problem, at::ScalarType dtype, cudaStream_t stream) {
#ifdef MLX_WITH_SM90A
  if (dtype == at::kHalf) {
    problem.M <= kSm90SmallTileMaxM ? run_int8_dequant_gemm_sm90<cutlass::half_t, 64>(problem, stream)
                                    : run_int8_dequant_gemm_sm90<cutlass::half_t, 128>(problem, stream);
  } else {
    problem.M <= kSm90SmallTileMaxM ? run_int8_dequant_gemm_sm90<cutlass::bfloat16_t, 64>(problem, stream)
                                    : run_int8_dequant_gemm_sm90<cutlass::bfloat16_t, 128>(problem, stream);
  }
#else
  TORCH_INTERNAL_ASSERT(false, "this build has no sm_90a kernels");
#endif
}

// Returns out [M, N] = dequantized x_i8 @ w_i8ᵀ (+ bias) for M > 16.
at::Tensor int8_gemm_tensor_core(const QuantizedRows& q, const at::Tensor& w_i8, const at::Tensor& w_absmax,
                                 const std::optional<at::Tensor>& bias, at::ScalarType dtype) {
  const int64_t M = q.x_i8.size(0), N = w_i8.size(0);
  if (dtype == at::kFloat) {
    const at::Tensor acc = int8_mm_unchecked_cuda(q.x_i8, pad_dim_to_multiple(w_i8, 1, 16));
    at::Tensor out = acc.to(at::kFloat) * q.row_absmax.unsqueeze(1) * (w_absmax * kInvInt8MaxSquared);
    return bias ? out.add_(*bias) : out;
  }
  const bool sm90 = use_sm90_int8_kernels(q.x_i8);
  const WeightOperands w = prepare_weight(w_i8, w_absmax, bias, sm90 ? 8 : 4, /*with_col_scale=*/true);
  const int64_t N_pad = w.w_i8.size(0);
  at::Tensor out = at::empty({M, N_pad}, q.x_i8.options().dtype(dtype));
  const Int8DequantProblem problem{q.x_i8.data_ptr<int8_t>(), w.w_i8.data_ptr<int8_t>(), q.row_absmax.data_ptr<float>(),
                                   w.col_scale.data_ptr<float>(), data_or_null(w.bias), out.data_ptr(),
                                   static_cast<int>(M), static_cast<int>(N_pad), static_cast<int>(q.x_i8.size(1))};
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (sm90) {
    run_dequant_gemm_sm90(problem, dtype, stream);
  } else if (dtype == at::kHalf) {
    M <= 128 ? run_int8_dequant_gemm_sm80<cutlass::half_t, 64>(problem, stream)
             : run_int8_dequant_gemm_sm80<cutlass::half_t, 128>(problem, stream);
  } else {
    M <= 128 ? run_int8_dequant_gemm_sm80<cutlass::bfloat16_t, 64>(problem, stream)
             : run_int8_dequant_gemm_sm80<cutlass::bfloat16_t, 128>(problem, stream);
  }
  return N_pad == N ? out : out.narrow(1, 0, N);
}

at::Tensor int8_gemm_cuda(const at::Tensor& x_in, const at::Tensor& w_i8, const at::Tensor& w_absmax,
                          const std::optional<at::Tensor>& bias, double threshold) {
  check_int8_gemm_args(x_in, w_i8, w_absmax, bias, threshold);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t M = leading_rows(x_in), K = x_in.size(-1), N = w_i8.size(0);
  // The GEMV indexes features in int up to N rounded up to a whole block, and
  // the tensor-core paths pass N_pad (N padded to a multiple of 8, no more) as int.
  constexpr int kGemvBlockFeatures = kGemvWarps * kGemvFeaturesPerWarp;
  check_fits_int32(MLX_OP_NAME("int8_gemm"), "N rounded up to a multiple of 32 (the GEMV's features per block)",
                   ceil_div_dev<int64_t>(N, kGemvBlockFeatures) * kGemvBlockFeatures);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = N;
  if (M == 0 || N == 0) return at::empty(out_shape, x_in.options());
  if (K == 0) {  // an empty sum: only the bias remains
    at::Tensor out = at::zeros(out_shape, x_in.options());
    return bias ? out.add_(*bias) : out;
  }

  const at::Tensor x = x_in.reshape({M, K}).contiguous();
  const bool decode = M <= kGemvMaxRows;  // the GEMV takes the outlier columns from the bits: no sync
  const QuantizedRows q = quantize_activations(x, threshold, (K + 15) / 16 * 16, /*with_cols=*/!decode);
  if (decode) {
    at::Tensor out = at::empty({M, N}, x.options());
    int8_gemv(x, q, w_i8, w_absmax, bias, out);
    return out.view(out_shape);
  }
  at::Tensor out = int8_gemm_tensor_core(q, w_i8, w_absmax, bias, x.scalar_type());
  if (q.outlier_cols.numel() > 0) {
    const at::Tensor w_cols = dequantized_weight_columns(w_i8, w_absmax, q.outlier_cols, x.scalar_type());
    out.addmm_(x.index_select(1, q.outlier_cols), w_cols.t());
  }
  return out.contiguous().view(out_shape);
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) {
  m.impl("int8_vectorwise_quant", &int8_vectorwise_quant_cuda);
  m.impl("int8_gemm", &int8_gemm_cuda);
}

}  // namespace mlx_kernels::int8
