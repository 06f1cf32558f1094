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
        with torch.no_grad():  # bias is an nn.Parameter, as nn.Linear's
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


# --- NaN / Inf policy: never a finite result where x @ W_deq.T + bias is not --------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_quantize_nonfinite_rows_get_nan_scale(device, dtype):
    x = torch.randn(5, 70)
    x[1, 40], x[2, 0], x[3, 69] = NAN, INF, -INF
    x = x.to(dtype).to(device)
    planes, scale = mlx_kernels.bipolar_quantize(x, 3)
    scale = scale.cpu()
    assert torch.isnan(scale[1:4]).all() and torch.isfinite(scale[[0, 4]]).all()
    levels = mlx_kernels.bipolar_unpack(planes, 70).cpu()
    assert (levels[1:4] == 1).all()  # as a row of zeros: level +1, dequantizing to NaN · 1
    assert torch.isnan(scale[:, None] * levels)[1:4].all()
    expected_levels, expected_scale = oracles.bipolar_quantize_levels(x[[0, 4]], 3)
    torch.testing.assert_close(scale[[0, 4]], expected_scale, rtol=0, atol=0)
    assert torch.equal(levels[[0, 4]].long(), expected_levels)


def test_quantize_float64_beyond_float32_range_is_nonfinite(device):
    x = torch.tensor([[1e300, 1.0], [1.0, 2.0]], dtype=torch.float64, device=device)
    _, scale = mlx_kernels.bipolar_quantize(x, 2)
    assert torch.isnan(scale[0]) and scale[1] == 2 / 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,k", [(7, 75), (2, 4100)])  # CUDA: (2, 4100) runs split-K
def test_bipolar_linear_nonfinite_inputs(device, dtype, rows, k):
    n = 12
    x = torch.randn(rows, k)
    x[1, 5] = NAN
    if rows > 2:
        x[2, 9], x[4, 0] = INF, -INF
    x = x.to(dtype).to(device)
    w_planes, w_scale = mlx_kernels.bipolar_quantize(torch.randn(n, k, device=device), 2)
    w_scale[3], w_scale[4], w_scale[5] = NAN, INF, -INF
    bias = torch.randn(n, device=device).to(dtype)
    bias[7], bias[8] = NAN, -INF
    out = mlx_kernels.bipolar_linear(x, w_planes, w_scale, 4, bias).cpu()
    bad_rows = [1, 2, 4] if rows > 2 else [1]
    good_rows = [r for r in range(rows) if r not in bad_rows]
    bad_cols, good_cols = [3, 4, 5, 7, 8], [c for c in range(n) if c not in (3, 4, 5, 7, 8)]
    assert torch.isnan(out[bad_rows]).all()  # a row with a NaN or ±Inf: scale NaN, NaN across the row
    assert torch.isnan(out[:, [3, 7]]).all() and torch.isneginf(out[good_rows][:, 8]).all()
    assert not torch.isfinite(out[:, bad_cols]).any()
    assert torch.isfinite(out[good_rows][:, good_cols]).all()
    # The finite part is what it is without the non-finite rows and columns.
    clean = mlx_kernels.bipolar_linear(x[good_rows], w_planes, w_scale.nan_to_num(0, 0, 0), 4,
                                       bias.nan_to_num(0, 0, 0)).cpu()
    torch.testing.assert_close(out[good_rows][:, good_cols], clean[:, good_cols], rtol=0, atol=0)


def test_bipolar_linear_nonfinite_weight_row_is_flagged(device):
    linear = torch.nn.Linear(40, 6).to(device)
    with torch.no_grad():
        linear.weight[2, 7] = NAN
        linear.weight[4, 0] = -INF
    layer = mlx_kernels.BipolarLinear.from_float(linear, 3, 4)
    assert torch.isnan(layer.w_scale[[2, 4]]).all()
    with torch.no_grad():
        out = layer(torch.randn(3, 40, device=device)).cpu()
    assert torch.isnan(out[:, [2, 4]]).all() and torch.isfinite(out[:, [0, 1, 3, 5]]).all()


# --- autograd ----------------------------------------------------------------


def bipolar_linear_grads(x, w_planes, w_scale, x_bits, bias, grad):
    x = x.detach().requires_grad_()
    w_scale = w_scale.detach().requires_grad_()
    bias = bias.detach().requires_grad_() if bias is not None else None
    mlx_kernels.bipolar_linear(x, w_planes, w_scale, x_bits, bias).backward(grad)
    return x.grad, w_scale.grad, bias.grad if bias is not None else None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("w_bits,x_bits", [(1, 1), (3, 5), (8, 8)])
@pytest.mark.parametrize("rows", [3, 40])
def test_bipolar_linear_gradients_match_float64(device, dtype, w_bits, x_bits, rows):
    # bipolar_linear admits no float64: its gradients against float64 torch math on the
    # same dequantized weights, by the tolerance rule (straight-through estimator for x).
    k, n = 75, 33
    x = torch.randn(2, rows, k).to(dtype).to(device)
    w_planes, w_scale = mlx_kernels.bipolar_quantize(torch.randn(n, k, device=device) / k**0.5, w_bits)
    bias = torch.randn(n, device=device).to(dtype)
    grad = torch.randn(2, rows, n).to(dtype).to(device)
    grad_x, grad_scale, grad_bias = bipolar_linear_grads(x, w_planes, w_scale, x_bits, bias, grad)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape and grad_bias.dtype == dtype
    assert grad_scale.dtype == torch.float32 and grad_scale.shape == (n,)
    levels_w = oracles.bipolar_unpack(w_planes, k).double()
    w_deq64 = w_scale.cpu().double()[:, None] * levels_w
    w_deq = (levels_w.to(dtype) * w_scale.cpu()[:, None]).to(dtype)
    g64 = grad.cpu().double().reshape(-1, n)
    assert_close_to_oracle(grad_x.cpu().reshape(-1, k), g64 @ w_deq64, grad.cpu().reshape(-1, n) @ w_deq,
                           atol=1e-6)
    tol = 1e-5 if dtype is torch.float32 else 2e-2
    torch.testing.assert_close(grad_bias.cpu().double(), g64.sum(0), rtol=tol, atol=tol)
    # d/dw_scale is exact: out = x_scale[m] · (levels_x @ levels_w.T)[m, n] · w_scale[n].
    levels_x, x_scale = oracles.bipolar_quantize_levels(x.reshape(-1, k), x_bits)
    product = (levels_x.double() @ levels_w.T) * x_scale.double()[:, None]
    expected = (g64 * product).sum(0)
    torch.testing.assert_close(grad_scale.cpu().double(), expected, rtol=1e-5,
                               atol=1e-5 * expected.abs().max().item())


@pytest.mark.filterwarnings("ignore:Input #.*not a double precision")
def test_bipolar_linear_gradcheck_scale_and_bias():
    # Linear in w_scale and bias: finite differences of the fp32 op check their
    # gradients (not x's: the straight-through estimator is not the derivative of
    # the rounded forward, which is 0 almost everywhere).
    x = torch.randn(6, 40)
    w_planes, w_scale = mlx_kernels.bipolar_quantize(torch.randn(7, 40), 3)
    torch.autograd.gradcheck(
        lambda s, b: mlx_kernels.bipolar_linear(x, w_planes, s, 4, b),
        (w_scale.clone().requires_grad_(), torch.randn(7).requires_grad_()), eps=1e-2, atol=2e-3, rtol=2e-3)


def test_bipolar_linear_backward_in_blocks(monkeypatch, device):
    import mlx_kernels._autograd as autograd_module

    x = torch.randn(9, 40, device=device, requires_grad=True)
    w_planes, w_scale = mlx_kernels.bipolar_quantize(torch.randn(50, 40, device=device), 2)
    grad = torch.randn(9, 50, device=device)
    whole, = torch.autograd.grad(mlx_kernels.bipolar_linear(x, w_planes, w_scale, 3), x, grad)
    monkeypatch.setattr(autograd_module, "DEQUANT_BLOCK_ELEMENTS", 7 * 40)
    blocks, = torch.autograd.grad(mlx_kernels.bipolar_linear(x, w_planes, w_scale, 3), x, grad)
    torch.testing.assert_close(blocks, whole, rtol=1e-5, atol=1e-5)


def test_bipolar_linear_gradient_of_empty_shapes(device):
    w_planes, w_scale = mlx_kernels.bipolar_quantize(torch.randn(6, 8, device=device), 2)
    x = torch.randn(0, 8, device=device, requires_grad=True)
    mlx_kernels.bipolar_linear(x, w_planes, w_scale, 3).sum().backward()
    assert x.grad.shape == (0, 8)
    x = torch.randn(3, 8, device=device, requires_grad=True)
    mlx_kernels.bipolar_linear(x, w_planes[:, :0], w_scale[:0], 3).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_bipolar_non_differentiable_ops_raise(device):
    x = torch.randn(4, 40, device=device, requires_grad=True)
    planes, scale = mlx_kernels.bipolar_quantize(x, 3)
    assert not planes.requires_grad
    with pytest.raises(RuntimeError, match=r"bipolar_quantize is not differentiable"):
        scale.sum().backward()
    # Integer in and out: there is no gradient to ask for, and none is silently made up.
    values, planes = packed(3, 40, 2, device)
    assert not mlx_kernels.bipolar_unpack(planes, 40).requires_grad
    assert not mlx_kernels.bipolar_gemm(planes, planes, 40).requires_grad


def test_bipolar_linear_backward_torch_compile(device):
    layer = mlx_kernels.BipolarLinear.from_float(torch.nn.Linear(64, 48).to(device), 2, 4)
    x = torch.randn(5, 64, device=device)
    eager_x = x.clone().requires_grad_()
    layer(eager_x).square().sum().backward()
    bias_grad, layer.bias.grad = layer.bias.grad.clone(), None
    compiled_x = x.clone().requires_grad_()
    torch.compile(layer, fullgraph=True)(compiled_x).square().sum().backward()
    torch.testing.assert_close(compiled_x.grad, eager_x.grad)
    torch.testing.assert_close(layer.bias.grad, bias_grad)


def test_bipolar_linear_lora_and_bias_training_loss_goes_down(device):
    from test_int8 import lora_training_losses

    base = mlx_kernels.BipolarLinear.from_float(torch.nn.Linear(32, 16).to(device), 4, 8)
    losses = lora_training_losses(base, 32, 16, device)
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    losses = lora_training_losses(base, 32, 16, device, train_bias=True)
    assert losses[-1] < 0.2 * losses[0], losses[::10]
