// Shared-prefix attention family (Hydragen): the description of one attention
// pass that every kernel runs, the argument checks, and the host-side
// composition of the ops out of passes. CPU and CUDA share all of it; each
// backend only supplies "run one pass" and "merge two states".
//
// shared_prefix_attention = two passes merged by log-sum-exp:
//   prefix pass: the B·Sq queries of all sequences, viewed as ONE sequence of
//     B·Sq queries, against the single prefix copy (K/V loaded once for every
//     sequence: the matrix-vector products of decoding become one matrix
//     multiply). Written in fp32 with its LSE.
//   suffix pass: each sequence against its own suffix, ragged lengths, causal
//     with bottom-right alignment; its epilogue merges in the prefix state.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "attention/softmax_math.h"
#include "common/checks.h"

namespace mlx_kernels::attention {

// One attention pass. Queries are grouped by KV head: for batch b and KV head
// h, the kernel's rows are r = i·G + g (query position i < seq_q, query head
// h·G + g, G = heads_q / heads_kv), all against the same K/V rows, so the
// query heads of a group share every K/V load (GQA). Row r sees keys
// j < key_len(b) and, when causal, j <= key_len(b) − seq_q + i.
//
// Tensors are contiguous in (head, head_dim); the strides below (in elements)
// place batches and sequence positions, so the prefix pass can view q as one
// sequence and give the prefix a batch stride of 0.
struct AttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;   // q's dtype, or fp32 when out_fp32
  float* lse = nullptr;  // lse[b·lse_batch_stride + hq·lse_head_stride + i], natural log
  // Optional state merged into the result in the epilogue: fp32 output with
  // out's strides and its LSE (the prefix pass's result in shared_prefix_attention).
  const float* prev_out = nullptr;
  const float* prev_lse = nullptr;
  const int32_t* key_lens = nullptr;  // [batch] on the kernel's device, or null (see key_len)
  // When >= 0 (the split prefix pass): batch entry b is the b-th run of seq_k
  // keys out of split_total_keys, so its length is arithmetic and needs no
  // key_lens tensor (whose host-to-device copy would sync).
  int64_t split_total_keys = -1;
  int64_t q_batch_stride = 0, q_seq_stride = 0;
  int64_t kv_batch_stride = 0, kv_seq_stride = 0;  // K and V alike
  int64_t out_batch_stride = 0, out_seq_stride = 0;
  int64_t lse_batch_stride = 0, lse_head_stride = 0;
  int64_t prev_lse_batch_stride = 0, prev_lse_head_stride = 0;
  int64_t batch = 0, seq_q = 0, heads_q = 0, heads_kv = 1, seq_k = 0, head_dim = 0;
  bool causal = false;
  bool out_fp32 = false;
  float scale = 1.0f;

  MLX_HOST_DEVICE int64_t group() const { return heads_q / heads_kv; }
  // Keys that batch entry b has (before the causal limit).
  MLX_HOST_DEVICE int64_t key_len(int64_t b) const {
    if (key_lens != nullptr) return key_lens[b];
    if (split_total_keys >= 0) {
      const int64_t left = split_total_keys - b * seq_k;
      return left < seq_k ? left : seq_k;
    }
    return seq_k;
  }
  // Rows of one (batch, KV head): every query position × the group's query heads.
  MLX_HOST_DEVICE int64_t rows() const { return seq_q * group(); }
};

inline float softmax_scale(std::optional<double> scale, int64_t head_dim) {
  if (scale.has_value()) return static_cast<float>(*scale);
  return head_dim > 0 ? 1.0f / std::sqrt(static_cast<float>(head_dim)) : 1.0f;
}

constexpr std::initializer_list<at::ScalarType> kFloatTypes = {at::kHalf, at::kBFloat16, at::kFloat};

inline void check_same_dtype(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg,
                             const at::Tensor& ref) {
  MLX_CHECK(t.scalar_type() == ref.scalar_type(), op, "argument '", arg, "' has dtype ",
            dtype_name(t.scalar_type()), " but '", ref_arg, "' has ", dtype_name(ref.scalar_type()),
            " (they must match)");
}

inline void check_heads(const char* op, int64_t heads_q, int64_t heads_kv, const char* kv_arg) {
  MLX_CHECK(heads_kv >= 1, op, "argument '", kv_arg, "' must have at least one KV head, got ", heads_kv);
  MLX_CHECK(heads_q % heads_kv == 0, op, "query heads (", heads_q, ") must be a multiple of the KV heads of '",
            kv_arg, "' (", heads_kv, ") for grouped-query attention");
}

inline void check_same_shape(const char* op, const char* arg_a, const at::Tensor& a, const char* arg_b,
                             const at::Tensor& b) {
  MLX_CHECK(a.sizes() == b.sizes(), op, "arguments '", arg_a, "' and '", arg_b, "' must have one shape, got ",
            a.sizes(), " and ", b.sizes());
}

// Per-sequence key counts: int32 [batch], each in [0, max_len]. The range check
// is one reduction and one read-back (a device sync on CUDA).
inline void check_lens(const char* op, const char* arg, const at::Tensor& lens, int64_t batch, int64_t max_len) {
  check_dtype(op, arg, lens, {at::kInt});
  check_dim(op, arg, lens, 1);
  check_size(op, arg, lens, 0, batch, "the batch size of 'q'");
  if (lens.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(lens);
  const at::Tensor range = at::stack({lo, hi}).cpu();
  const int64_t min_len = range[0].item<int64_t>(), max_seen = range[1].item<int64_t>();
  MLX_CHECK(min_len >= 0 && max_seen <= max_len, op, "argument '", arg, "' must lie in [0, ", max_len,
            "] (the number of keys), got values in [", min_len, ", ", max_seen, "]");
}

// Index math inside the kernels is int32 per (batch, KV head) slice, and a
// kernel adds up to one tile (64 query rows or keys; this margin bounds every
// tile) to a row or key index: the sizes leave room for it.
constexpr int64_t kKernelTileMargin = 256;

inline void check_kernel_sizes(const char* op, const AttentionParams& p) {
  check_fits_int32(op, "query rows per KV head (seq_q × heads_q / heads_kv) + 256 (a kernel tile)",
                   p.rows() + kKernelTileMargin);
  check_fits_int32(op, "key length + 256 (a kernel tile)", p.seq_k + kKernelTileMargin);
}

// attention_with_lse(q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D]) and its ragged variant.
inline void check_attention_args(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor* key_lens) {
  check_same_device(op, {{"q", &q}, {"k", &k}, {"v", &v}, {"key_lens", key_lens}});
  check_dtype(op, "q", q, kFloatTypes);
  check_same_dtype(op, "k", k, "q", q);
  check_same_dtype(op, "v", v, "q", q);
  check_dim(op, "q", q, 4);
  check_dim(op, "k", k, 4);
  check_dim(op, "v", v, 4);
  check_same_shape(op, "k", k, "v", v);
  check_size(op, "k", k, 0, q.size(0), "the batch size of 'q'");
  check_size(op, "k", k, 3, q.size(3), "the head_dim of 'q'");
  check_heads(op, q.size(2), k.size(2), "k");
  if (key_lens != nullptr) check_lens(op, "key_lens", *key_lens, q.size(0), k.size(1));
}

inline void check_merge_args(const at::Tensor& out_a, const at::Tensor& lse_a, const at::Tensor& out_b,
                             const at::Tensor& lse_b) {
  constexpr const char* op = MLX_OP_NAME("merge_attention_states");
  check_same_device(op, {{"out_a", &out_a}, {"lse_a", &lse_a}, {"out_b", &out_b}, {"lse_b", &lse_b}});
  check_dtype(op, "out_a", out_a, kFloatTypes);
  check_same_dtype(op, "out_b", out_b, "out_a", out_a);
  check_dtype(op, "lse_a", lse_a, {at::kFloat});
  check_dtype(op, "lse_b", lse_b, {at::kFloat});
  check_dim(op, "out_a", out_a, 4);
  check_same_shape(op, "out_a", out_a, "out_b", out_b);
  const std::vector<int64_t> lse_shape = {out_a.size(0), out_a.size(2), out_a.size(1)};
  MLX_CHECK(lse_a.sizes() == at::IntArrayRef(lse_shape), op, "argument 'lse_a' must have shape [B, H, S] = ",
            at::IntArrayRef(lse_shape), " for out [B, S, H, D] = ", out_a.sizes(), ", got ", lse_a.sizes());
  MLX_CHECK(lse_b.sizes() == at::IntArrayRef(lse_shape), op, "argument 'lse_b' must have shape [B, H, S] = ",
            at::IntArrayRef(lse_shape), " for out [B, S, H, D] = ", out_a.sizes(), ", got ", lse_b.sizes());
}

inline void check_shared_prefix_args(const at::Tensor& q, const at::Tensor& prefix_k, const at::Tensor& prefix_v,
                                     const at::Tensor& suffix_k, const at::Tensor& suffix_v,
                                     const std::optional<at::Tensor>& suffix_lens) {
  constexpr const char* op = MLX_OP_NAME("shared_prefix_attention");
  const at::Tensor* lens = suffix_lens.has_value() ? &*suffix_lens : nullptr;
  check_same_device(op, {{"q", &q}, {"prefix_k", &prefix_k}, {"prefix_v", &prefix_v}, {"suffix_k", &suffix_k},
                         {"suffix_v", &suffix_v}, {"suffix_lens", lens}});
  check_dtype(op, "q", q, kFloatTypes);
  check_same_dtype(op, "prefix_k", prefix_k, "q", q);
  check_same_dtype(op, "prefix_v", prefix_v, "q", q);
  check_same_dtype(op, "suffix_k", suffix_k, "q", q);
  check_same_dtype(op, "suffix_v", suffix_v, "q", q);
  check_dim(op, "q", q, 4);
  MLX_CHECK(prefix_k.dim() == 3, op, "argument 'prefix_k' must be 3-D [P, Hkv, D] (one copy shared by every ",
            "sequence, no batch dim), got shape ", prefix_k.sizes());
  check_same_shape(op, "prefix_k", prefix_k, "prefix_v", prefix_v);
  check_dim(op, "suffix_k", suffix_k, 4);
  check_same_shape(op, "suffix_k", suffix_k, "suffix_v", suffix_v);
  check_size(op, "prefix_k", prefix_k, 2, q.size(3), "the head_dim of 'q'");
  check_size(op, "suffix_k", suffix_k, 3, q.size(3), "the head_dim of 'q'");
  check_size(op, "suffix_k", suffix_k, 0, q.size(0), "the batch size of 'q'");
  check_size(op, "suffix_k", suffix_k, 2, prefix_k.size(1), "the KV heads of 'prefix_k'");
  check_heads(op, q.size(2), prefix_k.size(1), "prefix_k");
  if (lens != nullptr) check_lens(op, "suffix_lens", *lens, q.size(0), suffix_k.size(1));
}

// Params for q [B, Sq, Hq, D] against k/v [B, Sk, Hkv, D] (contiguous), writing
// out [B, Sq, Hq, D] and lse [B, Hq, Sq].
inline AttentionParams make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                                   at::Tensor& lse, bool causal, float scale) {
  AttentionParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.batch = q.size(0);
  p.seq_q = q.size(1);
  p.heads_q = q.size(2);
  p.head_dim = q.size(3);
  p.seq_k = k.size(1);
  p.heads_kv = k.size(2);
  p.q_batch_stride = q.stride(0);
  p.q_seq_stride = q.stride(1);
  p.kv_batch_stride = k.size(0) == 1 ? 0 : k.stride(0);
  p.kv_seq_stride = k.stride(1);
  p.out_batch_stride = out.stride(0);
  p.out_seq_stride = out.stride(1);
  p.lse_batch_stride = lse.stride(0);
  p.lse_head_stride = lse.stride(1);
  p.causal = causal;
  p.out_fp32 = out.scalar_type() == at::kFloat;
  p.scale = scale;
  return p;
}

// The ops, composed from a backend's run_pass(op, const AttentionParams&, at::ScalarType).

// t contiguous and starting on a 16-byte boundary (a fresh copy when a view
// starts elsewhere): the CUDA tensor-core path needs aligned rows, and without
// this a misaligned view of the same values would take the FFMA path and give
// other last bits.
inline at::Tensor contiguous_aligned(const at::Tensor& t) {
  at::Tensor out = t.contiguous();
  return reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0 ? out : out.clone();
}

template <typename RunPass>
std::tuple<at::Tensor, at::Tensor> attention_with_lse_impl(const char* op, const at::Tensor& q_in,
                                                           const at::Tensor& k_in, const at::Tensor& v_in,
                                                           const std::optional<at::Tensor>& key_lens, bool causal,
                                                           std::optional<double> scale, RunPass run_pass) {
  check_attention_args(op, q_in, k_in, v_in, key_lens.has_value() ? &*key_lens : nullptr);
  const at::Tensor q = contiguous_aligned(q_in), k = contiguous_aligned(k_in), v = contiguous_aligned(v_in);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  if (lse.numel() == 0) return {out, lse};
  AttentionParams p = make_params(q, k, v, out, lse, causal, softmax_scale(scale, q.size(3)));
  at::Tensor lens;
  if (key_lens.has_value()) {
    lens = key_lens->contiguous();
    p.key_lens = lens.data_ptr<int32_t>();
  }
  check_kernel_sizes(op, p);
  run_pass(op, p, q.scalar_type());
  return {out, lse};
}

// How many key ranges the prefix pass is split into so that about `slots`
// tiles run at once when it has only `tiles` (row tiles × KV heads) of its own;
// each range keeps at least kMinKeysPerSplit keys so the merges stay cheap.
constexpr int64_t kMinKeysPerSplit = 256;
constexpr int64_t kMaxSplits = 16;

inline int64_t prefix_splits(int64_t tiles, int64_t slots, int64_t prefix_len) {
  const int64_t wanted = (slots + tiles - 1) / tiles;
  return std::max<int64_t>(1, std::min({wanted, prefix_len / kMinKeysPerSplit, kMaxSplits}));
}

// The prefix pass of shared_prefix_attention: all B·Sq queries, viewed as one
// sequence [1, B·Sq, Hq, D], against the one prefix copy, non-causal. Returns
// fp32 out [1, B·Sq, Hq, D] and lse [1, Hq, B·Sq].
//
// With few sequences and KV heads the query-row tiles alone would leave the
// machine idle, so the prefix is split into `splits` key ranges (flash-decoding
// style). Split s is simply batch entry s of the same pass: queries with batch
// stride 0, K/V starting at the split's first key, its length from
// split_total_keys; the partial states are then merged by LSE.
template <typename RunPass, typename MergeStates>
std::pair<at::Tensor, at::Tensor> prefix_pass(const char* op, const at::Tensor& all_queries, const at::Tensor& prefix_k,
                                              const at::Tensor& prefix_v, float scale, int64_t splits,
                                              RunPass run_pass, MergeStates merge_states) {
  const int64_t prefix_len = prefix_k.size(0), rows = all_queries.size(1);
  const int64_t heads_q = all_queries.size(2), head_dim = all_queries.size(3);
  const int64_t split_len = (prefix_len + splits - 1) / splits;
  splits = (prefix_len + split_len - 1) / split_len;
  const auto fp32 = all_queries.options().dtype(at::kFloat);
  at::Tensor out = at::empty({splits, rows, heads_q, head_dim}, fp32);
  at::Tensor lse = at::empty({splits, heads_q, rows}, fp32);
  AttentionParams p = make_params(all_queries, prefix_k.unsqueeze(0), prefix_v.unsqueeze(0), out, lse,
                                  /*causal=*/false, scale);
  if (splits > 1) {
    p.batch = splits;
    p.q_batch_stride = 0;
    p.seq_k = split_len;
    p.kv_batch_stride = split_len * prefix_k.stride(0);
    p.split_total_keys = prefix_len;
  }
  check_kernel_sizes(op, p);
  run_pass(op, p, all_queries.scalar_type());
  at::Tensor merged_out = out.narrow(0, 0, 1), merged_lse = lse.narrow(0, 0, 1);
  for (int64_t s = 1; s < splits; ++s) {
    std::tie(merged_out, merged_lse) = merge_states(merged_out, merged_lse, out.narrow(0, s, 1), lse.narrow(0, s, 1));
  }
  return {merged_out, merged_lse};
}

// choose_splits(rows, heads_kv, prefix_len) -> how many key ranges the prefix pass uses
// (the backend knows its tile height and how many tiles it runs at once).
template <typename RunPass, typename MergeStates, typename ChooseSplits>
at::Tensor shared_prefix_attention_impl(const at::Tensor& q_in, const at::Tensor& prefix_k_in,
                                        const at::Tensor& prefix_v_in, const at::Tensor& suffix_k_in,
                                        const at::Tensor& suffix_v_in, const std::optional<at::Tensor>& suffix_lens,
                                        std::optional<double> scale_in, RunPass run_pass, MergeStates merge_states,
                                        ChooseSplits choose_splits) {
  constexpr const char* op = MLX_OP_NAME("shared_prefix_attention");
  check_shared_prefix_args(q_in, prefix_k_in, prefix_v_in, suffix_k_in, suffix_v_in, suffix_lens);
  const at::Tensor q = contiguous_aligned(q_in);
  const at::Tensor prefix_k = contiguous_aligned(prefix_k_in), prefix_v = contiguous_aligned(prefix_v_in);
  const at::Tensor suffix_k = contiguous_aligned(suffix_k_in), suffix_v = contiguous_aligned(suffix_v_in);
  const int64_t batch = q.size(0), seq_q = q.size(1), heads_q = q.size(2), head_dim = q.size(3);
  const int64_t prefix_len = prefix_k.size(0);
  const float scale = softmax_scale(scale_in, head_dim);
  at::Tensor out = at::empty(q.sizes(), q.options());
  if (out.numel() == 0) return out;

  // Prefix pass (Hydragen): all B·Sq queries against the one prefix copy.
  at::Tensor prefix_out, prefix_lse;
  if (prefix_len > 0) {
    const int64_t rows = batch * seq_q * (heads_q / prefix_k.size(1));
    std::tie(prefix_out, prefix_lse) =
        prefix_pass(op, q.view({1, batch * seq_q, heads_q, head_dim}), prefix_k, prefix_v, scale,
                    choose_splits(rows, prefix_k.size(1), prefix_len), run_pass, merge_states);
  }
  const auto fp32 = q.options().dtype(at::kFloat);

  // Suffix pass: per sequence, ragged and causal, merging the prefix state in
  // its epilogue. prefix_out [1, B·Sq, Hq, D] has out's strides; prefix_lse
  // [1, Hq, B·Sq] holds sequence b's query i at column b·Sq + i.
  at::Tensor suffix_lse = at::empty({batch, heads_q, seq_q}, fp32);
  AttentionParams p = make_params(q, suffix_k, suffix_v, out, suffix_lse, /*causal=*/true, scale);
  at::Tensor lens;
  if (suffix_lens.has_value()) {
    lens = suffix_lens->contiguous();
    p.key_lens = lens.data_ptr<int32_t>();
  }
  if (prefix_len > 0) {
    p.prev_out = prefix_out.data_ptr<float>();
    p.prev_lse = prefix_lse.data_ptr<float>();
    p.prev_lse_batch_stride = seq_q;
    p.prev_lse_head_stride = batch * seq_q;
  }
  check_kernel_sizes(op, p);
  run_pass(op, p, q.scalar_type());
  return out;
}

}  // namespace mlx_kernels::attention
