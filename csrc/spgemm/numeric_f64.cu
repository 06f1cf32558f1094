// spgemm_csr numeric pass for double values (numeric_pass.cuh).

#include "spgemm/numeric_pass.cuh"

namespace mlx_kernels::spgemm {

MLX_SPGEMM_NUMERIC_PASS(int32_t, double)
MLX_SPGEMM_NUMERIC_PASS(int64_t, double)

}  // namespace mlx_kernels::spgemm
