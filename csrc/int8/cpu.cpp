// CPU kernels of the int8 family.
//
// int8_mm: C[M, N] = A[M, K] · B[N, K]ᵀ in exact int32. Both operands are
// K-contiguous, so every output is a dot product of two int8 rows. The output is
// split into MC×NC tiles run in parallel; each tile walks K in KC chunks so the
// NC rows of B it reuses stay in L2, and the int8 dot products widen to int16
// products summed in int32, which compilers turn into pmaddwd/vpdpbusd-class code.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "common/cpu_utils.h"
#include "common/registration.h"
#include "int8/int8.h"

namespace mlx_kernels::int8 {
namespace {

constexpr int64_t kTileM = 32;
constexpr int64_t kTileN = 64;
constexpr int64_t kChunkK = 1024;

// c[i, j] += Σ_k a[i, k]·b[j, k] over one K chunk, for an mb×nb tile.
MLX_CPU_MULTIVERSION
void int8_dot_tile(const int8_t* a, const int8_t* b, int32_t* c, int64_t lda, int64_t ldb,
                   int64_t ldc, int64_t mb, int64_t nb, int64_t kb) {
  for (int64_t i = 0; i < mb; ++i) {
    const int8_t* a_row = a + i * lda;
    for (int64_t j = 0; j < nb; ++j) {
      const int8_t* b_row = b + j * ldb;
      int32_t sum = 0;
      for (int64_t k = 0; k < kb; ++k) {
        sum += static_cast<int16_t>(a_row[k]) * static_cast<int16_t>(b_row[k]);
      }
      c[i * ldc + j] += sum;
    }
  }
}

at::Tensor int8_mm_cpu(const at::Tensor& a_in, const at::Tensor& b_in) {
  check_int8_mm_args(a_in, b_in);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.contiguous();
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  at::Tensor c = at::zeros({M, N}, a.options().dtype(at::kInt));
  if (M == 0 || N == 0 || K == 0) return c;

  const int8_t* a_ptr = a.data_ptr<int8_t>();
  const int8_t* b_ptr = b.data_ptr<int8_t>();
  int32_t* c_ptr = c.data_ptr<int32_t>();
  const int64_t tiles_m = ceil_div(M, kTileM), tiles_n = ceil_div(N, kTileN);

  at::parallel_for(0, tiles_m * tiles_n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t m0 = (tile / tiles_n) * kTileM, n0 = (tile % tiles_n) * kTileN;
      const int64_t mb = std::min(kTileM, M - m0), nb = std::min(kTileN, N - n0);
      for (int64_t k0 = 0; k0 < K; k0 += kChunkK) {
        int8_dot_tile(a_ptr + m0 * K + k0, b_ptr + n0 * K + k0, c_ptr + m0 * N + n0, K, K, N, mb, nb,
                      std::min(kChunkK, K - k0));
      }
    }
  });
  return c;
}

}  // namespace

MLX_LIBRARY_IMPL(CPU, m) { m.impl("int8_mm", &int8_mm_cpu); }

}  // namespace mlx_kernels::int8
