// SIMT emulator stand-in for cuda_bf16.h: __nv_bfloat16 as bfloat16 storage with
// round-to-nearest-even conversions (c10::BFloat16's), and the conversions the kernels use.
#pragma once
#include <c10/util/BFloat16.h>

#include "emu/cuda_emu.h"

struct __nv_bfloat16 {
  uint16_t __x;
  __nv_bfloat16() = default;
  template <typename T>
    requires std::is_arithmetic_v<T>
  __nv_bfloat16(T value) : __x(c10::BFloat16(static_cast<float>(value)).x) {}
  __nv_bfloat16(c10::BFloat16 value) : __x(value.x) {}
  operator float() const { return c10::BFloat16(__x, c10::BFloat16::from_bits()); }
  operator c10::BFloat16() const { return c10::BFloat16(__x, c10::BFloat16::from_bits()); }
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return __nv_bfloat16(v); }
inline float __bfloat162float(__nv_bfloat16 v) { return static_cast<float>(v); }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) { return {__nv_bfloat16(lo), __nv_bfloat16(hi)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return {static_cast<float>(v.x), static_cast<float>(v.y)}; }
