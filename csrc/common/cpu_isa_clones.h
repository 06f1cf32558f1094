// Per-ISA clones dispatched on CPU features rather than CPU model.
//
// MLX_CPU_MULTIVERSION (cpu_utils.h) clones for "arch=skylake-avx512" and
// "arch=haswell", which GCC's resolver selects with __builtin_cpu_is: any AMD
// CPU (e.g. the AMD EPYC CI machines, which have AVX-512) falls back to the
// baseline x86-64 clone. The x86-64-v4 / v3 micro-architecture levels are
// selected by feature (__builtin_cpu_supports), so every CPU gets its best clone.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MLX_CPU_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MLX_CPU_ISA_CLONES
#endif
