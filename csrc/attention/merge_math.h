// The exact softmax merge of two partial attentions, shared by the CPU and CUDA
// kernels (host and device).
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define MLX_HOST_DEVICE __host__ __device__
#else
#define MLX_HOST_DEVICE
#endif

namespace mlx_kernels::attention {

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

}  // namespace mlx_kernels::attention
