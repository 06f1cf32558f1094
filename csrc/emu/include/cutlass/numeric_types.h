// SIMT emulator stand-in for cutlass/numeric_types.h: int8_gemm.cu names the
// CUTLASS GEMMs' output types only as tags (the GEMMs themselves are GPU-only;
// emu/int8_gemm_standins.cpp takes their place).
#pragma once

namespace cutlass {
struct half_t;
struct bfloat16_t;
}  // namespace cutlass
