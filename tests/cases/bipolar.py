"""bipolar-INT family samples for opcheck and bad-input tests."""

import torch

import mlx_kernels
from cases import op_pattern


def _values(rows, k, bits, device):
    return 2 * torch.randint(0, 2**bits, (rows, k), dtype=torch.int32, device=device) - (2**bits - 1)


def _planes(bits, rows, k, device):
    return mlx_kernels.bipolar_pack(_values(rows, k, bits, device), bits)


def _linear_args(device, dtype=torch.float32, k=70, n=9, bias=True):
    x = torch.randn(2, 3, k, device=device, dtype=dtype)
    w_planes = _planes(3, n, k, device)
    w_scale = torch.rand(n, device=device)
    b = torch.randn(n, device=device, dtype=dtype) if bias else None
    return x, w_planes, w_scale, 4, b


def _grad_args(*args):
    """Every floating tensor argument requires grad (the int32 planes cannot)."""
    return tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


OPCHECK = [
    ("bipolar_pack", lambda d: ("bipolar_pack", (_values(5, 70, 3, d), 3), {})),
    ("bipolar_pack_empty", lambda d: ("bipolar_pack", (_values(0, 70, 3, d), 3), {})),
    ("bipolar_unpack", lambda d: ("bipolar_unpack", (_planes(4, 6, 45, d), 45), {})),
    ("bipolar_gemm", lambda d: ("bipolar_gemm", (_planes(2, 13, 300, d), _planes(3, 7, 300, d), 300), {})),
    ("bipolar_gemm_empty", lambda d: ("bipolar_gemm", (_planes(2, 0, 40, d), _planes(3, 7, 40, d), 40), {})),
    ("bipolar_quantize", lambda d: ("bipolar_quantize", (torch.randn(6, 50, device=d), 3), {})),
    ("bipolar_quantize_half", lambda d: ("bipolar_quantize", (torch.randn(6, 50, device=d).half(), 5), {})),
    ("bipolar_linear", lambda d: ("bipolar_linear", _linear_args(d), {})),
    ("bipolar_linear_bf16_nobias", lambda d: ("bipolar_linear", _linear_args(d, torch.bfloat16, bias=False), {})),
    # requires_grad: opcheck's autograd checks run the registered backward (x, w_scale, bias).
    ("bipolar_linear_grad", lambda d: ("bipolar_linear", _grad_args(*_linear_args(d)), {})),
    ("bipolar_linear_grad_x_only_fp16",
     lambda d: ("bipolar_linear", (_linear_args(d, torch.float16, bias=False)[0].requires_grad_(),
                                   *_linear_args(d, torch.float16, bias=False)[1:]), {})),
]


def _gemm_call(a, w, k):
    return lambda: mlx_kernels.bipolar_gemm(a, w, k)


BAD_INPUTS = [
    ("bipolar_pack_even", lambda d: lambda: mlx_kernels.bipolar_pack(torch.tensor([[1, 2, 3]], device=d), 2),
     ValueError, op_pattern("bipolar_pack") + r".*'values'.*odd.*got 2 at \[0, 1\]"),
    ("bipolar_pack_range", lambda d: lambda: mlx_kernels.bipolar_pack(torch.tensor([[1, -5]], device=d), 2),
     ValueError, op_pattern("bipolar_pack") + r".*\[-3, 3\].*got -5"),
    ("bipolar_pack_bits0", lambda d: lambda: mlx_kernels.bipolar_pack(_values(2, 3, 1, d), 0),
     ValueError, op_pattern("bipolar_pack") + r".*'bits' must be in 1..8.*got 0"),
    ("bipolar_pack_bits9", lambda d: lambda: mlx_kernels.bipolar_pack(_values(2, 3, 1, d), 9),
     ValueError, op_pattern("bipolar_pack") + r".*'bits' must be in 1..8.*got 9"),
    ("bipolar_pack_dtype", lambda d: lambda: mlx_kernels.bipolar_pack(_values(2, 3, 1, d).float(), 1),
     RuntimeError, op_pattern("bipolar_pack") + r".*'values'.*int.*float32"),
    ("bipolar_pack_rank", lambda d: lambda: mlx_kernels.bipolar_pack(_values(2, 3, 1, d).view(-1), 1),
     RuntimeError, op_pattern("bipolar_pack") + r".*'values' must be 2-D"),
    ("bipolar_unpack_k_mismatch", lambda d: lambda: mlx_kernels.bipolar_unpack(_planes(2, 3, 40, d), 100),
     RuntimeError, op_pattern("bipolar_unpack") + r".*'planes' has 2 words.*K = 100.*needs 4"),
    ("bipolar_unpack_bits9", lambda d: lambda: mlx_kernels.bipolar_unpack(
        torch.zeros(9, 2, 1, dtype=torch.int32, device=d), 10),
     ValueError, op_pattern("bipolar_unpack") + r".*'planes.shape\[0\]' must be in 1..8.*got 9"),
    ("bipolar_unpack_dtype", lambda d: lambda: mlx_kernels.bipolar_unpack(
        torch.zeros(2, 2, 1, dtype=torch.int64, device=d), 10),
     RuntimeError, op_pattern("bipolar_unpack") + r".*'planes'.*int32.*int64"),
    ("bipolar_gemm_k_mismatch", lambda d: _gemm_call(_planes(2, 3, 64, d), _planes(2, 4, 64, d), 65),
     RuntimeError, op_pattern("bipolar_gemm") + r".*'a_planes' has 2 words.*K = 65"),
    ("bipolar_gemm_word_mismatch", lambda d: _gemm_call(_planes(2, 3, 64, d), _planes(2, 4, 96, d), 64),
     RuntimeError, op_pattern("bipolar_gemm") + r".*'w_planes' has 3 words.*K = 64.*needs 2"),
    ("bipolar_gemm_overflow", lambda d: _gemm_call(
        torch.zeros(8, 1, 1040, dtype=torch.int32, device=d), torch.zeros(8, 1, 1040, dtype=torch.int32, device=d),
        33260),
     RuntimeError, op_pattern("bipolar_gemm") + r".*overflow the int32"),
    ("bipolar_gemm_rank", lambda d: _gemm_call(_planes(2, 3, 64, d)[0], _planes(2, 4, 64, d), 64),
     RuntimeError, op_pattern("bipolar_gemm") + r".*'a_planes' must be 3-D"),
    ("bipolar_gemm_bits9", lambda d: _gemm_call(torch.zeros(9, 3, 2, dtype=torch.int32, device=d),
                                                _planes(2, 4, 64, d), 64),
     ValueError, op_pattern("bipolar_gemm") + r".*'a_planes.shape\[0\]' must be in 1..8.*got 9"),
    ("bipolar_quantize_bits0", lambda d: lambda: mlx_kernels.bipolar_quantize(torch.randn(2, 3, device=d), 0),
     ValueError, op_pattern("bipolar_quantize") + r".*'bits' must be in 1..8.*got 0"),
    ("bipolar_quantize_dtype", lambda d: lambda: mlx_kernels.bipolar_quantize(torch.ones(2, 3, device=d).int(), 2),
     RuntimeError, op_pattern("bipolar_quantize") + r".*'x'.*float.*int32"),
    ("bipolar_quantize_rank", lambda d: lambda: mlx_kernels.bipolar_quantize(torch.randn(2, 3, 4, device=d), 2),
     RuntimeError, op_pattern("bipolar_quantize") + r".*'x' must be 2-D"),
    ("bipolar_linear_x_bits9", lambda d: lambda: mlx_kernels.bipolar_linear(*_linear_args(d)[:3], 9),
     ValueError, op_pattern("bipolar_linear") + r".*'x_bits' must be in 1..8.*got 9"),
    ("bipolar_linear_k_mismatch", lambda d: lambda: mlx_kernels.bipolar_linear(
        torch.randn(4, 100, device=d), *_linear_args(d)[1:]),
     RuntimeError, op_pattern("bipolar_linear") + r".*'x' has K = 100.*w_planes.*W = 3 words.*K in 65\.\.96"),
    ("bipolar_linear_k_mismatch_batched", lambda d: lambda: mlx_kernels.bipolar_linear(
        torch.randn(2, 3, 20, device=d), *_linear_args(d)[1:]),
     RuntimeError, op_pattern("bipolar_linear") + r".*'x' has K = 20.*\[2, 3, 20\].*W = 3 words"),
    ("bipolar_linear_planes_rank", lambda d: lambda: mlx_kernels.bipolar_linear(
        torch.randn(4, 70, device=d), _linear_args(d)[1][0], *_linear_args(d)[2:]),
     RuntimeError, op_pattern("bipolar_linear") + r".*'w_planes' must be 3-D"),
    ("bipolar_linear_scale_shape", lambda d: lambda: mlx_kernels.bipolar_linear(
        *_linear_args(d)[:2], torch.rand(5, device=d), 4),
     RuntimeError, op_pattern("bipolar_linear") + r".*'w_scale' has size 5"),
    ("bipolar_linear_bias_dtype", lambda d: lambda: mlx_kernels.bipolar_linear(
        *_linear_args(d)[:4], torch.randn(9, device=d, dtype=torch.float16)),
     RuntimeError, op_pattern("bipolar_linear") + r".*'bias'.*float32.*float16"),
    ("bipolar_linear_x_dtype", lambda d: lambda: mlx_kernels.bipolar_linear(
        torch.ones(2, 70, device=d, dtype=torch.int32), *_linear_args(d)[1:]),
     RuntimeError, op_pattern("bipolar_linear") + r".*'x'.*int32"),
    ("bipolar_linear_overflow", lambda d: lambda: mlx_kernels.bipolar_linear(
        torch.randn(1, 33260, device=d), torch.zeros(8, 2, 1040, dtype=torch.int32, device=d),
        torch.ones(2, device=d), 8),
     RuntimeError, op_pattern("bipolar_linear") + r".*overflow the int32"),
]
