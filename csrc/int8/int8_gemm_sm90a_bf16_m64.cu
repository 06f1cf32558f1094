// int8_gemm's wgmma GEMM, bf16 output, 64-row tiles (one heavy instantiation per TU).
#include "int8/int8_gemm_sm90.cuh"

MLX_INSTANTIATE_INT8_DEQUANT_GEMM_SM90(cutlass::bfloat16_t, 64)
