// SIMT emulator stand-in for ATen/cuda/CUDAContext.h: the current stream (the
// emulator runs every launch synchronously) and an H100's device properties.
#pragma once
#include <ATen/core/Tensor.h>

#include "emu/cuda_emu.h"

namespace at::cuda {

struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(int = -1) { return {}; }
inline cudaDeviceProp* getCurrentDeviceProperties() {
  static cudaDeviceProp props;
  return &props;
}
inline cudaDeviceProp* getDeviceProperties(int) { return getCurrentDeviceProperties(); }

}  // namespace at::cuda
