// int8_mm's wgmma GEMM, int32 output, 64-row tiles (one heavy instantiation per TU).
#include "int8/int8_gemm_sm90.cuh"

MLX_INSTANTIATE_INT8_MM_SM90(64)
