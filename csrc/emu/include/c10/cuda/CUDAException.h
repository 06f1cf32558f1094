// SIMT emulator stand-in for c10/cuda/CUDAException.h. Launches raise their own
// errors (emu/runtime.h), so the post-launch check has nothing left to find.
#pragma once
#include <c10/util/Exception.h>

#include "emu/cuda_emu.h"

#define C10_CUDA_CHECK(expr)                                                              \
  do {                                                                                    \
    const cudaError_t _mlx_emu_error = (expr);                                            \
    TORCH_CHECK(_mlx_emu_error == cudaSuccess, "CUDA error: ", cudaGetErrorString(_mlx_emu_error)); \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
