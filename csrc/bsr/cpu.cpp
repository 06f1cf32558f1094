// CPU kernels of bsr_spmm: C = A · B with A in BCSR (br × bc blocks), B dense.
//
// The work is the GPU kernel's: block row by block row, each block times the
// bc rows of B it covers (its B tile), accumulated in fp32 (fp64 for fp64
// inputs, see b_type) and stored once per output row, through row_perm
// when the BCSR holds A's rows permuted. On a CPU a multiply by zero costs as
// much as any other, so the zero padding inside blocks (1 - fill of the stored
// entries) is skipped: each output row lists the non-zero (a, B row) terms of
// its blocks and sums them in registers (sum_row), reading each needed row of
// B once and storing the row once.
//
// Two block payloads feed that sum:
// - bsr_spmm: dense blocks (the tensor-core layout). The block row's non-zeros
//   are found by scanning its blocks, which at the fills of real sparse
//   matrices (1-5%) reads 20-100x more bytes than the non-zeros themselves.
// - bsr_spmm_packed: the blocks as bit maps, row by row: for each row, a word
//   per block of its block row marking the row's non-zero columns in that
//   block, then the row's non-zeros. BlockSparseMatrix keeps this form next to
//   the dense blocks on the CPU: the same blocks and B tiles, without reading
//   the padding, and already in row order.
//
// Threads take contiguous ranges of block rows (dense blocks) or rows (packed
// rows) balanced by work (stored entries + 1 per row), so a few dense block rows
// do not leave the other threads idle.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "bsr/bsr.h"
#include "common/cpu_isa.h"
#include "common/cpu_vector.h"
#include "common/cpu_utils.h"
#include "common/registration.h"

namespace mlx_kernels::bsr {
namespace {

// Sums the rows of one block row and stores them: for r < rows,
// c_rows[r][0:n] = Σ_t a[r][t] · x[r][t][0:n] over count[r] terms, x being B
// in b_type, the type the sums are accumulated in.
//
// Each row is summed a few vectors of output columns at a time in
// registers, four terms per add into them, then converted and stored once: at
// the 1-3 non-zeros per row of power-grid and random matrices, zeroing,
// reloading and copying an accumulator row in memory cost more than the
// products. Rows with more than kTermsPerPartial terms are summed that many
// terms at a time into partial sums added to the total, as a blocked GEMM does
// over k: the rounding error grows with the number of partials plus the
// partial's length, not with the row's length. One call per block row (not per
// row), for the call overhead at a few non-zeros per row.
constexpr int64_t kTermsPerPartial = 64;

// kBytes of acc_t: one register of the ISA path whose width kBytes is (see
// common/cpu_vector.h), so the accumulators of a row stay in registers on each.
template <typename acc_t, int kBytes>
using acc_vector = typename CpuVector<acc_t, kBytes>::V;

// `lanes` values of x_t at p as V: a vector of acc_t, or one acc_t.
template <typename V, typename x_t>
inline __attribute__((always_inline)) V load_as(const x_t* p) {
  if constexpr (std::is_arithmetic_v<V>) {
    return V(*p);
  } else {
    using x_vector __attribute__((vector_size(sizeof(V) / sizeof(V{}[0]) * sizeof(x_t)))) = x_t;
    x_vector v;
    std::memcpy(&v, p, sizeof(v));
    return __builtin_convertvector(v, V);
  }
}

// Columns [c0, c0 + kCount · lanes of V) of one row, in kCount registers.
template <typename V, int kCount, typename acc_t, typename x_t, typename out_t>
inline __attribute__((always_inline)) void sum_row_columns(const acc_t* a, const x_t* const* x, int64_t terms,
                                                           out_t* __restrict__ c_row, int64_t c0) {
  constexpr int64_t kLanes = sizeof(V) / sizeof(acc_t);
  V total[kCount] = {};
  for (int64_t t_begin = 0; t_begin < terms; t_begin += kTermsPerPartial) {
    const int64_t t_end = std::min(terms, t_begin + kTermsPerPartial);
    V partial[kCount] = {};
    int64_t t = t_begin;
    for (; t + 4 <= t_end; t += 4) {
      const acc_t a0 = a[t], a1 = a[t + 1], a2 = a[t + 2], a3 = a[t + 3];
      const x_t *x0 = x[t] + c0, *x1 = x[t + 1] + c0, *x2 = x[t + 2] + c0, *x3 = x[t + 3] + c0;
#pragma GCC unroll 4
      for (int v = 0; v < kCount; ++v) {
        partial[v] += a0 * load_as<V>(x0 + v * kLanes) + a1 * load_as<V>(x1 + v * kLanes) +
                      a2 * load_as<V>(x2 + v * kLanes) + a3 * load_as<V>(x3 + v * kLanes);
      }
    }
    for (; t < t_end; ++t) {
      const acc_t a0 = a[t];
      const x_t* x0 = x[t] + c0;
#pragma GCC unroll 4
      for (int v = 0; v < kCount; ++v) partial[v] += a0 * load_as<V>(x0 + v * kLanes);
    }
#pragma GCC unroll 4
    for (int v = 0; v < kCount; ++v) total[v] += partial[v];
  }
  acc_t sums[kCount * kLanes];
  std::memcpy(sums, total, sizeof(sums));
  for (int64_t i = 0; i < kCount * kLanes; ++i) c_row[c0 + i] = static_cast<out_t>(sums[i]);
}

template <int kBytes, typename acc_t, typename x_t, typename out_t>
inline __attribute__((always_inline)) void sum_row(const acc_t* a, const x_t* const* x, int64_t count,
                                                   out_t* c_row, int64_t n) {
  using V = acc_vector<acc_t, kBytes>;
  constexpr int64_t kLanes = sizeof(V) / sizeof(acc_t);
  int64_t c0 = 0;
  for (; c0 + 4 * kLanes <= n; c0 += 4 * kLanes) sum_row_columns<V, 4>(a, x, count, c_row, c0);
  for (; c0 + kLanes <= n; c0 += kLanes) sum_row_columns<V, 1>(a, x, count, c_row, c0);
  for (; c0 < n; ++c0) sum_row_columns<acc_t, 1>(a, x, count, c_row, c0);
}

template <int kBytes, typename acc_t, typename x_t, typename out_t>
inline __attribute__((always_inline)) void sum_rows(int64_t rows, const acc_t* const* a, const x_t* const* const* x,
                                                    const int64_t* count, out_t* const* c_rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r) sum_row<kBytes>(a[r], x[r], count[r], c_rows[r], n);
}

// sum_rows compiled per ISA path (scalar / AVX2 / AVX-512), one instance per (acc, B, out) type.
MLX_CPU_ISA_DISPATCH_VECTORS(sum_rows_isa, sum_rows)

// B as the inner loop reads it, and the type it accumulates in: fp32 for
// fp16/bf16/fp32, fp64 for fp64. The contract's fp32 accumulation, in partial
// sums of kTermsPerPartial terms, so the error stays within torch's GEMM's
// (the tolerance rule, tested). Accumulating fp32 in fp64 cost a conversion
// per loaded value and half the lanes: 2-3x the time of scipy's fp32 sums.
template <typename scalar_t>
using b_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

constexpr int64_t kMinPartWork = 1 << 15;

// Indices of the segments (consecutive runs of segment_bytes bytes, `segments`
// of them from p) holding any non-zero bit. At low fill most block-row segments
// are all zero, so a word-wide OR per segment (vectorised on the AVX2/AVX-512
// paths) replaces a compare and branch per entry.
inline __attribute__((always_inline)) int64_t nonzero_segments(const unsigned char* p, int64_t segment_bytes,
                                                               int64_t segments, int64_t* found) {
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
MLX_CPU_ISA_DISPATCH(nonzero_segments_isa, nonzero_segments)

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

// Splits rows [0, rows) into contiguous parts of about equal work, work(r) =
// offsets[r] + r (the entries of earlier rows plus one per row): enough parts to
// balance the threads, but none smaller than kMinPartWork of `work` (the call's
// stored entries plus output values), below which waking threads costs more
// than the work. Returns the parts + 1 bounds.
template <typename index_t>
std::vector<int64_t> part_bounds(const index_t* offsets, int64_t rows, int64_t work) {
  const int64_t max_parts = std::min<int64_t>(rows, 8 * at::get_num_threads());
  const int64_t parts = std::clamp<int64_t>(work / kMinPartWork, 1, max_parts);
  const int64_t total = static_cast<int64_t>(offsets[rows]) + rows;
  std::vector<int64_t> bounds(parts + 1, rows);
  bounds[0] = 0;
  int64_t r = 0;
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = total * p / parts;
    while (r < rows && static_cast<int64_t>(offsets[r]) + r < target) ++r;
    bounds[p] = r;
  }
  return bounds;
}

// The BCSR structure and the dense operands every kernel variant shares.
template <typename index_t, typename acc_t, typename x_t, typename out_t>
struct SpmmProblem {
  const index_t* crow;
  const index_t* col;
  const x_t* b;       // B [k, n] as the inner loop reads it
  out_t* out;         // C [m, n]
  const int64_t* perm;  // stored row -> A's row, or null
  int64_t m, k, n, br, bc, block_rows;
};

// One thread's lists of the non-zero terms of each row of a block row: the A
// values (in acc_t) and the B rows they scale.
template <typename acc_t, typename x_t>
struct RowTerms {
  explicit RowTerms(int64_t br) : a(br), b_rows(br), count(br), a_ptr(br), b_rows_ptr(br) {}

  void start(int64_t rows, int64_t capacity) {
    for (int64_t r = 0; r < rows; ++r) {
      count[r] = 0;
      if (static_cast<int64_t>(a[r].size()) < capacity) {
        a[r].resize(capacity), b_rows[r].resize(capacity);
        a_ptr[r] = a[r].data(), b_rows_ptr[r] = b_rows[r].data();
      }
    }
  }
  void add(int64_t r, acc_t value, const x_t* b_row) {
    a_ptr[r][count[r]] = value;
    b_rows_ptr[r][count[r]++] = b_row;
  }

  std::vector<std::vector<acc_t>> a;
  std::vector<std::vector<const x_t*>> b_rows;
  std::vector<int64_t> count;
  std::vector<acc_t*> a_ptr;              // a[r].data()
  std::vector<const x_t**> b_rows_ptr;   // b_rows[r].data()
};

// Dense blocks, block row by block row: find the block row's non-zero block
// rows (segments of bc values; its blocks are contiguous) in one pass over
// memory, list the terms of their non-zeros through a bit mask, then sum each
// row and store it. Columns past k (padding of the last block column) are never
// touched.
template <typename scalar_t, typename index_t, typename acc_t, typename x_t>
void spmm_dense_blocks(CpuIsa isa, const SpmmProblem<index_t, acc_t, x_t, scalar_t>& p, const scalar_t* blocks,
                       int64_t nblocks) {
  const int64_t br = p.br, bc = p.bc;
  const std::vector<int64_t> bounds = part_bounds(p.crow, p.block_rows, nblocks * br * bc + p.m * p.n);
  at::parallel_for(0, static_cast<int64_t>(bounds.size()) - 1, 1, [&](int64_t part_begin, int64_t part_end) {
    RowTerms<acc_t, x_t> terms(br);
    std::vector<scalar_t*> c_rows(br);
    std::vector<int64_t> segments;
    for (int64_t rb = bounds[part_begin]; rb < bounds[part_end]; ++rb) {
      const int64_t rows = std::min(br, p.m - rb * br);
      const int64_t first = p.crow[rb], blocks_here = p.crow[rb + 1] - first;
      terms.start(rows, blocks_here * bc);
      segments.resize(blocks_here * br);
      const int64_t found = nonzero_segments_isa(isa, reinterpret_cast<const unsigned char*>(blocks + first * br * bc),
                                                 bc * static_cast<int64_t>(sizeof(scalar_t)), blocks_here * br,
                                                 segments.data());
      for (int64_t f = 0; f < found; ++f) {
        const int64_t j = first + segments[f] / br, r = segments[f] % br;
        if (r >= rows) continue;
        const int64_t k0 = static_cast<int64_t>(p.col[j]) * bc;
        const scalar_t* a_row = blocks + (j * br + r) * bc;
        const int64_t width = std::min(bc, p.k - k0);
        for (int64_t c0 = 0; c0 < width; c0 += 64) {
          for (uint64_t mask = nonzero_mask(a_row + c0, std::min<int64_t>(64, width - c0)); mask != 0;
               mask &= mask - 1) {
            const int64_t c = c0 + __builtin_ctzll(mask);
            terms.add(r, static_cast<acc_t>(a_row[c]), p.b + (k0 + c) * p.n);
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t stored_row = rb * br + r;
        c_rows[r] = p.out + (p.perm != nullptr ? p.perm[stored_row] : stored_row) * p.n;
      }
      sum_rows_isa(isa, rows, terms.a_ptr.data(), terms.b_rows_ptr.data(), terms.count.data(), c_rows.data(), p.n);
    }
  });
}

// Packed rows (bit maps, row-major): stored row s has words row_words[s] ..
// row_words[s+1]-1, one per block of its block row holding a non-zero in that
// row, in block order; word w names its block, word_blocks[w], and marks the
// row's non-zero columns in it, word_cols[w]. The row's non-zeros are
// values[row_values[s] .. row_values[s+1]), word by word, column by column.
// Row-major, so each row's terms are listed by one walk over its own words and
// summed at once, from L1: at 1-3 non-zeros per word, walking blocks and then
// their rows (and regrouping the terms by row) cost more than the products.
template <typename scalar_t>
struct PackedRows {
  const int64_t *row_words, *row_values, *word_blocks, *word_cols;
  const scalar_t* values;
  int64_t words;
};

// Checks of one word of stored row s (block row rb) before it is used: its
// block lies in the row's block row and it marks no column past the block
// width or past k. word_mask(k0) is the bits allowed at block column k0 / bc.
struct PackedWordCheck {
  int64_t bc, k;
  uint64_t full_width;

  PackedWordCheck(int64_t bc, int64_t k)
      : bc(bc), k(k), full_width(bc >= 64 ? ~uint64_t{0} : (uint64_t{1} << bc) - 1) {}
  uint64_t word_mask(int64_t k0) const {
    return k0 + 64 <= k ? full_width : full_width & ((uint64_t{1} << (k - k0)) - 1);
  }
};

// Stored rows [s_begin, s_end): lists each row's terms into a_terms / b_terms
// (room for the part's longest row), checking its offsets and each word before
// it is used (PackedWordCheck, and the row's words mark exactly its values),
// then sums the row. Returns the first row that fails a check (its message is
// built by explain_bad_packed_row, outside the per-ISA kernel), or s_end.
template <int kBytes, typename scalar_t, typename acc_t, typename x_t>
inline __attribute__((always_inline)) int64_t spmm_packed_rows(const SpmmProblem<int64_t, acc_t, x_t, scalar_t>& p,
                                                               const PackedRows<scalar_t>& a, int64_t s_begin,
                                                               int64_t s_end, acc_t* a_terms, const x_t** b_terms) {
  // Locals, not loads through p and a: the stores of B row pointers below could
  // alias p.b for all the compiler knows, which reloaded every field per term.
  const PackedWordCheck check(p.bc, p.k);
  const int64_t n = p.n, br = p.br, bc = p.bc, words = a.words;
  const int64_t *crow = p.crow, *col = p.col, *perm = p.perm;
  const int64_t *row_words = a.row_words, *row_values = a.row_values;
  const int64_t *word_blocks = a.word_blocks, *word_cols = a.word_cols;
  const scalar_t* values = a.values;
  const x_t* b = p.b;
  scalar_t* out = p.out;
  int64_t rb = s_begin / br, first_block = crow[rb], end_block = crow[rb + 1];
  for (int64_t s = s_begin; s < s_end; ++s) {
    if (s == (rb + 1) * br) first_block = end_block, end_block = crow[++rb + 1];
    const int64_t w_begin = row_words[s], w_end = row_words[s + 1];
    if (w_begin > w_end || w_end > words) return s;
    const scalar_t* value = values + row_values[s];
    const scalar_t* const row_end = values + row_values[s + 1];
    acc_t* a_out = a_terms;
    const x_t** b_out = b_terms;
    for (int64_t w = w_begin; w < w_end; ++w) {
      const int64_t j = word_blocks[w];
      if (j < first_block || j >= end_block) return s;
      const int64_t k0 = col[j] * bc;
      uint64_t cols = static_cast<uint64_t>(word_cols[w]);
      const int64_t marked = __builtin_popcountll(cols);
      if ((cols & ~check.word_mask(k0)) != 0 || marked > row_end - value) return s;
      const x_t* b_tile = b + k0 * n;
      for (int64_t t = 0; t < marked; ++t, cols &= cols - 1) {
        a_out[t] = static_cast<acc_t>(value[t]);
        b_out[t] = b_tile + __builtin_ctzll(cols) * n;
      }
      value += marked, a_out += marked, b_out += marked;
    }
    if (value != row_end) return s;
    sum_row<kBytes>(a_terms, b_terms, a_out - a_terms, out + (perm != nullptr ? perm[s] : s) * n, n);
  }
  return s_end;
}

// Raises the error of stored row s, which failed a check of spmm_packed_rows.
template <typename scalar_t>
[[noreturn]] void explain_bad_packed_row(const int64_t* crow, const int64_t* col, const PackedRows<scalar_t>& a,
                                         int64_t s, int64_t br, int64_t bc, int64_t k) {
  constexpr const char* op = kSpmmPackedOp;
  const PackedWordCheck check(bc, k);
  const int64_t rb = s / br, first_block = crow[rb], end_block = crow[rb + 1];
  const int64_t w_begin = a.row_words[s], w_end = a.row_words[s + 1];
  MLX_CHECK(w_begin <= w_end && w_end <= a.words, op, "'row_words' must be non-decreasing and end at ",
            "word_blocks.numel() = ", a.words, ", but row_words[", s, "] = ", w_begin, ", row_words[", s + 1,
            "] = ", w_end);
  const int64_t values = a.row_values[s + 1] - a.row_values[s];
  int64_t count = 0;
  for (int64_t w = w_begin; w < w_end; ++w) {
    const int64_t j = a.word_blocks[w];
    MLX_CHECK(j >= first_block && j < end_block, op, "'word_blocks'[", w, "] = ", j, " is not a block of stored row ",
              s, "'s block row ", rb, " (blocks ", first_block, " .. ", end_block - 1, ")");
    const uint64_t cols = static_cast<uint64_t>(a.word_cols[w]);
    MLX_CHECK((cols & ~check.word_mask(col[j] * bc)) == 0, op, "'word_cols'[", w,
              "] marks a column past block_cols = ", bc, " or past k = ", k);
    count += __builtin_popcountll(cols);
    MLX_CHECK(count <= values, op, "stored row ", s, "'s words mark more values than 'row_values' gives it (",
              values, ")");
  }
  MLX_CHECK(false, op, "stored row ", s, "'s words mark ", count, " values, but 'row_values' gives it ", values);
  __builtin_unreachable();
}

// Per ISA path, one instance per value type: the walk's popcount is one
// instruction on the AVX2/AVX-512 paths (a libgcc call on the scalar one).
MLX_CPU_ISA_DISPATCH_VECTORS(spmm_packed_rows_isa, spmm_packed_rows)

// B as the inner loop reads it (see b_type), contiguous.
at::Tensor b_for_accumulation(const at::Tensor& b) {
  const bool half = b.scalar_type() == at::kHalf || b.scalar_type() == at::kBFloat16;
  return (half ? b.to(at::kFloat) : b).contiguous();
}

// Whether the n values at p are all finite: x · 0 is 0 for a finite x and NaN
// for Inf and NaN, summed lane-wise in two vector accumulators, so the common
// all-finite case costs one read of B at memory speed.
template <int kBytes, typename T>
inline __attribute__((always_inline)) bool all_finite_values(const T* p, int64_t n) {
  using V = acc_vector<T, kBytes>;
  constexpr int64_t kLanes = kBytes / sizeof(T);
  V probe0 = {}, probe1 = {};
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    probe0 += load_as<V>(p + i) * T(0);
    probe1 += load_as<V>(p + i + kLanes) * T(0);
  }
  probe0 += probe1;
  T probe = T(0);
  for (int64_t l = 0; l < kLanes; ++l) probe += probe0[l];
  for (; i < n; ++i) probe += p[i] * T(0);
  return probe == T(0);
}
MLX_CPU_ISA_DISPATCH_VECTORS(all_finite_values_isa, all_finite_values)

// Whether every value of B (as the inner loop reads it, contiguous) is finite.
bool all_finite(CpuIsa isa, const at::Tensor& b_acc) {
  return AT_DISPATCH_FLOATING_TYPES(b_acc.scalar_type(), "bsr_spmm_finite", [&] {
    const scalar_t* p = b_acc.data_ptr<scalar_t>();
    return at::parallel_reduce(
        0, b_acc.numel(), int64_t{1} << 16, true,
        [&](int64_t begin, int64_t end, bool finite) {
          return finite && all_finite_values_isa(isa, p + begin, end - begin);
        },
        [](bool x, bool y) { return x && y; });
  });
}

// The rule of bsr.h for stored zeros, on top of products that skip every zero
// of A (see the top of the file): where a stored zero of A meets Inf or NaN in
// B, its output row gets NaN in those columns, as 0 · Inf and 0 · NaN are.
// `unmarked` [nblocks, br, bc] marks the entries skipped (zeros, and padding,
// which is dropped here: rows past m, columns past k). Runs only when B holds a
// non-finite value, so these ATen passes cost nothing in the common case.
void nan_where_stored_zeros_meet_nonfinite(const at::Tensor& unmarked, const at::Tensor& crow, const at::Tensor& col,
                                           const at::Tensor& b, const c10::optional<at::Tensor>& row_perm,
                                           int64_t m, at::Tensor& out) {
  const int64_t k = b.size(0), br = unmarked.size(1), bc = unmarked.size(2);
  const at::Tensor nonfinite = at::isfinite(b).logical_not();
  const at::Tensor entries = unmarked.nonzero();  // [zeros, 3]: block, row, column
  const at::Tensor block = entries.select(1, 0);
  const at::Tensor block_row = at::repeat_interleave(at::diff(crow.to(at::kLong))).index_select(0, block);
  const at::Tensor stored_row = block_row * br + entries.select(1, 1);
  const at::Tensor b_row = col.to(at::kLong).index_select(0, block) * bc + entries.select(1, 2);
  const at::Tensor in_a = stored_row.lt(m).logical_and(b_row.lt(k));
  const at::Tensor hits_nonfinite = nonfinite.any(1).index_select(0, b_row.clamp_max(k - 1));
  const at::Tensor keep = in_a.logical_and(hits_nonfinite).nonzero().squeeze(1);
  at::Tensor out_row = stored_row.index_select(0, keep);
  if (row_perm.has_value()) out_row = row_perm->index_select(0, out_row);
  const at::Tensor hits = at::zeros({m, b.size(1)}, b.options().dtype(at::kInt))
                              .index_add_(0, out_row, nonfinite.index_select(0, b_row.index_select(0, keep)).to(at::kInt));
  out.masked_fill_(hits.gt(0), std::numeric_limits<double>::quiet_NaN());
}

template <typename scalar_t, typename index_t>
SpmmProblem<index_t, b_type<scalar_t>, b_type<scalar_t>, scalar_t> make_problem(
    const at::Tensor& crow, const at::Tensor& col, const at::Tensor& b_acc, at::Tensor& out, int64_t m,
    int64_t br, int64_t bc, const int64_t* perm) {
  return {crow.data_ptr<index_t>(), col.data_ptr<index_t>(), b_acc.data_ptr<b_type<scalar_t>>(),
          out.data_ptr<scalar_t>(), perm, m, b_acc.size(0), b_acc.size(1), br, bc, crow.numel() - 1};
}

c10::optional<at::Tensor> contiguous_perm(const c10::optional<at::Tensor>& row_perm) {
  if (!row_perm.has_value()) return c10::nullopt;
  return row_perm->contiguous();
}

at::Tensor bsr_spmm_cpu(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& blocks_in,
                        const at::Tensor& b, int64_t m, const c10::optional<at::Tensor>& row_perm_in) {
  check_bsr_spmm_shapes(crow_in, col_in, blocks_in, b, m, row_perm_in);
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous(), blocks = blocks_in.contiguous();
  const c10::optional<at::Tensor> row_perm = contiguous_perm(row_perm_in);
  const int64_t k = b.size(0), n = b.size(1);
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "bsr_spmm_check", [&] {
    check_bsr_spmm_values<index_t>(crow, col, k, blocks.size(2), row_perm);
  });

  at::Tensor out = at::empty({m, n}, b.options());
  if (m == 0 || n == 0) return out;
  const CpuIsa isa = cpu_isa(kSpmmOp);
  const at::Tensor b_acc = b_for_accumulation(b);
  const int64_t* perm = row_perm.has_value() ? row_perm->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks.scalar_type(), "bsr_spmm_cpu", [&] {
    using value_t = scalar_t;
    AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "bsr_spmm_cpu_index", [&] {
      const auto problem = make_problem<value_t, index_t>(crow, col, b_acc, out, m, blocks.size(1),
                                                          blocks.size(2), perm);
      spmm_dense_blocks(isa, problem, blocks.data_ptr<value_t>(), blocks.size(0));
    });
  });
  if (k > 0 && !all_finite(isa, b_acc)) {
    nan_where_stored_zeros_meet_nonfinite(blocks.eq(0), crow, col, b, row_perm, m, out);
  }
  return out;
}

at::Tensor bsr_spmm_packed_cpu(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& row_words_in,
                               const at::Tensor& row_values_in, const at::Tensor& word_blocks_in,
                               const at::Tensor& word_cols_in, const at::Tensor& values_in, const at::Tensor& b,
                               int64_t m, int64_t block_rows, int64_t block_cols,
                               const c10::optional<at::Tensor>& row_perm_in) {
  constexpr const char* op = kSpmmPackedOp;
  check_bsr_spmm_packed_shapes(crow_in, col_in, row_words_in, row_values_in, word_blocks_in, word_cols_in, values_in,
                               b, m, block_rows, block_cols, row_perm_in);
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous();
  const at::Tensor row_words = row_words_in.contiguous(), row_values = row_values_in.contiguous();
  const at::Tensor word_blocks = word_blocks_in.contiguous(), word_cols = word_cols_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const c10::optional<at::Tensor> row_perm = contiguous_perm(row_perm_in);
  const int64_t k = b.size(0), n = b.size(1);
  check_bsr_spmm_values<int64_t>(crow, col, k, block_cols, row_perm, op);
  check_offsets<int64_t>(op, "row_values", row_values, values.numel(), "values.numel()");
  const int64_t* row_words_ptr = row_words.data_ptr<int64_t>();
  MLX_CHECK(row_words_ptr[0] == 0 && row_words_ptr[m] == word_blocks.numel(), op, "'row_words' must start at 0 ",
            "and end at word_blocks.numel() = ", word_blocks.numel(), ", got ", row_words_ptr[0], " and ",
            row_words_ptr[m]);

  check_alloc(op, "the output", {m, n}, b.element_size(), b.device());
  at::Tensor out = at::empty({m, n}, b.options());
  if (m == 0 || n == 0) return out;
  const CpuIsa isa = cpu_isa(op);
  const at::Tensor b_acc = b_for_accumulation(b);
  const int64_t* perm = row_perm.has_value() ? row_perm->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "bsr_spmm_packed_cpu", [&] {
    using acc_t = b_type<scalar_t>;
    using x_t = b_type<scalar_t>;
    const auto problem = make_problem<scalar_t, int64_t>(crow, col, b_acc, out, m, block_rows, block_cols, perm);
    const PackedRows<scalar_t> packed{row_words_ptr, row_values.data_ptr<int64_t>(), word_blocks.data_ptr<int64_t>(),
                                      word_cols.data_ptr<int64_t>(), values.data_ptr<scalar_t>(), word_blocks.numel()};
    const std::vector<int64_t> bounds =
        part_bounds(packed.row_values, m, values.numel() + word_blocks.numel() + m * n);
    const int64_t parts = static_cast<int64_t>(bounds.size()) - 1;
    std::vector<int64_t> bad_rows(parts, m);  // the first row failing a check, per part
    at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
      for (int64_t part = part_begin; part < part_end; ++part) {
        const int64_t s_begin = bounds[part], s_end = bounds[part + 1];
        int64_t longest = 0;
        for (int64_t s = s_begin; s < s_end; ++s) {
          longest = std::max(longest, packed.row_values[s + 1] - packed.row_values[s]);
        }
        std::vector<acc_t> a_terms(longest);
        std::vector<const x_t*> b_terms(longest);
        const int64_t bad =
            spmm_packed_rows_isa(isa, problem, packed, s_begin, s_end, a_terms.data(), b_terms.data());
        if (bad != s_end) {
          bad_rows[part] = bad;
          return;
        }
      }
    });
    const int64_t bad = *std::min_element(bad_rows.begin(), bad_rows.end());
    if (bad != m) explain_bad_packed_row(problem.crow, problem.col, packed, bad, block_rows, block_cols, k);
  });
  if (k > 0 && !all_finite(isa, b_acc)) {
    // The entries the words leave unmarked: each word marks its row's non-zeros
    // in one block (bit c: column c).
    const at::Tensor word_rows = at::repeat_interleave(at::diff(row_words)).remainder(block_rows);
    const at::Tensor bits = word_cols.unsqueeze(1)
                                .bitwise_right_shift(at::arange(block_cols, word_cols.options()))
                                .bitwise_and(1)
                                .to(at::kBool);
    at::Tensor marked = at::zeros({col.numel(), block_rows, block_cols}, word_cols.options().dtype(at::kBool));
    marked.index_put_({word_blocks, word_rows}, bits);
    nan_where_stored_zeros_meet_nonfinite(marked.logical_not(), crow, col, b, row_perm, m, out);
  }
  return out;
}

// --- bsr_sddmm: (a · bᵀ) sampled at the stored blocks ---------------------------------
//
// out[j][r][c] = Σ_t a[row(rb·br + r), t] · b[col[j]·bc + c, t] for block j of
// block row rb, row(s) = row_perm[s] (or s); 0 where the entry is padding (row
// at or past m, column at or past k). The gradient of bsr_spmm's blocks is
// bsr_sddmm(crow, col, grad_out, b, br, bc, row_perm). Every product is made, so
// Inf and NaN propagate as in a dense matmul. Threads take ranges of blocks;
// each entry is one dot product over n, in vectors of b_type.

// Σ_t x[t] · y[t] over n values, in acc_t (b_type: fp32 for 16-bit inputs,
// converted to fp32 first, and fp32; fp64 for fp64).
template <int kBytes, typename acc_t, typename x_t>
inline __attribute__((always_inline)) acc_t dot(const x_t* x, const x_t* y, int64_t n) {
  using V = acc_vector<acc_t, kBytes>;
  constexpr int64_t kLanes = sizeof(V) / sizeof(acc_t);
  V sum0 = {}, sum1 = {};
  int64_t t = 0;
  for (; t + 2 * kLanes <= n; t += 2 * kLanes) {
    sum0 += load_as<V>(x + t) * load_as<V>(y + t);
    sum1 += load_as<V>(x + t + kLanes) * load_as<V>(y + t + kLanes);
  }
  for (; t + kLanes <= n; t += kLanes) sum0 += load_as<V>(x + t) * load_as<V>(y + t);
  sum0 += sum1;
  acc_t total = 0;
  for (int64_t l = 0; l < kLanes; ++l) total += sum0[l];
  for (; t < n; ++t) total += static_cast<acc_t>(x[t]) * static_cast<acc_t>(y[t]);
  return total;
}

template <typename scalar_t, typename index_t>
struct SddmmProblem {
  const index_t *crow, *col;
  const int64_t* perm;  // [m] or nullptr
  const b_type<scalar_t>*a, *b;  // [m, n], [k, n], as the dot products read them
  scalar_t* out;        // [nblocks, br, bc]
  int64_t m, k, n, br, bc, block_rows;
};

// Blocks [j_begin, j_end) of the problem.
template <int kBytes, typename scalar_t, typename index_t>
inline __attribute__((always_inline)) void sddmm_blocks(const SddmmProblem<scalar_t, index_t>& p, int64_t j_begin,
                                                        int64_t j_end) {
  using acc_t = b_type<scalar_t>;
  // The block row of j_begin: the last rb with crow[rb] <= j_begin.
  int64_t rb = std::upper_bound(p.crow, p.crow + p.block_rows + 1, static_cast<index_t>(j_begin)) - p.crow - 1;
  for (int64_t j = j_begin; j < j_end; ++j) {
    while (p.crow[rb + 1] <= j) ++rb;
    const int64_t k0 = static_cast<int64_t>(p.col[j]) * p.bc;
    scalar_t* block = p.out + j * p.br * p.bc;
    for (int64_t r = 0; r < p.br; ++r) {
      const int64_t s = rb * p.br + r;
      scalar_t* out_row = block + r * p.bc;
      if (s >= p.m) {
        std::fill(out_row, out_row + p.bc, scalar_t(0));
        continue;
      }
      const auto* a_row = p.a + (p.perm != nullptr ? p.perm[s] : s) * p.n;
      for (int64_t c = 0; c < p.bc; ++c) {
        const int64_t kc = k0 + c;
        out_row[c] = kc < p.k ? static_cast<scalar_t>(dot<kBytes, acc_t>(a_row, p.b + kc * p.n, p.n)) : scalar_t(0);
      }
    }
  }
}

MLX_CPU_ISA_DISPATCH_VECTORS(sddmm_blocks_isa, sddmm_blocks)

at::Tensor bsr_sddmm_cpu(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& a,
                         const at::Tensor& b, int64_t br, int64_t bc, const c10::optional<at::Tensor>& row_perm_in) {
  check_bsr_sddmm_shapes(crow_in, col_in, a, b, br, bc, row_perm_in);
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous();
  const c10::optional<at::Tensor> row_perm = contiguous_perm(row_perm_in);
  const int64_t m = a.size(0), k = b.size(0), n = a.size(1), nblocks = col.numel();
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "bsr_sddmm_check", [&] {
    check_bsr_spmm_values<index_t>(crow, col, k, bc, row_perm, kSddmmOp);
  });
  at::Tensor out = at::empty({nblocks, br, bc}, a.options());
  if (out.numel() == 0) return out;
  const CpuIsa isa = cpu_isa(kSddmmOp);
  const at::Tensor a_acc = b_for_accumulation(a), b_acc = b_for_accumulation(b);
  const int64_t* perm = row_perm.has_value() ? row_perm->data_ptr<int64_t>() : nullptr;
  // Work per block: its entries' dot products (at least one unit each).
  const int64_t grain = std::max<int64_t>(1, kMinPartWork / std::max<int64_t>(1, br * bc * std::max<int64_t>(n, 1)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "bsr_sddmm_cpu", [&] {
    using value_t = scalar_t;
    AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "bsr_sddmm_cpu_index", [&] {
      const SddmmProblem<value_t, index_t> problem{crow.data_ptr<index_t>(), col.data_ptr<index_t>(), perm,
                                                  a_acc.data_ptr<b_type<value_t>>(), b_acc.data_ptr<b_type<value_t>>(),
                                                  out.data_ptr<value_t>(), m, k, n, br, bc, crow.numel() - 1};
      at::parallel_for(0, nblocks, grain,
                       [&](int64_t begin, int64_t end) { sddmm_blocks_isa(isa, problem, begin, end); });
    });
  });
  return out;
}

}  // namespace

MLX_LIBRARY_IMPL(CPU, m) {
  m.impl("bsr_spmm", &bsr_spmm_cpu);
  m.impl("bsr_spmm_unchecked", &bsr_spmm_cpu);
  m.impl("bsr_spmm_packed", &bsr_spmm_packed_cpu);
  m.impl("bsr_sddmm", &bsr_sddmm_cpu);
  m.impl("bsr_sddmm_unchecked", &bsr_sddmm_cpu);
}

}  // namespace mlx_kernels::bsr
