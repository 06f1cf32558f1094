"""int8 family samples for opcheck and bad-input tests."""

import torch

import mlx_kernels
from cases import op_pattern


def _i8(*shape, device):
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=device)


OPCHECK = [
    ("int8_mm", lambda d: ("int8_mm", (_i8(13, 40, device=d), _i8(7, 40, device=d)), {})),
    ("int8_mm_empty", lambda d: ("int8_mm", (_i8(0, 40, device=d), _i8(7, 40, device=d)), {})),
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
]
