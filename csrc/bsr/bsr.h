// Tensor-Core block-sparse SpMM family (SMaT): argument checks shared by the
// CPU and CUDA implementations.
//
// A is stored in BCSR with torch's sparse_bsr conventions: block row rb holds
// blocks crow[rb] .. crow[rb+1]-1, block j sits at block column col[j] and its
// values are blocks[j] (br × bc, zero-padded past row m / column k).
//
// Non-finite values. Every entry of a stored block inside A (row < m, column
// < k) is multiplied as in a dense matmul, zeros included: a stored zero times
// Inf or NaN in B gives NaN, as torch.matmul does. That is what the CUDA
// tensor cores give (they cannot skip a zero), so the CPU, whose products skip
// zeros, sets those NaNs afterwards when B holds a non-finite value. Entries
// outside the stored blocks and the padding past row m or column k (whatever
// it holds) add nothing on either device.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/cpu_utils.h"

namespace mlx_kernels::bsr {

constexpr const char* kSpmmOp = MLX_OP_NAME("bsr_spmm");
constexpr const char* kSpmmPackedOp = MLX_OP_NAME("bsr_spmm_packed");
constexpr const char* kSddmmOp = MLX_OP_NAME("bsr_sddmm");

// Accumulation type of the CUDA bsr_spmm (the CPU kernels' is b_type, in
// cpu.cpp): fp32 for fp16/bf16 inputs, fp64 for fp32 and
// fp64 inputs. An fp32 sum of products already differs from torch's fp32 GEMM by
// its summation order; accumulating fp32 in fp64 makes the one rounding at the
// store the only error, so the result is never less accurate than torch's.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>, double,
                                    float>;

inline at::ScalarType acc_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks shared by the bsr_spmm variants: index dtypes, crow [ceil(m / br) + 1],
// col [nblocks], b 2-D, m >= 0 and row_perm's dtype and length.
inline void check_bcsr_structure(const char* op, const at::Tensor& crow, const at::Tensor& col, int64_t nblocks,
                                 const char* nblocks_name, int64_t br, const at::Tensor& b, int64_t m,
                                 const at::Tensor* perm) {
  check_dtype(op, "crow", crow, {at::kInt, at::kLong});
  check_dtype(op, "col", col, {at::kInt, at::kLong});
  MLX_CHECK(crow.scalar_type() == col.scalar_type(), op, "'crow' and 'col' must have one index dtype, got ",
            dtype_name(crow.scalar_type()), " and ", dtype_name(col.scalar_type()));
  check_dim(op, "crow", crow, 1);
  check_dim(op, "col", col, 1);
  check_dim(op, "b", b, 2);
  MLX_CHECK(m >= 0, op, "'m' must be >= 0, got ", m);
  const int64_t block_rows = ceil_div(m, br);
  check_size(op, "crow", crow, 0, block_rows + 1, "ceil(m / br) + 1 (br: the block height)");
  check_size(op, "col", col, 0, nblocks, nblocks_name);
  if (perm != nullptr) {
    check_dtype(op, "row_perm", *perm, {at::kLong});
    check_dim(op, "row_perm", *perm, 1);
    check_size(op, "row_perm", *perm, 0, m, "one entry per row of A (m)");
  }
}

// Shape, dtype and device checks of bsr_spmm (cheap on every device).
inline void check_bsr_spmm_shapes(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& blocks,
                                  const at::Tensor& b, int64_t m, const c10::optional<at::Tensor>& row_perm) {
  constexpr const char* op = kSpmmOp;
  const at::Tensor* perm = row_perm.has_value() ? &*row_perm : nullptr;
  check_same_device(op, {{"crow", &crow}, {"col", &col}, {"blocks", &blocks}, {"b", &b}, {"row_perm", perm}});
  check_dtype(op, "blocks", blocks, {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  check_dtype(op, "b", b, {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  MLX_CHECK(blocks.scalar_type() == b.scalar_type(), op, "'blocks' and 'b' must have one dtype, got ",
            dtype_name(blocks.scalar_type()), " and ", dtype_name(b.scalar_type()));
  check_dim(op, "blocks", blocks, 3);
  MLX_CHECK(blocks.size(1) > 0 && blocks.size(2) > 0, op,
            "'blocks' must be [nblocks, br, bc] with br, bc >= 1, got shape ", blocks.sizes());
  check_bcsr_structure(op, crow, col, blocks.size(0), "one column index per block (blocks.shape[0])",
                       blocks.size(1), b, m, perm);
  check_alloc(op, "the output", {m, b.size(1)}, b.element_size(), b.device());
}

// Shape, dtype and device checks of bsr_sddmm: a [m, n] and b [k, n] of one
// dtype, the BCSR structure of an [m, k] matrix with br × bc blocks.
inline void check_bsr_sddmm_shapes(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& a,
                                   const at::Tensor& b, int64_t br, int64_t bc,
                                   const c10::optional<at::Tensor>& row_perm) {
  constexpr const char* op = kSddmmOp;
  const at::Tensor* perm = row_perm.has_value() ? &*row_perm : nullptr;
  check_same_device(op, {{"crow", &crow}, {"col", &col}, {"a", &a}, {"b", &b}, {"row_perm", perm}});
  check_dtype(op, "a", a, {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  check_dtype(op, "b", b, {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  MLX_CHECK(a.scalar_type() == b.scalar_type(), op, "'a' and 'b' must have one dtype, got ",
            dtype_name(a.scalar_type()), " and ", dtype_name(b.scalar_type()));
  check_dim(op, "a", a, 2);
  MLX_CHECK(br >= 1 && bc >= 1, op, "'br' and 'bc' (the block shape) must be >= 1, got ", br, " and ", bc);
  check_dim(op, "b", b, 2);
  MLX_CHECK(a.size(1) == b.size(1), op, "'a' [m, n] and 'b' [k, n] must have one n, got shapes ", a.sizes(),
            " and ", b.sizes());
  check_bcsr_structure(op, crow, col, col.numel(), "one column index per block", br, b, a.size(0), perm);
  check_alloc(op, "the output", {col.numel(), br, bc}, a.element_size(), a.device());
}

// Shape, dtype and device checks of bsr_spmm_packed (a CPU op on int64 indices).
inline void check_bsr_spmm_packed_shapes(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& row_words,
                                         const at::Tensor& row_values, const at::Tensor& word_blocks,
                                         const at::Tensor& word_cols, const at::Tensor& values, const at::Tensor& b,
                                         int64_t m, int64_t block_rows, int64_t block_cols,
                                         const c10::optional<at::Tensor>& row_perm) {
  constexpr const char* op = kSpmmPackedOp;
  const at::Tensor* perm = row_perm.has_value() ? &*row_perm : nullptr;
  check_same_device(op, {{"crow", &crow}, {"col", &col}, {"row_words", &row_words}, {"row_values", &row_values},
                         {"word_blocks", &word_blocks}, {"word_cols", &word_cols}, {"values", &values}, {"b", &b},
                         {"row_perm", perm}});
  for (const auto& [name, t] : {std::pair{"crow", &crow}, std::pair{"row_words", &row_words},
                                std::pair{"row_values", &row_values}, std::pair{"word_blocks", &word_blocks},
                                std::pair{"word_cols", &word_cols}}) {
    check_dtype(op, name, *t, {at::kLong});
    check_dim(op, name, *t, 1);
  }
  check_dtype(op, "values", values, {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble});
  MLX_CHECK(values.scalar_type() == b.scalar_type(), op, "'values' and 'b' must have one dtype, got ",
            dtype_name(values.scalar_type()), " and ", dtype_name(b.scalar_type()));
  check_dim(op, "values", values, 1);
  for (const auto& [name, size] : {std::pair{"block_rows", block_rows}, std::pair{"block_cols", block_cols}}) {
    MLX_CHECK(size >= 1 && size <= 64, op, "'", name, "' must be in [1, 64] (one bit per row or column), got ", size);
  }
  check_bcsr_structure(op, crow, col, col.numel(), "one column index per block", block_rows, b, m, perm);
  check_size(op, "row_words", row_words, 0, m + 1, "one offset per row of A plus one (m + 1)");
  check_size(op, "row_values", row_values, 0, m + 1, "one offset per row of A plus one (m + 1)");
  check_size(op, "word_cols", word_cols, 0, word_blocks.numel(),
             "one column word per word block (word_blocks' length)");
}

// Index of the first of the `count` values at p outside [0, bound), or count.
// The common all-valid case is one vectorised pass without a branch per value.
template <typename index_t>
int64_t first_out_of_range(const index_t* p, int64_t count, int64_t bound) {
  bool any_out = false;
  for (int64_t i = 0; i < count; ++i) any_out |= static_cast<uint64_t>(p[i]) >= static_cast<uint64_t>(bound);
  if (!any_out) return count;
  int64_t i = 0;
  while (static_cast<uint64_t>(p[i]) < static_cast<uint64_t>(bound)) ++i;
  return i;
}

// Offsets [rows + 1] (argument `name`) start at 0, never decrease and end at
// `total` (the number of entries they index, named `total_name`).
template <typename index_t>
void check_offsets(const char* op, const char* name, const at::Tensor& offsets, int64_t total,
                   const char* total_name) {
  const index_t* p = offsets.data_ptr<index_t>();
  const int64_t rows = offsets.numel() - 1;
  MLX_CHECK(p[0] == 0, op, "'", name, "' must start at 0, got ", int64_t(p[0]));
  bool decreasing = false;
  for (int64_t r = 0; r < rows; ++r) decreasing |= p[r] > p[r + 1];
  for (int64_t r = 0; decreasing && r < rows; ++r) {
    MLX_CHECK(p[r] <= p[r + 1], op, "'", name, "' must be non-decreasing, but ", name, "[", r, "] = ",
              int64_t(p[r]), " > ", name, "[", r + 1, "] = ", int64_t(p[r + 1]));
  }
  MLX_CHECK(p[rows] == total, op, "'", name, "' must end at ", total_name, " = ", total, ", got ", int64_t(p[rows]));
}

// row_perm (int64, on the host) is a permutation of 0..m-1.
inline void check_permutation(const char* op, const at::Tensor& row_perm) {
  const int64_t m = row_perm.numel();
  const int64_t* perm = row_perm.data_ptr<int64_t>();
  const int64_t out_of_range = first_out_of_range(perm, m, m);
  std::vector<uint8_t> seen(m, 0);
  bool repeats = false;
  for (int64_t r = 0; r < out_of_range; ++r) {
    repeats |= seen[perm[r]] != 0;
    seen[perm[r]] = 1;
  }
  if (out_of_range == m && !repeats) return;
  std::fill(seen.begin(), seen.end(), 0);
  for (int64_t r = 0; r < m; ++r) {
    const bool in_range = perm[r] >= 0 && perm[r] < m;
    MLX_CHECK(in_range && !seen[perm[r]], op, "'row_perm' must be a permutation of 0..m-1 (m = ", m,
              "), but row_perm[", r, "] = ", perm[r], in_range ? " repeats" : " is out of range");
    seen[perm[r]] = 1;
  }
}

// Value checks that need the indices on the host: crow starts at 0, never
// decreases and ends at nblocks; every col is a block column of A (A has k = b's
// rows columns); row_perm is a permutation of 0..m-1. O(nblocks + m).
template <typename index_t>
void check_bsr_spmm_values(const at::Tensor& crow, const at::Tensor& col, int64_t k, int64_t bc,
                           const c10::optional<at::Tensor>& row_perm, const char* op = kSpmmOp) {
  const int64_t nblocks = col.numel();
  check_offsets<index_t>(op, "crow", crow, nblocks, "nblocks");
  const int64_t block_cols = ceil_div(k, bc);
  const index_t* col_ptr = col.data_ptr<index_t>();
  const int64_t bad = first_out_of_range(col_ptr, nblocks, block_cols);
  MLX_CHECK(bad == nblocks, op, "'col'[", bad, "] = ", int64_t(col_ptr[bad]),
            " is out of range: b has k = ", k, " rows, so A has ceil(k / bc) = ", block_cols,
            " block columns of width bc = ", bc, " (b's rows must equal A's columns)");
  if (row_perm.has_value()) check_permutation(op, *row_perm);
}

}  // namespace mlx_kernels::bsr
