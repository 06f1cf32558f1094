// Scalar softmax bookkeeping shared by the CPU and CUDA kernels (host and
// device): which keys a query sees, the exact merge of two partial attentions,
// and the epilogue of one query row.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/host_device.h"

namespace mlx_kernels::attention {

// Keys visible to query position i of seq_q when the sequence's keys are
// [0, key_len): all of them, or with causal those j <= key_len − seq_q + i
// (the last query sees the last key, FlashAttention's bottom-right alignment).
MLX_HOST_DEVICE inline int64_t visible_keys(int64_t key_len, int64_t seq_q, int64_t i, bool causal) {
  if (!causal) return key_len;
  const int64_t last = key_len - seq_q + i + 1;
  return last < 0 ? 0 : (last > key_len ? key_len : last);
}

// Two attentions over disjoint key sets, with natural-log log-sum-exp lse_a and
// lse_b, merge into softmax over the union: out = w_a·out_a + w_b·out_b with
// w_x = exp(lse_x − lse), lse = log(exp(lse_a) + exp(lse_b)). Returns lse and
// the two weights (summing to 1, or both 0).
//
// An empty side (lse = −inf) gets weight 0. Some kernels report an empty row
// as lse = +inf (vLLM's merge_attn_states treats it the same way), so +inf is
// read as empty too. Both empty gives weights 0 and lse −inf: the max is
// subtracted only when it is finite, so −inf − (−inf) = NaN never happens.
MLX_HOST_DEVICE inline float merge_weights(float lse_a, float lse_b, float* w_a, float* w_b) {
  if (lse_a != lse_a || lse_b != lse_b) {  // a NaN state (a NaN score) stays NaN, fmaxf would drop it
    *w_a = *w_b = NAN;
    return NAN;
  }
  if (lse_a == INFINITY) lse_a = -INFINITY;
  if (lse_b == INFINITY) lse_b = -INFINITY;
  const float max_lse = fmaxf(lse_a, lse_b);
  if (max_lse == -INFINITY) {
    *w_a = 0.0f;
    *w_b = 0.0f;
    return -INFINITY;
  }
  const float e_a = expf(lse_a - max_lse), e_b = expf(lse_b - max_lse);  // one of them is 1
  const float sum = e_a + e_b;
  *w_a = e_a / sum;
  *w_b = e_b / sum;
  return max_lse + logf(sum);
}

// The epilogue of one query row whose online softmax ended with running max
// `row_max` (natural-log units) and sum `row_sum` = Σ exp(s − row_max):
//   out = w_this · acc + w_prev · prev_out,
// where acc is the unnormalized accumulator and prev_out/prev_lse an optional
// earlier state to merge in (prev_lse null: none). A row that saw no key has
// row_sum 0: it contributes nothing and, alone, gives out 0 and lse −inf. A
// NaN score makes row_sum NaN, and NaN goes on into out and lse (as in SDPA).
struct RowEpilogue {
  float lse;
  float w_this;
  float w_prev;
};

MLX_HOST_DEVICE inline RowEpilogue finish_row(float row_max, float row_sum, const float* prev_lse) {
  RowEpilogue e;
  const bool saw_no_key = row_sum == 0.0f;
  e.lse = saw_no_key ? -INFINITY : row_max + logf(row_sum);
  e.w_this = saw_no_key ? 0.0f : 1.0f / row_sum;
  e.w_prev = 0.0f;
  if (prev_lse != nullptr) {
    float w_new;
    e.lse = merge_weights(*prev_lse, e.lse, &e.w_prev, &w_new);
    e.w_this *= w_new;
  }
  return e;
}

}  // namespace mlx_kernels::attention
