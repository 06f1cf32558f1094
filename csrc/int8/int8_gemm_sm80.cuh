// The CUTLASS 2.x int8 GEMM of int8_gemm, dequantization fused in the epilogue.
//
// Mainloop: the sm80 mma.sync m16n8k32 s8·s8→s32 tensor-core path (also what
// runs on sm90), multi-stage cp.async pipeline, "TN" operands (x_i8 [M, K]
// row-major, w_i8 [N, K] row-major = [K, N] column-major).
// Scheduling: Stream-K, so mid-sized M (17..~512) that gives fewer tiles than
// SMs still fills the machine by splitting K across CTAs.
// Epilogue: an Sm80 epilogue visitor tree (EVT) applied to each accumulator
// fragment before the single store of the output:
//
//   D = cast<ElementD>( (acc · row_absmax[m]) · col_scale[n] + bias[n] )
//
// row_absmax is a column-vector broadcast (one value per output row), col_scale
// and bias are row-vector broadcasts (one per output column; bias may be null,
// then it reads as 0). Only the int32 accumulators ever exist; the output is
// written once in its final dtype.
//
// Include this only from the per-dtype TUs: each instantiation is heavy.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>

// The visitor headers rely on these being included first.
#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm_coord.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>

#include <cutlass/epilogue/threadblock/fusion/visitors.hpp>
#include <cutlass/gemm/kernel/default_gemm_universal_with_visitor.h>

#include "common/cuda_utils.cuh"
#include "common/cutlass_utils.cuh"
#include "int8/int8_gemm.cuh"

namespace mlx_kernels::int8 {

template <typename ElementD, typename TileShape, typename WarpShape, int Stages>
struct Int8DequantGemm {
  // The visitors read and write 4 elements per access (16 B of fp32 vectors).
  using ThreadMap = cutlass::epilogue::threadblock::OutputTileThreadLayout<TileShape, WarpShape, float, 4, 1>;

  using Accum = cutlass::epilogue::threadblock::VisitorAccFetch;
  using RowAbsmax = cutlass::epilogue::threadblock::VisitorColBroadcast<
      ThreadMap, float, cute::Stride<cute::_1, cute::_0, cute::_0>>;
  using ColVector = cutlass::epilogue::threadblock::VisitorRowBroadcast<
      ThreadMap, float, cute::Stride<cute::_0, cute::_1, cute::_0>>;
  using Multiply = cutlass::epilogue::threadblock::VisitorCompute<
      cutlass::multiplies, float, float, cutlass::FloatRoundStyle::round_to_nearest>;
  using MultiplyAdd = cutlass::epilogue::threadblock::VisitorCompute<
      cutlass::multiply_add, ElementD, float, cutlass::FloatRoundStyle::round_to_nearest>;

  using ScaleRows = cutlass::epilogue::threadblock::Sm80EVT<Multiply, Accum, RowAbsmax>;
  using Dequantize = cutlass::epilogue::threadblock::Sm80EVT<MultiplyAdd, ScaleRows, ColVector, ColVector>;
  using Store = cutlass::epilogue::threadblock::VisitorAuxStore<
      ThreadMap, ElementD, cutlass::FloatRoundStyle::round_to_nearest,
      cute::Stride<int64_t, cute::_1, cute::_0>>;
  using Epilogue = cutlass::epilogue::threadblock::Sm80EVT<Store, Dequantize>;

  using Kernel = typename cutlass::gemm::kernel::DefaultGemmWithVisitor<
      int8_t, cutlass::layout::RowMajor, cutlass::ComplexTransform::kNone, 16,
      int8_t, cutlass::layout::ColumnMajor, cutlass::ComplexTransform::kNone, 16,
      float, cutlass::layout::RowMajor, 4,
      int32_t, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
      TileShape, WarpShape, cutlass::gemm::GemmShape<16, 8, 32>,
      Epilogue, cutlass::gemm::threadblock::ThreadblockSwizzleStreamK, Stages,
      cutlass::arch::OpMultiplyAddSaturate, /*EpilogueStages=*/1>::GemmKernel;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static void run(const Int8DequantProblem& p, cudaStream_t stream) {
    constexpr const char* op = MLX_OP_NAME("int8_gemm");
    typename Epilogue::Arguments epilogue{
        dequantize_arguments<typename Dequantize::Arguments>(p),
        {static_cast<ElementD*>(p.out), {int64_t{p.N}, {}, {}}},  // store D [M, N]
    };
    typename Device::Arguments args(cutlass::gemm::GemmUniversalMode::kGemm, {p.M, p.N, p.K},
                                    /*batch_split=*/1, epilogue, p.x_i8, p.w_i8, nullptr, nullptr,
                                    0, 0, 0, 0, int64_t{p.K}, int64_t{p.K}, 0, 0);
    run_cutlass<Device>(op, args, stream);
  }
};

// Tile shapes: 64×128 tiles (4 warps of 32×64) while M is small enough that
// 128-row tiles would be mostly padding, 128×128 (4 warps of 64×64) beyond.
template <int TileM>
struct Int8GemmTile;
template <>
struct Int8GemmTile<64> {
  using Block = cutlass::gemm::GemmShape<64, 128, 64>;
  using Warp = cutlass::gemm::GemmShape<32, 64, 64>;
};
template <>
struct Int8GemmTile<128> {
  using Block = cutlass::gemm::GemmShape<128, 128, 64>;
  using Warp = cutlass::gemm::GemmShape<64, 64, 64>;
};

template <typename ElementD, int TileM>
void run_int8_dequant_gemm_sm80(const Int8DequantProblem& problem, cudaStream_t stream) {
  using Tile = Int8GemmTile<TileM>;
  Int8DequantGemm<ElementD, typename Tile::Block, typename Tile::Warp, /*Stages=*/4>::run(problem, stream);
}

}  // namespace mlx_kernels::int8

// One explicit instantiation per (output dtype, tile), each in its own TU.
#define MLX_INSTANTIATE_INT8_DEQUANT_GEMM_SM80(ElementD, TileM)                            \
  template void mlx_kernels::int8::run_int8_dequant_gemm_sm80<ElementD, TileM>(            \
      const mlx_kernels::int8::Int8DequantProblem&, cudaStream_t);
