// CPU kernels of the SpGEMM family: the CPU twin of the CUDA algorithm.
//
// 1. One parallel sweep over A's rows validates A (row pointer, column range)
//    and computes each row's upper bound on partial products,
//    ub_i = Σ_p nnz(B[col(p), :]); another validates B.
// 2. Rows are partitioned by work: the prefix sum of (ub_i + nnz(A[i, :]) + 1)
//    is cut into equal-work chunks, several per thread, which the threads of
//    one at::parallel_for region claim from an atomic counter: a few heavy rows
//    do not serialize the product, and a thread the OS deschedules (a loaded
//    machine) delays the others by one chunk at most. Only tiny products (tens of
//    microseconds) run on the calling thread: a warm parallel region's fork and
//    join cost a few microseconds, and the power-grid matrices of the benchmark
//    set (~50k products, ~0.4 ms) run 1.7x faster on two threads than on one.
// 3. Each thread owns a row accumulator and computes its rows in one pass: the
//    partial products of a row go into an open-addressing hash table sized from
//    the row's bound (a power of two >= 2·min(ub_i, n), so the load stays <= ½),
//    or into a dense accumulator indexed by column when that table would cover a
//    large fraction of the n columns anyway. The row's entries are then sorted
//    by column and appended to the thread's buffer.
//    One pass, not symbolic + numeric: on a CPU the hashing is the cost and the
//    per-thread buffers are cache-friendly, so hashing every product twice to
//    learn the row sizes first would cost more than the final copy.
// 4. Row counts are prefix-summed into C's row pointer (int64), nnz(C) is checked
//    against the index dtype before C is allocated, and the thread buffers are
//    copied into place in parallel.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "common/cpu_utils.h"
#include "common/registration.h"
#include "spgemm/spgemm.h"

namespace mlx_kernels::spgemm {
namespace {

// Work (about one unit per partial product) of one chunk of rows, and the
// least total work worth a parallel region; chunks per thread.
constexpr int64_t kMinWorkPerChunk = 1 << 12;
constexpr int64_t kMinParallelWork = 1 << 13;
constexpr int64_t kChunksPerThread = 8;
// Validation sweeps and output copies go parallel above this many elements.
constexpr int64_t kParallelGrain = 1 << 18;
// A row uses the dense accumulator when n is small enough that its two arrays
// (column -> value, column -> occupancy bit) stay in a core's L2, or when the row's
// hash table would need at least n / kDenseFraction slots anyway. Measured on
// the SuiteSparse set (n <= 13k): the dense accumulator is ~1.25x faster than
// hashing there, since it never probes.
constexpr int64_t kDenseMaxColumns = int64_t{1} << 16;
constexpr int64_t kDenseFraction = 8;
// The dense accumulator emits a row by scanning its bitmap when the row's
// column span covers at most this many 64-bit words per entry.
constexpr int64_t kBitmapScanWordsPerEntry = 8;
// The dense accumulator branches on "column already seen" when the previous
// row added a new column for fewer than 1 in this many products.
constexpr int64_t kPredictableNewFraction = 4;
// Rows with at most this many entries are sorted by insertion: their first-seen
// column lists are a few short sorted runs, so it beats a merge or a bitmap scan.
constexpr int64_t kInsertionSortMaxEntries = 32;
// Most elements a chunk's output buffers reserve before they are written.
constexpr int64_t kMaxReserve = int64_t{1} << 26;

template <typename index_t>
struct RowBounds {
  std::vector<int64_t> upper;  // ub_i: partial products of row i
  int64_t upper_total = 0;     // Σ_i min(ub_i, n) >= nnz(C)
  int64_t lower_total = 0;     // Σ_i max_p nnz(B[col(p), :]) <= nnz(C)
  int invalid = 0;             // InvalidFlag bits
};

// Row i of a CSR matrix is readable when its pointer pair is in [0, nnz] and ordered.
template <typename index_t>
bool row_in_bounds(const index_t* crow, int64_t i, int64_t nnz) {
  return crow[i] >= 0 && crow[i] <= crow[i + 1] && crow[i + 1] <= nnz;
}

// Validates B (row pointer, column range) and finds whether its rows are sorted.
struct BValidation {
  int invalid = 0;  // InvalidFlag bits
  bool rows_sorted = true;
};

template <typename index_t>
BValidation validate_b(const index_t* crow, const index_t* col, const SpgemmShape& s) {
  if (crow[0] != 0 || crow[s.k] != s.b_nnz) return {kBadBCrow, false};
  std::atomic<int> invalid{0};
  std::atomic<bool> rows_sorted{true};
  at::parallel_for(0, s.k, kParallelGrain, [&](int64_t begin, int64_t end) {
    int found = 0;
    bool sorted = true;
    for (int64_t r = begin; r < end; ++r) {
      if (!row_in_bounds(crow, r, s.b_nnz)) {
        found = kBadBCrow;
        break;
      }
      for (int64_t p = crow[r]; p < crow[r + 1]; ++p) {
        if (col[p] < 0 || col[p] >= s.n) found = kBadBCol;
        if (p > crow[r] && col[p] <= col[p - 1]) sorted = false;
      }
    }
    invalid.fetch_or(found);
    if (!sorted) rows_sorted = false;
  });
  return {invalid.load(), rows_sorted.load()};
}

// Validates A against B's shape and computes the per-row bounds. Only called
// once B is known valid (its row lengths are read here).
template <typename index_t>
RowBounds<index_t> row_bounds(const index_t* a_crow, const index_t* a_col, const index_t* b_crow,
                              const SpgemmShape& s) {
  RowBounds<index_t> bounds;
  if (a_crow[0] != 0 || a_crow[s.m] != s.a_nnz) {
    bounds.invalid = kBadACrow;
    return bounds;
  }
  bounds.upper.resize(s.m);
  std::atomic<int> invalid{0};
  std::atomic<int64_t> upper_total{0}, lower_total{0};
  at::parallel_for(0, s.m, kParallelGrain, [&](int64_t begin, int64_t end) {
    int found = 0;
    int64_t upper_sum = 0, lower_sum = 0;
    for (int64_t i = begin; i < end; ++i) {
      if (!row_in_bounds(a_crow, i, s.a_nnz)) {
        found |= kBadACrow;
        break;
      }
      int64_t ub = 0, longest = 0;
      for (int64_t p = a_crow[i]; p < a_crow[i + 1]; ++p) {
        const index_t kk = a_col[p];
        if (kk < 0 || kk >= s.k) {
          found |= kBadACol;
          continue;
        }
        const int64_t len = b_crow[kk + 1] - b_crow[kk];
        ub += len;
        longest = std::max(longest, len);
      }
      bounds.upper[i] = ub;
      upper_sum += std::min(ub, s.n);
      lower_sum += longest;
    }
    invalid.fetch_or(found);
    upper_total += upper_sum;
    lower_total += lower_sum;
  });
  bounds.invalid = invalid.load();
  bounds.upper_total = upper_total.load();
  bounds.lower_total = lower_total.load();
  return bounds;
}

// A growable array that, unlike std::vector, does not value-initialize what it
// reserves: rows are written through raw pointers, then committed.
template <typename T>
class GrowBuffer {
 public:
  T* reserve_back(int64_t extra) {
    if (size_ + extra > capacity_) {
      const int64_t capacity = std::max(size_ + extra, 2 * capacity_);
      std::unique_ptr<T[]> data(new T[capacity]);
      std::copy(data_.get(), data_.get() + size_, data.get());
      data_ = std::move(data);
      capacity_ = capacity;
    }
    return data_.get() + size_;
  }
  void commit(int64_t count) { size_ += count; }
  const T* data() const { return data_.get(); }
  int64_t size() const { return size_; }

 private:
  std::unique_ptr<T[]> data_;
  int64_t size_ = 0, capacity_ = 0;
};

// One thread's scratchpad: accumulates one row of C at a time, either in a
// power-of-two open-addressing hash table (linear probing) or in a dense
// column-indexed array, and appends the row's sorted entries to the thread's
// output buffers. A row's new columns are recorded as they first appear, so
// the row's cost is O(its products + sorting it), never O(n).
template <typename index_t, typename value_t>
class RowAccumulator {
 public:
  RowAccumulator(const Operands<index_t, value_t>& op, int64_t n, bool b_rows_sorted)
      : op_(op), n_(n), b_rows_sorted_(b_rows_sorted) {}

  // Computes row i of C (ub = its product bound) into the buffers; returns its nnz.
  int64_t row(int64_t i, int64_t ub, GrowBuffer<index_t>& cols, GrowBuffer<value_t>& vals) {
    if (ub == 0) return 0;
    const int64_t max_nnz = std::min(ub, n_);
    const int bits = ceil_log2(2 * max_nnz);
    // One spare column slot: the dense accumulator writes every product's
    // column at row_cols[count] before it knows whether the column is new.
    index_t* row_cols = cols.reserve_back(max_nnz + 1);
    value_t* row_vals = vals.reserve_back(max_nnz);
    int64_t count;
    if (n_ <= kDenseMaxColumns || (int64_t{1} << bits) >= n_ / kDenseFraction) {
      count = accumulate_dense(i, ub, row_cols);
      emit_dense(row_cols, row_vals, count);
    } else {
      count = accumulate_hashed(i, bits, row_cols);
      sort_columns(row_cols, count);
      for (int64_t j = 0; j < count; ++j) row_vals[j] = slot_vals_[find_slot(row_cols[j], bits)];
      std::fill(keys_.begin(), keys_.begin() + (int64_t{1} << bits), index_t{-1});
    }
    cols.commit(count);
    vals.commit(count);
    return count;
  }

 private:
  // Calls product(column, a·b) for every partial product of row i, and records
  // in run_starts_ where each row of B starts adding new columns.
  template <typename Fn>
  void for_each_product(int64_t i, const int64_t& count, Fn&& product) {
    run_starts_.clear();
    for (int64_t p = op_.a_crow[i]; p < op_.a_crow[i + 1]; ++p) {
      const index_t kk = op_.a_col[p];
      const value_t a = op_.a_val[p];
      if (run_starts_.empty() || run_starts_.back() != count) run_starts_.push_back(count);
      // Loop bounds in locals: the row's column writes (index_t) could alias B's
      // row pointer, which the compiler would otherwise reload every product.
      const int64_t q_begin = op_.b_crow[kk], q_end = op_.b_crow[kk + 1];
      for (int64_t q = q_begin; q < q_end; ++q) product(op_.b_col[q], a * op_.b_val[q]);
    }
  }

  // Sorts the row's columns, listed in first-seen order. When B's rows are
  // sorted, that list is a concatenation of sorted runs, one per row of B
  // (each adds its new columns in increasing order), so a bottom-up merge of
  // the runs sorts it in count·log2(runs) steps instead of count·log2(count).
  void sort_columns(index_t* cols, int64_t count) {
    if (count <= kInsertionSortMaxEntries) {
      insertion_sort(cols, count);
      return;
    }
    if (!b_rows_sorted_) {
      std::sort(cols, cols + count);
      return;
    }
    if (merge_buffer_.size() < static_cast<size_t>(count)) merge_buffer_.resize(count);
    int64_t runs = static_cast<int64_t>(run_starts_.size());
    run_starts_.push_back(count);
    index_t* src = cols;
    index_t* dst = merge_buffer_.data();
    while (runs > 1) {
      int64_t merged = 0;
      for (int64_t r = 0; r < runs; r += 2) {
        const int64_t lo = run_starts_[r], mid = run_starts_[std::min(r + 1, runs)],
                      hi = run_starts_[std::min(r + 2, runs)];
        std::merge(src + lo, src + mid, src + mid, src + hi, dst + lo);
        run_starts_[merged++] = lo;
      }
      run_starts_[merged] = count;
      runs = merged;
      std::swap(src, dst);
    }
    if (src != cols) std::copy(src, src + count, cols);
  }

  static void insertion_sort(index_t* cols, int64_t count) {
    for (int64_t j = 1; j < count; ++j) {
      const index_t c = cols[j];
      int64_t k = j;
      for (; k > 0 && cols[k - 1] > c; --k) cols[k] = cols[k - 1];
      cols[k] = c;
    }
  }

  // The slot holding column c, or the empty slot where it belongs.
  uint32_t find_slot(index_t c, int bits) const {
    const uint32_t mask = static_cast<uint32_t>((uint64_t{1} << bits) - 1);  // bits may be 32
    uint32_t slot = hash_slot(static_cast<uint64_t>(c), bits);
    while (keys_[slot] != c && keys_[slot] >= 0) slot = (slot + 1) & mask;
    return slot;
  }

  // Accumulates row i in the hash table, listing its columns in first-seen order.
  int64_t accumulate_hashed(int64_t i, int bits, index_t* row_cols) {
    const size_t size = size_t{1} << bits;
    if (keys_.size() < size) {
      keys_.assign(size, index_t{-1});
      slot_vals_.resize(size);
    }
    int64_t count = 0;
    for_each_product(i, count, [&](index_t c, value_t v) {
      const uint32_t slot = find_slot(c, bits);
      if (keys_[slot] == c) {
        slot_vals_[slot] += v;
      } else {
        keys_[slot] = c;
        slot_vals_[slot] = v;
        row_cols[count++] = c;
      }
    });
    return count;
  }

  // Accumulates row i in the dense array (its values kept zero between rows),
  // listing its columns in first-seen order.
  //
  // Whether a product's column is new is a coin flip on irregular matrices
  // (power grids, meshes: a few products per output entry), and a mispredicted
  // branch per product costs more than the product; there the loop is
  // branch-free: every product writes its column one past the row's list, which
  // only grows when the column's bit was clear. Where most products hit a
  // column already seen (dense-ish rows) the branch predicts well and avoids
  // the branch-free loop's dependency chain through the count. Neighbouring
  // rows look alike, so the previous row's new-column fraction picks the loop.
  int64_t accumulate_dense(int64_t i, int64_t ub, index_t* row_cols) {
    if (dense_vals_.empty()) {
      dense_vals_.assign(n_, value_t{0});
      dense_bits_.assign(ceil_div(n_, 64), 0);
    }
    int64_t count = 0;
    if (predictable_rows_) {
      for_each_product(i, count, [&](index_t c, value_t v) {
        uint64_t& word = dense_bits_[c >> 6];
        const uint64_t bit = uint64_t{1} << (c & 63);
        if (!(word & bit)) {
          word |= bit;
          row_cols[count++] = c;
        }
        dense_vals_[c] += v;
      });
    } else {
      for_each_product(i, count, [&](index_t c, value_t v) {
        uint64_t& word = dense_bits_[c >> 6];
        const uint64_t bit = uint64_t{1} << (c & 63);
        row_cols[count] = c;
        count += (word & bit) == 0;
        word |= bit;
        dense_vals_[c] += v;
      });
    }
    predictable_rows_ = count * kPredictableNewFraction < ub;
    return count;
  }

  // Writes the dense row's entries in column order and clears its bits. When
  // the row's column span is short next to its entry count (banded and mesh
  // matrices), scanning the occupancy bitmap over the span yields the columns
  // already sorted, for a fraction of a sort's cost; otherwise the listed
  // columns are sorted.
  void emit_dense(index_t* row_cols, value_t* row_vals, int64_t count) {
    if (count <= kInsertionSortMaxEntries) {
      emit_sorted_dense(row_cols, row_vals, count);
      return;
    }
    const auto [lo, hi] = std::minmax_element(row_cols, row_cols + count);
    const int64_t first_word = *lo >> 6, last_word = *hi >> 6;
    if (last_word - first_word + 1 <= kBitmapScanWordsPerEntry * count) {
      int64_t j = 0;
      for (int64_t w = first_word; w <= last_word; ++w) {
        for (uint64_t bits = dense_bits_[w]; bits != 0; bits &= bits - 1) {
          const index_t c = static_cast<index_t>(w * 64 + __builtin_ctzll(bits));
          row_cols[j] = c;
          row_vals[j++] = dense_vals_[c];
          dense_vals_[c] = 0;
        }
        dense_bits_[w] = 0;
      }
      return;
    }
    emit_sorted_dense(row_cols, row_vals, count);
  }

  // Sorts the row's listed columns, then gathers their values and clears their bits.
  void emit_sorted_dense(index_t* row_cols, value_t* row_vals, int64_t count) {
    sort_columns(row_cols, count);
    for (int64_t j = 0; j < count; ++j) {
      row_vals[j] = dense_vals_[row_cols[j]];
      dense_vals_[row_cols[j]] = 0;
      dense_bits_[row_cols[j] >> 6] = 0;
    }
  }

  const Operands<index_t, value_t> op_;
  const int64_t n_;
  const bool b_rows_sorted_;

  std::vector<int64_t> run_starts_;   // where each sorted run of the row's columns starts
  std::vector<index_t> merge_buffer_;
  std::vector<index_t> keys_;  // hash table, -1 = empty
  std::vector<value_t> slot_vals_;
  std::vector<value_t> dense_vals_;   // dense accumulator, allocated on first use
  std::vector<uint64_t> dense_bits_;  // which columns the current row holds
  bool predictable_rows_ = false;     // the last row added few new columns per product
};

// Cuts rows [0, m) into `chunks` contiguous ranges of about equal work;
// work_prefix[i] is the work of rows [0, i).
std::vector<int64_t> balanced_row_splits(const std::vector<int64_t>& work_prefix, int64_t chunks) {
  const int64_t m = static_cast<int64_t>(work_prefix.size()) - 1;
  std::vector<int64_t> splits(chunks + 1, m);
  splits[0] = 0;
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t target = work_prefix[m] / chunks * c;
    splits[c] = std::lower_bound(work_prefix.begin(), work_prefix.end(), target) - work_prefix.begin();
  }
  return splits;
}

template <typename index_t, typename value_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> spgemm_typed(const at::Tensor& a_crow,
                                                             const at::Tensor& a_col,
                                                             const at::Tensor& a_val,
                                                             const at::Tensor& b_crow,
                                                             const at::Tensor& b_col,
                                                             const at::Tensor& b_val,
                                                             const SpgemmShape& s) {
  const index_t* a_crow_p = a_crow.data_ptr<index_t>();
  const index_t* a_col_p = a_col.data_ptr<index_t>();
  const index_t* b_crow_p = b_crow.data_ptr<index_t>();
  const index_t* b_col_p = b_col.data_ptr<index_t>();

  const BValidation b_check = validate_b(b_crow_p, b_col_p, s);
  raise_if_invalid(b_check.invalid, s);
  const RowBounds<index_t> bounds = row_bounds(a_crow_p, a_col_p, b_crow_p, s);
  raise_if_invalid(bounds.invalid, s);
  check_output_nnz("at least", bounds.lower_total, a_crow.scalar_type());

  std::vector<int64_t> work_prefix(s.m + 1, 0);
  for (int64_t i = 0; i < s.m; ++i) {
    work_prefix[i + 1] = work_prefix[i] + bounds.upper[i] + (a_crow_p[i + 1] - a_crow_p[i]) + 1;
  }
  const int64_t work = work_prefix[s.m];
  const int64_t workers = work >= kMinParallelWork ? at::get_num_threads() : 1;
  const int64_t chunks = std::clamp<int64_t>(work / kMinWorkPerChunk, 1, workers * kChunksPerThread);
  const std::vector<int64_t> splits = balanced_row_splits(work_prefix, chunks);

  // Pass over the rows: each chunk's sorted rows land in its own buffers, row
  // counts in row_nnz[i + 1].
  std::vector<int64_t> row_nnz(s.m + 1, 0);
  std::vector<GrowBuffer<index_t>> chunk_cols(chunks);
  std::vector<GrowBuffer<value_t>> chunk_vals(chunks);
  std::atomic<int64_t> next_chunk{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    const Operands<index_t, value_t> op{a_crow_p, a_col_p, a_val.data_ptr<value_t>(),
                                        b_crow_p, b_col_p, b_val.data_ptr<value_t>()};
    RowAccumulator<index_t, value_t> acc(op, s.n, b_check.rows_sorted);
    for (int64_t c = next_chunk++; c < chunks; c = next_chunk++) {
      // Reserve the chunk's bound up front (address space only: pages that stay
      // unwritten are never touched), so the buffers rarely regrow.
      const int64_t bound = std::min(work_prefix[splits[c + 1]] - work_prefix[splits[c]], kMaxReserve);
      chunk_cols[c].reserve_back(bound);
      chunk_vals[c].reserve_back(bound);
      for (int64_t i = splits[c]; i < splits[c + 1]; ++i) {
        row_nnz[i + 1] = acc.row(i, bounds.upper[i], chunk_cols[c], chunk_vals[c]);
      }
    }
  });

  for (int64_t i = 0; i < s.m; ++i) row_nnz[i + 1] += row_nnz[i];
  const int64_t nnz = row_nnz[s.m];
  check_output_nnz("", nnz, a_crow.scalar_type());

  const auto index_options = a_crow.options();
  at::Tensor c_crow = at::empty({s.m + 1}, index_options);
  at::Tensor c_col = at::empty({nnz}, index_options);
  at::Tensor c_val = at::empty({nnz}, a_val.options());
  std::copy(row_nnz.begin(), row_nnz.end(), c_crow.data_ptr<index_t>());
  at::parallel_for(0, chunks, std::max<int64_t>(1, chunks * kParallelGrain / std::max<int64_t>(nnz, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t offset = row_nnz[splits[c]];
      const int64_t count = chunk_cols[c].size();
      std::copy(chunk_cols[c].data(), chunk_cols[c].data() + count, c_col.data_ptr<index_t>() + offset);
      std::copy(chunk_vals[c].data(), chunk_vals[c].data() + count, c_val.data_ptr<value_t>() + offset);
    }
  });
  return {c_crow, c_col, c_val};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spgemm_csr_cpu(
    const at::Tensor& a_crow, const at::Tensor& a_col, const at::Tensor& a_val,
    const at::Tensor& b_crow, const at::Tensor& b_col, const at::Tensor& b_val, int64_t n) {
  const SpgemmShape s = check_spgemm_args(a_crow, a_col, a_val, b_crow, b_col, b_val, n);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_INDEX_TYPES(a_crow.scalar_type(), "spgemm_csr_cpu", [&] {
    AT_DISPATCH_FLOATING_TYPES(a_val.scalar_type(), "spgemm_csr_cpu", [&] {
      out = spgemm_typed<index_t, scalar_t>(a_crow.contiguous(), a_col.contiguous(), a_val.contiguous(),
                                            b_crow.contiguous(), b_col.contiguous(), b_val.contiguous(), s);
    });
  });
  return out;
}

}  // namespace

MLX_LIBRARY_IMPL(CPU, m) { m.impl("spgemm_csr", &spgemm_csr_cpu); }

}  // namespace mlx_kernels::spgemm
