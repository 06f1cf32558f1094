// SIMT emulator stand-in for c10/cuda/CUDAGuard.h: one (emulated) device, nothing to switch.
#pragma once
#include <c10/core/Device.h>

namespace c10::cuda {

struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
  explicit CUDAGuard(int) {}
};
struct OptionalCUDAGuard {
  OptionalCUDAGuard() = default;
  void set_device(c10::Device) {}
};

}  // namespace c10::cuda
