// CPU kernel of bsr_spmm: C = A · B with A in BCSR (br × bc blocks), B dense.
//
// The work is the GPU kernel's: block row by block row, each block times the
// bc rows of B it covers (its B tile), accumulated in fp32 (fp64 for fp32 and
// fp64 inputs, see acc_type) and stored once per output row, through row_perm when the BCSR holds
// A's rows permuted. On a CPU a multiply by zero costs as much as any other, so
// the zero padding inside blocks (1 - fill of the stored entries) is skipped:
// each output row gathers the non-zero (a, B row) terms of its block row and
// sums them four at a time into one accumulator row, which keeps that row in
// registers/L1 and reads each needed row of B once.
//
// Threads take contiguous ranges of block rows balanced by work (blocks + 1 per
// block row), so a few dense block rows do not leave the other threads idle.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "bsr/bsr.h"
#include "common/cpu_utils.h"
#include "common/registration.h"

namespace mlx_kernels::bsr {
namespace {

// y[0:n] += Σ_t a[t] · x[t][0:n], four terms per pass over y.
template <typename acc_t>
inline __attribute__((always_inline)) void accumulate_terms(acc_t* __restrict__ y, const acc_t* a,
                                                            const acc_t* const* x, int64_t terms, int64_t n) {
  int64_t t = 0;
  for (; t + 4 <= terms; t += 4) {
    const acc_t a0 = a[t], a1 = a[t + 1], a2 = a[t + 2], a3 = a[t + 3];
    const acc_t* __restrict__ x0 = x[t];
    const acc_t* __restrict__ x1 = x[t + 1];
    const acc_t* __restrict__ x2 = x[t + 2];
    const acc_t* __restrict__ x3 = x[t + 3];
    for (int64_t i = 0; i < n; ++i) y[i] += a0 * x0[i] + a1 * x1[i] + a2 * x2[i] + a3 * x3[i];
  }
  for (; t < terms; ++t) {
    const acc_t a0 = a[t];
    const acc_t* __restrict__ x0 = x[t];
    for (int64_t i = 0; i < n; ++i) y[i] += a0 * x0[i];
  }
}

MLX_CPU_MULTIVERSION
void accumulate_terms_f32(float* y, const float* a, const float* const* x, int64_t terms, int64_t n) {
  accumulate_terms(y, a, x, terms, n);
}

MLX_CPU_MULTIVERSION
void accumulate_terms_f64(double* y, const double* a, const double* const* x, int64_t terms, int64_t n) {
  accumulate_terms(y, a, x, terms, n);
}

inline void accumulate(float* y, const float* a, const float* const* x, int64_t terms, int64_t n) {
  accumulate_terms_f32(y, a, x, terms, n);
}
inline void accumulate(double* y, const double* a, const double* const* x, int64_t terms, int64_t n) {
  accumulate_terms_f64(y, a, x, terms, n);
}

constexpr int64_t kTermsPerPartial = 64;
constexpr int64_t kMinPartWork = 1 << 18;

// Indices of the segments (consecutive runs of segment_bytes bytes, `segments`
// of them from p) holding any non-zero bit. At low fill most block-row segments
// are all zero, so a word-wide OR per segment (vectorised in the AVX2/AVX-512
// clones) replaces a compare and branch per entry.
MLX_CPU_MULTIVERSION
int64_t nonzero_segments(const unsigned char* p, int64_t segment_bytes, int64_t segments, int64_t* found) {
  int64_t count = 0;
  const int64_t words = segment_bytes / 8;
  for (int64_t s = 0; s < segments; ++s, p += segment_bytes) {
    uint64_t any = 0;
    for (int64_t w = 0; w < words; ++w) {
      uint64_t word;
      std::memcpy(&word, p + 8 * w, 8);
      any |= word;
    }
    for (int64_t i = 8 * words; i < segment_bytes; ++i) any |= p[i];
    found[count] = s;
    count += any != 0;
  }
  return count;
}

// Bit c set when value c of the `count` (<= 64) values at p has any non-zero bit.
template <typename scalar_t>
uint64_t nonzero_mask(const scalar_t* p, int64_t count) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 2, uint16_t,
                                    std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>>;
  uint64_t mask = 0;
  for (int64_t c = 0; c < count; ++c) {
    bits_t bits;
    std::memcpy(&bits, p + c, sizeof(bits));
    mask |= static_cast<uint64_t>(bits != 0) << c;
  }
  return mask;
}

// Splits block rows [0, block_rows) into `parts` contiguous ranges of about equal
// work, work(rb) = blocks in rows < rb plus rb; returns the parts + 1 bounds.
template <typename index_t>
std::vector<int64_t> balanced_bounds(const index_t* crow, int64_t block_rows, int64_t parts) {
  const int64_t total = static_cast<int64_t>(crow[block_rows]) + block_rows;
  std::vector<int64_t> bounds(parts + 1, block_rows);
  bounds[0] = 0;
  int64_t rb = 0;
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = total * p / parts;
    while (rb < block_rows && static_cast<int64_t>(crow[rb]) + rb < target) ++rb;
    bounds[p] = rb;
  }
  return bounds;
}

template <typename scalar_t, typename index_t>
void bsr_spmm_kernel(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& blocks,
                     const at::Tensor& b_acc, at::Tensor& out, int64_t m, const int64_t* perm) {
  using acc_t = acc_type<scalar_t>;
  const int64_t br = blocks.size(1), bc = blocks.size(2), k = b_acc.size(0), n = b_acc.size(1);
  const int64_t block_rows = crow.numel() - 1;
  const index_t* crow_ptr = crow.data_ptr<index_t>();
  const index_t* col_ptr = col.data_ptr<index_t>();
  const scalar_t* blocks_ptr = blocks.data_ptr<scalar_t>();
  const acc_t* b_ptr = b_acc.data_ptr<acc_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();

  // Enough parts to balance the threads, but none smaller than kMinPartWork
  // (stored entries + output values): below that, waking threads costs more
  // than the work.
  const int64_t work = blocks.numel() + m * n;
  const int64_t max_parts = std::min<int64_t>(block_rows, 8 * at::get_num_threads());
  const int64_t parts = std::clamp<int64_t>(work / kMinPartWork, 1, max_parts);
  const std::vector<int64_t> bounds = balanced_bounds(crow_ptr, block_rows, parts);

  at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
    // Per row of the block row: its non-zero terms a and the B rows they scale.
    std::vector<std::vector<acc_t>> a_terms(br);
    std::vector<std::vector<const acc_t*>> b_rows(br);
    std::vector<int64_t> terms(br), segments;
    std::vector<acc_t> y(n), partial(n);
    for (int64_t rb = bounds[part_begin]; rb < bounds[part_end]; ++rb) {
      const int64_t rows = std::min(br, m - rb * br);
      const int64_t first = crow_ptr[rb], blocks_here = crow_ptr[rb + 1] - first;
      for (int64_t r = 0; r < rows; ++r) {
        terms[r] = 0;
        if (static_cast<int64_t>(a_terms[r].size()) < blocks_here * bc) {
          a_terms[r].resize(blocks_here * bc), b_rows[r].resize(blocks_here * bc);
        }
      }
      // The block row's blocks are contiguous: find its non-zero block rows
      // (segments of bc values) in one pass over memory, then visit only their
      // non-zeros through a bit mask. Columns past k (padding of the
      // last block column) are never touched.
      segments.resize(blocks_here * br);
      const int64_t found = nonzero_segments(reinterpret_cast<const unsigned char*>(blocks_ptr + first * br * bc),
                                             bc * static_cast<int64_t>(sizeof(scalar_t)), blocks_here * br,
                                             segments.data());
      for (int64_t f = 0; f < found; ++f) {
        const int64_t j = first + segments[f] / br, r = segments[f] % br;
        if (r >= rows) continue;
        const int64_t k0 = static_cast<int64_t>(col_ptr[j]) * bc;
        const scalar_t* a_row = blocks_ptr + (j * br + r) * bc;
        const int64_t width = std::min(bc, k - k0);
        for (int64_t c0 = 0; c0 < width; c0 += 64) {
          for (uint64_t mask = nonzero_mask(a_row + c0, std::min<int64_t>(64, width - c0)); mask != 0;
               mask &= mask - 1) {
            const int64_t c = c0 + __builtin_ctzll(mask);
            a_terms[r][terms[r]] = static_cast<acc_t>(a_row[c]);
            b_rows[r][terms[r]++] = b_ptr + (k0 + c) * n;
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        // Long rows sum kTermsPerPartial terms at a time into a partial row
        // added to y, as a blocked GEMM does over k: the rounding error grows
        // with the number of partials plus the partial's length, not with the
        // row's length.
        std::fill(y.begin(), y.end(), acc_t(0));
        for (int64_t t = 0; t < terms[r]; t += kTermsPerPartial) {
          const int64_t count = std::min(kTermsPerPartial, terms[r] - t);
          if (terms[r] <= kTermsPerPartial) {
            accumulate(y.data(), a_terms[r].data(), b_rows[r].data(), count, n);
            break;
          }
          std::fill(partial.begin(), partial.end(), acc_t(0));
          accumulate(partial.data(), a_terms[r].data() + t, b_rows[r].data() + t, count, n);
          for (int64_t i = 0; i < n; ++i) y[i] += partial[i];
        }
        const int64_t stored_row = rb * br + r;
        scalar_t* c_row = out_ptr + (perm != nullptr ? perm[stored_row] : stored_row) * n;
        for (int64_t i = 0; i < n; ++i) c_row[i] = static_cast<scalar_t>(y[i]);
      }
    }
  });
}

at::Tensor bsr_spmm_cpu(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& blocks_in,
                        const at::Tensor& b, int64_t m, const c10::optional<at::Tensor>& row_perm_in) {
  check_bsr_spmm_shapes(crow_in, col_in, blocks_in, b, m, row_perm_in);
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous(), blocks = blocks_in.contiguous();
  c10::optional<at::Tensor> row_perm;
  if (row_perm_in.has_value()) row_perm = row_perm_in->contiguous();
  const int64_t k = b.size(0), n = b.size(1);
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "bsr_spmm_check", [&] {
    check_bsr_spmm_values<index_t>(crow, col, k, blocks.size(2), row_perm);
  });

  at::Tensor out = at::empty({m, n}, b.options());
  if (m == 0 || n == 0) return out;
  // B in the accumulation type once (a no-op for fp64), so the inner loop is a
  // pure fused multiply-add stream.
  const at::Tensor b_acc = b.to(acc_dtype(b.scalar_type())).contiguous();
  const int64_t* perm = row_perm.has_value() ? row_perm->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks.scalar_type(), "bsr_spmm_cpu", [&] {
    using value_t = scalar_t;
    AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "bsr_spmm_cpu_index", [&] {
      bsr_spmm_kernel<value_t, index_t>(crow, col, blocks, b_acc, out, m, perm);
    });
  });
  return out;
}

}  // namespace

MLX_LIBRARY_IMPL(CPU, m) { m.impl("bsr_spmm", &bsr_spmm_cpu); }

}  // namespace mlx_kernels::bsr
