// SpGEMM CUDA pieces shared between translation units.
#pragma once

#include <ATen/ATen.h>

namespace mlx_kernels::spgemm {

// Sorts, by key, each segment [offsets[s], offsets[s + 1]) of (keys, items)
// into (keys_out, items_out), on the current stream. All int32 except offsets
// (int64 [segments + 1]); the items are positions, so one instantiation serves
// every value dtype (values are gathered through the sorted positions).
void segmented_sort_pairs(const at::Tensor& keys, const at::Tensor& items, const at::Tensor& offsets,
                          at::Tensor& keys_out, at::Tensor& items_out);

}  // namespace mlx_kernels::spgemm
