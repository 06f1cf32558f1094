// MLX_HOST_DEVICE: scalar helpers compiled for both the CPU reference kernels
// and the CUDA kernels, so both devices run the very same arithmetic.
#pragma once

#if defined(__CUDACC__)
#define MLX_HOST_DEVICE __host__ __device__
#else
#define MLX_HOST_DEVICE
#endif
