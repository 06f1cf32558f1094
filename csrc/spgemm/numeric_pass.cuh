// Numeric pass of spgemm_csr on CUDA (see spgemm.cu for the whole algorithm):
// every row of C is accumulated with atomicAdd in a hash table of >= 2·nnz
// slots (its exact nnz is known from the symbolic pass), then compacted and
// sorted by column. Shared-memory bins sort on chip (spgemm_cuda.cuh); rows
// of the global bin are compacted to a buffer, segment-sorted with cub
// (segmented_sort.cu) and scattered into C here.
// Included by numeric_f32.cu and numeric_f64.cu, one value dtype each, to keep
// each translation unit's compile time low.
#pragma once

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/tensor.h>

#include "spgemm/spgemm_cuda.cuh"

namespace mlx_kernels::spgemm {
namespace {

// Writes the sorted long rows into C: block j copies segment j (sorted keys and
// the positions of their values in the compacted buffer) to row rows[j].
template <typename index_t, typename value_t>
__global__ void scatter_sorted_rows_kernel(const int32_t* rows, const int64_t* segment_offset,
                                           const int* sorted_keys, const int* sorted_positions,
                                           const value_t* compact_vals, const int64_t* c_offsets,
                                           index_t* c_col, value_t* c_val) {
  const int64_t begin = segment_offset[blockIdx.x], end = segment_offset[blockIdx.x + 1];
  const int64_t out = c_offsets[rows[blockIdx.x]] - begin;
  for (int64_t e = begin + threadIdx.x; e < end; e += blockDim.x) {
    c_col[out + e] = static_cast<index_t>(sorted_keys[e]);
    c_val[out + e] = compact_vals[sorted_positions[e]];
  }
}

}  // namespace

template <typename index_t, typename value_t>
void numeric_pass(const Operands<index_t, value_t>& op, const Bins& bins, int sub_log2, const at::Tensor& table,
                  const at::Tensor& c_offsets, at::Tensor& c_col, at::Tensor& c_val) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto cpu_long = at::TensorOptions().dtype(at::kLong);
  const auto device = c_col.device();
  index_t* c_col_p = c_col.data_ptr<index_t>();
  value_t* c_val_p = c_val.data_ptr<value_t>();
  const int64_t* c_offsets_p = c_offsets.data_ptr<int64_t>();
  launch_shared_bins<true>(op, bins, sub_log2, nullptr, c_offsets_p, c_col_p, c_val_p);
  if (bins.count(kGlobalBin) == 0) return;

  const at::Tensor rows = bins.rows.narrow(0, bins.start[kGlobalBin], bins.count(kGlobalBin));
  const at::Tensor slots = table.index_select(0, rows).cpu();  // 2·nnz per row
  const int64_t* slots_p = slots.data_ptr<int64_t>();
  for_each_global_batch(
      std::vector<int64_t>(slots_p, slots_p + slots.numel()),
      [&](int64_t first, int64_t last, const std::vector<int64_t>& offsets, const std::vector<int32_t>& bits,
          int64_t pool) {
        // Segment j of the batch: the compacted entries of global row first + j.
        std::vector<int64_t> segments(last - first + 1, 0);
        for (int64_t j = first; j < last; ++j) segments[j - first + 1] = segments[j - first] + slots_p[j] / 2;
        const int64_t entries = segments.back();
        const at::Tensor d_offsets = at::tensor(offsets, cpu_long).to(device);
        const at::Tensor d_bits = at::tensor(bits, at::TensorOptions().dtype(at::kInt)).to(device);
        const at::Tensor d_segments = at::tensor(segments, cpu_long).to(device);
        const auto key_options = c_offsets.options().dtype(at::kInt);
        at::Tensor pool_keys = at::empty({pool}, key_options);
        at::Tensor pool_vals = at::empty({pool}, c_val.options());
        at::Tensor compact_keys = at::empty({entries}, key_options);
        at::Tensor compact_vals = at::empty({entries}, c_val.options());
        MLX_LAUNCH_KERNEL(global_table_kernel<true, index_t, value_t>, last - first, kGlobalThreads, 0, stream,
            op, rows.data_ptr<int32_t>() + first, d_offsets.data_ptr<int64_t>(), d_bits.data_ptr<int32_t>(),
            sub_log2, pool_keys.data_ptr<int>(), pool_vals.data_ptr<value_t>(), nullptr,
            d_segments.data_ptr<int64_t>(), compact_keys.data_ptr<int>(), compact_vals.data_ptr<value_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        // The tables are dead once compacted: their memory is reused (stream-ordered) by the sort.
        pool_keys.reset();
        pool_vals.reset();
        const at::Tensor positions = at::arange(entries, key_options);
        at::Tensor sorted_keys = at::empty_like(compact_keys), sorted_positions = at::empty_like(positions);
        segmented_sort_pairs(compact_keys, positions, d_segments, sorted_keys, sorted_positions);
        MLX_LAUNCH_KERNEL(scatter_sorted_rows_kernel<index_t, value_t>, last - first, kGlobalThreads, 0, stream,
            rows.data_ptr<int32_t>() + first, d_segments.data_ptr<int64_t>(), sorted_keys.data_ptr<int>(),
            sorted_positions.data_ptr<int>(), compact_vals.data_ptr<value_t>(), c_offsets_p, c_col_p, c_val_p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

#define MLX_SPGEMM_NUMERIC_PASS(index_t, value_t)                                                           \
  template void numeric_pass<index_t, value_t>(const Operands<index_t, value_t>&, const Bins&, int,          \
                                               const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&);

}  // namespace mlx_kernels::spgemm
