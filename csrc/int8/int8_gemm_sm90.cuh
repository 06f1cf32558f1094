// The CUTLASS 3.x int8 GEMMs for Hopper (sm90a): int8_mm's exact int32 product
// and int8_gemm's product with the dequantization fused into the epilogue.
//
// Why a second kernel: the sm80 mma.sync path (int8_gemm_sm80.cuh) issues
// warp-level MMAs that reach well under half of H100's int8 tensor-core peak;
// wgmma (warpgroup MMA on operands in shared memory) fed by TMA is what gets
// close to it, and is what int8_gemm's "faster than bf16 cuBLAS" target needs.
//
// Mainloop: TMA loads of "TN" tiles (x_i8 [M, K] row-major, w_i8 [N, K]
// row-major = [K, N] column-major) into a multi-stage smem ring, a producer warp
// and consumer warpgroups issuing wgmma s8·s8→s32 (the CollectiveBuilder's
// warp-specialized mainloop). Clusters multicast the shared operand tile.
// Epilogue: a Sm90 epilogue visitor tree applied to the accumulators, then a
// TMA store of D:
//   int8_mm:   D = acc                                            (int32)
//   int8_gemm: D = cast<ElementD>((acc · row_absmax[m]) · col_scale[n] + bias[n])
// the same operations in the same order as the sm80 epilogue, so both kernels
// give the same bits.
//
// Tiles (starting points taken from what is known to run well on H100; tuning
// belongs to the benchmark): TileM 64 for M ≤ kSm90SmallTileMaxM: 64×128×256 tiles, a 1×2 cluster sharing the activation tile,
// non-persistent; TileM 128 beyond: 128×128×128 tiles, a 2×1 cluster sharing
// the weight tile, persistent ping-pong (one warpgroup's epilogue overlaps the
// other's MMAs).
// Needs: K % 16 == 0 (TMA strides are 16-byte multiples), N a multiple of
// 16 bytes of the output (8 for fp16/bf16, 4 for int32), 16-byte aligned
// operands.
//
// Include this only from the per-output TUs (int8_gemm_sm90a_*.cu), which the
// build compiles for sm_90a alone.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/epilogue/thread/activation.h>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/numeric_types.h>

#include "common/cuda_utils.cuh"
#include "common/cutlass_utils.cuh"
#include "int8/int8_gemm.cuh"

namespace mlx_kernels::int8 {
namespace sm90 {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

template <int TileM>
struct Config;
template <>
struct Config<64> {
  using Tile = Shape<_64, _128, _256>;
  using Cluster = Shape<_1, _2, _1>;
  using Schedule = cutlass::gemm::KernelTmaWarpSpecialized;
};
template <>
struct Config<128> {
  using Tile = Shape<_128, _128, _128>;
  using Cluster = Shape<_2, _1, _1>;
  using Schedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
};

// D = acc, as int32.
template <typename Tile>
struct ExactProduct {
  using ElementD = int32_t;
  using ElementCompute = int32_t;
  using Callbacks = fusion::Sm90EVT<
      fusion::Sm90Compute<cutlass::epilogue::thread::Identity, int32_t, int32_t, cutlass::FloatRoundStyle::round_to_nearest>,
      fusion::Sm90AccFetch>;
};

// D = cast<ElementD>((acc · row_absmax[m]) · col_scale[n] + bias[n]); a null
// bias reads as 0.
template <typename ElementD_>
struct Dequantized {
  template <typename Tile>
  struct Fusion {
    using ElementD = ElementD_;
    using ElementCompute = float;
    static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;
    using RowAbsmax = fusion::Sm90ColBroadcast<0, Tile, float, float, Stride<_1, _0, _0>>;  // one per output row
    using ColVector = fusion::Sm90RowBroadcast<0, Tile, float, float, Stride<_0, _1, _0>>;  // one per output column
    using ScaleRows = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>,
                                      fusion::Sm90AccFetch, RowAbsmax>;
    using Callbacks = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiply_add, ElementD, float, kRound>,
                                      ScaleRows, ColVector, ColVector>;
  };
};

template <int TileM, template <typename> class Fusion>
struct Int8Gemm {
  using Tile = typename Config<TileM>::Tile;
  using Cluster = typename Config<TileM>::Cluster;
  using Epilogue = Fusion<Tile>;
  using ElementD = typename Epilogue::ElementD;
  static constexpr int kAlignmentD = 16 / sizeof(ElementD);

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, typename Epilogue::ElementCompute,
      /*ElementC=*/void, cutlass::layout::RowMajor, kAlignmentD,  // no source operand
      ElementD, cutlass::layout::RowMajor, kAlignmentD,
      cutlass::epilogue::TmaWarpSpecialized, typename Epilogue::Callbacks>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      int8_t, cutlass::layout::RowMajor, 16,     // A [M, K]
      int8_t, cutlass::layout::ColumnMajor, 16,  // B [N, K] row-major == [K, N] column-major
      int32_t, Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Config<TileM>::Schedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static void run(const char* op, const int8_t* a, const int8_t* b, void* d, int M, int N, int K,
                  typename Epilogue::Callbacks::Arguments fusion_args, cudaStream_t stream) {
    const auto stride_ab = make_stride(int64_t{K}, _1{}, int64_t{0});  // K-contiguous rows, one batch
    typename Device::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {M, N, K, 1},
        {a, stride_ab, b, stride_ab},
        {fusion_args, nullptr, {}, static_cast<ElementD*>(d), make_stride(int64_t{N}, _1{}, int64_t{0})}};
    args.hw_info.device_id = at::cuda::current_device();
    args.hw_info.sm_count = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    run_cutlass<Device>(op, args, stream);
  }
};

}  // namespace sm90

template <int TileM>
void run_int8_mm_sm90(const int8_t* a, const int8_t* b, int32_t* c, int M, int N, int K, cudaStream_t stream) {
  sm90::Int8Gemm<TileM, sm90::ExactProduct>::run(MLX_OP_NAME("int8_mm"), a, b, c, M, N, K, {}, stream);
}

template <typename ElementD, int TileM>
void run_int8_dequant_gemm_sm90(const Int8DequantProblem& p, cudaStream_t stream) {
  using Gemm = sm90::Int8Gemm<TileM, sm90::Dequantized<ElementD>::template Fusion>;
  Gemm::run(MLX_OP_NAME("int8_gemm"), p.x_i8, p.w_i8, p.out, p.M, p.N, p.K,
            dequantize_arguments<typename Gemm::Epilogue::Callbacks::Arguments>(p), stream);
}

}  // namespace mlx_kernels::int8

// One explicit instantiation per (output, tile), each in its own TU.
#define MLX_INSTANTIATE_INT8_MM_SM90(TileM)                                                     \
  template void mlx_kernels::int8::run_int8_mm_sm90<TileM>(const int8_t*, const int8_t*, int32_t*, \
                                                           int, int, int, cudaStream_t);
#define MLX_INSTANTIATE_INT8_DEQUANT_GEMM_SM90(ElementD, TileM)                 \
  template void mlx_kernels::int8::run_int8_dequant_gemm_sm90<ElementD, TileM>( \
      const mlx_kernels::int8::Int8DequantProblem&, cudaStream_t);
