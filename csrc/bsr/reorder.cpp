// Building BCSR from CSR on the CPU: the SMaT row reordering and the blocking.
//
// bsr_reorder_rows(crow, col, k, br, bc) -> perm
//   A permutation of A's rows (stored row r is A's row perm[r]) that puts rows
//   with similar column-block patterns into the same block row, so that A needs
//   fewer, denser br × bc blocks. SMaT (SC'24, after SPARTA) clusters rows
//   greedily by the Jaccard similarity of their column-block sets, comparing
//   every unassigned row with the open cluster: O(m²) comparisons. Here:
//     1. each row's signature is its sorted set of block columns;
//     2. rows are sorted by two MinHash values of the signature, so rows with a
//        high Jaccard similarity (the probability that MinHashes agree) end up
//        close together: O(nnz + m log m);
//     3. block rows are filled greedily: a block row starts from the first
//        unassigned row and repeatedly takes, among the next `kWindow`
//        unassigned rows, the one with the highest Jaccard similarity to the
//        union of the block row's signatures: O(kWindow · nnz);
//   Step 3 also runs on the original order (which is often already good, e.g.
//   for banded or mesh matrices), and the result is whichever of {original
//   order, greedy over original order, greedy over MinHash order} needs the
//   fewest blocks, so reordering never makes A worse.
//
// bsr_from_csr(crow, col, values, k, br, bc, row_perm) -> (bcrow, bcol, blocks)
//   Blocks CSR into BCSR (torch sparse_bsr conventions), stored row r taken
//   from A's row row_perm[r]; duplicate entries are summed, padding is zero.
//   Parallel over block rows: count the distinct block columns, prefix-sum,
//   then scatter every value into its block.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <tuple>
#include <vector>

#include "bsr/bsr.h"
#include "common/cpu_utils.h"
#include "common/registration.h"

namespace mlx_kernels::bsr {
namespace {

constexpr const char* kReorderOp = MLX_OP_NAME("bsr_reorder_rows");
constexpr const char* kFromCsrOp = MLX_OP_NAME("bsr_from_csr");

// Candidates a block row looks at when it picks its next row.
constexpr int64_t kWindow = 32;

// CSR structure checks: crow [m + 1] from 0, non-decreasing, to nnz; col in [0, k).
template <typename index_t>
void check_csr(const char* op, const at::Tensor& crow, const at::Tensor& col, int64_t k) {
  const index_t* col_ptr = col.data_ptr<index_t>();
  const int64_t nnz = col.numel();
  check_offsets<index_t>(op, "crow", crow, nnz, "nnz = col.numel()");
  const int64_t bad = first_out_of_range(col_ptr, nnz, k);
  MLX_CHECK(bad == nnz, op, "'col'[", bad, "] = ", int64_t(col_ptr[bad]), " is out of range [0, k = ", k, ")");
}

void check_csr_args(const char* op, const at::Tensor& crow, const at::Tensor& col, int64_t k,
                    int64_t block_rows, int64_t block_cols) {
  MLX_CHECK(crow.device().is_cpu() && col.device().is_cpu(), op, "runs on the CPU, got 'crow' on ",
            crow.device(), " and 'col' on ", col.device());
  check_dtype(op, "crow", crow, {at::kInt, at::kLong});
  MLX_CHECK(crow.scalar_type() == col.scalar_type(), op, "'crow' and 'col' must have one index dtype, got ",
            dtype_name(crow.scalar_type()), " and ", dtype_name(col.scalar_type()));
  check_dim(op, "crow", crow, 1);
  check_dim(op, "col", col, 1);
  MLX_CHECK(crow.numel() >= 1, op, "'crow' must have m + 1 >= 1 entries, got 0");
  MLX_CHECK(k >= 0, op, "'k' must be >= 0, got ", k);
  MLX_CHECK(block_rows >= 1 && block_cols >= 1, op, "block shape must be >= 1 × 1, got ", block_rows, " × ",
            block_cols);
}

// Each row's sorted set of block columns, stored CSR-like.
struct Signatures {
  std::vector<int64_t> ptr;     // [m + 1]
  std::vector<int64_t> blocks;  // block columns, row after row
  int64_t size(int64_t row) const { return ptr[row + 1] - ptr[row]; }
};

template <typename index_t>
Signatures row_signatures(const index_t* crow, const index_t* col, int64_t m, int64_t bc) {
  const int64_t nnz = crow[m];
  std::vector<int64_t> scratch(nnz), count(m);
  at::parallel_for(0, m, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t* first = scratch.data() + crow[r];
      int64_t* last = scratch.data() + crow[r + 1];
      for (int64_t i = crow[r]; i < crow[r + 1]; ++i) scratch[i] = static_cast<int64_t>(col[i]) / bc;
      std::sort(first, last);
      count[r] = std::unique(first, last) - first;
    }
  });
  Signatures sig;
  sig.ptr.assign(m + 1, 0);
  std::partial_sum(count.begin(), count.end(), sig.ptr.begin() + 1);
  sig.blocks.resize(sig.ptr[m]);
  at::parallel_for(0, m, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      std::copy_n(scratch.data() + crow[r], count[r], sig.blocks.data() + sig.ptr[r]);
    }
  });
  return sig;
}

// splitmix64 finalizer: a cheap, well-mixed hash of a block column.
inline uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Rows ordered by (empty last, MinHash 1, MinHash 2, original index).
std::vector<int64_t> minhash_order(const Signatures& sig, int64_t m) {
  std::vector<uint64_t> hash1(m, UINT64_MAX), hash2(m, UINT64_MAX);
  at::parallel_for(0, m, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t i = sig.ptr[r]; i < sig.ptr[r + 1]; ++i) {
        const uint64_t block_col = static_cast<uint64_t>(sig.blocks[i]);
        hash1[r] = std::min(hash1[r], mix64(block_col ^ 0x9e3779b97f4a7c15ULL));
        hash2[r] = std::min(hash2[r], mix64(block_col + 0x632be59bd9b4e019ULL));
      }
    }
  });
  std::vector<int64_t> order(m);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    return std::make_tuple(sig.size(x) == 0, hash1[x], hash2[x], x) <
           std::make_tuple(sig.size(y) == 0, hash1[y], hash2[y], y);
  });
  return order;
}

// Marks the block columns of the block row being built (stamp = its index), so
// an intersection with a candidate row costs one lookup per candidate block.
class BlockRowUnion {
 public:
  explicit BlockRowUnion(int64_t block_cols) : stamp_(block_cols, -1) {}
  void start(int64_t block_row) { block_row_ = block_row, size_ = 0; }
  int64_t size() const { return size_; }
  int64_t intersection(const Signatures& sig, int64_t row) const {
    int64_t shared = 0;
    for (int64_t i = sig.ptr[row]; i < sig.ptr[row + 1]; ++i) shared += stamp_[sig.blocks[i]] == block_row_;
    return shared;
  }
  void add(const Signatures& sig, int64_t row) {
    for (int64_t i = sig.ptr[row]; i < sig.ptr[row + 1]; ++i) {
      size_ += stamp_[sig.blocks[i]] != block_row_;
      stamp_[sig.blocks[i]] = block_row_;
    }
  }

 private:
  std::vector<int64_t> stamp_;
  int64_t block_row_ = -1, size_ = 0;
};

// Blocks of A when its rows are stored in `perm` order.
int64_t count_blocks(const Signatures& sig, const std::vector<int64_t>& perm, int64_t br, int64_t block_cols) {
  BlockRowUnion block_row(block_cols);
  int64_t total = 0;
  const int64_t m = static_cast<int64_t>(perm.size());
  for (int64_t first = 0; first < m; first += br) {
    block_row.start(first / br);
    for (int64_t r = first; r < std::min(m, first + br); ++r) block_row.add(sig, perm[r]);
    total += block_row.size();
  }
  return total;
}

// Step 3 of the heuristic over the candidate order `order`; returns the stored
// row order and its block count.
std::pair<std::vector<int64_t>, int64_t> greedy_block_rows(const Signatures& sig, const std::vector<int64_t>& order,
                                                           int64_t br, int64_t block_cols) {
  const int64_t m = static_cast<int64_t>(order.size());
  std::vector<int64_t> perm;
  perm.reserve(m);
  std::vector<char> taken(m, 0);  // by position in `order`
  BlockRowUnion block_row(block_cols);
  int64_t total_blocks = 0, head = 0;
  for (int64_t block_index = 0; head < m; ++block_index) {
    block_row.start(block_index);
    block_row.add(sig, order[head]);
    perm.push_back(order[head]);
    taken[head] = 1;
    for (int64_t members = 1; members < br; ++members) {
      // Highest Jaccard = shared / union among the next kWindow free rows; ties
      // keep the earlier row. Two empty sets count as identical.
      int64_t best = -1, best_shared = 0, best_union = 1;
      int64_t seen = 0;
      for (int64_t p = head + 1; p < m && seen < kWindow; ++p) {
        if (taken[p]) continue;
        ++seen;
        const int64_t row = order[p];
        const int64_t shared = block_row.intersection(sig, row);
        int64_t united = block_row.size() + sig.size(row) - shared;
        const int64_t similar = united == 0 ? 1 : shared;
        united = std::max<int64_t>(united, 1);
        if (best < 0 || similar * best_union > best_shared * united) {
          best = p, best_shared = similar, best_union = united;
        }
      }
      if (best < 0) break;
      block_row.add(sig, order[best]);
      perm.push_back(order[best]);
      taken[best] = 1;
    }
    total_blocks += block_row.size();
    while (head < m && taken[head]) ++head;
  }
  return {std::move(perm), total_blocks};
}

at::Tensor bsr_reorder_rows_cpu(const at::Tensor& crow_in, const at::Tensor& col_in, int64_t k,
                                int64_t block_rows, int64_t block_cols) {
  check_csr_args(kReorderOp, crow_in, col_in, k, block_rows, block_cols);
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous();
  const int64_t m = crow.numel() - 1;
  std::vector<int64_t> best;
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "bsr_reorder_rows", [&] {
    check_csr<index_t>(kReorderOp, crow, col, k);
    Signatures sig = row_signatures(crow.data_ptr<index_t>(), col.data_ptr<index_t>(), m, block_cols);
    const std::vector<int64_t> minhash = minhash_order(sig, m);
    // The greedy pass stamps block columns in an array indexed by them: when the
    // ones that occur are few over a wide matrix (k = 2^40 with a handful of
    // entries), renumber them densely first, so the array is O(nnz), never O(k).
    int64_t width = ceil_div(k, block_cols);
    if (width > 2 * static_cast<int64_t>(sig.blocks.size()) + 4096) {
      std::vector<int64_t> present(sig.blocks);
      std::sort(present.begin(), present.end());
      present.erase(std::unique(present.begin(), present.end()), present.end());
      for (int64_t& b : sig.blocks) b = std::lower_bound(present.begin(), present.end(), b) - present.begin();
      width = static_cast<int64_t>(present.size());
    }
    std::vector<int64_t> identity(m);
    std::iota(identity.begin(), identity.end(), 0);
    int64_t best_blocks = count_blocks(sig, identity, block_rows, width);
    best = identity;
    for (const auto& order : {identity, minhash}) {
      auto [perm, blocks] = greedy_block_rows(sig, order, block_rows, width);
      if (blocks < best_blocks) best = std::move(perm), best_blocks = blocks;
    }
  });
  at::Tensor perm = at::empty({m}, crow.options().dtype(at::kLong));
  std::copy(best.begin(), best.end(), perm.data_ptr<int64_t>());
  return perm;
}

// Sorted distinct block columns of stored block row rb.
template <typename index_t>
void block_row_columns(const index_t* crow, const index_t* col, const int64_t* perm, int64_t m, int64_t rb,
                       int64_t br, int64_t bc, std::vector<int64_t>& columns) {
  columns.clear();
  for (int64_t r = rb * br; r < std::min(m, (rb + 1) * br); ++r) {
    const int64_t row = perm != nullptr ? perm[r] : r;
    for (int64_t i = crow[row]; i < crow[row + 1]; ++i) columns.push_back(static_cast<int64_t>(col[i]) / bc);
  }
  std::sort(columns.begin(), columns.end());
  columns.erase(std::unique(columns.begin(), columns.end()), columns.end());
}

void check_row_perm(const char* op, const at::Tensor& perm, int64_t m) {
  check_dtype(op, "row_perm", perm, {at::kLong});
  check_dim(op, "row_perm", perm, 1);
  check_size(op, "row_perm", perm, 0, m, "one entry per row of A (crow.numel() - 1)");
  MLX_CHECK(perm.device().is_cpu(), op, "'row_perm' must be on the CPU, got ", perm.device());
  check_permutation(op, perm.contiguous());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bsr_from_csr_cpu(const at::Tensor& crow_in, const at::Tensor& col_in,
                                                                const at::Tensor& values_in, int64_t k, int64_t br,
                                                                int64_t bc,
                                                                const c10::optional<at::Tensor>& row_perm_in) {
  constexpr const char* op = kFromCsrOp;
  check_csr_args(op, crow_in, col_in, k, br, bc);
  check_dim(op, "values", values_in, 1);
  check_dtype(op, "values", values_in, {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  check_size(op, "values", values_in, 0, col_in.numel(), "one value per column index (col.numel())");
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous(), values = values_in.contiguous();
  const int64_t m = crow.numel() - 1, block_rows = ceil_div(m, br);
  at::Tensor row_perm;
  if (row_perm_in.has_value()) {
    check_row_perm(op, *row_perm_in, m);
    row_perm = row_perm_in->contiguous();
  }
  const int64_t* perm = row_perm.defined() ? row_perm.data_ptr<int64_t>() : nullptr;

  at::Tensor bcrow = at::empty({block_rows + 1}, crow.options().dtype(at::kLong));
  at::Tensor bcol, blocks;
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "bsr_from_csr", [&] {
    check_csr<index_t>(op, crow, col, k);
    const index_t* crow_ptr = crow.data_ptr<index_t>();
    const index_t* col_ptr = col.data_ptr<index_t>();
    int64_t* bcrow_ptr = bcrow.data_ptr<int64_t>();
    bcrow_ptr[0] = 0;
    at::parallel_for(0, block_rows, 64, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> columns;
      for (int64_t rb = begin; rb < end; ++rb) {
        block_row_columns(crow_ptr, col_ptr, perm, m, rb, br, bc, columns);
        bcrow_ptr[rb + 1] = static_cast<int64_t>(columns.size());
      }
    });
    std::partial_sum(bcrow_ptr + 1, bcrow_ptr + block_rows + 1, bcrow_ptr + 1);
    const int64_t nblocks = bcrow_ptr[block_rows];
    check_alloc(op, "the blocks", {nblocks, br, bc}, values.element_size(), values.device());
    bcol = at::empty({nblocks}, crow.options().dtype(at::kLong));
    blocks = at::zeros({nblocks, br, bc}, values.options());
    int64_t* bcol_ptr = bcol.data_ptr<int64_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "bsr_from_csr_values", [&] {
      const scalar_t* values_ptr = values.data_ptr<scalar_t>();
      scalar_t* blocks_ptr = blocks.data_ptr<scalar_t>();
      at::parallel_for(0, block_rows, 64, [&](int64_t begin, int64_t end) {
        std::vector<int64_t> columns;
        for (int64_t rb = begin; rb < end; ++rb) {
          block_row_columns(crow_ptr, col_ptr, perm, m, rb, br, bc, columns);
          std::copy(columns.begin(), columns.end(), bcol_ptr + bcrow_ptr[rb]);
          for (int64_t r = rb * br; r < std::min(m, (rb + 1) * br); ++r) {
            const int64_t row = perm != nullptr ? perm[r] : r;
            for (int64_t i = crow_ptr[row]; i < crow_ptr[row + 1]; ++i) {
              const int64_t c = col_ptr[i];
              const int64_t slot = std::lower_bound(columns.begin(), columns.end(), c / bc) - columns.begin();
              scalar_t& entry = blocks_ptr[((bcrow_ptr[rb] + slot) * br + (r - rb * br)) * bc + c % bc];
              entry = static_cast<scalar_t>(entry + values_ptr[i]);
            }
          }
        }
      });
    });
  });
  const auto index_dtype = crow.scalar_type();
  return {bcrow.to(index_dtype), bcol.to(index_dtype), blocks};
}

}  // namespace

MLX_LIBRARY_IMPL(CPU, m) {
  m.impl("bsr_reorder_rows", &bsr_reorder_rows_cpu);
  m.impl("bsr_from_csr", &bsr_from_csr_cpu);
}

}  // namespace mlx_kernels::bsr
