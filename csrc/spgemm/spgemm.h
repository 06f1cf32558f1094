// Atomic row-wise SpGEMM (SMASH): argument checks, structure-validity flags,
// output-size checks and the column hash shared by the CPU and CUDA kernels.
//
// C = A·B for CSR A [m, k] and B [k, n] by Gustavson's row-wise formulation:
// row i of C is Σ_{p in row i of A} A[i, col(p)] · (row col(p) of B). Each
// output row is accumulated in its own hash table keyed by column (a
// "scratchpad"); the table of a row is sized from the row's upper bound on
// partial products, ub_i = Σ_p nnz(B[col(p), :]), which is also the measure of
// work used to balance rows across threads (CPU) or bin them into kernels (CUDA).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>

#include "common/checks.h"

#if defined(__CUDACC__)
#define MLX_SPGEMM_HD __host__ __device__ __forceinline__
#else
#define MLX_SPGEMM_HD inline
#endif

namespace mlx_kernels::spgemm {

constexpr const char* kOp = MLX_OP_NAME("spgemm_csr");

struct SpgemmShape {
  int64_t m, k, n, a_nnz, b_nnz;
};

// The CSR arrays of A and B, as the kernels read them.
template <typename index_t, typename value_t>
struct Operands {
  const index_t* a_crow;
  const index_t* a_col;
  const value_t* a_val;
  const index_t* b_crow;
  const index_t* b_col;
  const value_t* b_val;
};

// Metadata checks (no data is read): devices, ranks, dtypes, lengths.
inline SpgemmShape check_spgemm_args(const at::Tensor& a_crow, const at::Tensor& a_col,
                                     const at::Tensor& a_val, const at::Tensor& b_crow,
                                     const at::Tensor& b_col, const at::Tensor& b_val, int64_t n) {
  check_same_device(kOp, {{"a_crow", &a_crow}, {"a_col", &a_col}, {"a_val", &a_val},
                          {"b_crow", &b_crow}, {"b_col", &b_col}, {"b_val", &b_val}});
  const std::pair<const char*, const at::Tensor*> all[] = {
      {"a_crow", &a_crow}, {"a_col", &a_col}, {"a_val", &a_val},
      {"b_crow", &b_crow}, {"b_col", &b_col}, {"b_val", &b_val}};
  for (auto [name, t] : all) check_dim(kOp, name, *t, 1);

  check_dtype(kOp, "a_crow", a_crow, {at::kInt, at::kLong});
  const auto index_dtype = a_crow.scalar_type();
  for (auto [name, t] : {std::pair{"a_col", &a_col}, {"b_crow", &b_crow}, {"b_col", &b_col}}) {
    MLX_CHECK(t->scalar_type() == index_dtype, kOp, "argument '", name,
              "' must have the index dtype of 'a_crow' (", dtype_name(index_dtype),
              "; A's and B's indices must agree), got ", dtype_name(t->scalar_type()));
  }
  check_dtype(kOp, "a_val", a_val, {at::kFloat, at::kDouble});
  MLX_CHECK(b_val.scalar_type() == a_val.scalar_type(), kOp,
            "argument 'b_val' must have the dtype of 'a_val' (", dtype_name(a_val.scalar_type()),
            "), got ", dtype_name(b_val.scalar_type()));

  MLX_CHECK(a_crow.numel() >= 1, kOp, "argument 'a_crow' must have m + 1 >= 1 entries, got 0");
  MLX_CHECK(b_crow.numel() >= 1, kOp, "argument 'b_crow' must have k + 1 >= 1 entries, got 0");
  MLX_CHECK(a_val.numel() == a_col.numel(), kOp, "arguments 'a_col' and 'a_val' must have one entry "
            "per stored element, got ", a_col.numel(), " and ", a_val.numel());
  MLX_CHECK(b_val.numel() == b_col.numel(), kOp, "arguments 'b_col' and 'b_val' must have one entry "
            "per stored element, got ", b_col.numel(), " and ", b_val.numel());
  MLX_CHECK_VALUE(n >= 0, kOp, "argument 'n' (columns of B) must be >= 0, got ", n);

  const SpgemmShape shape{a_crow.numel() - 1, b_crow.numel() - 1, n, a_col.numel(), b_col.numel()};
  if (index_dtype == at::kInt) {
    check_fits_int32(kOp, "n", shape.n);
  }
  return shape;
}

// Structural problems found by reading the index arrays: the CPU sets them
// while validating, the CUDA validation kernel ORs them atomically.
enum InvalidFlag : int {
  kBadACrow = 1,  // a_crow[0] != 0, decreasing, or a_crow[m] != nnz(A)
  kBadACol = 2,   // a column index outside [0, k)
  kBadBCrow = 4,
  kBadBCol = 8,
};

inline void raise_if_invalid(int flags, const SpgemmShape& s) {
  MLX_CHECK_VALUE(!(flags & kBadACrow), kOp, "argument 'a_crow' is not a CSR row pointer: expected "
                  "a_crow[0] == 0, non-decreasing entries and a_crow[", s.m, "] == nnz(A) = ", s.a_nnz);
  MLX_CHECK_VALUE(!(flags & kBadACol), kOp, "argument 'a_col' has a column index outside [0, k = ",
                  s.k, ") (k = b_crow.numel() - 1, the rows of B)");
  MLX_CHECK_VALUE(!(flags & kBadBCrow), kOp, "argument 'b_crow' is not a CSR row pointer: expected "
                  "b_crow[0] == 0, non-decreasing entries and b_crow[", s.k, "] == nnz(B) = ", s.b_nnz);
  MLX_CHECK_VALUE(!(flags & kBadBCol), kOp, "argument 'b_col' has a column index outside [0, n = ",
                  s.n, ")");
}

// C's row pointer has A's index dtype, so with int32 indices nnz(C) must fit
// in int32. The exact nnz(C) is known only after the symbolic pass, but two
// cheap bounds decide most cases up front: nnz(C) >= Σ_i max_p nnz(B[col(p)])
// (a row holds at least its longest contributing row of B), and
// nnz(C) <= Σ_i min(ub_i, n).
inline void check_output_nnz(const char* what, int64_t nnz, at::ScalarType index_dtype) {
  MLX_CHECK(index_dtype != at::kInt || nnz <= std::numeric_limits<int32_t>::max(), kOp,
            "the output would have ", what, " ", nnz, " stored elements, which does not fit the "
            "int32 indices of the inputs (max ", std::numeric_limits<int32_t>::max(),
            "); pass int64 a_crow/a_col/b_crow/b_col");
}

// Open-addressing slot of a column in a power-of-two table of 2^bits slots
// (bits >= 1): Fibonacci hashing takes the top bits of col·2^64/φ, which
// spreads runs of neighbouring columns (the common case in banded and mesh
// matrices) over the whole table.
MLX_SPGEMM_HD uint32_t hash_slot(uint64_t col, int bits) {
  return static_cast<uint32_t>((col * 0x9E3779B97F4A7C15ull) >> (64 - bits));
}

// Smallest power-of-two exponent with 2^bits >= x (and >= 2).
MLX_SPGEMM_HD int ceil_log2(int64_t x) {
  int bits = 1;
  while ((int64_t{1} << bits) < x) ++bits;
  return bits;
}

}  // namespace mlx_kernels::spgemm
