"""int8 family samples for opcheck and bad-input tests."""

import torch

import mlx_kernels
from cases import op_pattern


def _i8(*shape, device):
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=device)


def _x(*shape, device, dtype=torch.float32, outlier_cols=()):
    x = torch.randn(shape, device=device)
    x[..., list(outlier_cols)] *= 40  # columns over the 6.0 threshold
    return x.to(dtype)


def _w(n, k, device):
    return mlx_kernels.int8_vectorwise_quant(torch.randn(n, k, device=device), 0.0)[:2]


def _grad_args(*args):
    """Every floating tensor argument requires grad (int8 ones cannot)."""
    return tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


OPCHECK = [
    ("int8_mm", lambda d: ("int8_mm", (_i8(13, 40, device=d), _i8(7, 40, device=d)), {})),
    ("int8_mm_empty", lambda d: ("int8_mm", (_i8(0, 40, device=d), _i8(7, 40, device=d)), {})),
    ("int8_vectorwise_quant", lambda d: ("int8_vectorwise_quant", (_x(2, 9, 33, device=d, dtype=torch.float16),), {})),
    ("int8_vectorwise_quant_outliers",
     lambda d: ("int8_vectorwise_quant", (_x(17, 64, device=d, outlier_cols=(3, 50)), 6.0), {})),
    ("int8_gemm", lambda d: ("int8_gemm", (_x(5, 48, device=d, dtype=torch.bfloat16), *_w(24, 48, d)),
                             {"threshold": 0.0})),
    ("int8_gemm_outliers_bias",
     lambda d: ("int8_gemm", (_x(3, 20, 64, device=d, outlier_cols=(7,)), *_w(40, 64, d),
                              torch.randn(40, device=d), 6.0), {})),
    ("int8_gemm_empty", lambda d: ("int8_gemm", (_x(0, 32, device=d), *_w(8, 32, d)), {})),
    # requires_grad: opcheck's autograd checks run the registered backward (x, w_absmax, bias).
    ("int8_gemm_grad", lambda d: ("int8_gemm", _grad_args(_x(2, 5, 48, device=d, outlier_cols=(4,)), *_w(24, 48, d),
                                                          torch.randn(24, device=d), 6.0), {})),
    ("int8_gemm_grad_x_only_fp16", lambda d: ("int8_gemm", (_x(3, 32, device=d, dtype=torch.float16).requires_grad_(),
                                                            *_w(16, 32, d)), {"threshold": 0.0})),
]

BAD_INPUTS = [
    ("int8_mm_a_dtype", lambda d: lambda: mlx_kernels.int8_mm(_i8(4, 8, device=d).float(), _i8(4, 8, device=d)),
     RuntimeError, op_pattern("int8_mm") + r".*'a_i8'.*int8.*float32"),
    ("int8_mm_b_dtype", lambda d: lambda: mlx_kernels.int8_mm(_i8(4, 8, device=d), _i8(4, 8, device=d).int()),
     RuntimeError, op_pattern("int8_mm") + r".*'b_i8'.*int8.*int32"),
    ("int8_mm_rank", lambda d: lambda: mlx_kernels.int8_mm(_i8(2, 4, 8, device=d), _i8(4, 8, device=d)),
     RuntimeError, op_pattern("int8_mm") + r".*'a_i8' must be 2-D"),
    ("int8_mm_k_mismatch", lambda d: lambda: mlx_kernels.int8_mm(_i8(4, 8, device=d), _i8(4, 9, device=d)),
     RuntimeError, op_pattern("int8_mm") + r".*K mismatch"),
    ("int8_mm_k_overflow", lambda d: lambda: mlx_kernels.int8_mm(_i8(1, 140000, device=d), _i8(1, 140000, device=d)),
     RuntimeError, op_pattern("int8_mm") + r".*overflow"),
    ("int8_quant_x_dtype",
     lambda d: lambda: mlx_kernels.int8_vectorwise_quant(torch.zeros(4, 8, dtype=torch.float64, device=d)),
     RuntimeError, op_pattern("int8_vectorwise_quant") + r".*'x'.*float16 or bfloat16 or float32.*float64"),
    ("int8_quant_scalar", lambda d: lambda: mlx_kernels.int8_vectorwise_quant(torch.tensor(1.0, device=d)),
     RuntimeError, op_pattern("int8_vectorwise_quant") + r".*'x' must have at least 1 dims"),
    ("int8_quant_negative_threshold",
     lambda d: lambda: mlx_kernels.int8_vectorwise_quant(torch.zeros(4, 8, device=d), -1.0),
     ValueError, op_pattern("int8_vectorwise_quant") + r".*'threshold'.*>= 0.*-1"),
    ("int8_gemm_w_dtype",
     lambda d: lambda: mlx_kernels.int8_gemm(_x(4, 8, device=d), _i8(6, 8, device=d).float(), _w(6, 8, d)[1]),
     RuntimeError, op_pattern("int8_gemm") + r".*'w_i8'.*int8.*float32"),
    ("int8_gemm_x_dtype",
     lambda d: lambda: mlx_kernels.int8_gemm(_i8(4, 8, device=d), *_w(6, 8, d)),
     RuntimeError, op_pattern("int8_gemm") + r".*'x'.*float16 or bfloat16 or float32.*int8"),
    ("int8_gemm_k_mismatch",
     lambda d: lambda: mlx_kernels.int8_gemm(_x(4, 9, device=d), *_w(6, 8, d)),
     RuntimeError, op_pattern("int8_gemm") + r".*K mismatch"),
    ("int8_gemm_w_rank",
     lambda d: lambda: mlx_kernels.int8_gemm(_x(4, 8, device=d), _i8(1, 6, 8, device=d), _w(6, 8, d)[1]),
     RuntimeError, op_pattern("int8_gemm") + r".*'w_i8' must be 2-D"),
    ("int8_gemm_absmax_shape",
     lambda d: lambda: mlx_kernels.int8_gemm(_x(4, 8, device=d), _i8(6, 8, device=d), torch.ones(5, device=d)),
     RuntimeError, op_pattern("int8_gemm") + r".*'w_absmax' has size 5.*requires 6"),
    ("int8_gemm_absmax_dtype",
     lambda d: lambda: mlx_kernels.int8_gemm(_x(4, 8, device=d), _i8(6, 8, device=d),
                                             torch.ones(6, device=d, dtype=torch.float16)),
     RuntimeError, op_pattern("int8_gemm") + r".*'w_absmax'.*float32.*float16"),
    ("int8_gemm_bias_shape",
     lambda d: lambda: mlx_kernels.int8_gemm(_x(4, 8, device=d), *_w(6, 8, d), torch.zeros(7, device=d)),
     RuntimeError, op_pattern("int8_gemm") + r".*'bias' has size 7.*requires 6"),
    ("int8_gemm_negative_threshold",
     lambda d: lambda: mlx_kernels.int8_gemm(_x(4, 8, device=d), *_w(6, 8, d), None, -0.5),
     ValueError, op_pattern("int8_gemm") + r".*'threshold'.*>= 0"),
    ("int8_gemm_k_overflow",
     lambda d: lambda: mlx_kernels.int8_gemm(_x(1, 140000, device=d), _i8(1, 140000, device=d),
                                             torch.ones(1, device=d)),
     RuntimeError, op_pattern("int8_gemm") + r".*overflow"),
]
