"""bipolar-INT family: pack/unpack, quantize, the exact bit-plane GEMM, BipolarLinear."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mlx_kernels
import oracles
from conftest import EMU, assert_close_to_oracle, requires_cuda

ALL_BITS = list(itertools.product(range(1, 9), range(1, 9)))  # (a_bits, w_bits)
# Odd shapes: none of M, N, K a multiple of 16/32/64/256, plus K = 1 and a K
# whose last plane word is full (K = 96) or one bit long (K = 289).
GEMM_SHAPES = [(3, 5, 1), (17, 9, 77), (33, 70, 289), (1, 13, 96), (70, 41, 555)]


def packed(rows, k, bits, device="cpu"):
    values = oracles.bipolar_random_values(rows, k, bits, device=device)
    return values, mlx_kernels.bipolar_pack(values, bits)


# --- pack / unpack -----------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("rows,k", [(0, 5), (4, 0), (1, 1), (3, 31), (5, 32), (7, 33), (9, 100)])
def test_pack_matches_oracle_and_round_trips(device, bits, rows, k):
    values = oracles.bipolar_random_values(rows, k, bits, device=device)
    planes = mlx_kernels.bipolar_pack(values, bits)
    assert planes.dtype == torch.int32 and planes.shape == (bits, rows, (k + 31) // 32)
    torch.testing.assert_close(planes.cpu(), oracles.bipolar_pack(values, bits), rtol=0, atol=0)
    torch.testing.assert_close(mlx_kernels.bipolar_unpack(planes, k), values, rtol=0, atol=0)
    torch.testing.assert_close(oracles.bipolar_unpack(planes, k), values.cpu().long(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int64])
def test_pack_value_dtypes_and_non_contiguous(device, dtype):
    values = oracles.bipolar_random_values(40, 70, 3, device=device).to(dtype)
    reference = oracles.bipolar_pack(values, 3)
    torch.testing.assert_close(mlx_kernels.bipolar_pack(values, 3).cpu(), reference, rtol=0, atol=0)
    transposed = values.t().contiguous().t()
    torch.testing.assert_close(mlx_kernels.bipolar_pack(transposed, 3).cpu(), reference, rtol=0, atol=0)


def test_extreme_levels_round_trip(device):
    values = torch.tensor([[-255, 255, -1, 1, 127, -129]], dtype=torch.int32, device=device)
    torch.testing.assert_close(mlx_kernels.bipolar_unpack(mlx_kernels.bipolar_pack(values, 8), 6), values)


# --- GEMM --------------------------------------------------------------------


@pytest.mark.parametrize("a_bits,w_bits", ALL_BITS, ids=[f"A{a}W{w}" for a, w in ALL_BITS])
def test_gemm_all_bit_widths_exact(device, a_bits, w_bits):
    for m, n, k in GEMM_SHAPES:
        a_values, a_planes = packed(m, k, a_bits, device)
        w_values, w_planes = packed(n, k, w_bits, device)
        out = mlx_kernels.bipolar_gemm(a_planes, w_planes, k)
        assert out.dtype == torch.int32 and out.shape == (m, n) and out.device.type == device
        expected = a_values.cpu().long() @ w_values.cpu().long().T
        torch.testing.assert_close(out.cpu().long(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("m,n,k", [(0, 5, 40), (5, 0, 40), (5, 7, 0), (0, 0, 0)])
def test_gemm_empty(device, m, n, k):
    _, a_planes = packed(m, k, 2, device)
    _, w_planes = packed(n, k, 3, device)
    out = mlx_kernels.bipolar_gemm(a_planes, w_planes, k)
    assert out.shape == (m, n) and out.dtype == torch.int32
    assert (out == 0).all()


def test_gemm_large_tiles_and_long_k(device):
    # Several CTA tiles in both directions and many K slices, odd everywhere.
    a_values, a_planes = packed(131, 1100, 4, device)
    w_values, w_planes = packed(75, 1100, 2, device)
    out = mlx_kernels.bipolar_gemm(a_planes, w_planes, 1100)
    torch.testing.assert_close(out.cpu().long(), oracles.bipolar_gemm(a_planes, w_planes, 1100), rtol=0, atol=0)
    assert torch.equal(out.cpu().long(), a_values.cpu().long() @ w_values.cpu().long().T)


def test_gemm_extreme_values_near_overflow_limit(device):
    # Every product at its largest magnitude with K just under the int32 guard.
    k = (2**31 - 1) // (255 * 255)
    a = torch.full((2, k), -255, dtype=torch.int32, device=device)
    w = torch.full((3, k), -255, dtype=torch.int32, device=device)
    w[1] = 255
    out = mlx_kernels.bipolar_gemm(mlx_kernels.bipolar_pack(a, 8), mlx_kernels.bipolar_pack(w, 8), k)
    expected = torch.tensor([[1, -1, 1]], dtype=torch.int64) * (k * 255 * 255)
    assert torch.equal(out.cpu().long(), expected.expand(2, 3))


def test_gemm_ignores_garbage_padding_bits(device):
    # The format says padding bits are 0; the kernels mask them anyway.
    a_values, a_planes = packed(9, 40, 3, device)
    w_values, w_planes = packed(11, 40, 2, device)
    expected = a_values.cpu().long() @ w_values.cpu().long().T
    a_dirty, w_dirty = a_planes.clone(), w_planes.clone()
    # Bits 8..31 of the last word (K = 40 uses bits 0..7). The two junk patterns differ:
    # equal junk on both sides would cancel in the ±1 product and hide a missing mask.
    a_dirty[..., -1] |= -256
    w_dirty[..., -1] |= 0x35A5C300
    torch.testing.assert_close(mlx_kernels.bipolar_gemm(a_dirty, w_dirty, 40).cpu().long(), expected, rtol=0, atol=0)


def test_gemm_non_contiguous_planes(device):
    a_values, a_planes = packed(20, 70, 2, device)
    w_values, w_planes = packed(12, 70, 3, device)
    a_nc = a_planes.transpose(0, 1).contiguous().transpose(0, 1)
    w_sliced = torch.stack([w_planes, w_planes], dim=2).flatten(1, 2)[:, ::2]  # rows w0, w0, w1, w1, ...
    assert not w_sliced.is_contiguous()
    out = mlx_kernels.bipolar_gemm(a_nc, w_sliced, 70)
    assert torch.equal(out.cpu().long(), a_values.cpu().long() @ w_values.cpu().long().T)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(0, 40), n=st.integers(0, 40), k=st.integers(0, 600), a_bits=st.integers(1, 8),
       w_bits=st.integers(1, 8))
def test_gemm_property_cpu(m, n, k, a_bits, w_bits):
    a_values, a_planes = packed(m, k, a_bits)
    w_values, w_planes = packed(n, k, w_bits)
    out = mlx_kernels.bipolar_gemm(a_planes, w_planes, k)
    assert torch.equal(out.long(), a_values.long() @ w_values.long().T)


@requires_cuda
# Decode-sized M with long K runs split-K (40 × 64 × 8192: the large tile with
# split-K); the others one pass over K.
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (16, 1000, 4000), (3, 77, 9000), (40, 64, 8192),
                                   (300, 500, 1000), (1024, 1024, 4096)])
@pytest.mark.parametrize("a_bits,w_bits", [(1, 1), (2, 2), (4, 2), (8, 8)])
def test_gemm_cuda_matches_cpu(m, n, k, a_bits, w_bits):
    if EMU:  # 1024 × 1024 takes minutes on the emulator; 256 × 256 keeps its large tile and 2-way split-K
        m, n = min(m, 256), min(n, 256)
    _, a_planes = packed(m, k, a_bits)
    _, w_planes = packed(n, k, w_bits)
    out = mlx_kernels.bipolar_gemm(a_planes.cuda(), w_planes.cuda(), k)
    torch.testing.assert_close(out.cpu(), mlx_kernels.bipolar_gemm(a_planes, w_planes, k), rtol=0, atol=0)


# --- quantize ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_quantize_levels_and_error_bound(device, dtype, bits):
    x = torch.randn(37, 301, device=device).to(dtype)
    x[3] = 0  # a row of zeros: scale 0, no NaN
    planes, scale = mlx_kernels.bipolar_quantize(x, bits)
    assert planes.shape == (bits, 37, 10) and scale.shape == (37,) and scale.dtype == torch.float32
    levels, expected_scale = oracles.bipolar_quantize_levels(x, bits)
    torch.testing.assert_close(scale.cpu(), expected_scale, rtol=0, atol=0)
    torch.testing.assert_close(mlx_kernels.bipolar_unpack(planes, 301).cpu().long(), levels, rtol=0, atol=0)
    # Round to nearest odd level: error at most half a level spacing (2) times the scale.
    error = (x.cpu().double() - scale.cpu().double()[:, None] * levels.double()).abs()
    assert (error <= scale.cpu().double()[:, None] * (1 + 1e-5) + 1e-30).all()
    assert scale[3] == 0 and torch.isfinite(scale).all()


def test_quantize_extremes_hit_top_level(device):
    x = torch.tensor([[-2.0, 0.5, 2.0], [0.0, 0.0, 0.0], [1.0, -3.0, 0.1]], device=device)
    planes, scale = mlx_kernels.bipolar_quantize(x, 2)
    levels = mlx_kernels.bipolar_unpack(planes, 3).cpu()
    assert levels[0, 0] == -3 and levels[0, 2] == 3 and levels[2, 1] == -3
    torch.testing.assert_close(scale.cpu(), torch.tensor([2 / 3, 0.0, 1.0]))


def test_quantize_non_contiguous(device):
    x = torch.randn(50, 33, device=device)
    planes, scale = mlx_kernels.bipolar_quantize(x.t(), 4)
    expected_planes, expected_scale = mlx_kernels.bipolar_quantize(x.t().contiguous(), 4)
    assert torch.equal(planes, expected_planes) and torch.equal(scale, expected_scale)


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(0, 9), k=st.integers(0, 200), bits=st.integers(1, 8), magnitude=st.floats(1e-3, 1e3))
def test_quantize_property_cpu(rows, k, bits, magnitude):
    x = torch.randn(rows, k) * magnitude
    planes, scale = mlx_kernels.bipolar_quantize(x, bits)
    levels = mlx_kernels.bipolar_unpack(planes, k).double()
    assert (levels.abs() <= 2**bits - 1).all() and (levels.remainder(2) == 1).all()
    assert ((x.double() - scale.double()[:, None] * levels).abs() <= scale.double()[:, None] * (1 + 1e-5)).all()


@pytest.mark.parametrize("shape", [(0, 10), (5, 0)])
def test_quantize_empty(device, shape):
    planes, scale = mlx_kernels.bipolar_quantize(torch.randn(*shape, device=device), 3)
    assert planes.shape == (3, shape[0], (shape[1] + 31) // 32) and scale.shape == (shape[0],)


# --- linear ------------------------------------------------------------------


def linear_oracle(x, w_planes, w_scale, x_bits, bias):
    """float64 x_scale[m]·w_scale[n]·(levels_x @ levels_w.T) + bias, from the quantizer's definition."""
    x2d = x.reshape(-1, x.shape[-1])
    levels, x_scale = oracles.bipolar_quantize_levels(x2d, x_bits)
    w_levels = oracles.bipolar_unpack(w_planes, x.shape[-1])
    out = (levels.double() @ w_levels.double().T) * x_scale.double()[:, None] * w_scale.cpu().double()[None, :]
    if bias is not None:
        out = out + bias.cpu().double()
    return out.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("w_bits,x_bits", [(1, 1), (2, 4), (4, 4), (3, 8)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bipolar_linear_matches_oracle(device, dtype, w_bits, x_bits, with_bias):
    linear = torch.nn.Linear(75, 33, bias=with_bias).to(device)
    layer = mlx_kernels.BipolarLinear.from_float(linear, w_bits, x_bits)
    x = torch.randn(2, 5, 75, device=device).to(dtype)
    layer = layer.to(dtype)  # casts w_scale and bias too: the layer must cope
    out = layer(x)
    assert out.dtype == dtype and out.shape == (2, 5, 33)
    oracle = linear_oracle(x, layer.w_planes, layer.w_scale.float(), x_bits, layer.bias)
    # Reference: the same dequantized product computed by plain torch in x's dtype.
    levels, x_scale = oracles.bipolar_quantize_levels(x.reshape(-1, 75), x_bits)
    w_dequant = layer.dequantized_weight().to(dtype).cpu()
    reference = (levels.to(dtype) * x_scale[:, None].to(dtype)) @ w_dequant.T
    if layer.bias is not None:
        reference = reference + layer.bias.cpu().to(dtype)
    assert_close_to_oracle(out.cpu(), oracle, reference.reshape(2, 5, 33), atol=1e-5)


def test_bipolar_linear_non_contiguous_input(device):
    layer = mlx_kernels.BipolarLinear.from_float(torch.nn.Linear(48, 20).to(device), 3, 6)
    x = torch.randn(48, 7, device=device).t()
    torch.testing.assert_close(layer(x), layer(x.contiguous()), rtol=0, atol=0)


def test_bipolar_linear_approximates_float_linear(device):
    linear = torch.nn.Linear(256, 64).to(device)
    x = torch.randn(8, 256, device=device)
    out = mlx_kernels.BipolarLinear.from_float(linear, 8, 8)(x)
    expected = linear(x).detach()
    assert (out - expected).abs().max() < 0.05 * expected.abs().max()


def test_bipolar_linear_empty_k1_and_1d(device):
    layer = mlx_kernels.BipolarLinear.from_float(torch.nn.Linear(1, 4).to(device), 2, 2)
    assert layer(torch.randn(0, 1, device=device)).shape == (0, 4)
    assert layer(torch.randn(1, device=device)).shape == (4,)
    x = torch.randn(3, 1, device=device)
    torch.testing.assert_close(layer(x).cpu(), linear_oracle(x, layer.w_planes, layer.w_scale, 2, layer.bias).float())


@pytest.mark.parametrize("with_bias", [False, True])
def test_bipolar_linear_zero_in_features(device, with_bias):
    # K = 0: every product is an empty sum, so the output is the bias (or zeros).
    layer = mlx_kernels.BipolarLinear(0, 5, w_bits=2, x_bits=3, bias=with_bias, device=device)
    if with_bias:
        layer.bias.copy_(torch.arange(5.0))
    out = layer(torch.randn(2, 3, 0, device=device))
    expected = torch.arange(5.0, device=device) if with_bias else torch.zeros(5, device=device)
    torch.testing.assert_close(out, expected.expand(2, 3, 5), rtol=0, atol=0)


def test_bipolar_linear_state_dict_round_trip_and_repr(device):
    layer = mlx_kernels.BipolarLinear.from_float(torch.nn.Linear(40, 24).to(device), 3, 5)
    fresh = mlx_kernels.BipolarLinear(40, 24, w_bits=3, x_bits=5, device=device)
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(6, 40, device=device)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    assert set(layer.state_dict()) == {"w_planes", "w_scale", "bias"}
    assert "W3A5" in repr(layer)


def test_bipolar_linear_torch_compile(device):
    layer = mlx_kernels.BipolarLinear.from_float(torch.nn.Linear(64, 48).to(device), 2, 4)
    x = torch.randn(5, 64, device=device)
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows,k", [(21, 1000), (2, 4100)])  # (2, 4100): decode-sized, split-K
def test_bipolar_linear_cuda_matches_cpu(dtype, rows, k):
    layer = mlx_kernels.BipolarLinear.from_float(torch.nn.Linear(k, 300), 2, 4).to(dtype)
    x = torch.randn(rows, k).to(dtype)
    out = layer.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(out, layer.cpu()(x), rtol=1e-2, atol=1e-2)


# --- bipolar_mma_peak (the tensor-core microbenchmark) ----------------------------

def _runs_sm90a_kernels():
    from mlx_kernels import _build_config

    return "90a" in _build_config.CUDA_ARCHS.split(";") and torch.cuda.get_device_capability() == (9, 0)


@requires_cuda
@pytest.mark.parametrize("kind", ["b1_and", "s4", "s8", "wgmma_b1_and", "wgmma_s8", "wgmma_f16"])
def test_mma_peak_runs_every_kind(kind):
    like = torch.empty(0, device="cuda")
    if kind.startswith("wgmma") and not _runs_sm90a_kernels():
        with pytest.raises(RuntimeError, match=r"bipolar_mma_peak.*9\.0"):
            mlx_kernels.ops.bipolar_mma_peak(like, kind, 3, 2)
        return
    sink = mlx_kernels.ops.bipolar_mma_peak(like, kind, 3, 2)
    torch.cuda.synchronize()
    assert sink.shape == (3,) and sink.dtype == torch.int32 and sink.device == like.device


@requires_cuda
@pytest.mark.parametrize("kind,blocks,iterations,match", [("b2_and", 1, 1, "kind"), ("s8", 0, 1, "blocks"),
                                                          ("s8", 1, 0, "iterations")])
def test_mma_peak_bad_arguments(kind, blocks, iterations, match):
    with pytest.raises(ValueError, match=f"bipolar_mma_peak.*{match}"):
        mlx_kernels.ops.bipolar_mma_peak(torch.empty(0, device="cuda"), kind, blocks, iterations)
