// Warp-level tensor-core and asynchronous-copy primitives (sm_80 and later)
// shared by the hand-written kernels. Fragment layouts are the PTX ISA's for
// mma.sync.m16n8k16 / m16n8k256 (.row.col) and ldmatrix.m8n8. In the SIMT
// emulator build (MLX_EMU) each one runs the emulator's model of the same
// instruction (csrc/emu/primitives.h) instead of its PTX.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace mlx_kernels {

template <typename T>
inline constexpr bool is_fp16_v = std::is_same_v<T, __half> || std::is_same_v<T, c10::Half>;
template <typename T>
inline constexpr bool is_bf16_v = std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, c10::BFloat16>;

// Two floats rounded to T and packed in one 32-bit register, lo in the low half
// (the operand order of mma fragments).
template <typename T>
__device__ __forceinline__ uint32_t pack_float2(float lo, float hi) {
  static_assert(is_fp16_v<T> || is_bf16_v<T>, "pack_float2 packs fp16 or bf16");
  if constexpr (is_fp16_v<T>) {
    const __half2 pair = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&pair);
  } else {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&pair);
  }
}

// acc (16×8 fp32) += a (16×16, row-major fragment) · b (16×8, column-major
// fragment {b0, b1}). T names the 16-bit operand type, in CUDA's or c10's spelling.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(is_fp16_v<T> || is_bf16_v<T>, "mma_m16n8k16 takes fp16 or bf16 operands");
#ifdef MLX_EMU
  ::mlx_emu::mma_m16n8k16(is_fp16_v<T> ? ::mlx_emu::MmaType::kF16 : ::mlx_emu::MmaType::kBF16, acc, a, b0, b1);
#else
  if constexpr (is_fp16_v<T>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
}

// d += popc(a ∧ b) for a 16×256 · 256×8 bit tile (u1 operands, s32 accumulators).
__device__ __forceinline__ void mma_m16n8k256_and_popc(uint32_t (&d)[4], const uint32_t (&a)[4],
                                                       const uint32_t (&b)[2]) {
#ifdef MLX_EMU
  ::mlx_emu::mma_m16n8k256_and_popc(d, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Two floats as T pairs hi + lo (hi = the floats rounded to T, lo = the
// remainders rounded to T), packed like pack_float2: twice T's significand bits.
template <typename T>
__device__ __forceinline__ void split_float2(float a, float b, uint32_t& hi, uint32_t& lo) {
  hi = pack_float2<T>(a, b);
  float2 rounded;
  if constexpr (is_fp16_v<T>) rounded = __half22float2(*reinterpret_cast<const __half2*>(&hi));
  else rounded = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&hi));
  lo = pack_float2<T>(a - rounded.x, b - rounded.y);
}

// The hi and lo parts of an mma fragment of R registers (4 for A, 2 for B).
template <int R>
struct SplitFragment {
  uint32_t hi[R], lo[R];
};

// acc += (a.hi + a.lo) · (b.hi + b.lo) without the lo·lo term (below the
// rounding of hi·hi): three MMAs, smallest terms first.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16_split(float (&acc)[4], const SplitFragment<4>& a,
                                                   const SplitFragment<2>& b) {
  mma_m16n8k16<T>(acc, a.lo, b.hi[0], b.hi[1]);
  mma_m16n8k16<T>(acc, a.hi, b.lo[0], b.lo[1]);
  mma_m16n8k16<T>(acc, a.hi, b.hi[0], b.hi[1]);
}

// 16-byte global -> shared copy that bypasses L1; when !valid, src-size 0
// zero-fills the destination without reading gmem (which must still be a valid address).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
#ifdef MLX_EMU
  ::mlx_emu::cp_async(smem, gmem, 16, valid);
#else
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef MLX_EMU
  ::mlx_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait until at most `Pending` committed groups are still in flight.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
#ifdef MLX_EMU
  ::mlx_emu::cp_async_wait(Pending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
#endif
}

// Four 8×8 b16 matrices from shared memory, one row address per lane.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
#ifdef MLX_EMU
  ::mlx_emu::ldmatrix_x4(r, smem, /*trans=*/false);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

// As ldmatrix_x4, each matrix transposed.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
#ifdef MLX_EMU
  ::mlx_emu::ldmatrix_x4(r, smem, /*trans=*/true);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#endif
}

}  // namespace mlx_kernels
