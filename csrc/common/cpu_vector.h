// GCC vectors of one ISA path's register width, for the CPU kernels compiled
// per path with MLX_CPU_ISA_DISPATCH_VECTORS (common/cpu_isa.h): kBytes is 64
// on AVX-512, 32 on AVX2, 16 on SSE2.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

namespace mlx_kernels {

// kBytes bytes of T (float, double, int32_t, ...) as one vector, with unaligned
// loads and stores (memcpy: no aliasing or alignment assumptions).
template <typename T, int kBytes>
struct CpuVector {
  typedef T V __attribute__((vector_size(kBytes)));
  static constexpr int64_t kLanes = kBytes / static_cast<int64_t>(sizeof(T));

  __attribute__((always_inline)) static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  __attribute__((always_inline)) static void store(T* p, V v) { std::memcpy(p, &v, sizeof(v)); }
};

// The lanes of v into out, through memory: reading a register's lanes one by
// one costs an extract each.
template <typename V, typename T, int64_t kLanes>
__attribute__((always_inline)) inline void lanes_of(const V& v, T (&out)[kLanes]) {
  static_assert(sizeof(V) == sizeof(out));
  std::memcpy(out, &v, sizeof(out));
}

// A running maximum of float vectors that keeps NaN: max() is the largest value
// added, or NaN when one was NaN (a compare-and-select maximum alone skips it).
// One maximum and one NaN flag per lane, so the loop adding to it vectorizes.
template <int kBytes>
struct LaneMaxKeepingNan {
  using V = typename CpuVector<float, kBytes>::V;
  using I = typename CpuVector<int32_t, kBytes>::V;
  static constexpr int64_t kLanes = CpuVector<float, kBytes>::kLanes;

  __attribute__((always_inline)) explicit LaneMaxKeepingNan(float init) : max_lanes(V{} + init) {}
  __attribute__((always_inline)) void add(V x) {
    max_lanes = x > max_lanes ? x : max_lanes;
    nan_lanes |= x != x;
  }
  __attribute__((always_inline)) float max() const {
    float lane_max[kLanes];
    int32_t lane_nan[kLanes];
    lanes_of(max_lanes, lane_max);
    lanes_of(nan_lanes, lane_nan);
    float result = lane_max[0];
    for (int64_t l = 0; l < kLanes; ++l) {
      if (lane_nan[l] != 0) return std::numeric_limits<float>::quiet_NaN();
      result = std::max(result, lane_max[l]);
    }
    return result;
  }

  V max_lanes;
  I nan_lanes{};
};

}  // namespace mlx_kernels
