// The SIMT emulator's tensor-core and asynchronous-copy primitives, with the
// PTX ISA's semantics and fragment layouts (common/mma.cuh calls these in the
// MLX_EMU build):
//   mma.sync.m16n8k16.row.col.f32.{f16,bf16}  D = A·B + C, products exact,
//       summed in double and rounded to fp32 once per element;
//   mma.sync.m16n8k256.row.col.s32.b1.b1.s32.and.popc  D = C + popc(A ∧ B);
//   ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16;
//   cp.async.cg.shared.global (16 B, src-size 0 zero-fills), commit, wait_group.
// Each warp-wide instruction is a warp collective: it completes when all 32
// lanes reach it (runtime.h). The layout functions below are the only place
// the fragment layouts are written down; tests/test_emu_layouts.py checks them
// element by element against CuTe's MMA_Traits / Copy_Traits.
#pragma once

#include <cstdint>
#include <cstring>

#include "emu/runtime.h"

namespace mlx_emu {

// --- fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k*") -----------

struct RowCol {
  int row, col;
};
// m16n8k16, 16-bit A (16 × 16, row-major): element `half` of register reg.
inline RowCol mma_k16_a(int lane, int reg, int half) {
  return {lane / 4 + 8 * (reg % 2), 2 * (lane % 4) + half + 8 * (reg / 2)};
}
// m16n8k16, 16-bit B (16 × 8, k × n): element `half` of register reg.
inline RowCol mma_k16_b(int lane, int reg, int half) { return {2 * (lane % 4) + half + 8 * reg, lane / 4}; }
// m16n8 accumulators (fp32 or s32), register reg.
inline RowCol mma_c(int lane, int reg) { return {lane / 4 + 8 * (reg / 2), 2 * (lane % 4) + reg % 2}; }
// m16n8k256 b1: bit `bit` of A register reg (16 × 256), of B register reg (256 × 8).
inline RowCol mma_k256_a(int lane, int reg, int bit) {
  return {lane / 4 + 8 * (reg % 2), 32 * (lane % 4) + bit + 128 * (reg / 2)};
}
inline RowCol mma_k256_b(int lane, int reg, int bit) { return {32 * (lane % 4) + bit + 128 * reg, lane / 4}; }
// ldmatrix m8n8 b16: element `half` of a lane's register of one matrix, as
// (row, col) of the matrix as stored (rows at the addresses lanes 8m..8m+7 gave).
inline RowCol ldmatrix_element(int lane, int half, bool trans) {
  return trans ? RowCol{2 * (lane % 4) + half, lane / 4} : RowCol{lane / 4, 2 * (lane % 4) + half};
}

// --- the instructions -----------------------------------------------------------

enum class MmaType { kF16, kBF16 };
float mma_operand(MmaType type, uint16_t bits);  // one fp16/bf16 operand as float (exact)

void mma_m16n8k16(MmaType type, float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void mma_m16n8k256_and_popc(uint32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
void ldmatrix_x4(uint32_t (&r)[4], const void* smem, bool trans);

}  // namespace mlx_emu
