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
#include <cstring>
#include <limits>
#include <vector>

#include "attention/attention.h"
#include "attention/softmax_math.h"
#include "common/cpu_isa.h"
#include "common/cpu_vector.h"
#include "common/cpu_utils.h"
#include "common/registration.h"

namespace mlx_kernels::attention {
namespace {

constexpr int64_t kTileRows = 32;  // query rows per task
constexpr int64_t kTileKeys = 64;  // keys per inner step
constexpr int64_t kRowBlock = 4;   // rows held in registers by the micro-kernels
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Vectors of float (and of int32, for the exponent bits and lane masks) at the
// ISA path's register width.
template <int kBytes>
using FloatVec = CpuVector<float, kBytes>;
template <int kBytes>
using IntLanes = typename CpuVector<int32_t, kBytes>::V;

// Accumulator registers the micro-kernels keep per ISA path of vector width
// kBytes: 16 of AVX-512's 32 registers, 8 of the 16 of AVX2 and SSE (the rest
// hold the loads): kRowBlock rows × kVectorsPerRow vectors.
template <int kBytes>
constexpr int64_t kVectorsPerRow = (kBytes == MLX_AVX512_VECTOR_BYTES ? 16 : 8) / kRowBlock;

// scores[r, j] = Σ_d q[r, d]·k_t[d, j] for all kTileRows × kTileKeys entries.
// k_t is the key tile transposed ([head_dim, kTileKeys], zero past the last key),
// so the key index is the vector dimension. Explicit vectors: GCC unrolls a
// 16-column float loop away before it vectorizes it.
template <int kBytes>
inline __attribute__((always_inline)) void scores_tile(const float* q, const float* k_t, float* scores, int64_t rows,
                                                      int64_t head_dim) {
  using F = FloatVec<kBytes>;
  using V = typename F::V;
  constexpr int64_t C = kVectorsPerRow<kBytes>, W = F::kLanes;
  static_assert(kTileKeys % (C * W) == 0);
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    for (int64_t j0 = 0; j0 < kTileKeys; j0 += C * W) {
      V acc[kRowBlock][C] = {};
      for (int64_t d = 0; d < head_dim; ++d) {
        V k[C];
        for (int64_t c = 0; c < C; ++c) k[c] = F::load(k_t + d * kTileKeys + j0 + c * W);
        for (int64_t r = 0; r < kRowBlock; ++r) {
          const V q_rd = V{} + q[(r0 + r) * head_dim + d];
          for (int64_t c = 0; c < C; ++c) acc[r][c] += q_rd * k[c];
        }
      }
      for (int64_t r = 0; r < kRowBlock; ++r) {
        for (int64_t c = 0; c < C; ++c) F::store(scores + (r0 + r) * kTileKeys + j0 + c * W, acc[r][c]);
      }
    }
  }
}
MLX_CPU_ISA_DISPATCH_VECTORS(scores_tile_isa, scores_tile)

// acc[r, :] += Σ_{j < keys} p[r, j]·v[j, :], kRowBlock rows × kVectorsPerRow
// vectors of acc in registers at a time.
template <int kBytes>
inline __attribute__((always_inline)) void accumulate_pv(const float* p, const float* v, float* acc, int64_t rows,
                                                        int64_t keys, int64_t head_dim) {
  using F = FloatVec<kBytes>;
  using V = typename F::V;
  constexpr int64_t C = kVectorsPerRow<kBytes>, W = F::kLanes;
  const int64_t full_dims = head_dim / (C * W) * (C * W);
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    for (int64_t d0 = 0; d0 < full_dims; d0 += C * W) {
      V block[kRowBlock][C];
      for (int64_t r = 0; r < kRowBlock; ++r) {
        for (int64_t c = 0; c < C; ++c) block[r][c] = F::load(acc + (r0 + r) * head_dim + d0 + c * W);
      }
      for (int64_t j = 0; j < keys; ++j) {
        V v_j[C];
        for (int64_t c = 0; c < C; ++c) v_j[c] = F::load(v + j * head_dim + d0 + c * W);
        for (int64_t r = 0; r < kRowBlock; ++r) {
          const V p_rj = V{} + p[(r0 + r) * kTileKeys + j];
          for (int64_t c = 0; c < C; ++c) block[r][c] += p_rj * v_j[c];
        }
      }
      for (int64_t r = 0; r < kRowBlock; ++r) {
        for (int64_t c = 0; c < C; ++c) F::store(acc + (r0 + r) * head_dim + d0 + c * W, block[r][c]);
      }
    }
    for (int64_t r = r0; r < r0 + kRowBlock; ++r) {  // head_dim % (C·W) tail
      for (int64_t j = 0; j < keys; ++j) {
        for (int64_t d = full_dims; d < head_dim; ++d) acc[r * head_dim + d] += p[r * kTileKeys + j] * v[j * head_dim + d];
      }
    }
  }
}
MLX_CPU_ISA_DISPATCH_VECTORS(accumulate_pv_isa, accumulate_pv)

// Per-thread fp32 working set of one task.
struct TaskBuffers {
  std::vector<float> q, k_t, v, scores, acc, row_max, row_sum;
  std::vector<int64_t> row_keys;
  explicit TaskBuffers(int64_t head_dim)
      : q(kTileRows * head_dim), k_t(head_dim * kTileKeys), v(kTileKeys * head_dim), scores(kTileRows * kTileKeys),
        acc(kTileRows * head_dim), row_max(kTileRows), row_sum(kTileRows), row_keys(kTileRows) {}
};

// exp(x) lane-wise, within 1.5 ulp of expf for results above FLT_MIN (and 0
// below, where expf is subnormal): x = n·ln2 + r with |r| <= ln2/2, exp(r) by
// Cephes' degree-7 polynomial, 2^n put in the exponent bits. NaN stays NaN.
// One scalar expf per score cost more than the score and P·V products together.
template <int kBytes>
inline __attribute__((always_inline)) typename FloatVec<kBytes>::V exp_lanes(typename FloatVec<kBytes>::V x) {
  using V = typename FloatVec<kBytes>::V;
  using I = IntLanes<kBytes>;
  const auto underflow = x < -87.33f;                  // below FLT_MIN: 0 (NaN compares false)
  const V xc = x > 88.5f ? V{} + 88.5f : underflow ? V{} : x;  // no overflow in 2^n
  const V t = xc * 1.44269504088896341f;              // log2(e)
  const V n = __builtin_convertvector(__builtin_convertvector(t + (t < 0.0f ? -0.5f : 0.5f), I), V);
  const V r = xc - n * 0.693359375f - n * -2.12194440e-4f;  // ln2 in two parts: r exact
  V poly = V{} + 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  const I exponent = (__builtin_convertvector(n, I) + 127) << 23;
  V two_n;
  std::memcpy(&two_n, &exponent, sizeof(two_n));
  return underflow ? V{} : poly * two_n;
}

// Online softmax over one key tile: scores of row r beyond its visible keys are
// masked, the running max/sum and the accumulator are rescaled, and the scores
// are replaced by p = exp(s − max) (0 where masked). A row with nothing visible
// yet keeps max −inf, sum 0 and p 0 (no −inf − (−inf)). A NaN score makes the
// max NaN (a max would skip it), so the row's sum and output become NaN.
// Vectorized over keys (the tile's kTileKeys columns, a whole number of vectors).
template <int kBytes>
inline __attribute__((always_inline)) void online_softmax_tile(TaskBuffers& buf, int64_t rows, int64_t key0,
                                                              int64_t keys, int64_t head_dim) {
  using F = FloatVec<kBytes>;
  using V = typename F::V;
  using I = IntLanes<kBytes>;
  constexpr int64_t W = F::kLanes;
  static_assert(kTileKeys % W == 0);
  for (int64_t r = 0; r < rows; ++r) {
    float* s = buf.scores.data() + r * kTileKeys;
    const int64_t visible = std::clamp<int64_t>(buf.row_keys[r] - key0, 0, keys);
    // Masked keys up to a whole vector read as −inf: no effect on the max, and
    // exp(−inf − max) = 0. (Lane masks against the key count, GCC scalarizes.)
    const int64_t chunks = ceil_div(visible, W);
    std::fill(s + visible, s + chunks * W, kNegInf);
    LaneMaxKeepingNan<kBytes> running_max(kNegInf);
    for (int64_t c = 0; c < chunks; ++c) running_max.add(F::load(s + c * W));
    const float tile_max = running_max.max();
    const float new_max = std::isnan(tile_max) ? tile_max : std::max(buf.row_max[r], tile_max);
    if (new_max == kNegInf) {
      std::fill_n(s, keys, 0.0f);
      continue;
    }
    const float rescale = std::exp(buf.row_max[r] - new_max);
    V sum_v{};
    for (int64_t c = 0; c < chunks; ++c) {
      const V p = exp_lanes<kBytes>(F::load(s + c * W) - new_max);
      F::store(s + c * W, p);
      sum_v += p;
    }
    std::fill(s + std::min(chunks * W, keys), s + keys, 0.0f);
    float lane_sum[W];
    lanes_of(sum_v, lane_sum);
    float tile_sum = 0.0f;
    for (int64_t l = 0; l < W; ++l) tile_sum += lane_sum[l];
    buf.row_sum[r] = buf.row_sum[r] * rescale + tile_sum;
    buf.row_max[r] = new_max;
    float* acc = buf.acc.data() + r * head_dim;
    for (int64_t d = 0; d < head_dim; ++d) acc[d] *= rescale;
  }
}
MLX_CPU_ISA_DISPATCH_VECTORS(online_softmax_tile_isa, online_softmax_tile)

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
        online_softmax_tile_isa(isa, buf, tile_rows, key0, keys, head_dim);
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
