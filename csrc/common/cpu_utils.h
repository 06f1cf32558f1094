// Helpers shared by the CPU reference kernels.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

namespace mlx_kernels {

// Hot inner loops are compiled several times (AVX-512, AVX2, baseline x86-64)
// and picked at load time, so one wheel runs well on any x86 machine without
// -march=native.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MLX_CPU_MULTIVERSION __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define MLX_CPU_MULTIVERSION
#endif

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace mlx_kernels
