// Segmented sort for the rows of C too long for an on-chip sort (the global
// hash-table bin): cub::DeviceSegmentedSort, which picks a warp, block or
// device-wide radix sort per segment by its length. In its own translation
// unit with a single instantiation (int32 keys and positions): cub's sorting
// kernels dominate compile time.

#include <ATen/ops/empty.h>

#include <cub/device/device_segmented_sort.cuh>

#include "common/cuda_utils.cuh"
#include "spgemm/spgemm_cuda.cuh"

namespace mlx_kernels::spgemm {

void segmented_sort_pairs(const at::Tensor& keys, const at::Tensor& items, const at::Tensor& offsets,
                          at::Tensor& keys_out, at::Tensor& items_out) {
  const int64_t count = keys.numel(), segments = offsets.numel() - 1;
  if (count == 0 || segments == 0) return;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t* begin = offsets.data_ptr<int64_t>();
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceSegmentedSort::SortPairs(
      nullptr, temp_bytes, keys.data_ptr<int32_t>(), keys_out.data_ptr<int32_t>(), items.data_ptr<int32_t>(),
      items_out.data_ptr<int32_t>(), count, segments, begin, begin + 1, stream));
  at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, keys.options().dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceSegmentedSort::SortPairs(
      temp.data_ptr(), temp_bytes, keys.data_ptr<int32_t>(), keys_out.data_ptr<int32_t>(),
      items.data_ptr<int32_t>(), items_out.data_ptr<int32_t>(), count, segments, begin, begin + 1, stream));
}

}  // namespace mlx_kernels::spgemm
