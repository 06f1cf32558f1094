// CPU kernels of bsr_spmm: C = A · B with A in BCSR (br × bc blocks), B dense.
//
// The work is the GPU kernel's: block row by block row, each block times the
// bc rows of B it covers (its B tile), accumulated in fp32 (fp64 for fp32 and
// fp64 inputs, see acc_type) and stored once per output row, through row_perm
// when the BCSR holds A's rows permuted. On a CPU a multiply by zero costs as
// much as any other, so the zero padding inside blocks (1 - fill of the stored
// entries) is skipped: each output row gathers the non-zero (a, B row) terms of
// its block row and sums them four at a time into one accumulator row, which
// keeps that row in registers/L1 and reads each needed row of B once.
//
// Two block payloads feed that loop:
// - bsr_spmm: dense blocks (the tensor-core layout). The block row's non-zeros
//   are found by scanning its blocks, which at the fills of real sparse
//   matrices (1-5%) reads 20-100x more bytes than the non-zeros themselves.
// - bsr_spmm_packed: each block as two-level bit maps (the tile format of
//   TileSpGEMM): a word marking its non-zero rows, a word per such row marking
//   its non-zero columns, and the non-zeros in block order. BlockSparseMatrix
//   keeps this form next to the dense blocks on the CPU: the same blocks and B
//   tiles, without reading the padding.
//
// Threads take contiguous ranges of block rows balanced by work (blocks + 1 per
// block row), so a few dense block rows do not leave the other threads idle.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "bsr/bsr.h"
#include "common/cpu_utils.h"
#include "common/registration.h"

namespace mlx_kernels::bsr {
namespace {

// Sums the rows of one block row and stores them: for r < rows,
// c_rows[r][0:n] = Σ_t a[r][t] · x[r][t][0:n] over count[r] terms. x is B in its
// own dtype when that is fp32/fp64 (converted to acc_t in registers: no fp64
// copy of B per call), in fp32 for fp16/bf16.
//
// Each row is summed a few 64-byte vectors of output columns at a time in
// registers, four terms per add into them, then converted and stored once: at
// the 1-3 non-zeros per row of power-grid and random matrices, zeroing,
// reloading and copying an accumulator row in memory cost more than the
// products. Rows with more than kTermsPerPartial terms are summed that many
// terms at a time into partial sums added to the total, as a blocked GEMM does
// over k: the rounding error grows with the number of partials plus the
// partial's length, not with the row's length. One call per block row (not per
// row), for the call overhead at a few non-zeros per row.
constexpr int64_t kTermsPerPartial = 64;

// 64 bytes of acc_t: one AVX-512 register, two AVX2 ones, four SSE ones in the
// baseline clone (GCC vector extensions lower to whatever the clone has).
template <typename acc_t>
using acc_vector __attribute__((vector_size(64))) = acc_t;

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

template <typename acc_t, typename x_t, typename out_t>
inline __attribute__((always_inline)) void sum_rows(int64_t rows, const acc_t* const* a, const x_t* const* const* x,
                                                    const int64_t* count, out_t* const* c_rows, int64_t n) {
  using V = acc_vector<acc_t>;
  constexpr int64_t kLanes = sizeof(V) / sizeof(acc_t);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t c0 = 0;
    for (; c0 + 4 * kLanes <= n; c0 += 4 * kLanes) sum_row_columns<V, 4>(a[r], x[r], count[r], c_rows[r], c0);
    for (; c0 + kLanes <= n; c0 += kLanes) sum_row_columns<V, 1>(a[r], x[r], count[r], c_rows[r], c0);
    for (; c0 < n; ++c0) sum_row_columns<acc_t, 1>(a[r], x[r], count[r], c_rows[r], c0);
  }
}

// One multiversioned (AVX-512 / AVX2 / baseline) instance per (acc, B, out) type.
#define MLX_BSR_SUM_ROWS(acc_t, x_t, out_t)                                                              \
  MLX_CPU_MULTIVERSION void sum_rows_mv(int64_t rows, const acc_t* const* a, const x_t* const* const* x, \
                                        const int64_t* count, out_t* const* c_rows, int64_t n) {        \
    sum_rows(rows, a, x, count, c_rows, n);                                                               \
  }
MLX_BSR_SUM_ROWS(float, float, c10::Half)
MLX_BSR_SUM_ROWS(float, float, c10::BFloat16)
MLX_BSR_SUM_ROWS(double, float, float)
MLX_BSR_SUM_ROWS(double, double, double)
#undef MLX_BSR_SUM_ROWS

// B as the inner loop reads it: its own dtype for fp32/fp64, fp32 for fp16/bf16.
template <typename scalar_t>
using b_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

constexpr int64_t kMinPartWork = 1 << 15;

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

// Runs C = A·B over block rows, `gather(rb, rows, terms)` listing the non-zero
// terms of block row rb's first `rows` rows; sums each row and stores it. The
// gather is copied per thread, with any scratch it captures.
template <typename index_t, typename acc_t, typename x_t, typename out_t, typename Gather>
void spmm_block_rows(const SpmmProblem<index_t, acc_t, x_t, out_t>& p, int64_t stored_entries, const Gather& gather) {
  // Enough parts to balance the threads, but none smaller than kMinPartWork
  // (stored entries + output values): below that, waking threads costs more
  // than the work.
  const int64_t work = stored_entries + p.m * p.n;
  const int64_t max_parts = std::min<int64_t>(p.block_rows, 8 * at::get_num_threads());
  const int64_t parts = std::clamp<int64_t>(work / kMinPartWork, 1, max_parts);
  const std::vector<int64_t> bounds = balanced_bounds(p.crow, p.block_rows, parts);

  at::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
    RowTerms<acc_t, x_t> terms(p.br);
    std::vector<out_t*> c_rows(p.br);
    auto thread_gather = gather;  // each thread's own copy of the gather's scratch
    for (int64_t rb = bounds[part_begin]; rb < bounds[part_end]; ++rb) {
      const int64_t rows = std::min(p.br, p.m - rb * p.br);
      terms.start(rows, (p.crow[rb + 1] - p.crow[rb]) * p.bc);
      thread_gather(rb, rows, terms);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t stored_row = rb * p.br + r;
        c_rows[r] = p.out + (p.perm != nullptr ? p.perm[stored_row] : stored_row) * p.n;
      }
      sum_rows_mv(rows, terms.a_ptr.data(), terms.b_rows_ptr.data(), terms.count.data(), c_rows.data(), p.n);
    }
  });
}

// Dense blocks: find the block row's non-zero block rows (segments of bc
// values; its blocks are contiguous) in one pass over memory, then visit only
// their non-zeros through a bit mask. Columns past k (padding of the last block
// column) are never touched.
template <typename scalar_t, typename index_t, typename acc_t, typename x_t>
void spmm_dense_blocks(const SpmmProblem<index_t, acc_t, x_t, scalar_t>& p, const scalar_t* blocks,
                       int64_t nblocks) {
  const int64_t br = p.br, bc = p.bc;
  spmm_block_rows(p, nblocks * br * bc, [&, segments = std::vector<int64_t>()](
                                            int64_t rb, int64_t rows, RowTerms<acc_t, x_t>& terms) mutable {
    const int64_t first = p.crow[rb], blocks_here = p.crow[rb + 1] - first;
    segments.resize(blocks_here * br);
    const int64_t found = nonzero_segments(reinterpret_cast<const unsigned char*>(blocks + first * br * bc),
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
  });
}

// Packed blocks (two-level bitmaps): bit r of block_row_bits[j] marks the
// non-zero rows of block j; each such row, in block order, has a word of
// row_col_bits marking its non-zero columns, and its non-zeros follow in
// `values`. starts[rb] = (first word, first value) of block row rb.
struct PackedStarts {
  std::vector<int64_t> words, values;
};

template <typename scalar_t, typename index_t, typename acc_t, typename x_t>
void spmm_packed_blocks(const SpmmProblem<index_t, acc_t, x_t, scalar_t>& p, const int64_t* block_row_bits,
                        const int64_t* row_col_bits, const scalar_t* values, const PackedStarts& starts) {
  const int64_t stored = starts.values[p.block_rows] + starts.words[p.block_rows] + p.crow[p.block_rows];
  spmm_block_rows(p, stored, [&](int64_t rb, int64_t, RowTerms<acc_t, x_t>& terms) {
    // Rows past m hold no non-zeros (checked), so every set row bit is a row < rows.
    int64_t w = starts.words[rb], v = starts.values[rb];
    for (int64_t j = p.crow[rb]; j < p.crow[rb + 1]; ++j) {
      const x_t* b_tile = p.b + static_cast<int64_t>(p.col[j]) * p.bc * p.n;
      for (uint64_t rows = static_cast<uint64_t>(block_row_bits[j]); rows != 0; rows &= rows - 1) {
        const int64_t r = __builtin_ctzll(rows);
        for (uint64_t cols = static_cast<uint64_t>(row_col_bits[w++]); cols != 0; cols &= cols - 1) {
          terms.add(r, static_cast<acc_t>(values[v++]), b_tile + __builtin_ctzll(cols) * p.n);
        }
      }
    }
  });
}

// B as the inner loop reads it (see b_type), contiguous.
at::Tensor b_for_accumulation(const at::Tensor& b) {
  const bool half = b.scalar_type() == at::kHalf || b.scalar_type() == at::kBFloat16;
  return (half ? b.to(at::kFloat) : b).contiguous();
}

template <typename scalar_t, typename index_t>
SpmmProblem<index_t, acc_type<scalar_t>, b_type<scalar_t>, scalar_t> make_problem(
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
  const at::Tensor b_acc = b_for_accumulation(b);
  const int64_t* perm = row_perm.has_value() ? row_perm->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks.scalar_type(), "bsr_spmm_cpu", [&] {
    using value_t = scalar_t;
    AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "bsr_spmm_cpu_index", [&] {
      const auto problem = make_problem<value_t, index_t>(crow, col, b_acc, out, m, blocks.size(1),
                                                          blocks.size(2), perm);
      spmm_dense_blocks(problem, blocks.data_ptr<value_t>(), blocks.size(0));
    });
  });
  return out;
}

// Checks block row rb of the packed form and counts its values into *values:
// no row bit past the block height or past m, no column bit past the block
// width or past k. Returns false on a bad bit. These helpers are
// multiversioned for the popcnt instruction (the baseline x86-64 build calls a
// libgcc routine).
MLX_CPU_MULTIVERSION
int64_t popcount_sum(const int64_t* words, int64_t count) {
  int64_t bits = 0;
  for (int64_t i = 0; i < count; ++i) bits += __builtin_popcountll(static_cast<uint64_t>(words[i]));
  return bits;
}

// The words' total is checked before (so every word read here exists).
MLX_CPU_MULTIVERSION
bool count_packed_block_row(const int64_t* crow, const int64_t* col, const int64_t* block_row_bits,
                            const int64_t* row_col_bits, int64_t rb, int64_t word_start,
                            int64_t allowed_rows, int64_t bc, int64_t k, int64_t* values) {
  const uint64_t row_mask = allowed_rows >= 64 ? ~uint64_t{0} : (uint64_t{1} << allowed_rows) - 1;
  int64_t w = word_start, count = 0;
  for (int64_t j = crow[rb]; j < crow[rb + 1]; ++j) {
    const uint64_t rows = static_cast<uint64_t>(block_row_bits[j]);
    const int64_t width = std::min(bc, k - col[j] * bc);
    const uint64_t col_mask = width >= 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1;
    const int64_t nrows = __builtin_popcountll(rows);
    if ((rows & ~row_mask) != 0) return false;
    for (int64_t t = 0; t < nrows; ++t, ++w) {
      const uint64_t cols = static_cast<uint64_t>(row_col_bits[w]);
      if ((cols & ~col_mask) != 0) return false;
      count += __builtin_popcountll(cols);
    }
  }
  *values = count;
  return true;
}

// Where each block row's column words and values begin, checking every bit
// (see count_packed_block_row) and the word and value totals.
PackedStarts packed_starts(const int64_t* crow, const int64_t* col, const int64_t* block_row_bits,
                           const int64_t* row_col_bits, int64_t words_total, int64_t values_total,
                           int64_t block_rows, int64_t br, int64_t bc, int64_t m, int64_t k) {
  constexpr const char* op = kSpmmPackedOp;
  // Word starts need the row counts of every earlier block row: one cheap
  // popcount pass over the row bits, then the checked pass in parallel.
  PackedStarts starts{std::vector<int64_t>(block_rows + 1, 0), std::vector<int64_t>(block_rows + 1, 0)};
  for (int64_t rb = 0; rb < block_rows; ++rb) {
    starts.words[rb + 1] = starts.words[rb] + popcount_sum(block_row_bits + crow[rb], crow[rb + 1] - crow[rb]);
  }
  MLX_CHECK(starts.words[block_rows] == words_total, op, "'row_col_bits' must hold one word per set bit of ",
            "'block_row_bits' (", starts.words[block_rows], "), got ", words_total);
  std::atomic<int64_t> bad_block_row{block_rows};
  at::parallel_for(0, block_rows, std::max<int64_t>(1, kMinPartWork / (16 * br)), [&](int64_t begin, int64_t end) {
    for (int64_t rb = begin; rb < end; ++rb) {
      if (!count_packed_block_row(crow, col, block_row_bits, row_col_bits, rb, starts.words[rb],
                                  std::min(br, m - rb * br), bc, k, &starts.values[rb + 1])) {
        bad_block_row = rb;
        return;
      }
    }
  });
  MLX_CHECK(bad_block_row.load() == block_rows, op, "block row ", bad_block_row.load(),
            " marks entries outside its blocks: a 'block_row_bits' bit past the block height or past m, or a ",
            "'row_col_bits' bit past block_cols = ", bc, " or past k = ", k);
  for (int64_t rb = 0; rb < block_rows; ++rb) starts.values[rb + 1] += starts.values[rb];
  MLX_CHECK(starts.values[block_rows] == values_total, op, "'values' must hold one entry per set bit of ",
            "'row_col_bits' (", starts.values[block_rows], "), got ", values_total);
  return starts;
}

at::Tensor bsr_spmm_packed_cpu(const at::Tensor& crow_in, const at::Tensor& col_in,
                               const at::Tensor& block_row_bits_in, const at::Tensor& row_col_bits_in,
                               const at::Tensor& values_in, const at::Tensor& b, int64_t m, int64_t block_rows,
                               int64_t block_cols, const c10::optional<at::Tensor>& row_perm_in) {
  check_bsr_spmm_packed_shapes(crow_in, col_in, block_row_bits_in, row_col_bits_in, values_in, b, m, block_rows,
                               block_cols, row_perm_in);
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous();
  const at::Tensor block_row_bits = block_row_bits_in.contiguous(), row_col_bits = row_col_bits_in.contiguous();
  const at::Tensor values = values_in.contiguous();
  const c10::optional<at::Tensor> row_perm = contiguous_perm(row_perm_in);
  const int64_t k = b.size(0), n = b.size(1);
  check_bsr_spmm_values<int64_t>(crow, col, k, block_cols, row_perm, kSpmmPackedOp);
  const PackedStarts starts = packed_starts(crow.data_ptr<int64_t>(), col.data_ptr<int64_t>(),
                                            block_row_bits.data_ptr<int64_t>(), row_col_bits.data_ptr<int64_t>(),
                                            row_col_bits.numel(), values.numel(), crow.numel() - 1, block_rows,
                                            block_cols, m, k);

  at::Tensor out = at::empty({m, n}, b.options());
  if (m == 0 || n == 0) return out;
  const at::Tensor b_acc = b_for_accumulation(b);
  const int64_t* perm = row_perm.has_value() ? row_perm->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "bsr_spmm_packed_cpu", [&] {
    const auto problem = make_problem<scalar_t, int64_t>(crow, col, b_acc, out, m, block_rows, block_cols, perm);
    spmm_packed_blocks(problem, block_row_bits.data_ptr<int64_t>(), row_col_bits.data_ptr<int64_t>(),
                       values.data_ptr<scalar_t>(), starts);
  });
  return out;
}

}  // namespace

MLX_LIBRARY_IMPL(CPU, m) {
  m.impl("bsr_spmm", &bsr_spmm_cpu);
  m.impl("bsr_spmm_packed", &bsr_spmm_packed_cpu);
}

}  // namespace mlx_kernels::bsr
