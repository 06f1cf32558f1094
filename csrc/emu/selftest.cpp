// The SIMT emulator's self-tests: proof that it catches the bugs it claims to
// (tests/test_emu_selftest.py). Each kernel below is small CUDA-style code in
// a correct variant and a variant with one planted defect, selected by a
// parameter; the shipped kernels are left alone. The ops register under
// <namespace>_emu (torch.ops.mlx_emu.selftest_*), for CPU tensors.
//
//   selftest_block_sum        a removed __syncthreads            -> wrong sum
//   selftest_cp_async_sum     cp.async.wait_group 2 instead of 1 -> stale tiles
//   selftest_shared_overflow  a __shared__ write one past the end -> error
//   selftest_mma              fragment registers a[1], a[2] swapped -> wrong product
//   selftest_divergent_barrier   __syncthreads in half a warp     -> deadlock error
//   selftest_divergent_collective lanes at different collectives -> error
//
// Every op takes the scheduling seed of its launch (mlx_emu::set_seed), so a
// test can show that a race is lost under some interleaving.

#include "emu/cuda_emu.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

#include "common/kernel_launch.cuh"
#include "common/mma.cuh"
#include "common/registration.h"

namespace mlx_kernels::emu_selftest {
namespace {

// Sets the scheduling seed for the launches in its scope; back to the default
// (MLX_EMU_SEED) afterwards, also when a launch throws.
class SeedScope {
 public:
  explicit SeedScope(int64_t seed) { ::mlx_emu::set_seed(static_cast<uint64_t>(seed)); }
  ~SeedScope() { ::mlx_emu::set_seed(0); }
  SeedScope(const SeedScope&) = delete;
  SeedScope& operator=(const SeedScope&) = delete;
};

void check_float(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
}

// --- (a) a removed __syncthreads --------------------------------------------------
// A shared-memory tree reduction: each block sums its 256 values. The defect
// drops the barrier between the stores to `partial` and the first reads of
// other threads' slots. On a GPU this usually still passes (warps run nearly in
// step); the emulator runs each thread alone until its next barrier, in a
// seeded random order, so a thread reads partial[tid + 128] before that thread
// has stored it: still the fresh-shared-memory pattern (0xFF bytes, a NaN).

constexpr int kSumThreads = 256;

__global__ void block_sum_kernel(const float* x, float* out, bool defect) {
  MLX_SHARED(float[kSumThreads], partial);
  const int tid = threadIdx.x;
  partial[tid] = x[blockIdx.x * kSumThreads + tid];
  if (!defect) __syncthreads();  // the planted defect removes this barrier
  for (int stride = kSumThreads / 2; stride > 0; stride /= 2) {
    if (tid < stride) partial[tid] += partial[tid + stride];
    __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = partial[0];
}

at::Tensor selftest_block_sum(const at::Tensor& x, bool defect, int64_t seed) {
  check_float(x, "x");
  TORCH_CHECK(x.numel() > 0 && x.numel() % kSumThreads == 0, "x must hold whole blocks of ", kSumThreads, " values");
  const int blocks = static_cast<int>(x.numel() / kSumThreads);
  at::Tensor out = at::empty({blocks}, x.options());
  SeedScope scope(seed);
  MLX_LAUNCH_KERNEL(block_sum_kernel, blocks, kSumThreads, 0, cudaStream_t{}, x.data_ptr<float>(),
                    out.data_ptr<float>(), defect);
  return out;
}

// --- (b) a wrong cp.async wait count ------------------------------------------------
// A double-buffered (2-stage) pipeline: each block streams `tiles` tiles of
// 64 × 4 floats through shared memory with cp.async (one 16-byte copy per
// thread), prefetching tile t + 1 while it sums tile t; each thread sums
// another thread's copy (its mirror), so the barrier after the wait matters too.
// One group is committed per iteration (empty at the end), so before reading
// tile t at most 1 group (tile t + 1) may still be in flight: wait_group 1.
// The defect waits with 2, which lets tile t's own group stay in flight. The
// emulator lands a copy only at a wait_group that covers it, so the defective
// kernel deterministically reads what the buffer held before: zeros for tiles
// 0 and 1, then tile t - 2 (on a GPU the copy often lands in time anyway).

constexpr int kPipeThreads = 64;
constexpr int kTileFloats = kPipeThreads * 4;

template <int Pending>
__global__ void pipelined_sum_kernel(const float* x, float* out, int tiles) {
  MLX_SHARED(float[2][kTileFloats], stage);
  const int tid = threadIdx.x;
  const float* block_x = x + static_cast<int64_t>(blockIdx.x) * tiles * kTileFloats;
  for (int i = tid; i < 2 * kTileFloats; i += kPipeThreads) stage[i / kTileFloats][i % kTileFloats] = 0.0f;
  __syncthreads();  // the zeros are stored before any copy lands over them

  const auto load_tile = [&](int t) {
    cp_async_16(&stage[t % 2][4 * tid], block_x + static_cast<int64_t>(t) * kTileFloats + 4 * tid, true);
  };
  load_tile(0);
  cp_async_commit();
  float sum = 0.0f;
  for (int t = 0; t < tiles; ++t) {
    if (t + 1 < tiles) load_tile(t + 1);  // its buffer was last read before the previous barrier
    cp_async_commit();
    cp_async_wait<Pending>();  // correct: 1 (tile t has landed); the planted defect: 2
    __syncthreads();           // every thread's copies of tile t have landed
    const int mirror = kPipeThreads - 1 - tid;
    for (int k = 0; k < 4; ++k) sum += stage[t % 2][4 * mirror + k];
    __syncthreads();  // all reads of this buffer are done before it is refilled
  }
  out[blockIdx.x * kPipeThreads + tid] = sum;
}

at::Tensor selftest_cp_async_sum(const at::Tensor& x, int64_t tiles, bool defect, int64_t seed) {
  check_float(x, "x");
  TORCH_CHECK(tiles >= 1 && x.numel() > 0 && x.numel() % (tiles * kTileFloats) == 0, "x must hold whole blocks of ",
              tiles, " tiles of ", kTileFloats, " values");
  const int blocks = static_cast<int>(x.numel() / (tiles * kTileFloats));
  at::Tensor out = at::empty({blocks, kPipeThreads}, x.options());
  SeedScope scope(seed);
  if (defect) {
    MLX_LAUNCH_KERNEL(pipelined_sum_kernel<2>, blocks, kPipeThreads, 0, cudaStream_t{}, x.data_ptr<float>(),
                      out.data_ptr<float>(), static_cast<int>(tiles));
  } else {
    MLX_LAUNCH_KERNEL(pipelined_sum_kernel<1>, blocks, kPipeThreads, 0, cudaStream_t{}, x.data_ptr<float>(),
                      out.data_ptr<float>(), static_cast<int>(tiles));
  }
  return out;
}

// --- (c) a shared-memory write one past the end -------------------------------------
// Shifts each block's 64 values right by one through shared memory (out[i] =
// x[i - 1], out[0] = 0): thread i stores x[i] in slot i + 1, so the buffer
// needs 65 slots. The defect declares 64, and the last thread writes one float
// past the end. The emulator follows every __shared__ variable with guard
// bytes and checks them when the block ends ("a write past the end of the
// __shared__ variable declared at ..."); under AddressSanitizer the guard is
// poisoned, so the store itself is reported (use-after-poison).

constexpr int kShiftThreads = 64;

template <bool Defect>
__global__ void shift_kernel(const float* x, float* out) {
  MLX_SHARED(float[Defect ? kShiftThreads : kShiftThreads + 1], shifted);  // the defect: one slot short
  const int tid = threadIdx.x;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kShiftThreads;
  if (tid == 0) shifted[0] = 0.0f;
  shifted[tid + 1] = x[base + tid];
  __syncthreads();
  out[base + tid] = shifted[tid];
}

at::Tensor selftest_shared_overflow(const at::Tensor& x, bool defect) {
  check_float(x, "x");
  TORCH_CHECK(x.numel() > 0 && x.numel() % kShiftThreads == 0, "x must hold whole blocks of ", kShiftThreads,
              " values");
  const int blocks = static_cast<int>(x.numel() / kShiftThreads);
  at::Tensor out = at::empty_like(x);
  if (defect) {
    MLX_LAUNCH_KERNEL(shift_kernel<true>, blocks, kShiftThreads, 0, cudaStream_t{}, x.data_ptr<float>(),
                      out.data_ptr<float>());
  } else {
    MLX_LAUNCH_KERNEL(shift_kernel<false>, blocks, kShiftThreads, 0, cudaStream_t{}, x.data_ptr<float>(),
                      out.data_ptr<float>());
  }
  return out;
}

bool selftest_sanitized() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
  return true;
#else
  return false;
#endif
#else
  return false;
#endif
}

// --- (d) a swapped fragment index -----------------------------------------------------
// One warp computes D = A · B for A 16 × 16 and B 16 × 8 (fp16, row-major in
// global memory) with one mma.sync.m16n8k16, loading its fragments straight
// from global memory in the PTX ISA's layout (group = lane / 4, quad = lane % 4):
//   a[0] = A[group][2quad, +1]      a[1] = A[group + 8][2quad, +1]
//   a[2] = A[group][2quad + 8, +1]  a[3] = A[group + 8][2quad + 8, +1]
//   b0 = B[2quad, +1][group]        b1 = B[2quad + 8, +1][group]
//   d[0..1] = D[group][2quad, +1]   d[2..3] = D[group + 8][2quad, +1]
// The defect swaps a[1] and a[2] (rows 8-15 of k 0-7 for rows 0-7 of k 8-15).
// The emulator's mma takes each register's elements from the PTX layout
// (primitives.h), so the product comes out with those blocks of A exchanged.

constexpr int kM = 16, kN = 8, kK = 16;

// Two fp16 values as one fragment register, the first in the low half.
__device__ __forceinline__ uint32_t pack_halves(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
}

__global__ void mma_kernel(const uint16_t* a, const uint16_t* b, float* d, bool defect) {
  const int lane = threadIdx.x, group = lane / 4, quad = lane % 4;
  const int row = group, col = 2 * quad;
  uint32_t a_frag[4] = {
      pack_halves(a[row * kK + col], a[row * kK + col + 1]),
      pack_halves(a[(row + 8) * kK + col], a[(row + 8) * kK + col + 1]),
      pack_halves(a[row * kK + col + 8], a[row * kK + col + 9]),
      pack_halves(a[(row + 8) * kK + col + 8], a[(row + 8) * kK + col + 9]),
  };
  if (defect) {  // the planted defect: two fragment registers in each other's place
    const uint32_t t = a_frag[1];
    a_frag[1] = a_frag[2];
    a_frag[2] = t;
  }
  const uint32_t b0 = pack_halves(b[col * kN + group], b[(col + 1) * kN + group]);
  const uint32_t b1 = pack_halves(b[(col + 8) * kN + group], b[(col + 9) * kN + group]);
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  mma_m16n8k16<__half>(acc, a_frag, b0, b1);
  d[row * kN + col] = acc[0];
  d[row * kN + col + 1] = acc[1];
  d[(row + 8) * kN + col] = acc[2];
  d[(row + 8) * kN + col + 1] = acc[3];
}

at::Tensor selftest_mma(const at::Tensor& a, const at::Tensor& b, bool defect, int64_t seed) {
  TORCH_CHECK(a.device().is_cpu() && a.scalar_type() == at::kHalf && a.is_contiguous() &&
                  a.sizes() == at::IntArrayRef({kM, kK}),
              "a must be a contiguous 16 x 16 float16 CPU tensor");
  TORCH_CHECK(b.device().is_cpu() && b.scalar_type() == at::kHalf && b.is_contiguous() &&
                  b.sizes() == at::IntArrayRef({kK, kN}),
              "b must be a contiguous 16 x 8 float16 CPU tensor");
  at::Tensor d = at::empty({kM, kN}, a.options().dtype(at::kFloat));
  SeedScope scope(seed);
  MLX_LAUNCH_KERNEL(mma_kernel, 1, 32, 0, cudaStream_t{}, reinterpret_cast<const uint16_t*>(a.data_ptr<at::Half>()),
                    reinterpret_cast<const uint16_t*>(b.data_ptr<at::Half>()), d.data_ptr<float>(), defect);
  return d;
}

// --- a deadlock -------------------------------------------------------------------------
// The defect puts __syncthreads inside a branch that only lanes 0-15 of each
// warp take; lanes 16-31 go on to __syncwarp, which waits for lanes 0-15, which
// wait at the barrier for lanes 16-31: nothing can run, and the emulator
// reports "deadlock" with who waits where (a GPU would hang or misbehave).

constexpr int kBarrierThreads = 64;

__global__ void divergent_barrier_kernel(int* out, bool defect) {
  const int lane = threadIdx.x % 32;
  if (!defect || lane < 16) __syncthreads();  // the defect: a barrier in divergent code
  __syncwarp();
  out[threadIdx.x] = lane;
}

at::Tensor selftest_divergent_barrier(bool defect, int64_t seed) {
  at::Tensor out = at::empty({kBarrierThreads}, at::TensorOptions().dtype(at::kInt));
  SeedScope scope(seed);
  MLX_LAUNCH_KERNEL(divergent_barrier_kernel, 1, kBarrierThreads, 0, cudaStream_t{}, out.data_ptr<int>(), defect);
  return out;
}

// --- a barrier split across branches -----------------------------------------------------
// Each thread reads its mirror's value after a barrier. The defect gives the
// first warp its own __syncthreads in one branch and the rest another: the
// hardware would let the two count as one barrier, CUDA calls it undefined,
// and the emulator reports it ("a barrier in divergent code"), as
// compute-sanitizer's synccheck would.

__global__ void split_barrier_kernel(int* out, bool defect) {
  MLX_SHARED(int[kBarrierThreads], values);
  values[threadIdx.x] = threadIdx.x;
  if (defect && threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = values[kBarrierThreads - 1 - threadIdx.x];
}

at::Tensor selftest_split_barrier(bool defect, int64_t seed) {
  at::Tensor out = at::empty({kBarrierThreads}, at::TensorOptions().dtype(at::kInt));
  SeedScope scope(seed);
  MLX_LAUNCH_KERNEL(split_barrier_kernel, 1, kBarrierThreads, 0, cudaStream_t{}, out.data_ptr<int>(), defect);
  return out;
}

// --- divergent warp collectives ---------------------------------------------------------
// All 32 lanes exchange values with __shfl_xor_sync (out[lane] = lane ^ 1). The
// defect sends the odd lanes to __ballot_sync instead, with the same full mask:
// the lanes of one warp meet at different collectives, which the emulator
// reports ("divergent warp collectives") whichever lane arrives first.

__global__ void divergent_collective_kernel(unsigned* out, bool defect) {
  const unsigned lane = threadIdx.x;
  unsigned value;
  if (defect && lane % 2 == 1) {
    value = __ballot_sync(0xffffffffu, 1);
  } else {
    value = __shfl_xor_sync(0xffffffffu, lane, 1);
  }
  out[lane] = value;
}

at::Tensor selftest_divergent_collective(bool defect, int64_t seed) {
  at::Tensor out = at::empty({32}, at::TensorOptions().dtype(at::kInt));
  SeedScope scope(seed);
  MLX_LAUNCH_KERNEL(divergent_collective_kernel, 1, 32, 0, cudaStream_t{},
                    reinterpret_cast<unsigned*>(out.data_ptr<int>()), defect);
  return out;
}

}  // namespace
}  // namespace mlx_kernels::emu_selftest

#define MLX_FRAGMENT_EXPAND(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)

MLX_FRAGMENT_EXPAND(MLX_LIBRARY_NAMESPACE, m) {
  m.def("selftest_block_sum(Tensor x, bool defect, int seed) -> Tensor");
  m.def("selftest_cp_async_sum(Tensor x, int tiles, bool defect, int seed) -> Tensor");
  m.def("selftest_shared_overflow(Tensor x, bool defect) -> Tensor");
  m.def("selftest_mma(Tensor a, Tensor b, bool defect, int seed) -> Tensor");
  // No tensor arguments to dispatch on: these three register one kernel for every key.
  m.def("selftest_divergent_barrier(bool defect, int seed) -> Tensor",
        &mlx_kernels::emu_selftest::selftest_divergent_barrier);
  m.def("selftest_split_barrier(bool defect, int seed) -> Tensor", &mlx_kernels::emu_selftest::selftest_split_barrier);
  m.def("selftest_divergent_collective(bool defect, int seed) -> Tensor",
        &mlx_kernels::emu_selftest::selftest_divergent_collective);
  // Whether this build runs under AddressSanitizer (then a shared-memory
  // overflow aborts the process at the store instead of raising at block end).
  m.def("selftest_sanitized() -> bool", &mlx_kernels::emu_selftest::selftest_sanitized);
}

MLX_LIBRARY_IMPL(CPU, m) {
  m.impl("selftest_block_sum", &mlx_kernels::emu_selftest::selftest_block_sum);
  m.impl("selftest_cp_async_sum", &mlx_kernels::emu_selftest::selftest_cp_async_sum);
  m.impl("selftest_shared_overflow", &mlx_kernels::emu_selftest::selftest_shared_overflow);
  m.impl("selftest_mma", &mlx_kernels::emu_selftest::selftest_mma);
}
