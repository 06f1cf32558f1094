// CPU kernels of the shared-prefix attention family: the twin of the CUDA
// FlashAttention-2 kernel, on fp32 tiles.
//
// One task = (batch b, KV head h, tile of kTileRows query rows), where a row is
// one (query position, query head of h's group), so the group's heads share
// every K/V tile (GQA). The task walks the keys it can see in tiles of
// kTileKeys: scores = Q·Kᵀ (register-blocked, keys as the vector dimension),
// online softmax (running row max and sum, rescaling the accumulator), then
// acc += P·V. The Sq×Sk score matrix never exists; the epilogue divides by the
// row sum, writes the natural-log LSE and optionally merges a previous state
// (the prefix pass's) in. Tasks run in parallel with at::parallel_for.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention/attention.h"
#include "attention/softmax_math.h"
#include "common/cpu_isa.h"
#include "common/cpu_utils.h"
#include "common/registration.h"

namespace mlx_kernels::attention {
namespace {

constexpr int64_t kTileRows = 32;  // query rows per task
constexpr int64_t kTileKeys = 64;  // keys per inner step
constexpr int64_t kRowBlock = 4;   // rows held in registers by the micro-kernels
constexpr int64_t kDimBlock = 16;  // head_dim columns held in registers by the P·V micro-kernel
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// scores[r, j] = Σ_d q[r, d]·k_t[d, j] for all kTileRows × kTileKeys entries.
// k_t is the key tile transposed ([head_dim, kTileKeys], zero past the last key),
// so the key index is contiguous and vectorizes without reassociating sums.
inline __attribute__((always_inline)) void scores_tile(const float* q, const float* k_t, float* scores, int64_t rows,
                                                      int64_t head_dim) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    float acc[kRowBlock][kTileKeys] = {};
    for (int64_t d = 0; d < head_dim; ++d) {
      const float* k_row = k_t + d * kTileKeys;
      for (int64_t r = 0; r < kRowBlock; ++r) {
        const float q_rd = q[(r0 + r) * head_dim + d];
        for (int64_t j = 0; j < kTileKeys; ++j) acc[r][j] += q_rd * k_row[j];
      }
    }
    for (int64_t r = 0; r < kRowBlock; ++r) std::copy_n(acc[r], kTileKeys, scores + (r0 + r) * kTileKeys);
  }
}
MLX_CPU_ISA_DISPATCH(scores_tile_isa, scores_tile)

// acc[r, :] += Σ_{j < keys} p[r, j]·v[j, :], kRowBlock rows × kDimBlock columns at a time.
inline __attribute__((always_inline)) void accumulate_pv(const float* p, const float* v, float* acc, int64_t rows,
                                                        int64_t keys, int64_t head_dim) {
  const int64_t full_dims = head_dim / kDimBlock * kDimBlock;
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    for (int64_t d0 = 0; d0 < full_dims; d0 += kDimBlock) {
      float block[kRowBlock][kDimBlock];
      for (int64_t r = 0; r < kRowBlock; ++r) std::copy_n(acc + (r0 + r) * head_dim + d0, kDimBlock, block[r]);
      for (int64_t j = 0; j < keys; ++j) {
        const float* v_row = v + j * head_dim + d0;
        for (int64_t r = 0; r < kRowBlock; ++r) {
          const float p_rj = p[(r0 + r) * kTileKeys + j];
          for (int64_t d = 0; d < kDimBlock; ++d) block[r][d] += p_rj * v_row[d];
        }
      }
      for (int64_t r = 0; r < kRowBlock; ++r) std::copy_n(block[r], kDimBlock, acc + (r0 + r) * head_dim + d0);
    }
    for (int64_t r = r0; r < r0 + kRowBlock; ++r) {  // head_dim % kDimBlock tail
      for (int64_t j = 0; j < keys; ++j) {
        for (int64_t d = full_dims; d < head_dim; ++d) acc[r * head_dim + d] += p[r * kTileKeys + j] * v[j * head_dim + d];
      }
    }
  }
}
MLX_CPU_ISA_DISPATCH(accumulate_pv_isa, accumulate_pv)

// Per-thread fp32 working set of one task.
struct TaskBuffers {
  std::vector<float> q, k_t, v, scores, acc, row_max, row_sum;
  std::vector<int64_t> row_keys;
  explicit TaskBuffers(int64_t head_dim)
      : q(kTileRows * head_dim), k_t(head_dim * kTileKeys), v(kTileKeys * head_dim), scores(kTileRows * kTileKeys),
        acc(kTileRows * head_dim), row_max(kTileRows), row_sum(kTileRows), row_keys(kTileRows) {}
};

// Online softmax over one key tile: scores of row r beyond its visible keys are
// masked, the running max/sum and the accumulator are rescaled, and the scores
// are replaced by p = exp(s − max) (0 where masked). A row with nothing visible
// yet keeps max −inf, sum 0 and p 0 (no −inf − (−inf)). A NaN score makes the
// max NaN (std::max would skip it), so the row's sum and output become NaN.
void online_softmax_tile(TaskBuffers& buf, int64_t rows, int64_t key0, int64_t keys, int64_t head_dim) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = buf.scores.data() + r * kTileKeys;
    const int64_t visible = std::clamp<int64_t>(buf.row_keys[r] - key0, 0, keys);
    float tile_max = kNegInf;
    bool nan_seen = false;
    for (int64_t j = 0; j < visible; ++j) {
      tile_max = std::max(tile_max, s[j]);
      nan_seen |= std::isnan(s[j]);
    }
    const float new_max = nan_seen ? std::nanf("") : std::max(buf.row_max[r], tile_max);
    if (new_max == kNegInf) {
      std::fill_n(s, keys, 0.0f);
      continue;
    }
    const float rescale = std::exp(buf.row_max[r] - new_max);
    float tile_sum = 0.0f;
    for (int64_t j = 0; j < visible; ++j) {
      s[j] = std::exp(s[j] - new_max);
      tile_sum += s[j];
    }
    std::fill(s + visible, s + keys, 0.0f);
    buf.row_sum[r] = buf.row_sum[r] * rescale + tile_sum;
    buf.row_max[r] = new_max;
    float* acc = buf.acc.data() + r * head_dim;
    for (int64_t d = 0; d < head_dim; ++d) acc[d] *= rescale;
  }
}

template <typename T>
void attention_pass(const char* op, const AttentionParams& p) {
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const int64_t group = p.group(), rows = p.rows(), head_dim = p.head_dim;
  const int64_t row_tiles = ceil_div(rows, kTileRows);
  const CpuIsa isa = cpu_isa(op);

  at::parallel_for(0, p.batch * p.heads_kv * row_tiles, 1, [&](int64_t begin, int64_t end) {
    TaskBuffers buf(head_dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t tile = task % row_tiles, h = task / row_tiles % p.heads_kv, b = task / row_tiles / p.heads_kv;
      const int64_t row0 = tile * kTileRows, tile_rows = std::min(kTileRows, rows - row0);
      const int64_t key_len = p.key_len(b);

      // Q rows, pre-scaled; rows past the end stay zero and see no key.
      std::fill(buf.q.begin(), buf.q.end(), 0.0f);
      std::fill(buf.row_keys.begin(), buf.row_keys.end(), 0);
      for (int64_t r = 0; r < tile_rows; ++r) {
        const int64_t i = (row0 + r) / group, head = h * group + (row0 + r) % group;
        const T* src = q + b * p.q_batch_stride + i * p.q_seq_stride + head * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) buf.q[r * head_dim + d] = static_cast<float>(src[d]) * p.scale;
        buf.row_keys[r] = visible_keys(key_len, p.seq_q, i, p.causal);
      }
      std::fill(buf.row_max.begin(), buf.row_max.end(), kNegInf);
      std::fill(buf.row_sum.begin(), buf.row_sum.end(), 0.0f);
      std::fill(buf.acc.begin(), buf.acc.end(), 0.0f);

      // Rows are ordered by query position, so the last row sees the most keys.
      const int64_t tile_keys = buf.row_keys[tile_rows - 1];
      for (int64_t key0 = 0; key0 < tile_keys; key0 += kTileKeys) {
        const int64_t keys = std::min(kTileKeys, tile_keys - key0);
        std::fill(buf.k_t.begin(), buf.k_t.end(), 0.0f);
        for (int64_t j = 0; j < keys; ++j) {
          const int64_t offset = b * p.kv_batch_stride + (key0 + j) * p.kv_seq_stride + h * head_dim;
          for (int64_t d = 0; d < head_dim; ++d) {
            buf.k_t[d * kTileKeys + j] = static_cast<float>(k[offset + d]);
            buf.v[j * head_dim + d] = static_cast<float>(v[offset + d]);
          }
        }
        scores_tile_isa(isa, buf.q.data(), buf.k_t.data(), buf.scores.data(), tile_rows, head_dim);
        online_softmax_tile(buf, tile_rows, key0, keys, head_dim);
        accumulate_pv_isa(isa, buf.scores.data(), buf.v.data(), buf.acc.data(), tile_rows, keys, head_dim);
      }

      // Epilogue: normalize, LSE, merge the previous state in, store.
      for (int64_t r = 0; r < tile_rows; ++r) {
        const int64_t i = (row0 + r) / group, head = h * group + (row0 + r) % group;
        const float* prev_lse =
            p.prev_lse ? p.prev_lse + b * p.prev_lse_batch_stride + head * p.prev_lse_head_stride + i : nullptr;
        const RowEpilogue e = finish_row(buf.row_max[r], buf.row_sum[r], prev_lse);
        const int64_t out_offset = b * p.out_batch_stride + i * p.out_seq_stride + head * head_dim;
        const float* acc = buf.acc.data() + r * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) {
          const float value = e.w_this * acc[d] + (prev_lse ? e.w_prev * p.prev_out[out_offset + d] : 0.0f);
          if (p.out_fp32) {
            static_cast<float*>(p.out)[out_offset + d] = value;
          } else {
            static_cast<T*>(p.out)[out_offset + d] = static_cast<T>(value);
          }
        }
        p.lse[b * p.lse_batch_stride + head * p.lse_head_stride + i] = e.lse;
      }
    }
  });
}

void run_pass_cpu(const char* op, const AttentionParams& p, at::ScalarType dtype) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "attention_pass_cpu",
                                  [&] { attention_pass<scalar_t>(op, p); });
}

std::tuple<at::Tensor, at::Tensor> attention_with_lse_cpu(const at::Tensor& q, const at::Tensor& k,
                                                          const at::Tensor& v, bool causal,
                                                          std::optional<double> scale) {
  return attention_with_lse_impl(MLX_OP_NAME("attention_with_lse"), q, k, v, std::nullopt, causal, scale,
                                 run_pass_cpu);
}

std::tuple<at::Tensor, at::Tensor> attention_with_lse_ragged_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                 const at::Tensor& v, const at::Tensor& key_lens,
                                                                 bool causal, std::optional<double> scale) {
  return attention_with_lse_impl(MLX_OP_NAME("attention_with_lse_ragged"), q, k, v, key_lens, causal, scale,
                                 run_pass_cpu);
}

// merge_attention_states: one (b, s, h) row of head_dim values per step.
template <typename T>
void merge_rows(const T* out_a, const float* lse_a, const T* out_b, const float* lse_b, T* out, float* lse,
                int64_t seq, int64_t heads, int64_t head_dim, int64_t rows) {
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t h = row % heads, s = row / heads % seq, b = row / heads / seq;
      const int64_t lse_index = (b * heads + h) * seq + s;
      float w_a, w_b;
      lse[lse_index] = merge_weights(lse_a[lse_index], lse_b[lse_index], &w_a, &w_b);
      for (int64_t d = row * head_dim; d < (row + 1) * head_dim; ++d) {
        out[d] = static_cast<T>(w_a * static_cast<float>(out_a[d]) + w_b * static_cast<float>(out_b[d]));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> merge_attention_states_cpu(const at::Tensor& out_a_in, const at::Tensor& lse_a_in,
                                                              const at::Tensor& out_b_in, const at::Tensor& lse_b_in) {
  check_merge_args(out_a_in, lse_a_in, out_b_in, lse_b_in);
  const at::Tensor out_a = out_a_in.contiguous(), out_b = out_b_in.contiguous();
  const at::Tensor lse_a = lse_a_in.contiguous(), lse_b = lse_b_in.contiguous();
  at::Tensor out = at::empty(out_a.sizes(), out_a.options());
  at::Tensor lse = at::empty(lse_a.sizes(), lse_a.options());
  const int64_t seq = out_a.size(1), heads = out_a.size(2), head_dim = out_a.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_a.scalar_type(), "merge_attention_states_cpu", [&] {
    merge_rows(out_a.data_ptr<scalar_t>(), lse_a.data_ptr<float>(), out_b.data_ptr<scalar_t>(),
               lse_b.data_ptr<float>(), out.data_ptr<scalar_t>(), lse.data_ptr<float>(), seq, heads, head_dim,
               lse.numel());
  });
  return {out, lse};
}

at::Tensor shared_prefix_attention_cpu(const at::Tensor& q, const at::Tensor& prefix_k, const at::Tensor& prefix_v,
                                       const at::Tensor& suffix_k, const at::Tensor& suffix_v,
                                       const std::optional<at::Tensor>& suffix_lens, std::optional<double> scale) {
  const auto choose_splits = [](int64_t rows, int64_t heads_kv, int64_t prefix_len) {
    return prefix_splits(ceil_div(rows, kTileRows) * heads_kv, at::get_num_threads(), prefix_len);
  };
  return shared_prefix_attention_impl(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale, run_pass_cpu,
                                      merge_attention_states_cpu, choose_splits);
}

}  // namespace

MLX_LIBRARY_IMPL(CPU, m) {
  m.impl("attention_with_lse", &attention_with_lse_cpu);
  m.impl("attention_with_lse_ragged", &attention_with_lse_ragged_cpu);
  m.impl("merge_attention_states", &merge_attention_states_cpu);
  m.impl("shared_prefix_attention", &shared_prefix_attention_cpu);
}

}  // namespace mlx_kernels::attention
