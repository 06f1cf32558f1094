// The SIMT emulator's tensor-core and ldmatrix instructions (primitives.h):
// each lane's registers are gathered into whole matrices through the PTX
// fragment layouts, the instruction is computed once, and the results are
// scattered back the same way.

#include "emu/primitives.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <string>

namespace mlx_emu {

float mma_operand(MmaType type, uint16_t bits) {
  if (type == MmaType::kF16) return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
  return static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
}

namespace {

uint16_t half_of(uint32_t reg, int half) { return static_cast<uint16_t>(reg >> (16 * half)); }

struct MmaK16In {
  uint32_t a[4], b[2];
  float c[4];
};
struct Acc4 {
  float d[4];
};

}  // namespace

void mma_m16n8k16(MmaType type, float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const MmaK16In in{{a[0], a[1], a[2], a[3]}, {b0, b1}, {acc[0], acc[1], acc[2], acc[3]}};
  const char* what = type == MmaType::kF16 ? "mma.sync.m16n8k16.f32.f16" : "mma.sync.m16n8k16.f32.bf16";
  const Acc4 out = collective<MmaK16In, Acc4>(what, 0xffffffffu, in, [type](const MmaK16In* const* ins, Acc4* const* outs) {
    float A[16][16], B[16][8], C[16][8];
    for (int lane = 0; lane < 32; ++lane) {
      for (int reg = 0; reg < 4; ++reg) {
        for (int half = 0; half < 2; ++half) {
          const RowCol e = mma_k16_a(lane, reg, half);
          A[e.row][e.col] = mma_operand(type, half_of(ins[lane]->a[reg], half));
        }
        const RowCol c = mma_c(lane, reg);
        C[c.row][c.col] = ins[lane]->c[reg];
      }
      for (int reg = 0; reg < 2; ++reg) {
        for (int half = 0; half < 2; ++half) {
          const RowCol e = mma_k16_b(lane, reg, half);
          B[e.row][e.col] = mma_operand(type, half_of(ins[lane]->b[reg], half));
        }
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      for (int reg = 0; reg < 4; ++reg) {
        const RowCol c = mma_c(lane, reg);
        double sum = C[c.row][c.col];
        for (int k = 0; k < 16; ++k) sum += static_cast<double>(A[c.row][k]) * B[k][c.col];
        outs[lane]->d[reg] = static_cast<float>(sum);
      }
    }
  });
  for (int reg = 0; reg < 4; ++reg) acc[reg] = out.d[reg];
}

namespace {

struct MmaB1In {
  uint32_t a[4], b[2], c[4];
};
struct Int4 {
  uint32_t d[4];
};

}  // namespace

void mma_m16n8k256_and_popc(uint32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const MmaB1In in{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}, {d[0], d[1], d[2], d[3]}};
  const Int4 out = collective<MmaB1In, Int4>(
      "mma.sync.m16n8k256.s32.b1.and.popc", 0xffffffffu, in, [](const MmaB1In* const* ins, Int4* const* outs) {
        bool A[16][256], B[256][8];
        uint32_t C[16][8];
        for (int lane = 0; lane < 32; ++lane) {
          for (int reg = 0; reg < 4; ++reg) {
            for (int bit = 0; bit < 32; ++bit) {
              const RowCol e = mma_k256_a(lane, reg, bit);
              A[e.row][e.col] = (ins[lane]->a[reg] >> bit) & 1u;
            }
            const RowCol c = mma_c(lane, reg);
            C[c.row][c.col] = ins[lane]->c[reg];
          }
          for (int reg = 0; reg < 2; ++reg) {
            for (int bit = 0; bit < 32; ++bit) {
              const RowCol e = mma_k256_b(lane, reg, bit);
              B[e.row][e.col] = (ins[lane]->b[reg] >> bit) & 1u;
            }
          }
        }
        for (int lane = 0; lane < 32; ++lane) {
          for (int reg = 0; reg < 4; ++reg) {
            const RowCol c = mma_c(lane, reg);
            uint32_t count = 0;
            for (int k = 0; k < 256; ++k) count += A[c.row][k] && B[k][c.col];
            outs[lane]->d[reg] = C[c.row][c.col] + count;  // s32 accumulate, wrapping as the hardware does
          }
        }
      });
  for (int reg = 0; reg < 4; ++reg) d[reg] = out.d[reg];
}

namespace {

struct RowAddress {
  const unsigned char* row;
};
struct Regs4 {
  uint32_t r[4];
};

}  // namespace

void ldmatrix_x4(uint32_t (&r)[4], const void* smem, bool trans) {
  const RowAddress in{static_cast<const unsigned char*>(smem)};
  const char* what = trans ? "ldmatrix.m8n8.x4.trans.b16" : "ldmatrix.m8n8.x4.b16";
  const Regs4 out = collective<RowAddress, Regs4>(what, 0xffffffffu, in, [trans, what](const RowAddress* const* ins,
                                                                                      Regs4* const* outs) {
    // Matrix m, row i: 8 b16 values at the address lane 8m + i gave.
    uint16_t M[4][8][8];
    for (int lane = 0; lane < 32; ++lane) {
      const unsigned char* row = ins[lane]->row;
      if (reinterpret_cast<uintptr_t>(row) % 16 != 0) {
        device_error(std::string(what) + ": row address of lane " + std::to_string(lane) + " is not 16-byte aligned");
      }
      check_shared_range(row, 16, what);
      std::memcpy(M[lane / 8][lane % 8], row, 16);
    }
    for (int lane = 0; lane < 32; ++lane) {
      for (int m = 0; m < 4; ++m) {
        uint32_t reg = 0;
        for (int half = 0; half < 2; ++half) {
          const RowCol e = ldmatrix_element(lane, half, trans);
          reg |= static_cast<uint32_t>(M[m][e.row][e.col]) << (16 * half);
        }
        outs[lane]->r[m] = reg;
      }
    }
  });
  for (int m = 0; m < 4; ++m) r[m] = out.r[m];
}

}  // namespace mlx_emu
