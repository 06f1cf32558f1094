// spgemm_csr numeric pass for float values (numeric_pass.cuh).

#include "spgemm/numeric_pass.cuh"

namespace mlx_kernels::spgemm {

MLX_SPGEMM_NUMERIC_PASS(int32_t, float)
MLX_SPGEMM_NUMERIC_PASS(int64_t, float)

}  // namespace mlx_kernels::spgemm
