"""fftconv family samples for opcheck and bad-input tests."""

import torch

import mlx_kernels
from cases import op_pattern


def _u(*shape, device, dtype=torch.float32, grad=False):
    return torch.randn(*shape, device=device, dtype=dtype, requires_grad=grad)


OPCHECK = [
    ("fft_conv", lambda d: ("fft_conv", (_u(3, 2, 37, device=d), _u(2, 20, device=d)), {})),
    ("fft_conv_gates_grad", lambda d: ("fft_conv", (_u(2, 2, 16, device=d, grad=True), _u(2, 16, device=d, grad=True),
                                                    _u(2, 2, 16, device=d, grad=True), _u(2, 2, 16, device=d, grad=True)), {})),
    ("fft_conv_bf16", lambda d: ("fft_conv", (_u(1, 3, 100, device=d, dtype=torch.bfloat16), _u(3, 7, device=d)), {})),
    ("fft_conv_empty", lambda d: ("fft_conv", (_u(0, 2, 5, device=d), _u(2, 5, device=d)), {})),
    ("fft_conv_spectrum", lambda d: ("fft_conv_spectrum", (_u(3, 10, device=d), 50, 3), {})),
    ("fft_conv_spectral", lambda d: ("fft_conv_spectral", (_u(2, 3, 50, device=d),
                                                           mlx_kernels.ops.fft_conv_spectrum(_u(3, 10, device=d), 50, 2), 2), {})),
]


def _call(d, u_shape=(2, 3, 16), k_shape=(3, 8), u_dtype=torch.float32, k_dtype=torch.float32, pre=None, post=None):
    u = torch.randn(*u_shape, device=d).to(u_dtype)
    k = torch.randn(*k_shape, device=d).to(k_dtype)
    return lambda: mlx_kernels.fft_conv(u, k, pre, post)


_OP = op_pattern("fft_conv")
BAD_INPUTS = [
    ("fft_conv_k_longer_than_u", lambda d: _call(d, k_shape=(3, 17)), RuntimeError, _OP + r".*'k'.*Lk <= L = 16.*17"),
    ("fft_conv_k_empty", lambda d: _call(d, k_shape=(3, 0)), RuntimeError, _OP + r".*'k'.*1 <= Lk"),
    ("fft_conv_h_mismatch", lambda d: _call(d, k_shape=(4, 8)), RuntimeError, _OP + r".*'k' has size 4 in dim 0.*H"),
    ("fft_conv_u_2d", lambda d: _call(d, u_shape=(3, 16)), RuntimeError, _OP + r".*'u' must be 3-D"),
    ("fft_conv_k_3d", lambda d: _call(d, k_shape=(1, 3, 8)), RuntimeError, _OP + r".*'k' must be 2-D"),
    ("fft_conv_k_fp16", lambda d: _call(d, k_dtype=torch.float16), RuntimeError, _OP + r".*'k'.*float32.*float16"),
    ("fft_conv_k_fp64_with_fp32_u", lambda d: _call(d, k_dtype=torch.float64), RuntimeError,
     _OP + r".*'k'.*float32.*float64"),
    ("fft_conv_u_int", lambda d: _call(d, u_dtype=torch.int32), RuntimeError, _OP + r".*'u'.*float16.*int32"),
    ("fft_conv_gate_shape", lambda d: _call(d, pre=torch.randn(2, 3, 15, device=d)), RuntimeError,
     _OP + r".*'pregate'.*shape"),
    ("fft_conv_gate_dtype", lambda d: _call(d, post=torch.randn(2, 3, 16, device=d, dtype=torch.float16)),
     RuntimeError, _OP + r".*'postgate'.*dtype float32.*float16"),
    ("fft_conv_spectral_wrong_n", lambda d: lambda: mlx_kernels.ops.fft_conv_spectral(
        torch.randn(2, 3, 16, device=d), torch.randn(3, 2, 64, device=d), 8), RuntimeError,
     op_pattern("fft_conv_spectral") + r".*'k_f'.*FFT size"),
    ("fft_conv_spectrum_keep_range", lambda d: lambda: mlx_kernels.ops.fft_conv_spectrum(
        torch.randn(3, 8, device=d), 16, 9), ValueError, op_pattern("fft_conv_spectrum") + r".*keep_blocks"),
]
