// CUDA entry points of the shared-prefix attention family.
//
// Each attention pass runs on the tensor-core kernel (flash_attention.cu) when
// it can (fp16/bf16, head_dim 64 or 128), and otherwise on the reference kernel
// below: fp32 inputs and other head dims (up to kMaxReferenceDim), one warp per
// query row walking its keys with the same online softmax and the same
// epilogue, in FFMA. The op compositions (prefix pass + suffix pass with fused
// merge) are shared with the CPU in attention.h. merge_attention_states is one
// warp per output row.

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/logaddexp.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "attention/attention.h"
#include "attention/flash_attention.cuh"
#include "attention/softmax_math.h"
#include "common/cuda_utils.cuh"
#include "common/registration.h"

namespace mlx_kernels::attention {
namespace {

constexpr int kMaxReferenceDim = 256;
constexpr int kDimsPerLane = kMaxReferenceDim / 32;
constexpr int kReferenceWarps = 4;
constexpr int kMaxGridYZ = 65535;
constexpr int64_t kBlocksPerSm = 2;  // tensor-core blocks resident per SM the prefix split aims to fill

// Calls fn(static_cast<T*>(nullptr)) with T the CUDA type of dtype (fp16, bf16
// or fp32: the dtypes the checks let through).
template <typename Fn>
void dispatch_float_type(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kHalf: fn(static_cast<__half*>(nullptr)); break;
    case at::kBFloat16: fn(static_cast<__nv_bfloat16*>(nullptr)); break;
    default: fn(static_cast<float*>(nullptr)); break;
  }
}

__device__ inline float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// One warp per (batch, query head, query position); lane l holds dims l, l+32, ...
template <typename T>
__global__ void __launch_bounds__(32 * kReferenceWarps) reference_attention_kernel(const AttentionParams p) {
  const int64_t row = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.batch * p.heads_q * p.seq_q) return;
  const int64_t i = row % p.seq_q, head = row / p.seq_q % p.heads_q, b = row / p.seq_q / p.heads_q;
  const int64_t h = head / p.group(), head_dim = p.head_dim;
  const int64_t key_len = p.key_len(b);
  const int64_t keys = visible_keys(key_len, p.seq_q, i, p.causal);

  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + i * p.q_seq_stride + head * head_dim;
  const T* k = static_cast<const T*>(p.k) + b * p.kv_batch_stride + h * head_dim;
  const T* v = static_cast<const T*>(p.v) + b * p.kv_batch_stride + h * head_dim;
  float q_reg[kDimsPerLane], acc[kDimsPerLane];
#pragma unroll
  for (int c = 0; c < kDimsPerLane; ++c) {
    const int64_t d = lane + 32 * c;
    q_reg[c] = d < head_dim ? static_cast<float>(q[d]) * p.scale : 0.0f;
    acc[c] = 0.0f;
  }
  float row_max = -INFINITY, row_sum = 0.0f;
  for (int64_t j = 0; j < keys; ++j) {
    const T* k_row = k + j * p.kv_seq_stride;
    const T* v_row = v + j * p.kv_seq_stride;
    float partial = 0.0f;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int64_t d = lane + 32 * c;
      if (d < head_dim) partial += q_reg[c] * static_cast<float>(k_row[d]);
    }
    const float score = warp_sum(partial);
    const float new_max = fmaxf(row_max, score);
    // While every score so far is −inf, subtract 0: −inf − (−inf) would be NaN.
    const float base = new_max == -INFINITY ? 0.0f : new_max;
    const float rescale = expf(row_max - base);  // 0 for the first key (row_max = −inf)
    const float weight = expf(score - base);
    row_sum = row_sum * rescale + weight;
#pragma unroll
    for (int c = 0; c < kDimsPerLane; ++c) {
      const int64_t d = lane + 32 * c;
      acc[c] = acc[c] * rescale + (d < head_dim ? weight * static_cast<float>(v_row[d]) : 0.0f);
    }
    row_max = new_max;
  }

  const float* prev_lse =
      p.prev_lse != nullptr ? p.prev_lse + b * p.prev_lse_batch_stride + head * p.prev_lse_head_stride + i : nullptr;
  const RowEpilogue e = finish_row(row_max, row_sum, prev_lse);
  const int64_t out_offset = b * p.out_batch_stride + i * p.out_seq_stride + head * head_dim;
#pragma unroll
  for (int c = 0; c < kDimsPerLane; ++c) {
    const int64_t d = lane + 32 * c;
    if (d >= head_dim) continue;
    const float value = e.w_this * acc[c] + (prev_lse != nullptr ? e.w_prev * p.prev_out[out_offset + d] : 0.0f);
    if (p.out_fp32) {
      static_cast<float*>(p.out)[out_offset + d] = value;
    } else {
      static_cast<T*>(p.out)[out_offset + d] = static_cast<T>(value);
    }
  }
  if (lane == 0) p.lse[b * p.lse_batch_stride + head * p.lse_head_stride + i] = e.lse;
}

// Only head dims the reference kernel can hold fall back to it.
void check_cuda_head_dim(const char* op, int64_t head_dim) {
  MLX_CHECK(head_dim <= kMaxReferenceDim, op, "head_dim = ", head_dim, " is not supported on CUDA (at most ",
            kMaxReferenceDim, "; 64 and 128 run on tensor cores)");
}

// Runs after the op's argument checks; the first pass of every op fails here
// before any kernel when a size is beyond the CUDA kernels.
void run_pass_cuda(const char* op, const AttentionParams& p, at::ScalarType dtype) {
  check_cuda_head_dim(op, p.head_dim);
  MLX_CHECK(p.heads_kv <= kMaxGridYZ, op, "KV heads (", p.heads_kv, ") must be at most ", kMaxGridYZ, " on CUDA");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (flash_attention_supports(p, dtype)) {
    flash_attention_pass(p, dtype, stream);
    return;
  }
  const int64_t threads = 32 * kReferenceWarps;
  const int64_t blocks = ceil_div_dev<int64_t>(p.batch * p.heads_q * p.seq_q * 32, threads);
  check_fits_int32(op, "reference kernel blocks", blocks);
  dispatch_float_type(dtype, [&](auto* type_tag) {
    using T = std::remove_pointer_t<decltype(type_tag)>;
    MLX_LAUNCH_KERNEL(reference_attention_kernel<T>, static_cast<unsigned>(blocks), threads, 0, stream, p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> attention_with_lse_cuda(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v, bool causal,
                                                           std::optional<double> scale) {
  constexpr const char* op = MLX_OP_NAME("attention_with_lse");
  // The guard only for a CUDA q: with q on the CPU and k, v on CUDA these
  // kernels are still picked, and the argument checks must name the mismatch.
  c10::cuda::OptionalCUDAGuard guard;
  if (q.is_cuda()) guard.set_device(q.device());
  return attention_with_lse_impl(op, q, k, v, std::nullopt, causal, scale, run_pass_cuda);
}

std::tuple<at::Tensor, at::Tensor> attention_with_lse_ragged_cuda(const at::Tensor& q, const at::Tensor& k,
                                                                  const at::Tensor& v, const at::Tensor& key_lens,
                                                                  bool causal, std::optional<double> scale) {
  constexpr const char* op = MLX_OP_NAME("attention_with_lse_ragged");
  c10::cuda::OptionalCUDAGuard guard;  // as in attention_with_lse_cuda
  if (q.is_cuda()) guard.set_device(q.device());
  return attention_with_lse_impl(op, q, k, v, key_lens, causal, scale, run_pass_cuda);
}

// merge_attention_states: one warp per (b, s, h) row of out [B, S, H, D]
// (lse [B, H, S]): the row's weights once, then its D elements, lanes along D
// (coalesced).
constexpr int kMergeThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kMergeThreads)
    merge_states_kernel(const T* out_a, const float* lse_a, const T* out_b, const float* lse_b, T* out, float* lse,
                        int64_t seq, int64_t heads, int64_t head_dim, int64_t rows) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * (kMergeThreads / 32);
  for (int64_t row = (int64_t{blockIdx.x} * kMergeThreads + threadIdx.x) / 32; row < rows; row += warps) {
    const int64_t h = row % heads, s = row / heads % seq, b = row / heads / seq;
    const int64_t lse_index = (b * heads + h) * seq + s;
    float w_a, w_b;
    const float merged = merge_weights(lse_a[lse_index], lse_b[lse_index], &w_a, &w_b);
    const int64_t base = row * head_dim;
    for (int64_t d = lane; d < head_dim; d += 32) {
      out[base + d] = static_cast<T>(w_a * static_cast<float>(out_a[base + d]) +
                                     w_b * static_cast<float>(out_b[base + d]));
    }
    if (lane == 0) lse[lse_index] = merged;
  }
}

std::tuple<at::Tensor, at::Tensor> merge_attention_states_cuda(const at::Tensor& out_a_in, const at::Tensor& lse_a_in,
                                                               const at::Tensor& out_b_in,
                                                               const at::Tensor& lse_b_in) {
  check_merge_args(out_a_in, lse_a_in, out_b_in, lse_b_in);
  const c10::cuda::CUDAGuard guard(out_a_in.device());
  const at::Tensor out_a = out_a_in.contiguous(), out_b = out_b_in.contiguous();
  const at::Tensor lse_a = lse_a_in.contiguous(), lse_b = lse_b_in.contiguous();
  at::Tensor out = at::empty(out_a.sizes(), out_a.options());
  at::Tensor lse = at::empty(lse_a.sizes(), lse_a.options());
  const int64_t head_dim = out_a.size(3);
  if (lse.numel() == 0) return {out, lse};
  if (head_dim == 0) {  // no element to carry the LSE: merge the LSEs alone
    lse.copy_(at::logaddexp(lse_a.masked_fill(lse_a == INFINITY, -INFINITY),
                            lse_b.masked_fill(lse_b == INFINITY, -INFINITY)));
    return {out, lse};
  }
  const int64_t rows = lse.numel();
  const int64_t blocks = std::min<int64_t>(ceil_div_dev<int64_t>(rows, kMergeThreads / 32), 65536);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  dispatch_float_type(out.scalar_type(), [&](auto* type_tag) {
    using T = std::remove_pointer_t<decltype(type_tag)>;
    MLX_LAUNCH_KERNEL(merge_states_kernel<T>, static_cast<unsigned>(blocks), kMergeThreads, 0, stream,
        reinterpret_cast<const T*>(out_a.data_ptr()), lse_a.data_ptr<float>(),
        reinterpret_cast<const T*>(out_b.data_ptr()), lse_b.data_ptr<float>(), reinterpret_cast<T*>(out.data_ptr()),
        lse.data_ptr<float>(), out.size(1), out.size(2), head_dim, rows);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

at::Tensor shared_prefix_attention_cuda(const at::Tensor& q, const at::Tensor& prefix_k, const at::Tensor& prefix_v,
                                        const at::Tensor& suffix_k, const at::Tensor& suffix_v,
                                        const std::optional<at::Tensor>& suffix_lens, std::optional<double> scale) {
  c10::cuda::OptionalCUDAGuard guard;  // as in attention_with_lse_cuda
  if (q.is_cuda()) guard.set_device(q.device());
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto choose_splits = [sms](int64_t rows, int64_t heads_kv, int64_t prefix_len) {
    return prefix_splits(ceil_div_dev<int64_t>(rows, kFlashTileRows) * heads_kv, kBlocksPerSm * sms, prefix_len);
  };
  return shared_prefix_attention_impl(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale, run_pass_cuda,
                                      merge_attention_states_cuda, choose_splits);
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) {
  m.impl("attention_with_lse", &attention_with_lse_cuda);
  m.impl("attention_with_lse_ragged", &attention_with_lse_ragged_cuda);
  m.impl("merge_attention_states", &merge_attention_states_cuda);
  m.impl("shared_prefix_attention", &shared_prefix_attention_cuda);
}

}  // namespace mlx_kernels::attention
