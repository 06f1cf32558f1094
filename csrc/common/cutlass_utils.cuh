// CUTLASS helpers of the kernels built on CUTLASS device-level GEMMs (the
// int8 family's); kept apart from cuda_utils.cuh so the hand-written kernels,
// which the SIMT emulator also compiles, never include CUTLASS.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <cutlass/cutlass.h>

#include "common/checks.h"

namespace mlx_kernels {

// Raise a clear error naming the op when CUTLASS refuses or fails a launch.
#define MLX_CUTLASS_CHECK(op, status)                                                     \
  do {                                                                                    \
    cutlass::Status _status = (status);                                                   \
    TORCH_CHECK(_status == cutlass::Status::kSuccess, op, ": CUTLASS error: ",            \
                cutlassGetStatusString(_status));                                         \
  } while (0)

// Checks, sets up (workspace included) and launches one CUTLASS device-level
// operator (2.x device::Gemm or a 3.x/2.x GemmUniversalAdapter) on `stream`.
template <typename Operator>
void run_cutlass(const char* op, const typename Operator::Arguments& args, cudaStream_t stream) {
  Operator gemm;
  MLX_CUTLASS_CHECK(op, gemm.can_implement(args));
  // Most launches need none: no tensor then (this is every int8_mm call's path).
  const auto workspace_bytes = static_cast<int64_t>(Operator::get_workspace_size(args));
  at::Tensor workspace;
  if (workspace_bytes > 0) {
    workspace = at::empty({workspace_bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA));
  }
  MLX_CUTLASS_CHECK(op, gemm.initialize(args, workspace_bytes > 0 ? workspace.data_ptr() : nullptr, stream));
  MLX_CUTLASS_CHECK(op, gemm.run(stream));
}

}  // namespace mlx_kernels
