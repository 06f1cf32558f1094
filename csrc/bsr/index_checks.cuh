// Index-value checks of the bsr family on the device, shared by its CUDA ops.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "bsr/bsr.h"
#include "common/cuda_utils.cuh"

namespace mlx_kernels::bsr {

// Sets *bad when crow is not a row pointer over nblocks blocks (crow[0] = 0,
// non-decreasing, crow[block_rows] = nblocks), a col is not one of the
// block_cols block columns, or row_perm is not a permutation of 0..m-1 (a value
// out of range, or one seen twice: `seen` is a zeroed bit per row).
template <typename index_t>
__global__ void find_bad_index_kernel(const index_t* crow, const index_t* col, const int64_t* row_perm,
                                      unsigned* seen, int64_t block_rows, int64_t nblocks, int64_t block_cols,
                                      int64_t m, int* bad) {
  const int64_t count = max(max(block_rows + 1, nblocks), row_perm != nullptr ? m : int64_t{0});
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  bool wrong = false;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < count; i += stride) {
    if (i <= block_rows) {
      const int64_t offset = crow[i];
      wrong |= (i == 0 && offset != 0) || (i == block_rows && offset != nblocks) ||
               (i < block_rows && offset > crow[i + 1]);
    }
    if (i < nblocks) wrong |= col[i] < 0 || col[i] >= block_cols;
    if (row_perm != nullptr && i < m) {
      const int64_t row = row_perm[i];
      const unsigned bit = 1u << (row & 31);
      wrong |= row < 0 || row >= m || (atomicOr(seen + (row >> 5), bit) & bit) != 0;
    }
  }
  if (wrong) *bad = 1;
}

// The index-value checks of bsr_spmm and bsr_sddmm (op names the caller), on the
// device in one pass; only when it finds a bad value do the indices come to the
// host, where the CPU checks name it (one message on both devices).
inline void check_bsr_values_cuda(const char* op, const at::Tensor& crow_in, const at::Tensor& col_in, int64_t k,
                                  int64_t bc, const c10::optional<at::Tensor>& row_perm_in) {
  const at::Tensor crow = crow_in.contiguous(), col = col_in.contiguous();
  c10::optional<at::Tensor> row_perm;
  if (row_perm_in.has_value()) row_perm = row_perm_in->contiguous();
  const int64_t block_rows = crow.numel() - 1, nblocks = col.numel(), m = row_perm ? row_perm->numel() : 0;
  const auto int_options = crow.options().dtype(at::kInt);
  at::Tensor bad = at::zeros({1}, int_options);
  at::Tensor seen = at::zeros({ceil_div_dev<int64_t>(m, 32)}, int_options);
  constexpr int threads = 256;
  const int64_t count = std::max({block_rows + 1, nblocks, m});
  const int64_t grid = std::min<int64_t>(ceil_div_dev<int64_t>(count, threads),
                                         int64_t{8} * at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "bsr_spmm_check", [&] {
    MLX_LAUNCH_KERNEL(find_bad_index_kernel<index_t>, static_cast<unsigned>(grid), threads, 0,
        at::cuda::getCurrentCUDAStream(),
        crow.data_ptr<index_t>(), col.data_ptr<index_t>(), row_perm ? row_perm->data_ptr<int64_t>() : nullptr,
        reinterpret_cast<unsigned*>(seen.data_ptr<int>()), block_rows, nblocks, ceil_div_dev(k, bc), m,
        bad.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (bad.item<int>() == 0) return;
  // Something is wrong: the CPU checks find the first bad entry and raise.
  c10::optional<at::Tensor> row_perm_host;
  if (row_perm) row_perm_host = row_perm->cpu();
  AT_DISPATCH_INDEX_TYPES(crow.scalar_type(), "bsr_spmm_check", [&] {
    check_bsr_spmm_values<index_t>(crow.cpu(), col.cpu(), k, bc, row_perm_host, op);
  });
  MLX_CHECK(false, op, "internal: the device found a bad index value that the host checks did not");
}

}  // namespace mlx_kernels::bsr
