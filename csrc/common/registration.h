// Registration macros that take the op namespace from the build
// (-DMLX_NAMESPACE=...), so a vendored copy can register under another name
// without editing sources. The extra expansion level makes the preprocessor
// substitute MLX_NAMESPACE before TORCH_LIBRARY pastes it into identifiers.
#pragma once

#include <torch/library.h>

#ifndef MLX_NAMESPACE
#define MLX_NAMESPACE mlx
#endif

#define MLX_STRINGIFY_IMPL(x) #x
#define MLX_STRINGIFY(x) MLX_STRINGIFY_IMPL(x)

// "mlx.int8_mm": the name error messages use for an op.
#define MLX_OP_NAME(op) MLX_STRINGIFY(MLX_NAMESPACE) "." op

#define MLX_CONCAT_IMPL(a, b) a##b
#define MLX_CONCAT(a, b) MLX_CONCAT_IMPL(a, b)

// The SIMT emulator build (MLX_EMU, csrc/emu/) registers the same schemas
// under <namespace>_emu, with the emulated CUDA kernels as their
// implementations for (CPU) tensors; error messages still name <namespace>.
#ifdef MLX_EMU
#define MLX_LIBRARY_NAMESPACE MLX_CONCAT(MLX_NAMESPACE, _emu)
#define MLX_IMPL_KEY(key) CPU
#else
#define MLX_LIBRARY_NAMESPACE MLX_NAMESPACE
#define MLX_IMPL_KEY(key) key
#endif

#define MLX_LIBRARY_EXPAND(ns, m) TORCH_LIBRARY(ns, m)
#define MLX_LIBRARY(m) MLX_LIBRARY_EXPAND(MLX_LIBRARY_NAMESPACE, m)

#define MLX_LIBRARY_IMPL_EXPAND(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)
#define MLX_LIBRARY_IMPL(key, m) MLX_LIBRARY_IMPL_EXPAND(MLX_LIBRARY_NAMESPACE, MLX_IMPL_KEY(key), m)
