// Helpers shared by the CPU reference kernels.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

namespace mlx_kernels {

// ceil(a / b) for b >= 1, without the overflow of (a + b - 1) / b near INT64_MAX
// (a size argument of 2^63 - 1 must get an error, not undefined behaviour).
inline int64_t ceil_div(int64_t a, int64_t b) { return a > 0 ? (a - 1) / b + 1 : (a + b - 1) / b; }

}  // namespace mlx_kernels
