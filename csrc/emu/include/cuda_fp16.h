// SIMT emulator stand-in for cuda_fp16.h: __half as IEEE binary16 storage with
// round-to-nearest-even conversions (c10::Half's), and the conversions the kernels use.
#pragma once
#include <c10/util/Half.h>

#include "emu/cuda_emu.h"

struct __half {
  uint16_t __x;
  __half() = default;
  template <typename T>
    requires std::is_arithmetic_v<T>
  __half(T value) : __x(c10::Half(static_cast<float>(value)).x) {}
  __half(c10::Half value) : __x(value.x) {}
  operator float() const { return c10::Half(__x, c10::Half::from_bits()); }
  operator c10::Half() const { return c10::Half(__x, c10::Half::from_bits()); }
};
struct alignas(4) __half2 {
  __half x, y;
};
inline __half __float2half_rn(float v) { return __half(v); }
inline float __half2float(__half v) { return static_cast<float>(v); }
inline __half2 __floats2half2_rn(float lo, float hi) { return {__half(lo), __half(hi)}; }
inline float2 __half22float2(__half2 v) { return {static_cast<float>(v.x), static_cast<float>(v.y)}; }
