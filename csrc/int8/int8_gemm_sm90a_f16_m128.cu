// int8_gemm's wgmma GEMM, fp16 output, 128-row tiles (one heavy instantiation per TU).
#include "int8/int8_gemm_sm90.cuh"

MLX_INSTANTIATE_INT8_DEQUANT_GEMM_SM90(cutlass::half_t, 128)
