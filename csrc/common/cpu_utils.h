// Helpers shared by the CPU reference kernels.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

namespace mlx_kernels {

// Hot inner loops are compiled several times (x86-64-v4 = AVX-512, v3 = AVX2/FMA,
// baseline x86-64) and picked at load time, so one wheel runs well on any x86
// machine without -march=native. The micro-architecture levels are selected by
// CPU feature; model names ("arch=haswell") would send every AMD CPU to the
// baseline clone. An exception cannot leave a clone (GCC terminates the
// process), so a multiversioned function checks nothing that raises: it
// returns a status and its caller builds the error.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MLX_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MLX_CPU_MULTIVERSION
#endif

// ceil(a / b) for b >= 1, without the overflow of (a + b - 1) / b near INT64_MAX
// (a size argument of 2^63 - 1 must get an error, not undefined behaviour).
inline int64_t ceil_div(int64_t a, int64_t b) { return a > 0 ? (a - 1) / b + 1 : (a + b - 1) / b; }

}  // namespace mlx_kernels
