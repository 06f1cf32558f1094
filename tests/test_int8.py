"""int8 family: int8_mm (exact) against the int64 oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mlx_kernels
import oracles
from conftest import HAS_CUDA, requires_cuda


def random_int8(*shape, device="cpu"):
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=device)


@pytest.mark.parametrize(
    "m,n,k",
    [(0, 5, 7), (5, 0, 7), (5, 7, 0), (1, 1, 1), (3, 5, 7), (17, 33, 65), (64, 64, 64),
     (100, 37, 250), (129, 257, 513), (16, 4096 // 8, 1000), (1, 300, 4097)],
)
def test_int8_mm_matches_oracle(device, m, n, k):
    a, b = random_int8(m, k, device=device), random_int8(n, k, device=device)
    out = mlx_kernels.int8_mm(a, b)
    assert out.dtype == torch.int32 and out.shape == (m, n) and out.device.type == device
    torch.testing.assert_close(out.cpu().long(), oracles.int8_mm(a, b), rtol=0, atol=0)


def test_int8_mm_extreme_values_large_k(device):
    # Every product at its largest magnitude: (-128)·(-128) summed over a K that
    # keeps the result just inside int32.
    k = (2**31 - 1) // (128 * 128) - 7
    a = torch.full((3, k), -128, dtype=torch.int8, device=device)
    b = torch.full((2, k), -128, dtype=torch.int8, device=device)
    out = mlx_kernels.int8_mm(a, b)
    assert (out.cpu().long() == k * 128 * 128).all()


@pytest.mark.parametrize("layout", ["a_transposed", "b_transposed", "sliced", "offset"])
def test_int8_mm_non_contiguous(device, layout):
    a, b = random_int8(40, 72, device=device), random_int8(24, 72, device=device)
    if layout == "a_transposed":
        a = random_int8(72, 40, device=device).t()
    elif layout == "b_transposed":
        b = random_int8(72, 24, device=device).t()
    elif layout == "sliced":
        a, b = random_int8(40, 144, device=device)[:, ::2], random_int8(48, 72, device=device)[::2]
    else:  # a view whose data does not start on a 16-byte boundary
        a = random_int8(40 * 72 + 3, device=device)[3:].view(40, 72)
    out = mlx_kernels.int8_mm(a, b)
    torch.testing.assert_close(out.cpu().long(), oracles.int8_mm(a, b), rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 70), n=st.integers(0, 70), k=st.integers(0, 300))
def test_int8_mm_property_cpu(m, n, k):
    a, b = random_int8(m, k), random_int8(n, k)
    torch.testing.assert_close(mlx_kernels.int8_mm(a, b).long(), oracles.int8_mm(a, b), rtol=0, atol=0)


@requires_cuda
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (16, 11008, 4096), (300, 500, 1000), (2048, 2048, 2048)])
def test_int8_mm_cuda_matches_cpu(m, n, k):
    a, b = random_int8(m, k), random_int8(n, k)
    torch.testing.assert_close(mlx_kernels.int8_mm(a.cuda(), b.cuda()).cpu(), mlx_kernels.int8_mm(a, b),
                               rtol=0, atol=0)


def test_int8_mm_torch_compile(device):
    a, b = random_int8(33, 64, device=device), random_int8(17, 64, device=device)

    @torch.compile(fullgraph=True)
    def scaled(a, b):
        return mlx_kernels.int8_mm(a, b).float() * 0.5

    torch.testing.assert_close(scaled(a, b).cpu(), oracles.int8_mm(a, b).float() * 0.5)
