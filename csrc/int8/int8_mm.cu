// int8_mm on CUDA: C[M, N] (int32) = A[M, K] (int8, row-major) · B[N, K]ᵀ.
//
// B stored [N, K] row-major is B ᵀ in column-major, which is exactly the
// "TN" int8 GEMM that the tensor cores want (both operands K-contiguous).
// Two kernels, both exact int32:
//   sm90 (cc 9.0, a build with 9.0a): CUTLASS 3.x wgmma + TMA
//     (int8_gemm_sm90.cuh), 64- or 128-row tiles by M.
//   elsewhere: CUTLASS 2.x device GEMM on the sm80 mma.sync m16n8k32 s8 path,
//     a multi-stage cp.async pipeline: 128×128×64 threadblocks (4 warps of
//     64×64) for large problems, a 64×64×64 tile for small M or N so more CTAs
//     fill the machine.
// Alignment: the tensor-core paths load 16 int8 per copy and store 16 bytes of
// int32 per access, so K is zero-padded to a multiple of 16 and N to a
// multiple of 4 when they are not (exact, rare, and never reads out of bounds).

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cutlass/gemm/device/gemm.h>

#include <cstdlib>
#include <cstring>

#include "common/cuda_utils.cuh"
#include "common/cutlass_utils.cuh"
#include "common/registration.h"
#include "int8/int8.h"
#include "int8/int8_gemm.cuh"

namespace mlx_kernels::int8 {
namespace {

template <int TileM, int TileN, int TileK, int WarpM, int WarpN, int Stages>
using Int8TensorOpGemm = cutlass::gemm::device::Gemm<
    int8_t, cutlass::layout::RowMajor,     // A [M, K]
    int8_t, cutlass::layout::ColumnMajor,  // B [N, K] row-major == [K, N] column-major
    int32_t, cutlass::layout::RowMajor,    // C [M, N]
    int32_t, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
    cutlass::gemm::GemmShape<TileM, TileN, TileK>, cutlass::gemm::GemmShape<WarpM, WarpN, TileK>,
    cutlass::gemm::GemmShape<16, 8, 32>,
    cutlass::epilogue::thread::LinearCombination<int32_t, 4, int32_t, int32_t>,
    cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, Stages,
    /*AlignmentA=*/16, /*AlignmentB=*/16, /*SplitKSerial=*/false,
    cutlass::arch::OpMultiplyAddSaturate>;

using LargeTileGemm = Int8TensorOpGemm<128, 128, 64, 64, 64, 3>;
using SmallTileGemm = Int8TensorOpGemm<64, 64, 64, 32, 32, 4>;

template <typename Gemm>
void run_gemm(const at::Tensor& a, const at::Tensor& b, at::Tensor& c) {
  constexpr const char* op = MLX_OP_NAME("int8_mm");
  const int M = a.size(0), N = b.size(0), K = a.size(1);
  typename Gemm::Arguments args({M, N, K}, {a.data_ptr<int8_t>(), K}, {b.data_ptr<int8_t>(), K},
                                {c.data_ptr<int32_t>(), N}, {c.data_ptr<int32_t>(), N}, {1, 0});
  run_cutlass<Gemm>(op, args, at::cuda::getCurrentCUDAStream());
}

// The wgmma kernels, which only a build with 9.0a has (use_sm90_int8_kernels
// is false in any other, so this is never called there).
void run_sm90_gemm(const at::Tensor& a, const at::Tensor& b, at::Tensor& c) {
#ifdef MLX_WITH_SM90A
  const int M = a.size(0), N = b.size(0), K = a.size(1);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  M <= kSm90SmallTileMaxM ? run_int8_mm_sm90<64>(a.data_ptr<int8_t>(), b.data_ptr<int8_t>(), c.data_ptr<int32_t>(), M, N, K, stream)
                          : run_int8_mm_sm90<128>(a.data_ptr<int8_t>(), b.data_ptr<int8_t>(), c.data_ptr<int32_t>(), M, N, K, stream);
#else
  TORCH_INTERNAL_ASSERT(false, "this build has no sm_90a kernels");
#endif
}

}  // namespace

bool use_sm90_int8_kernels(const at::Tensor& on) {
#ifdef MLX_WITH_SM90A
  const char* force_sm80 = std::getenv("MLX_INT8_SM80");  // per call: the benchmark compares both kernels
  if (force_sm80 != nullptr && *force_sm80 != '\0' && std::strcmp(force_sm80, "0") != 0) return false;
  return runs_sm90a_code(*at::cuda::getDeviceProperties(on.get_device()));
#else
  (void)on;
  return false;
#endif
}

at::Tensor int8_mm_unchecked_cuda(const at::Tensor& a_in, const at::Tensor& b_in) {
  const c10::cuda::CUDAGuard guard(a_in.device());
  const int64_t M = a_in.size(0), N = b_in.size(0), K = a_in.size(1);
  if (M == 0 || N == 0 || K == 0) return at::zeros({M, N}, a_in.options().dtype(at::kInt));

  // Tensor-core operands: K-contiguous, K a multiple of 16, rows 16-byte aligned.
  at::Tensor a = pad_dim_to_multiple(a_in.contiguous(), 1, 16);
  at::Tensor b = pad_dim_to_multiple(pad_dim_to_multiple(b_in.contiguous(), 1, 16), 0, 4);
  if (!is_aligned_16(a)) a = a.clone();
  if (!is_aligned_16(b)) b = b.clone();
  at::Tensor c = at::empty({M, b.size(0)}, a.options().dtype(at::kInt));

  if (use_sm90_int8_kernels(a)) {
    run_sm90_gemm(a, b, c);
  } else if (M >= 256 && N >= 256) {
    run_gemm<LargeTileGemm>(a, b, c);
  } else {
    run_gemm<SmallTileGemm>(a, b, c);
  }
  return b.size(0) == N ? c : c.narrow(1, 0, N).contiguous();
}

namespace {

at::Tensor int8_mm_cuda(const at::Tensor& a, const at::Tensor& b) {
  check_int8_mm_args(a, b);
  return int8_mm_unchecked_cuda(a, b);
}

}  // namespace

MLX_LIBRARY_IMPL(CUDA, m) { m.impl("int8_mm", &int8_mm_cuda); }

}  // namespace mlx_kernels::int8
