"""CPU ISA paths (csrc/common/cpu_isa.h): every family's CPU kernels on every path
this machine executes, forced with MLX_CPU_ISA=scalar|avx2|avx512, against the
float64 oracles (DESIGN.md's tolerance rule) or exact integer results; and the
override's errors. Shapes are small but reach every vector tail and micro-kernel:
row blocks of 1-4 rows, column counts past whole 64-byte vectors, K past whole
words and groups, multi-stage FFTs of every radix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import mlx_kernels
import oracles
from conftest import assert_close_to_oracle
from test_attention import check_attention, check_shared_prefix
from test_attention import make_inputs as attention_inputs
from test_bipolar import linear_oracle
from test_bsr import check_product, random_sparse
from test_int8 import assert_quant_matches_oracle, check_gemm_against_oracle, quantized_weight, random_int8
from test_spgemm import check_against_oracle as check_spgemm
from test_spgemm import op_args, random_csr, row_lengths

PATHS = ["scalar", "avx2", "avx512"]
EXECUTABLE = PATHS[: PATHS.index(mlx_kernels._C.cpu_isa_available()) + 1]


@pytest.fixture(params=PATHS)
def isa(request, monkeypatch):
    """Runs the test with MLX_CPU_ISA set to each path this CPU executes."""
    if request.param not in EXECUTABLE:
        pytest.skip(f"this CPU does not execute the {request.param} path")
    monkeypatch.setenv("MLX_CPU_ISA", request.param)
    assert mlx_kernels.cpu_isa() == request.param
    return request.param


# --- int8 -----------------------------------------------------------------------


def test_int8_mm(isa):
    # Both GEMM kernels (dot kernels up to 32 rows on VNNI, 20 on AVX2; packed
    # panels above): row tiles and their tails, panels of 64 columns and their
    # tails, N past 4-row B tiles and 16-row packing blocks, K past 16/64-byte
    # vectors, 4-byte groups and 256-k blocks; exact.
    for m, n, k in [(1, 70, 33), (6, 64, 4), (7, 130, 301), (29, 67, 200), (67, 65, 130), (70, 33, 515)]:
        a, b = random_int8(m, k), random_int8(n, k)
        torch.testing.assert_close(mlx_kernels.int8_mm(a, b).long(), oracles.int8_mm(a, b), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_int8_gemm(isa, dtype):
    # M = 1 (decode) to 70 (packed kernels on every path); K past the quantizer's 16 lanes.
    _, w_i8, w_absmax = quantized_weight(70, 130)
    for m in (1, 9, 29, 70):
        x = torch.randn(m, 130)
        x[:, [3, 50, 129]] *= 20  # outlier columns for threshold 6
        for threshold in (0.0, 6.0):
            check_gemm_against_oracle(x.to(dtype), w_i8, w_absmax, torch.randn(70).to(dtype), threshold)
    bias = torch.randn(70).to(dtype)  # K = 0: the bias alone, from both kernels
    for m in (1, 70):
        out = mlx_kernels.int8_gemm(torch.randn(m, 0).to(dtype), w_i8[:, :0], w_absmax, bias, 6.0)
        assert torch.equal(out, bias.expand(m, 70))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_int8_vectorwise_quant(isa, dtype):
    # Rows of 16-lane vectors and a tail, outlier columns in both, a NaN in each.
    x = torch.randn(5, 37)
    x[:, [2, 35]] *= 20
    for threshold in (0.0, 6.0):
        assert_quant_matches_oracle(x.to(dtype), threshold, *mlx_kernels.int8_vectorwise_quant(x.to(dtype), threshold))
    x[1, 4] = x[3, 33] = float("nan")
    _, row_absmax, _ = mlx_kernels.int8_vectorwise_quant(x.to(dtype), 6.0)
    assert torch.isnan(row_absmax).tolist() == [False, True, False, True, False]


# --- bipolar ----------------------------------------------------------------------


@pytest.mark.parametrize("a_bits,w_bits", [(1, 1), (3, 2), (2, 2), (1, 8), (8, 1), (8, 8)])
def test_bipolar_gemm(isa, a_bits, w_bits):
    # M past the 4- and 2-row register blocks (one-row tails), N past the 4-column
    # blocks; K from one partial word to 11 uint64 words (padded to two 8-word
    # vectors), and K = 8001: 126 words, past the 124 words after which the AVX2
    # kernel moves its byte counts to 64-bit lanes. K = 1024 with N = 8 reads the
    # weight planes in place, unless they sit at an address that is not 8-byte
    # aligned (then copied). The bit widths give every plane-pair order of the
    # Horner sum: one pair, p != q both ways, p = q.
    for m, n, k in [(7, 9, 33), (5, 66, 700), (3, 5, 8001), (6, 8, 1024)]:
        a = oracles.bipolar_random_values(m, k, a_bits)
        w = oracles.bipolar_random_values(n, k, w_bits)
        a_planes, w_planes = mlx_kernels.bipolar_pack(a, a_bits), mlx_kernels.bipolar_pack(w, w_bits)
        misaligned = torch.empty(w_planes.numel() + 1, dtype=torch.int32)[1:].view(w_planes.shape)
        misaligned.copy_(w_planes)
        for weights in (w_planes, misaligned):
            out = mlx_kernels.bipolar_gemm(a_planes, weights, k)
            torch.testing.assert_close(out.long(), a.long() @ w.long().T, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bits", [1, 2, 8])
def test_bipolar_quantize(isa, dtype, bits):
    # K = 301: nine whole plane words and a partial one; a row of zeros and rows
    # with a NaN, an Inf and a -Inf (scale NaN, level +1 everywhere). Exact.
    x = torch.randn(7, 301) * 5
    x[1] = 0
    x[2, 7], x[3, 300], x[4, 0] = float("nan"), float("inf"), -float("inf")
    x = x.to(dtype)
    planes, scale = mlx_kernels.bipolar_quantize(x, bits)
    levels = mlx_kernels.bipolar_unpack(planes, 301).long()
    finite = [0, 1, 5, 6]
    expected_levels, expected_scale = oracles.bipolar_quantize_levels(x[finite], bits)
    torch.testing.assert_close(scale[finite], expected_scale, rtol=0, atol=0)
    assert torch.equal(levels[finite], expected_levels)
    assert torch.isnan(scale[2:5]).all() and (levels[2:5] == 1).all()


@pytest.mark.parametrize("w_bits,x_bits", [(2, 2), (1, 8)])
def test_bipolar_linear(isa, w_bits, x_bits):
    # M = 7 (row blocks and a one-row tail), N = 33 (a column-block tail), K = 300.
    x, bias = torch.randn(7, 300), torch.randn(33)
    w_planes, w_scale = mlx_kernels.bipolar_quantize(torch.randn(33, 300), w_bits)
    out = mlx_kernels.bipolar_linear(x, w_planes, w_scale, x_bits, bias)
    torch.testing.assert_close(out.double(), linear_oracle(x, w_planes, w_scale, x_bits, bias), rtol=1e-5, atol=1e-4)


# --- bsr ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("block", [(16, 16), (3, 5)])
def test_bsr_spmm_dense_and_packed(isa, dtype, block):
    # n = 1, and n = 90: four 64-byte vectors of fp32 (or fp64) columns, then
    # single vectors, then a scalar tail. Rows 0-2 hold more than one 64-term
    # partial sum. a @ b runs the packed rows, bsr_spmm the dense blocks: the same
    # terms in the same order on one path, so equal bit for bit.
    a_dense = random_sparse(45, 150, 0.1, dtype)
    a_dense[:3] = random_sparse(3, 150, 0.8, dtype)
    a = mlx_kernels.BlockSparseMatrix.from_dense(a_dense, block=block, reorder=True)
    for n in (1, 90):
        b = torch.randn(150, n, dtype=dtype)
        packed = check_product(a, a_dense, b)
        dense = mlx_kernels.bsr_spmm(a.crow, a.col, a.blocks, b, a.shape[0], a.row_perm)
        torch.testing.assert_close(packed, dense, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_bsr_sddmm(isa, dtype):
    # The blocks' gradient: (a · bᵀ) at the stored blocks, dot products of n = 37
    # (vectors and a tail).
    s = mlx_kernels.BlockSparseMatrix.from_dense(random_sparse(20, 30, 0.2), block=(4, 8), reorder=False)
    a, b = torch.randn(20, 37, dtype=dtype), torch.randn(30, 37, dtype=dtype)
    out = torch.ops.mlx.bsr_sddmm(s.crow, s.col, a, b, 4, 8, None)
    full = a.double() @ b.double().T
    padded = torch.zeros(-(-20 // 4) * 4, -(-30 // 8) * 8, dtype=torch.float64)
    padded[:20, :30] = full
    rows = torch.repeat_interleave(torch.arange(s.crow.numel() - 1), s.crow.diff())
    expected = torch.stack([padded[4 * r:4 * r + 4, 8 * c:8 * c + 8] for r, c in zip(rows.tolist(), s.col.tolist())])
    reference = torch.stack([(a @ b.T)[4 * r:4 * r + 4] for r in rows.tolist()])  # same-dtype rounding scale
    tol = 1e-12 if dtype == torch.float64 else 2 * reference.double().abs().max().item() * 2**-8
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tol)


# --- fft_conv -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("L", [3, 100, 1000, 5000])
def test_fft_conv(isa, dtype, L):
    # FFT sizes 16 (one stage), 256, 2048 (a radix-8 stage) and 16384 (radix 4,
    # four stages); B = 3 leaves one row without a partner; gated, Lk < L.
    B, H, Lk = 3, 2, max(1, L // 3)
    u, pre, post = (torch.randn(B, H, L, dtype=dtype) for _ in range(3))
    k = torch.randn(H, Lk) / Lk**0.5
    out = mlx_kernels.fft_conv(u, k, pre, post)
    v = u * pre
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    reference = oracles.fft_conv_spectral(v, k, dtype=compute).to(dtype) * post
    assert_close_to_oracle(out, oracles.fft_conv_spectral(u, k, pre, post), reference, atol=1e-6)


@pytest.mark.parametrize("keep_blocks", [3, 8])
def test_fft_conv_spectral(isa, keep_blocks):
    # The frequency-sparse last stage (row by row, dropped blocks skipped) and the
    # dense one (16 rows at a time in fp32).
    u, k = torch.randn(3, 2, 1000), torch.randn(2, 1000) / 1000**0.5
    k_f = torch.ops.mlx.fft_conv_spectrum(k, 1000, keep_blocks)
    out = torch.ops.mlx.fft_conv_spectral(u, k_f, keep_blocks, None, None)
    oracle = oracles.fft_conv_spectral(u, k, keep_blocks=keep_blocks)
    reference = oracles.fft_conv_spectral(u, k, keep_blocks=keep_blocks, dtype=torch.float32)
    assert_close_to_oracle(out, oracle, reference, atol=1e-6)


# --- attention ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("head_dim", [40, 64])
def test_attention_with_lse(isa, dtype, head_dim):
    # 70 keys: a 64-key tile and a tail; head_dim 40: 16-column blocks and a tail; GQA 4:2.
    q = torch.randn(2, 7, 4, head_dim, dtype=dtype)
    k, v = (torch.randn(2, 70, 2, head_dim, dtype=dtype) for _ in range(2))
    for causal in (False, True):
        check_attention(q, k, v, causal)


def test_shared_prefix_attention(isa):
    q, prefix_k, prefix_v, suffix_k, suffix_v = attention_inputs(3, 5, (4, 2), 100, 9)
    check_shared_prefix(q, prefix_k, prefix_v, suffix_k, suffix_v, torch.tensor([9, 5, 0], dtype=torch.int32))


# --- spgemm -------------------------------------------------------------------------


@pytest.mark.parametrize("value_dtype", [torch.float32, torch.float64], ids=str)
def test_spgemm(isa, value_dtype):
    a = random_csr(60, 50, row_lengths("power_law", 60, 50), seed=1)
    b = random_csr(50, 40, row_lengths("uniform", 50, 40), seed=2)
    args = op_args(a, b, value_dtype=value_dtype)
    check_spgemm(mlx_kernels.spgemm_csr(*args), args)


# --- the override -----------------------------------------------------------------------


def test_default_is_the_best_path(monkeypatch):
    monkeypatch.delenv("MLX_CPU_ISA", raising=False)
    assert mlx_kernels.cpu_isa() == EXECUTABLE[-1]
    monkeypatch.setenv("MLX_CPU_ISA", "")  # empty: as if unset
    assert mlx_kernels.cpu_isa() == EXECUTABLE[-1]


def test_bad_value_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MLX_CPU_ISA", "avx9")
    with pytest.raises(RuntimeError, match=r"MLX_CPU_ISA='avx9' is not a CPU ISA path: use scalar, avx2 or avx512"):
        mlx_kernels.cpu_isa()
    a = random_int8(3, 8)
    with pytest.raises(RuntimeError, match=r"mlx\.int8_mm: MLX_CPU_ISA='avx9'"):
        mlx_kernels.int8_mm(a, a)
    with pytest.raises(RuntimeError, match=r"mlx\.fft_conv: MLX_CPU_ISA='avx9'"):
        mlx_kernels.fft_conv(torch.randn(1, 1, 8), torch.randn(1, 8))
    s = mlx_kernels.BlockSparseMatrix.from_dense(torch.eye(4), block=(2, 2))
    with pytest.raises(RuntimeError, match=r"MLX_CPU_ISA='avx9'"):
        s @ torch.randn(4, 3)


def test_unavailable_path_is_an_error_not_an_illegal_instruction():
    # A CPU without AVX-512 (or AVX2), pretended with MLX_CPU_ISA_PRETEND_CPU (read
    # once, at detection: hence a fresh process), asked for the path it lacks.
    env = dict(os.environ, MLX_CPU_ISA_PRETEND_CPU="avx2", MLX_CPU_ISA="avx512")
    code = ("import torch, mlx_kernels\n"
            "try:\n    mlx_kernels.int8_mm(torch.ones(2, 2, dtype=torch.int8), torch.ones(2, 2, dtype=torch.int8))\n"
            "except RuntimeError as e:\n    print(e)\n"
            "print(mlx_kernels._C.cpu_isa_available())\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    message, available = result.stdout.strip().rsplit("\n", 1)
    assert available == "avx2"
    assert "mlx.int8_mm: MLX_CPU_ISA=avx512 asks for a path this CPU cannot execute: it runs avx2 at most" in message


def test_benchmark_names_the_path(isa, monkeypatch):
    from mlx_kernels.bench import core

    assert core.device_slug("cpu").endswith(f"cores-{isa}")
    env = core.environment("cpu")
    assert env["kernel_isa_path"] == isa and env["kernel_isa_forced"] is True
    assert env["kernel_isa_available"] == EXECUTABLE[-1]
    assert f"our kernels' path {isa} (forced by MLX_CPU_ISA)" in env["device_full"]
    monkeypatch.delenv("MLX_CPU_ISA")
    assert core.environment("cpu")["kernel_isa_forced"] is False
