// Input validation shared by every op. Each check raises a c10::Error (a
// RuntimeError in Python) whose message names the op and the argument, says
// what was expected and what came, before any kernel runs.
#pragma once

#include <ATen/core/Tensor.h>

#include <unistd.h>

#include <cstdio>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <utility>

#include "common/registration.h"

namespace mlx_kernels {

// Fail with "<op>: <message...>" when cond is false.
#define MLX_CHECK(cond, op, ...) TORCH_CHECK((cond), op, ": ", __VA_ARGS__)
// Same, raising ValueError in Python.
#define MLX_CHECK_VALUE(cond, op, ...) TORCH_CHECK_VALUE((cond), op, ": ", __VA_ARGS__)

// Python-facing dtype names ("int8", not c10's "Char").
inline const char* dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBool: return "bool";
    case at::kByte: return "uint8";
    case at::kChar: return "int8";
    case at::kShort: return "int16";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    default: return c10::toString(dtype);
  }
}

inline std::string dtype_list(std::initializer_list<at::ScalarType> dtypes) {
  std::ostringstream out;
  bool first = true;
  for (auto dtype : dtypes) {
    out << (first ? "" : " or ") << dtype_name(dtype);
    first = false;
  }
  return out.str();
}

inline void check_dtype(const char* op, const char* arg, const at::Tensor& t,
                        std::initializer_list<at::ScalarType> allowed) {
  for (auto dtype : allowed) {
    if (t.scalar_type() == dtype) return;
  }
  TORCH_CHECK(false, op, ": argument '", arg, "' must have dtype ", dtype_list(allowed), ", got ",
              dtype_name(t.scalar_type()));
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim) {
  MLX_CHECK(t.dim() == dim, op, "argument '", arg, "' must be ", dim, "-D, got ", t.dim(),
            "-D tensor of shape ", t.sizes());
}

inline void check_min_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim) {
  MLX_CHECK(t.dim() >= dim, op, "argument '", arg, "' must have at least ", dim,
            " dims, got shape ", t.sizes());
}

inline void check_size(const char* op, const char* arg, const at::Tensor& t, int64_t dim,
                       int64_t expected, const char* why) {
  MLX_CHECK(t.size(dim) == expected, op, "argument '", arg, "' has size ", t.size(dim),
            " in dim ", dim, " but ", why, " requires ", expected, " (shape ", t.sizes(), ")");
}

// --- Huge requests -------------------------------------------------------------
// Bytes the memory of `device` holds: the machine's physical memory for the CPU,
// the GPU's global memory for a CUDA device (the CUDA sources register the query,
// common/cuda_utils.cuh), unbounded for any other device.
using DeviceMemoryQuery = int64_t (*)(c10::DeviceIndex);
inline DeviceMemoryQuery& cuda_memory_query() {
  static DeviceMemoryQuery query = nullptr;  // set once, at load time (static initializers)
  return query;
}

inline int64_t device_memory_bytes(const c10::Device& device) {
  if (device.is_cpu()) {
    static const int64_t bytes = [] {
      const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
      return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : std::numeric_limits<int64_t>::max();
    }();
    return bytes;
  }
  if (device.is_cuda() && cuda_memory_query() != nullptr) return cuda_memory_query()(device.index());
  return std::numeric_limits<int64_t>::max();
}

inline std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 6) bytes /= 1024, ++unit;
  char text[32];
  std::snprintf(text, sizeof text, "%.3g %s", bytes, units[unit]);
  return text;
}

// Refuses, before anything is allocated, a tensor (`what`: "the output", "a
// workspace", an argument) of shape `sizes` with `itemsize`-byte elements that cannot exist on
// `device`: a negative size, a byte count that overflows int64, or more bytes
// than the device's memory holds. Ops call it for every buffer whose size comes
// from integer arguments or from products of input sizes (m = 2^40, int8_mm of
// two long thin matrices), so such a request is a clear error naming the op
// rather than an allocator failure or an abort.
inline void check_alloc(const char* op, const char* what, c10::IntArrayRef sizes, size_t itemsize,
                        const c10::Device& device) {
  int64_t bytes = static_cast<int64_t>(itemsize);
  bool overflow = false, empty = false;
  for (int64_t size : sizes) {
    MLX_CHECK(size >= 0, op, what, " would have a negative size (shape ", sizes, ")");
    empty = empty || size == 0;
    overflow = overflow || __builtin_mul_overflow(bytes, size, &bytes);
  }
  if (empty) return;
  MLX_CHECK(!overflow, op, what, " of shape ", sizes, " (", itemsize,
            "-byte elements) would need more bytes than int64 counts; refused before allocating");
  const int64_t capacity = device_memory_bytes(device);
  MLX_CHECK(bytes <= capacity, op, what, " of shape ", sizes, " (", itemsize, "-byte elements) would need ",
            human_bytes(static_cast<double>(bytes)), " (", bytes, " bytes), more than the ", device.str(),
            " memory holds (", human_bytes(static_cast<double>(capacity)), "); refused before allocating");
}

// All tensors an op receives must live on one device.
inline void check_same_device(const char* op,
                              std::initializer_list<std::pair<const char*, const at::Tensor*>> args) {
  const at::Tensor* first = nullptr;
  const char* first_name = nullptr;
  for (auto [name, t] : args) {
    if (t == nullptr || !t->defined()) continue;
    if (first == nullptr) {
      first = t;
      first_name = name;
      continue;
    }
    MLX_CHECK(t->device() == first->device(), op, "all tensors must be on one device, but '",
              first_name, "' is on ", first->device(), " and '", name, "' is on ", t->device());
  }
  // Every op reads its arguments densely: a (zero-stride, expanded) view bigger
  // than the device's memory is refused here, before a copy of it is attempted.
  for (auto [name, t] : args) {
    if (t == nullptr || !t->defined()) continue;
    const std::string what = std::string("argument '") + name + "' (read as a dense tensor)";
    check_alloc(op, what.c_str(), t->sizes(), t->element_size(), t->device());
  }
}

// Rows of x [..., K] viewed as a [rows, K] matrix. Unlike x.reshape({-1, K}),
// well defined when K = 0.
inline int64_t leading_rows(const at::Tensor& x) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  return rows;
}

// Index arithmetic inside kernels is int32 where the sizes allow it; sizes that
// do not fit are refused instead of silently wrapping.
inline void check_fits_int32(const char* op, const char* what, int64_t value) {
  MLX_CHECK(value <= std::numeric_limits<int32_t>::max(), op, what, " = ", value,
            " does not fit in int32 (the kernel's index type)");
}

}  // namespace mlx_kernels
