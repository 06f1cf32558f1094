// Input validation shared by every op. Each check raises a c10::Error (a
// RuntimeError in Python) whose message names the op and the argument, says
// what was expected and what came, before any kernel runs.
#pragma once

#include <ATen/ATen.h>

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
