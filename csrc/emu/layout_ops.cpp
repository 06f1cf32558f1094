// The SIMT emulator's fragment layouts as tables, so that a test can hold them
// against an independent source (tests/test_emu_layouts.py compares them with
// CuTe's MMA_Traits / Copy_Traits, evaluated by tests/emu/cute_layouts.cu).
// Every table comes straight from the layout functions of emu/primitives.h,
// the same functions the emulated instructions use: a wrong entry here is a
// wrong emulated instruction.
//
//   <namespace>_emu.emu_fragment_layout(str operand) -> Tensor
//
// returns an int64 tensor of shape (32 lanes, registers, elements per
// register, 2): the (row, col) of the matrix element that element e of
// register r of lane l holds. Matrices are indexed as PTX writes them:
//   "k16_a"   m16n8k16 A, 16-bit: (m, k), 4 registers × 2 halves
//   "k16_b"   m16n8k16 B, 16-bit: (k, n), 2 registers × 2 halves
//   "c"       m16n8 accumulator: (m, n), 4 registers × 1
//   "k256_a"  m16n8k256 b1 A: (m, k), 4 registers × 32 bits (bit i = (reg >> i) & 1)
//   "k256_b"  m16n8k256 b1 B: (k, n), 2 registers × 32 bits
//   "ldmatrix", "ldmatrix_trans"  ldmatrix.m8n8.x4[.trans].b16: 4 registers
//       (register m holds matrix m) × 2 halves; row = the lane whose address
//       gave the stored row (8m + row of matrix m), col = the b16 element of
//       that 16-byte row.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "common/registration.h"
#include "emu/primitives.h"

namespace mlx_emu {
namespace {

// Fills a (32, regs, elems, 2) table from at(lane, reg, elem) -> RowCol.
template <typename At>
at::Tensor layout_table(int regs, int elems, At at) {
  at::Tensor table = at::empty({32, regs, elems, 2}, at::kLong);
  auto t = table.accessor<int64_t, 4>();
  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < regs; ++reg) {
      for (int e = 0; e < elems; ++e) {
        const RowCol rc = at(lane, reg, e);
        t[lane][reg][e][0] = rc.row;
        t[lane][reg][e][1] = rc.col;
      }
    }
  }
  return table;
}

at::Tensor emu_fragment_layout(std::string operand) {
  if (operand == "k16_a") return layout_table(4, 2, mma_k16_a);
  if (operand == "k16_b") return layout_table(2, 2, mma_k16_b);
  if (operand == "c") return layout_table(4, 1, [](int lane, int reg, int) { return mma_c(lane, reg); });
  if (operand == "k256_a") return layout_table(4, 32, mma_k256_a);
  if (operand == "k256_b") return layout_table(2, 32, mma_k256_b);
  if (operand == "ldmatrix" || operand == "ldmatrix_trans") {
    const bool trans = operand == "ldmatrix_trans";
    // ldmatrix_x4 loads matrix m from the rows that lanes 8m..8m+7 addressed
    // into register m; name the row by that lane, so the table also pins down
    // which matrix lands in which register.
    return layout_table(4, 2, [trans](int lane, int reg, int half) {
      const RowCol e = ldmatrix_element(lane, half, trans);
      return RowCol{8 * reg + e.row, e.col};
    });
  }
  TORCH_CHECK(false, "emu_fragment_layout: unknown operand '", operand,
              "' (k16_a, k16_b, c, k256_a, k256_b, ldmatrix, ldmatrix_trans)");
}

}  // namespace
}  // namespace mlx_emu

// The namespace comes from the build (<namespace>_emu), as for every other op;
// the extra expansion level lets MLX_LIBRARY_NAMESPACE expand before pasting.
#define MLX_FRAGMENT_EXPAND(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
MLX_FRAGMENT_EXPAND(MLX_LIBRARY_NAMESPACE, m) {
  m.def("emu_fragment_layout(str operand) -> Tensor");
}

// No tensor arguments, so no backend key to dispatch on: register it for every
// backend (CompositeExplicitAutograd), not for CPU alone.
#define MLX_LAYOUT_IMPL_EXPAND(ns, m) TORCH_LIBRARY_IMPL(ns, CompositeExplicitAutograd, m)
MLX_LAYOUT_IMPL_EXPAND(MLX_LIBRARY_NAMESPACE, m) {
  m.impl("emu_fragment_layout", &mlx_emu::emu_fragment_layout);
}
