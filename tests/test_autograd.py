"""Autograd across the namespace: every op has a backward or refuses a gradient by name.

Each family's own tests check its gradients against float64 autograd; this file checks
what holds for all of them: no op leaves ``.grad`` silently None.
"""

import pytest
import torch

import mlx_kernels
from mlx_kernels import _cuda_missing

NAMESPACE = mlx_kernels.OPS_NAMESPACE


def namespace_ops():
    return sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith(f"{NAMESPACE}::"))


@pytest.mark.parametrize("qualname", namespace_ops())
def test_every_op_has_an_autograd_kernel(qualname):
    """register_autograd (a formula, or register_non_differentiable's named error) on every op:
    without one torch warns once and the inputs' .grad stays None."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Autograd"), (
        f"{qualname} has no autograd kernel: register a backward or declare it non-differentiable")


def test_non_differentiable_op_names_itself():
    k = torch.randn(4, 7, requires_grad=True)
    spectrum = mlx_kernels.ops.fft_conv_spectrum(k, 16, 8)
    with pytest.raises(RuntimeError, match=rf"{NAMESPACE}\.fft_conv_spectrum is not differentiable.*FFTConv"):
        spectrum.sum().backward()


@pytest.mark.skipif(mlx_kernels.WITH_CUDA, reason="a build with CUDA kernels runs them")
def test_cpu_only_build_names_itself_for_cuda_tensors():
    """A CPU-only build handed CUDA tensors: our message, not the dispatcher's. Called through
    the CUDA dispatch key directly, as no GPU is needed to reach it."""
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match=rf"{NAMESPACE}\.int8_vectorwise_quant: got CUDA tensors, but this "
                                           r"build of mlx_kernels has no CUDA kernels.*MLX_CUDA=ON"):
        torch.ops.mlx.int8_vectorwise_quant.default._op_dk(torch._C.DispatchKey.CUDA, x, 0.0)
    assert set(namespace_ops()) <= _cuda_missing.OPS
