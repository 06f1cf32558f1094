// Kernel launches and shared-memory declarations, written once for both
// builds: nvcc's (`<<<>>>`, `__shared__`) and the SIMT emulator's (MLX_EMU:
// the same kernel source compiled by the host compiler, csrc/emu/).
//
//   MLX_LAUNCH_KERNEL(kernel, grid, block, dynamic_smem_bytes, stream, args...);
//   MLX_SHARED(float[32][33], tile);            // __shared__ float tile[32][33];
//   MLX_DYNAMIC_SHARED(float, smem);            // extern __shared__ float smem[];
// Shared memory is 16-byte aligned in both builds.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>
#include <utility>

#ifdef MLX_EMU

#define MLX_LAUNCH_KERNEL(...) ::mlx_emu::launch_kernel(__FILE__, __LINE__, #__VA_ARGS__, __VA_ARGS__)
#define MLX_SHARED(type, name)                                                                    \
  auto& name = *static_cast<std::type_identity_t<type>*>(                                         \
      ::mlx_emu::shared_variable(__FILE__, __LINE__, sizeof(std::type_identity_t<type>)))
#define MLX_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::mlx_emu::dynamic_shared(nullptr))

#else

#define MLX_LAUNCH_KERNEL(...) ::mlx_kernels::launch_kernel(__VA_ARGS__)
#define MLX_SHARED(type, name) __shared__ __align__(16) std::type_identity_t<type> name
#define MLX_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]

namespace mlx_kernels {

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem, cudaStream_t stream,
                   Args&&... args) {
  kernel<<<grid, block, dynamic_smem, stream>>>(std::forward<Args>(args)...);
}

}  // namespace mlx_kernels

#endif
