// The CUDA language as the SIMT emulator compiles it with the host C++
// compiler (force-included into every .cu of the MLX_EMU build): execution
// space qualifiers, the built-in variables, vector types, the device
// intrinsics the kernels use, atomics, warp collectives and barriers, and the
// runtime calls of the host wrappers. Device code runs on the emulator's
// fibers (runtime.h); host code runs as written, on CPU tensors.
//
// Intrinsics with an approximate hardware version are computed exactly here
// (sincospif, exp2f, expf, logf: libm); __fmul_rn / __fadd_rn round once, as on
// the GPU. mma.sync, ldmatrix and cp.async are in primitives.h.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "emu/runtime.h"

// --- execution spaces and attributes -------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ const

// --- built-in variables ------------------------------------------------------------

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(const mlx_emu::Dim3& d) : x(d.x), y(d.y), z(d.z) {}
  constexpr operator mlx_emu::Dim3() const { return {x, y, z}; }
};
using uint3 = dim3;

#define threadIdx (::mlx_emu::coords().thread_idx)
#define blockIdx (::mlx_emu::coords().block_idx)
#define blockDim (::mlx_emu::coords().block_dim)
#define gridDim (::mlx_emu::coords().grid_dim)
constexpr int warpSize = 32;

// --- vector types ------------------------------------------------------------------

struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) double2 { double x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }

// --- arithmetic --------------------------------------------------------------------

// CUDA's min/max overloads for any mix of integer and floating types.
template <typename A, typename B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(b) < static_cast<C>(a) ? static_cast<C>(b) : static_cast<C>(a);
}
template <typename A, typename B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(b) : static_cast<C>(a);
}

// CUDA's classification functions are global names.
using std::isfinite;
using std::isinf;
using std::isnan;

inline void sincospif(float x, float* s, float* c) {
  const double angle = static_cast<double>(x) * 3.14159265358979323846;
  *s = static_cast<float>(std::sin(angle));
  *c = static_cast<float>(std::cos(angle));
}
// Volatile stores keep each operation rounded on its own (no FMA contraction).
inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;
  return r;
}
inline float __fadd_rn(float a, float b) {
  volatile float r = a + b;
  return r;
}
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }

inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int __clzll(long long v) { return v == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }
inline unsigned __brev(unsigned v) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((v >> i) & 1u) << (31 - i);
  return r;
}
// Four int8 products of a and b, summed into c.
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) {
    c += static_cast<int>(static_cast<int8_t>(a >> (8 * i))) * static_cast<int>(static_cast<int8_t>(b >> (8 * i)));
  }
  return c;
}

// Cache-hinted loads are plain loads.
template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }

// --- atomics (blocks run in parallel on OS threads: real atomics) ---------------------

template <typename T>
inline T atomicAdd(T* address, T value) { return std::atomic_ref<T>(*address).fetch_add(value); }
template <typename T>
inline T atomicSub(T* address, T value) { return std::atomic_ref<T>(*address).fetch_sub(value); }
template <typename T>
inline T atomicOr(T* address, T value) { return std::atomic_ref<T>(*address).fetch_or(value); }
template <typename T>
inline T atomicAnd(T* address, T value) { return std::atomic_ref<T>(*address).fetch_and(value); }
template <typename T>
inline T atomicXor(T* address, T value) { return std::atomic_ref<T>(*address).fetch_xor(value); }
template <typename T>
inline T atomicExch(T* address, T value) { return std::atomic_ref<T>(*address).exchange(value); }
template <typename T>
inline T atomicCAS(T* address, T compare, T value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value);
  return compare;  // the old value either way
}
template <typename T>
inline T atomicMax(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (old < value && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
template <typename T>
inline T atomicMin(T* address, T value) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (value < old && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// --- barriers, votes and shuffles ------------------------------------------------------

#define __syncthreads() ::mlx_emu::sync_threads(__FILE__, __LINE__)
[[noreturn]] inline void __trap() { ::mlx_emu::device_error("__trap()"); }
inline unsigned __activemask() { return ::mlx_emu::active_mask(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::mlx_emu::collective<char, char>("__syncwarp", mask, char{}, [](const char* const*, char* const*) {});
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return ::mlx_emu::collective<int, unsigned>("__ballot_sync", mask, predicate != 0,
                                              [mask](const int* const* in, unsigned* const* out) {
                                                unsigned word = 0;
                                                for (int lane = 0; lane < 32; ++lane) {
                                                  if (in[lane] != nullptr && *in[lane]) word |= 1u << lane;
                                                }
                                                for (int lane = 0; lane < 32; ++lane) {
                                                  if (out[lane] != nullptr) *out[lane] = word & mask;
                                                }
                                              });
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == mask; }

namespace mlx_emu {

enum class ShuffleKind { kIndex, kXor, kUp, kDown };

// PTX shfl.sync on 32-bit values: lane L reads lane source(L) of its
// width-lane segment; a source outside the segment (or outside the mask)
// returns the lane's own value.
template <typename T>
T shuffle(ShuffleKind kind, unsigned mask, T value, int operand, int width) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 32- or 64-bit values");
  if constexpr (sizeof(T) == 8) {  // two 32-bit shuffles, as CUDA's headers do
    uint32_t parts[2];
    std::memcpy(parts, &value, 8);
    parts[0] = shuffle(kind, mask, parts[0], operand, width);
    parts[1] = shuffle(kind, mask, parts[1], operand, width);
    std::memcpy(&value, parts, 8);
    return value;
  } else {
    struct In {
      T value;
      int operand;
    };
    return collective<In, T>("__shfl_sync", mask, In{value, operand},
                             [kind, width, mask](const In* const* in, T* const* out) {
                               for (int lane = 0; lane < 32; ++lane) {
                                 if (out[lane] == nullptr) continue;
                                 const int segment = lane / width * width, operand = in[lane]->operand;
                                 int source = lane;
                                 switch (kind) {
                                   case ShuffleKind::kIndex: source = segment + (operand % width + width) % width; break;
                                   case ShuffleKind::kXor: source = segment + ((lane - segment) ^ operand); break;
                                   case ShuffleKind::kUp: source = lane - operand >= segment ? lane - operand : lane; break;
                                   case ShuffleKind::kDown:
                                     source = lane + operand < segment + width ? lane + operand : lane;
                                     break;
                                 }
                                 if (source < segment || source >= segment + width || !(mask & (1u << source))) {
                                   source = lane;
                                 }
                                 *out[lane] = in[source]->value;
                               }
                             });
  }
}

}  // namespace mlx_emu

template <typename T>
inline T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
  return ::mlx_emu::shuffle(::mlx_emu::ShuffleKind::kIndex, mask, value, src_lane, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  return ::mlx_emu::shuffle(::mlx_emu::ShuffleKind::kXor, mask, value, lane_mask, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  return ::mlx_emu::shuffle(::mlx_emu::ShuffleKind::kUp, mask, value, static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  return ::mlx_emu::shuffle(::mlx_emu::ShuffleKind::kDown, mask, value, static_cast<int>(delta), width);
}

// --- host runtime -----------------------------------------------------------------------

using cudaStream_t = struct CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline const char* cudaGetErrorString(cudaError_t error) {
  return error == cudaSuccess ? "no error" : "invalid argument (mlx_emu)";
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

template <typename Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return ::mlx_emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value) ? cudaSuccess
                                                                                       : cudaErrorInvalidValue;
}

// The device properties the host code reads: an H100 SXM's.
struct cudaDeviceProp {
  char name[256] = "NVIDIA H100 (mlx_emu)";
  int major = 9, minor = 0;
  int multiProcessorCount = 132;
  size_t sharedMemPerBlock = 48 * 1024;
  size_t sharedMemPerBlockOptin = 227 * 1024;
  size_t sharedMemPerMultiprocessor = 228 * 1024;
  int l2CacheSize = 50 * 1024 * 1024;
  int maxThreadsPerBlock = 1024;
  int warpSize = 32;
  size_t totalGlobalMem = size_t{80} << 30;
};

#include "emu/primitives.h"

// --- kernel launches (common/kernel_launch.cuh's MLX_LAUNCH_KERNEL) ---------------------

#include <string>
#include <tuple>
#include <utility>

namespace mlx_emu {

// "kernel_name<...> (csrc/family/file.cu:line)" from the launch macro's text.
std::string launch_site(const char* file, int line, const char* arguments);

// Converts the arguments to the kernel's parameter types once, as a launch
// does, and runs the kernel on every thread of the grid.
template <typename... Params, typename... Args>
void launch_kernel(const char* file, int line, const char* arguments, void (*kernel)(Params...), dim3 grid,
                   dim3 block, size_t dynamic_smem, cudaStream_t, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong number of arguments");
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  launch(launch_site(file, line, arguments), reinterpret_cast<const void*>(kernel), grid, block, dynamic_smem,
         [&] { std::apply(kernel, params); });
}

}  // namespace mlx_emu
