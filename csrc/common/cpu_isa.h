// The one place that decides which instruction-set path the CPU kernels take.
//
// Paths: kScalar (baseline x86-64, SSE2: what any x86-64 CPU runs), kAvx2
// (AVX2 + FMA + POPCNT) and kAvx512 (AVX-512 F/BW/VL/DQ on top of AVX2). The
// path in use is the best this CPU executes (CPUID), capped by the environment
// variable MLX_CPU_ISA=scalar|avx2|avx512, read on every call, so a test or a
// benchmark can switch paths inside one process. A bad value, or a path the CPU
// cannot execute, is an error naming MLX_CPU_ISA (never an illegal instruction).
//
// Hot loops are compiled once per path by MLX_CPU_ISA_DISPATCH: GCC target
// attributes on thin entry points into which the always_inline kernel bodies
// are inlined. Kernels built on GCC vectors are templates on the vector width,
// instantiated per path at that path's register width
// (MLX_CPU_ISA_DISPATCH_VECTORS). (Rather than ATen's per-ISA translation units:
// each family's kernels stay in its cpu.cpp, torch's headers are parsed once
// per TU, and only the entry points are compiled three times.)
//
// Sub-features ride on a path: AVX-512 VNNI (int8) and VPOPCNTDQ (bipolar) are
// used only on the kAvx512 path and only when the CPU has them; the kAvx2 path
// does not use AVX-VNNI (one rule: a path never depends on newer extensions).
#pragma once

#include <utility>

namespace mlx_kernels {

enum class CpuIsa { kScalar, kAvx2, kAvx512 };

// "scalar", "avx2", "avx512": the values of MLX_CPU_ISA.
const char* cpu_isa_name(CpuIsa isa);

// The best path this CPU executes (CPUID, read once).
CpuIsa cpu_isa_available();

// The path the kernels take now: cpu_isa_available() capped by MLX_CPU_ISA.
// Raises a c10::Error (RuntimeError) starting with `who` on a bad value or a
// path this CPU cannot execute. Ops call it once, before any parallel region.
CpuIsa cpu_isa(const char* who);

enum class CpuFeature { kAvx512Vnni, kAvx512Vpopcntdq };

// Whether kernels on path `isa` may use `feature`: the kAvx512 path on a CPU
// that has it.
bool cpu_path_has(CpuIsa isa, CpuFeature feature);

// Vector width in bytes a path's kernels are written for: its register width.
// Kernels that keep arrays of GCC vectors in registers take it as a template
// argument: a 64-byte vector on the AVX2 path is two ymm registers, so a
// kernel tuned to fill AVX-512's 32 zmm registers with them spills on AVX2's 16.
#define MLX_AVX512_VECTOR_BYTES 64
#define MLX_AVX2_VECTOR_BYTES 32
#define MLX_SCALAR_VECTOR_BYTES 16  // SSE2, x86-64's baseline; elsewhere the one path's

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MLX_CPU_HAS_ISA_PATHS 1
// The features each path compiles for; cpu_isa_available() checks exactly these.
#define MLX_AVX2_FEATURES "avx2,fma,popcnt"
#define MLX_AVX512_FEATURES "avx512f,avx512bw,avx512vl,avx512dq," MLX_AVX2_FEATURES
#define MLX_TARGET_AVX2 __attribute__((target(MLX_AVX2_FEATURES)))
#define MLX_TARGET_AVX512 __attribute__((target(MLX_AVX512_FEATURES)))

// Defines name(CpuIsa isa, args...) calling, on the path `isa` names, the
// instance of that path: avx512_body(args...) compiled for AVX-512, and so on.
#define MLX_CPU_ISA_DISPATCH_EACH(name, avx512_body, avx2_body, scalar_body)                      \
  template <typename... Args>                                                                     \
  MLX_TARGET_AVX512 decltype(auto) name##_avx512(Args&&... args) {                                \
    return avx512_body(std::forward<Args>(args)...);                                              \
  }                                                                                               \
  template <typename... Args>                                                                     \
  MLX_TARGET_AVX2 decltype(auto) name##_avx2(Args&&... args) {                                    \
    return avx2_body(std::forward<Args>(args)...);                                                \
  }                                                                                               \
  template <typename... Args>                                                                     \
  decltype(auto) name##_scalar(Args&&... args) {                                                  \
    return scalar_body(std::forward<Args>(args)...);                                              \
  }                                                                                               \
  template <typename... Args>                                                                     \
  decltype(auto) name(::mlx_kernels::CpuIsa isa, Args&&... args) {                               \
    switch (isa) {                                                                                \
      case ::mlx_kernels::CpuIsa::kAvx512: return name##_avx512(std::forward<Args>(args)...);      \
      case ::mlx_kernels::CpuIsa::kAvx2: return name##_avx2(std::forward<Args>(args)...);          \
      default: return name##_scalar(std::forward<Args>(args)...);                                 \
    }                                                                                             \
  }

// Defines name(CpuIsa isa, args...): `body(args...)` (an always_inline
// function, or template, of this TU) compiled for each path and called on the
// one `isa` names.
#define MLX_CPU_ISA_DISPATCH(name, body) MLX_CPU_ISA_DISPATCH_EACH(name, body, body, body)

// The same for a template `body<kVectorBytes>`: each path's instance is
// body<its vector width>.
#define MLX_CPU_ISA_DISPATCH_VECTORS(name, body)                                                 \
  MLX_CPU_ISA_DISPATCH_EACH(name, body<MLX_AVX512_VECTOR_BYTES>, body<MLX_AVX2_VECTOR_BYTES>,     \
                            body<MLX_SCALAR_VECTOR_BYTES>)
#else
// Elsewhere there is one path, kScalar (cpu_isa_available() says so).
#define MLX_CPU_ISA_DISPATCH_ONE(name, body)                        \
  template <typename... Args>                                      \
  decltype(auto) name(::mlx_kernels::CpuIsa, Args&&... args) {     \
    return body(std::forward<Args>(args)...);                      \
  }
#define MLX_CPU_ISA_DISPATCH(name, body) MLX_CPU_ISA_DISPATCH_ONE(name, body)
#define MLX_CPU_ISA_DISPATCH_VECTORS(name, body) MLX_CPU_ISA_DISPATCH_ONE(name, body<MLX_SCALAR_VECTOR_BYTES>)
#endif

}  // namespace mlx_kernels
