// Host program: NVIDIA CuTe's fragment layouts for the instructions the SIMT
// emulator implements, as the same (lane, register, element) -> (row, col)
// tables that <namespace>_emu.emu_fragment_layout returns (csrc/emu/layout_ops.cpp).
// tests/test_emu_layouts.py compiles it with nvcc (host code only; no GPU
// needed), runs it and compares the tables exactly. It prints one JSON object
// {name: [lane][register][element] -> [row, col]}.
//
// Conventions, from cute/atom/mma_traits.hpp and copy_traits.hpp:
//  * An MMA_Traits layout maps (thread, value) to a column-major index into
//    A as (M, K), B as (N, K) (the TN atoms take B "col" = N × K, K-major) and
//    C as (M, N). We convert to PTX's indexing: A (m, k), B (k, n), C (m, n).
//  * Value v of a thread is element v % n of register v / n, where
//    n = 32 / sizeof_bits(value type): the fragment is the value array recast
//    to the atom's uint32_t registers, low element first. For the b1 atoms
//    (uint1b_t values) that is bit v % 32 of register v / 32, LSB first
//    (cute's subbyte storage), i.e. PTX's ai in bit i % 32 of register i / 32.
//  * A Copy_Traits layout maps (thread, value) to a bit: SrcLayout says which
//    bits the source threads address (for ldmatrix x4, lane t addresses one
//    128-bit row, bits 128t..128t+127), DstLayout which bits land in each
//    destination thread's registers (value = bit of the thread's 4 × 32 bits).
//    Composing DstLayout with the inverse of SrcLayout gives, for each lane,
//    register and b16 half, the lane whose row it came from and the b16 column
//    in that row.

#include <cute/atom/copy_traits_sm75.hpp>
#include <cute/atom/mma_traits_sm80.hpp>
#include <cute/layout.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

using namespace cute;

namespace {

struct Table {
  int regs, elems;
  std::vector<std::pair<int, int>> rc;  // [lane][reg][elem] -> (row, col)
};

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "cute_layouts: %s\n", what);
  std::exit(1);
}

// Operand `layout` of an MMA atom: `extent` = the first (contiguous) dimension
// of its column-major matrix (M for A and C, N for B); `second_is_row`: B, whose PTX
// row is CuTe's second coordinate (k). `value_bits` and `registers` come from
// the traits' value type and the arch struct's register array.
template <class Layout>
Table mma_table(Layout layout, int extent, bool second_is_row, int value_bits, int registers) {
  static_assert(decltype(size<0>(layout))::value == 32, "one value set per lane of a warp");
  const int values = size<1>(layout);
  const int elems = 32 / value_bits;
  if (values != registers * elems) fail("values per thread != registers × elements per register");
  Table t{registers, elems, {}};
  for (int lane = 0; lane < 32; ++lane) {
    for (int v = 0; v < values; ++v) {  // v = reg * elems + elem: lane-major, then reg, then elem
      const int idx = layout(lane, v);
      const int first = idx % extent, second = idx / extent;
      t.rc.emplace_back(second_is_row ? second : first, second_is_row ? first : second);
    }
  }
  return t;
}

template <class Op>
void mma_tables(const char* prefix, std::vector<std::pair<std::string, Table>>& out) {
  using Traits = MMA_Traits<Op>;
  const int M = size<0>(typename Traits::Shape_MNK{});
  const int N = size<1>(typename Traits::Shape_MNK{});
  const std::string p = prefix;
  out.emplace_back(p + "a", mma_table(typename Traits::ALayout{}, M, false, sizeof_bits_v<typename Traits::ValTypeA>,
                                      std::extent_v<typename Op::ARegisters>));
  out.emplace_back(p + "b", mma_table(typename Traits::BLayout{}, N, true, sizeof_bits_v<typename Traits::ValTypeB>,
                                      std::extent_v<typename Op::BRegisters>));
  out.emplace_back(p + "c", mma_table(typename Traits::CLayout{}, M, false, sizeof_bits_v<typename Traits::ValTypeC>,
                                      std::extent_v<typename Op::CRegisters>));
}

// ldmatrix x4 (b16): for each destination lane, register and half, the source
// lane (whose address gave the row) and the b16 column within that row.
template <class Op>
Table ldsm_table() {
  using Traits = Copy_Traits<Op>;
  typename Traits::SrcLayout src;
  typename Traits::DstLayout dst;
  const int bits = size(src);
  if (size(dst) != bits) fail("SrcLayout and DstLayout cover different bit counts");
  // Inverse of SrcLayout: bit -> (source lane, bit within its row).
  std::vector<std::pair<int, int>> inv(bits, {-1, -1});
  for (int t = 0; t < size<0>(src); ++t) {
    for (int v = 0; v < size<1>(src); ++v) {
      const int b = src(t, v);
      if (b < 0 || b >= bits || inv[b].first != -1) fail("SrcLayout is not a bijection onto the bits");
      inv[b] = {t, v};
    }
  }
  const int regs = size<1>(dst) / 32;
  Table t{regs, 2, {}};
  for (int lane = 0; lane < 32; ++lane) {
    for (int reg = 0; reg < regs; ++reg) {
      for (int half = 0; half < 2; ++half) {
        const int v = 32 * reg + 16 * half;  // bit 16·half of the lane's register reg
        const auto [src_lane, src_bit] = inv[dst(lane, v)];
        // The 16 bits of the half must be one whole b16 element of one source row.
        if (src_bit % 16 != 0) fail("b16 element not aligned in its source row");
        for (int i = 1; i < 16; ++i) {
          if (inv[dst(lane, v + i)] != std::make_pair(src_lane, src_bit + i)) fail("b16 element split across bits");
        }
        t.rc.emplace_back(src_lane, src_bit / 16);
      }
    }
  }
  return t;
}

void print_json(const std::vector<std::pair<std::string, Table>>& tables) {
  std::printf("{");
  for (size_t n = 0; n < tables.size(); ++n) {
    const Table& t = tables[n].second;
    std::printf("%s\n\"%s\": [", n ? "," : "", tables[n].first.c_str());
    for (int lane = 0; lane < 32; ++lane) {
      std::printf("%s[", lane ? "," : "");
      for (int reg = 0; reg < t.regs; ++reg) {
        std::printf("%s[", reg ? "," : "");
        for (int e = 0; e < t.elems; ++e) {
          const auto& rc = t.rc[(lane * t.regs + reg) * t.elems + e];
          std::printf("%s[%d,%d]", e ? "," : "", rc.first, rc.second);
        }
        std::printf("]");
      }
      std::printf("]");
    }
    std::printf("]");
  }
  std::printf("\n}\n");
}

}  // namespace

int main() {
  std::vector<std::pair<std::string, Table>> tables;
  mma_tables<SM80_16x8x16_F32F16F16F32_TN>("f16.k16_", tables);
  mma_tables<SM80_16x8x16_F32BF16BF16F32_TN>("bf16.k16_", tables);
  mma_tables<SM80_16x8x256_S32U1U1S32_TN_ANDPOPC>("b1.k256_", tables);
  tables.emplace_back("ldmatrix", ldsm_table<SM75_U32x4_LDSM_N>());
  tables.emplace_back("ldmatrix_trans", ldsm_table<SM75_U16x8_LDSM_T>());
  print_json(tables);
  return 0;
}
