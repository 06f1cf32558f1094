"""Hypothesis fuzzing of every op, internal ones included (test_hardening.py's samples).

* Views: the samples' tensors handed over as non-contiguous, offset, column-major
  and zero-stride views of the same values give bitwise the same answer.
* Shapes: each op on drawn shapes (0, 1, odd and larger sizes), every supported
  dtype and a drawn layout, against the float64/int64 oracles of oracles.py.
* Corruption: valid samples broken 1-3 ways (index values out of range, shuffled
  or duplicated indices, short or long tensors, wrong ranks and dtypes, NaN/Inf,
  absurd integers such as 2^40, 2^63 - 1 or -1) give a result or a clear
  RuntimeError/ValueError naming the op: never a crash (the sanitized build,
  scripts/test_asan.sh, turns any out-of-bounds access or UB into one), a hang,
  or another exception.

Profiles: MLX_FUZZ=ci (default: a fixed, derandomized 310 examples per op on the
CPU: 50 views, 60 shapes, 200 corruptions; as CI runs it) or MLX_FUZZ=long (MLX_FUZZ_EXAMPLES per test and op, default 5000,
random seeds): `MLX_FUZZ=long pytest tests/test_fuzz.py`.
"""

from __future__ import annotations

import functools
import math
import os
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mlx_kernels
import oracles
from cases import op_pattern
from conftest import EMU, requires_cuda
from hardening_samples import assert_same, call, samples

LONG = os.environ.get("MLX_FUZZ", "ci") == "long"
EXAMPLES = int(os.environ.get("MLX_FUZZ_EXAMPLES", "5000")) if LONG else None
# CUDA kernels: fewer examples on the SIMT emulator (every CUDA thread a fiber, under ASan in CI).
CUDA_EXAMPLES = 6 if EMU else 40


def fuzz_settings(ci_examples: int):
    return settings(max_examples=EXAMPLES or ci_examples, deadline=None, derandomize=not LONG, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


def _ops(device):
    return sorted({name for _, name, _, _ in samples(device)})


CPU_OPS = _ops("cpu")


@functools.lru_cache(maxsize=None)
def _all_samples(device):
    return samples(device)  # built once: the mutations copy what they change


def _samples_of(device, name):
    items = [s for s in _all_samples(device) if s[1] == name]
    if not items:
        pytest.skip(f"{name} has no {device} kernel")
    return items


# --- views of the same values ----------------------------------------------------------

def _view(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as `t` in another memory layout."""
    if kind == "strided":  # every element two apart
        out = torch.empty(*t.shape, 2, dtype=t.dtype, device=t.device)[..., 1]
    elif kind == "offset":  # storage offset 1
        out = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape)
    elif kind == "column_major":
        out = torch.empty(tuple(reversed(t.shape)), dtype=t.dtype, device=t.device).permute(*reversed(range(t.dim())))
    elif kind == "zero_stride":  # stride 0 in every size-1 dim
        strides = [0 if size == 1 else stride for size, stride in zip(t.shape, t.contiguous().stride())]
        return t.contiguous().as_strided(t.shape, strides)
    else:
        raise ValueError(kind)
    out.copy_(t)
    out.requires_grad_(t.requires_grad)
    return out


VIEW_KINDS = ["strided", "offset", "column_major", "zero_stride"]


@pytest.mark.parametrize("name", CPU_OPS)
@fuzz_settings(ci_examples=50)
@given(data=st.data())
def test_views_give_the_same_answer(name, data):
    _views("cpu", name, data)


@requires_cuda
@pytest.mark.parametrize("name", CPU_OPS)
@fuzz_settings(ci_examples=CUDA_EXAMPLES)
@given(data=st.data())
def test_views_give_the_same_answer_cuda(name, data):
    _views("cuda", name, data)


def _views(device, name, data):
    items = _samples_of(device, name)
    sample_id, _, args, kwargs = data.draw(st.sampled_from(items), label="sample")
    expected = call(name, args, kwargs)
    new_args = list(args)
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.dim() > 0 and data.draw(st.booleans(), label=f"view arg {i}"):
            new_args[i] = _view(a.detach(), data.draw(st.sampled_from(VIEW_KINDS), label=f"kind {i}"))
    assert_same(call(name, new_args, kwargs), expected, f"{sample_id} with views")


# --- corrupted inputs --------------------------------------------------------------------

INT_VALUES = [-1, 0, 1, 2, 3, 15, 16, 17, 31, 33, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, -(2**31),
              -(2**63)]
FLOAT_VALUES = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e30, -1e-30, 127.5]
DTYPES = [torch.bool, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16, torch.float32,
          torch.float64]
TENSOR_MUTATIONS = ["poke", "poke_many", "shuffle", "duplicate", "truncate", "extend", "unsqueeze", "flatten",
                    "select", "dtype", "nonfinite", "empty", "broadcast", "negate", "zero"]


def _fits(value, dtype):
    if dtype.is_floating_point:
        return True
    if dtype == torch.bool:
        return value in (0, 1)
    info = torch.iinfo(dtype)
    return info.min <= value <= info.max


def _mutate_tensor(t: torch.Tensor, data, label) -> torch.Tensor:
    kind = data.draw(st.sampled_from(TENSOR_MUTATIONS), label=f"{label} mutation")
    t = t.detach()
    if kind in ("poke", "poke_many") and t.numel() > 0:
        t = t.clone()
        flat = t.view(-1)
        for _ in range(1 if kind == "poke" else data.draw(st.integers(2, 5), label=f"{label} pokes")):
            i = data.draw(st.integers(0, t.numel() - 1), label=f"{label} index")
            if t.dtype.is_floating_point:
                v = data.draw(st.sampled_from(FLOAT_VALUES + [float(t.numel()), -2.0]), label=f"{label} value")
            else:
                v = data.draw(st.sampled_from(INT_VALUES + [t.numel(), t.numel() - 1, int(flat.max()) + 1]),
                              label=f"{label} value")
                if not _fits(v, t.dtype):
                    continue
            flat[i] = v
        return t
    if kind == "shuffle" and t.dim() > 0 and t.shape[0] > 1:
        seed = data.draw(st.integers(0, 2**16), label=f"{label} seed")
        return t[torch.randperm(t.shape[0], generator=torch.Generator().manual_seed(seed)).to(t.device)]
    if kind == "duplicate" and t.numel() > 1:
        t = t.clone()
        i, j = data.draw(st.integers(0, t.numel() - 1)), data.draw(st.integers(0, t.numel() - 1))
        t.view(-1)[i] = t.view(-1)[j]
        return t
    if kind == "truncate" and t.dim() > 0 and t.shape[0] > 0:
        return t[: data.draw(st.integers(0, t.shape[0] - 1), label=f"{label} keep")]
    if kind == "extend" and t.dim() > 0 and t.shape[0] > 0:
        return torch.cat([t, t[-1:]])
    if kind == "unsqueeze":
        return t.unsqueeze(data.draw(st.integers(0, t.dim()), label=f"{label} dim"))
    if kind == "flatten":
        return t.reshape(-1)
    if kind == "select" and t.dim() > 0 and t.shape[0] > 0:
        return t[0]
    if kind == "dtype":
        return t.to(data.draw(st.sampled_from(DTYPES), label=f"{label} dtype"))
    if kind == "nonfinite" and t.dtype.is_floating_point and t.numel() > 0:
        t = t.clone()
        i = data.draw(st.integers(0, t.numel() - 1), label=f"{label} index")
        t.view(-1)[i] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]), label=f"{label} value")
        return t
    if kind == "empty" and t.dim() > 0:
        return t[:0]
    if kind == "broadcast" and t.dim() > 0 and t.shape[0] > 0:
        return t[:1].expand(t.shape)
    if kind == "negate" and t.dtype != torch.bool:
        return -t
    if kind == "zero":
        return torch.zeros_like(t)
    return t


def _mutate(args, data):
    args = list(args)
    positions = [i for i, a in enumerate(args) if isinstance(a, (torch.Tensor, bool, int, float))]
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        i = data.draw(st.sampled_from(positions), label="argument")
        a = args[i]
        if isinstance(a, torch.Tensor):
            args[i] = _mutate_tensor(a, data, f"arg {i}")
        elif isinstance(a, bool):
            args[i] = not a
        elif isinstance(a, int):
            v = data.draw(st.sampled_from(INT_VALUES + [a - 1, a + 1, 2 * a, -a]), label=f"arg {i} int")
            args[i] = max(-(2**63), min(v, 2**63 - 1))  # the schema's int is int64: torch refuses the rest
        elif isinstance(a, float):
            args[i] = data.draw(st.sampled_from(FLOAT_VALUES), label=f"arg {i} float")
    return args


def _check_outcome(name, args, kwargs):
    try:
        out = call(name, args, kwargs)
    except (RuntimeError, ValueError) as error:
        message = str(error)
        checked = name.replace("_unchecked", "")  # the unchecked variants report under their checked op's name
        assert re.search(op_pattern(checked), message), (
            f"{type(error).__name__} does not name the op: {message[:500]}")
        return None
    outs = out if isinstance(out, (tuple, list)) else (out,)
    assert all(isinstance(o, torch.Tensor) for o in outs)
    return out


@pytest.mark.parametrize("name", CPU_OPS)
@fuzz_settings(ci_examples=200)
@given(data=st.data())
def test_corrupted_inputs_give_a_result_or_a_clear_error(name, data):
    _corrupted("cpu", name, data)


@requires_cuda
@pytest.mark.parametrize("name", CPU_OPS)
@fuzz_settings(ci_examples=CUDA_EXAMPLES)
@given(data=st.data())
def test_corrupted_inputs_give_a_result_or_a_clear_error_cuda(name, data):
    _corrupted("cuda", name, data)


def _corrupted(device, name, data):
    items = _samples_of(device, name)
    sample_id, _, args, kwargs = data.draw(st.sampled_from(items), label="sample")
    _check_outcome(name, _mutate(args, data), kwargs)


# --- drawn shapes, dtypes and layouts against the oracles ---------------------------------

SIZES = st.sampled_from([0, 1, 2, 3, 7, 16, 17, 31, 64, 100, 129])
SMALL = st.sampled_from([1, 2, 3, 5, 8, 16, 17])
FLOATS = [torch.float16, torch.bfloat16, torch.float32]
EPS = {torch.float16: 2**-10, torch.bfloat16: 2**-7, torch.float32: 2**-23, torch.float64: 2**-52}


def _layout(t, data, label):
    """t itself or the same values in a drawn layout."""
    kind = data.draw(st.sampled_from(["contiguous"] + VIEW_KINDS), label=f"{label} layout")
    return t if kind == "contiguous" or t.dim() == 0 else _view(t, kind)


def _close(out, oracle, bound, what):
    """|out - oracle| <= bound elementwise (bound: a float64 tensor or number), NaN where the oracle has NaN."""
    out, oracle = out.detach().cpu().double(), oracle.detach().cpu().double()
    assert out.shape == oracle.shape, f"{what}: shape {tuple(out.shape)} vs {tuple(oracle.shape)}"
    err = (out - oracle).abs()
    finite = oracle.isfinite()
    assert (err[finite] <= (torch.as_tensor(bound, dtype=torch.float64).expand_as(err)[finite] + 1e-300)).all(), (
        f"{what}: max error {err[finite].max() if finite.any() else 0:.3e}")
    assert torch.equal(out.isnan(), oracle.isnan()), f"{what}: NaN positions differ"


def _matmul_bound(magnitude, dtype, k):
    """Rounding of the output in its dtype plus an fp32 (fp64 for fp64) sum of k products."""
    return (2 * EPS[dtype] + (k + 2) * min(EPS[dtype], 2**-23)) * magnitude + 1e-30


def _rand(shape, dtype, device, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


SHAPE_TESTS = {}


def shape_test(name):
    def register(fn):
        SHAPE_TESTS[name] = fn
        return fn
    return register


@shape_test("int8_mm")
def _int8_mm(device, data):
    m, n, k = data.draw(SIZES), data.draw(SIZES), data.draw(SIZES)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8).to(device)
    b = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8).to(device)
    out = op_call("int8_mm", _layout(a, data, "a"), _layout(b, data, "b"))
    assert out.dtype == torch.int32 and torch.equal(out.cpu().long(), oracles.int8_mm(a, b))


@shape_test("int8_vectorwise_quant")
def _int8_quant(device, data):
    rows, k, dtype = data.draw(SIZES), data.draw(SIZES), data.draw(st.sampled_from(FLOATS))
    threshold = data.draw(st.sampled_from([0.0, 2.5]))
    x = _rand((rows, k), dtype, device, seed=data.draw(st.integers(0, 99)))
    x_i8, absmax, cols = op_call("int8_vectorwise_quant", _layout(x, data, "x"), threshold)
    q, absmax_ref, cols_ref = oracles.int8_vectorwise_quant(x, threshold)
    assert torch.equal(cols.cpu(), cols_ref)
    _close(absmax, absmax_ref, 0.0, "row_absmax")
    _close(x_i8, q, 1.0, "x_i8")


@shape_test("int8_gemm")
def _int8_gemm(device, data):
    rows, n, k, dtype = data.draw(SIZES), data.draw(SIZES), data.draw(SIZES), data.draw(st.sampled_from(FLOATS))
    threshold = data.draw(st.sampled_from([0.0, 2.5, 6.0]))
    seed = data.draw(st.integers(0, 99))
    x = _rand((rows, k), dtype, device, seed=seed)
    w_i8, w_absmax, _ = op_call("int8_vectorwise_quant", _rand((n, k), torch.float32, device, seed=seed + 1), 0.0)
    bias = _rand((n,), dtype, device, seed=seed + 2) if data.draw(st.booleans()) else None
    out = op_call("int8_gemm", _layout(x, data, "x"), w_i8, w_absmax, bias, threshold)
    ref = oracles.int8_gemm(x, w_i8, w_absmax, bias, threshold)
    # a quantized activation may round the other way (one level) in fp32: that, and the output's rounding
    w_deq = w_i8.cpu().double().abs() * w_absmax.cpu().double()[:, None] / 127
    bound = 2 * (x.cpu().double().abs().amax(1, keepdim=True) / 127) @ w_deq.sum(1, keepdim=True).T if rows and n and k else 0
    _close(out, ref, bound + 4 * EPS[dtype] * ref.abs() + 1e-6, "int8_gemm")


@shape_test("bipolar_pack")
def _bipolar_pack(device, data):
    rows, k, bits = data.draw(SIZES), data.draw(SIZES), data.draw(st.integers(1, 8))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    values = (2 * torch.randint(0, 2**bits, (rows, k), generator=g) - (2**bits - 1)).to(
        data.draw(st.sampled_from([torch.int16, torch.int32, torch.int64]))).to(device)
    planes = op_call("bipolar_pack", _layout(values, data, "values"), bits)
    assert torch.equal(planes.cpu(), oracles.bipolar_pack(values, bits))
    assert torch.equal(op_call("bipolar_unpack", _layout(planes, data, "planes"), k).cpu().long(), values.cpu().long())


SHAPE_TESTS["bipolar_unpack"] = _bipolar_pack


@shape_test("bipolar_gemm")
def _bipolar_gemm(device, data):
    m, n, k = data.draw(SIZES), data.draw(SIZES), data.draw(st.sampled_from([0, 1, 31, 32, 33, 100, 257]))
    a_bits, w_bits = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    a = oracles.bipolar_pack(2 * torch.randint(0, 2**a_bits, (m, k), generator=g) - (2**a_bits - 1), a_bits).to(device)
    w = oracles.bipolar_pack(2 * torch.randint(0, 2**w_bits, (n, k), generator=g) - (2**w_bits - 1), w_bits).to(device)
    out = op_call("bipolar_gemm", _layout(a, data, "a"), _layout(w, data, "w"), k)
    assert torch.equal(out.cpu().long(), oracles.bipolar_gemm(a, w, k))


@shape_test("bipolar_quantize")
def _bipolar_quantize(device, data):
    rows, k, bits = data.draw(SIZES), data.draw(SIZES), data.draw(st.integers(1, 8))
    dtype = data.draw(st.sampled_from(FLOATS + [torch.float64]))
    x = _rand((rows, k), dtype, device, seed=data.draw(st.integers(0, 99)))
    planes, scale = op_call("bipolar_quantize", _layout(x, data, "x"), bits)
    levels, scale_ref = oracles.bipolar_quantize_levels(x, bits)
    _close(scale, scale_ref, 1e-6 * scale_ref.abs().double(), "scale")
    _close(oracles.bipolar_unpack(planes, k), levels, 2.0, "levels")  # ties may round to the next odd level


@shape_test("bipolar_linear")
def _bipolar_linear(device, data):
    rows, n, k = data.draw(SIZES), data.draw(SIZES), data.draw(SIZES)
    x_bits, w_bits, dtype = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 4)), data.draw(st.sampled_from(FLOATS))
    seed = data.draw(st.integers(0, 99))
    x = _rand((rows, k), dtype, device, seed=seed)
    w_planes, w_scale = op_call("bipolar_quantize", _rand((n, k), torch.float32, device, seed=seed + 1), w_bits)
    bias = _rand((n,), dtype, device, seed=seed + 2) if data.draw(st.booleans()) else None
    out = op_call("bipolar_linear", _layout(x, data, "x"), w_planes, w_scale, x_bits, bias)
    x_planes, x_scale = op_call("bipolar_quantize", x.float(), x_bits)
    xq = oracles.bipolar_unpack(x_planes, k).double() * x_scale.cpu().double()[:, None]
    wq = oracles.bipolar_unpack(w_planes, k).double() * w_scale.cpu().double()[:, None]
    ref = xq @ wq.T + (bias.cpu().double() if bias is not None else 0)
    # the quantizer sees x in x's dtype; a level may differ by one step at a tie
    bound = 2 * x_scale.cpu().double()[:, None] @ wq.abs().sum(1)[None, :] + 8 * EPS[dtype] * (xq.abs() @ wq.abs().T + ref.abs())
    _close(out, ref, bound + 1e-5, "bipolar_linear")


def _bsr_operands(device, data):
    m, k = data.draw(SIZES), data.draw(SIZES)
    br, bc = data.draw(st.sampled_from([1, 2, 3, 8, 16])), data.draw(st.sampled_from([1, 2, 3, 8, 16]))
    dtype = data.draw(st.sampled_from(FLOATS + [torch.float64]))
    seed = data.draw(st.integers(0, 99))
    dense = _rand((m, k), dtype, "cpu", seed=seed) * (torch.rand(m, k, generator=torch.Generator().manual_seed(seed)) <
                                                     data.draw(st.sampled_from([0.0, 0.05, 0.3, 1.0])))
    a = mlx_kernels.BlockSparseMatrix.from_dense(dense, block=(br, bc), reorder=data.draw(st.booleans()))
    return a, dense, dtype, seed


@shape_test("bsr_spmm")
def _bsr_spmm(device, data, name="bsr_spmm"):
    a, dense, dtype, seed = _bsr_operands(device, data)
    n = data.draw(SIZES)
    b = _rand((a.shape[1], n), dtype, device, seed=seed + 1)
    index = data.draw(st.sampled_from([torch.int32, torch.int64]))
    perm = a.row_perm.to(device) if a.row_perm is not None else None
    out = op_call(name, _layout(a.crow.to(index).to(device), data, "crow"), a.col.to(index).to(device),
                  _layout(a.blocks.detach().to(device), data, "blocks"), _layout(b, data, "b"), a.shape[0], perm)
    ref = dense.double() @ b.cpu().double()
    _close(out, ref, _matmul_bound(dense.double().abs() @ b.cpu().double().abs(), dtype, a.shape[1]), name)


SHAPE_TESTS["bsr_spmm_unchecked"] = lambda device, data: _bsr_spmm(device, data, "bsr_spmm_unchecked")


@shape_test("bsr_spmm_packed")
def _bsr_spmm_packed(device, data):
    a, dense, dtype, seed = _bsr_operands(device, data)
    b = _rand((a.shape[1], data.draw(SIZES)), dtype, "cpu", seed=seed + 1)
    *structure, values = mlx_kernels.bsr._pack_rows(a.crow, a.col, a.blocks.detach(), a.shape)
    out = op_call("bsr_spmm_packed", *structure, values, _layout(b, data, "b"), a.shape[0], *a.block, a.row_perm)
    _close(out, dense.double() @ b.double(), _matmul_bound(dense.double().abs() @ b.double().abs(), dtype, a.shape[1]),
           "bsr_spmm_packed")


@shape_test("bsr_sddmm")
def _bsr_sddmm(device, data, name="bsr_sddmm"):
    a_bsr, dense, dtype, seed = _bsr_operands(device, data)
    m, k = a_bsr.shape
    n = data.draw(SIZES)
    x, y = _rand((m, n), dtype, device, seed=seed + 1), _rand((k, n), dtype, device, seed=seed + 2)
    perm = a_bsr.row_perm.to(device) if a_bsr.row_perm is not None else None
    out = op_call(name, a_bsr.crow.to(device), a_bsr.col.to(device), _layout(x, data, "a"), _layout(y, data, "b"),
                  *a_bsr.block, perm)
    mask = oracles.bsr_to_dense(a_bsr.crow, a_bsr.col, torch.ones_like(a_bsr.blocks.detach()), m, k, a_bsr.row_perm)
    got = oracles.bsr_to_dense(a_bsr.crow, a_bsr.col, out.cpu(), m, k, a_bsr.row_perm)
    ref = (x.cpu().double() @ y.cpu().double().T) * mask
    _close(got, ref, _matmul_bound(x.cpu().double().abs() @ y.cpu().double().abs().T, dtype, n), name)


SHAPE_TESTS["bsr_sddmm_unchecked"] = lambda device, data: _bsr_sddmm(device, data, "bsr_sddmm_unchecked")


@shape_test("bsr_from_csr")
def _bsr_from_csr(device, data):
    a, dense, dtype, seed = _bsr_operands(device, data)
    csr = dense.to_sparse_csr()
    index = data.draw(st.sampled_from([torch.int32, torch.int64]))
    crow, col = csr.crow_indices().to(index), csr.col_indices().to(index)
    br, bc = a.block
    perm = op_call("bsr_reorder_rows", crow, col, dense.shape[1], br, bc) if data.draw(st.booleans()) else None
    if perm is not None:
        assert torch.equal(perm.sort().values, torch.arange(dense.shape[0]))
    bcrow, bcol, blocks = op_call("bsr_from_csr", _layout(crow, data, "crow"), _layout(col, data, "col"),
                                  _layout(csr.values(), data, "values"), dense.shape[1], br, bc, perm)
    assert torch.equal(oracles.bsr_to_dense(bcrow, bcol, blocks, *dense.shape, perm), dense.double())


SHAPE_TESTS["bsr_reorder_rows"] = _bsr_from_csr


@shape_test("spgemm_csr")
def _spgemm(device, data):
    m, k, n = data.draw(SIZES), data.draw(SIZES), data.draw(SIZES)
    dtype, index = data.draw(st.sampled_from([torch.float32, torch.float64])), data.draw(st.sampled_from([torch.int32, torch.int64]))
    seed = data.draw(st.integers(0, 99))
    density = data.draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))

    def csr(rows, cols, s):
        g = torch.Generator().manual_seed(s)
        d = (torch.rand(rows, cols, generator=g) < density) * torch.randn(rows, cols, generator=g, dtype=torch.float64)
        c = d.to(dtype).to_sparse_csr()
        return c.crow_indices().to(index).to(device), c.col_indices().to(index).to(device), c.values().to(device)

    a, b = csr(m, k, seed), csr(k, n, seed + 1)
    c_crow, c_col, c_val = op_call("spgemm_csr", *[_layout(t, data, "t") for t in a], *b, n)
    ref, structure = oracles.spgemm_csr(*a, *b, n)
    got = torch.sparse_csr_tensor(c_crow.cpu().long(), c_col.cpu().long(), c_val.cpu().double(), (m, n)).to_dense()
    pattern = torch.sparse_csr_tensor(c_crow.cpu().long(), c_col.cpu().long(), torch.ones(c_col.numel()), (m, n)).to_dense()
    assert torch.equal(pattern > 0, structure) and c_col.numel() == int(structure.sum())
    bound = (oracles.spgemm_csr(a[0], a[1], a[2].abs(), b[0], b[1], b[2].abs(), n)[0]) * 2 * max(k, 1) * EPS[dtype]
    _close(got, ref, bound, "spgemm_csr")


@shape_test("fft_conv")
def _fft_conv(device, data):
    batch, heads = data.draw(st.integers(0, 3)), data.draw(st.integers(1, 4))
    length = data.draw(st.sampled_from([1, 2, 17, 100, 513, 1500]))
    lk = data.draw(st.integers(1, length))
    dtype = data.draw(st.sampled_from(FLOATS))
    seed = data.draw(st.integers(0, 99))
    u, k = _rand((batch, heads, length), dtype, device, seed=seed), _rand((heads, lk), torch.float32, device, 0.1, seed + 1)
    gates = [_rand((batch, heads, length), dtype, device, seed=seed + 2 + i) if data.draw(st.booleans()) else None
             for i in range(2)]
    out = op_call("fft_conv", _layout(u, data, "u"), _layout(k, data, "k"), *gates)
    if batch == 0:  # (torch.fft refuses empty batches)
        assert out.shape == u.shape
        return
    ref = oracles.fft_conv(u, k, *gates)
    mag = oracles.fft_conv(u.abs(), k.abs(), *[g.abs() if g is not None else None for g in gates])
    _close(out, ref, 8 * max(EPS[dtype], 2**-20) * (mag + mag.amax(-1, keepdim=True) * math.log2(2 * length)), "fft_conv")


@shape_test("fft_conv_spectrum")
def _fft_spectral(device, data):
    batch, heads = data.draw(st.integers(0, 3)), data.draw(st.integers(1, 4))
    length = data.draw(st.sampled_from([1, 2, 17, 100, 513, 1500]))
    lk, keep = data.draw(st.integers(1, length)), data.draw(st.integers(1, 8))
    dtype = data.draw(st.sampled_from(FLOATS))
    seed = data.draw(st.integers(0, 99))
    u, k = _rand((batch, heads, length), dtype, device, seed=seed), _rand((heads, lk), torch.float32, device, 0.1, seed + 1)
    k_f = op_call("fft_conv_spectrum", _layout(k, data, "k"), length, keep)
    out = op_call("fft_conv_spectral", _layout(u, data, "u"), _layout(k_f, data, "k_f"), keep)
    if batch == 0:
        assert out.shape == u.shape
        return
    ref = oracles.fft_conv_spectral(u, k, keep_blocks=keep)
    mag = oracles.fft_conv(u.abs(), k.abs())
    _close(out, ref, 8 * max(EPS[dtype], 2**-20) * (mag + mag.amax(-1, keepdim=True) * math.log2(2 * length)), "fft_conv_spectral")


SHAPE_TESTS["fft_conv_spectral"] = _fft_spectral


def _amax(t):
    return t.detach().cpu().double().abs().max().item() if t.numel() else 0.0


def _attention_bound(q, k, v, dtype):
    return 4 * max(EPS[dtype], 2**-20) * _amax(v) * (1 + _amax(q) * _amax(k) * q.shape[-1])


@shape_test("attention_with_lse")
def _attention(device, data, ragged=False):
    batch, sq, sk = data.draw(st.integers(0, 3)), data.draw(st.sampled_from([0, 1, 5, 17, 64])), data.draw(st.sampled_from([0, 1, 5, 17, 64]))
    hkv, group, d = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.sampled_from([8, 64, 128]))
    dtype, causal = data.draw(st.sampled_from(FLOATS)), data.draw(st.booleans())
    scale = data.draw(st.sampled_from([None, 0.5]))
    seed = data.draw(st.integers(0, 99))
    q = _rand((batch, sq, hkv * group, d), dtype, device, seed=seed)
    k, v = _rand((batch, sk, hkv, d), dtype, device, seed=seed + 1), _rand((batch, sk, hkv, d), dtype, device, seed=seed + 2)
    if ragged:
        lens = torch.randint(0, sk + 1, (batch,), generator=torch.Generator().manual_seed(seed), dtype=torch.int32).to(device)
        out, lse = op_call("attention_with_lse_ragged", _layout(q, data, "q"), _layout(k, data, "k"), _layout(v, data, "v"),
                           lens, causal, scale)
    else:
        lens = None
        out, lse = op_call("attention_with_lse", _layout(q, data, "q"), _layout(k, data, "k"), _layout(v, data, "v"), causal, scale)
    if batch == 0:  # (the oracle stacks per-sequence results)
        assert out.shape == q.shape and lse.shape == (0, q.shape[2], sq)
        return
    ref_out, ref_lse = oracles.attention_with_lse(q, k, v, causal, scale, key_lens=lens)
    _close(out, ref_out, _attention_bound(q, k, v, dtype), "out")
    _close(lse, ref_lse, 1e-3 * (1 + ref_lse.abs().nan_to_num(0, 0, 0)), "lse")


SHAPE_TESTS["attention_with_lse_ragged"] = lambda device, data: _attention(device, data, ragged=True)


@shape_test("merge_attention_states")
def _merge(device, data):
    b, s, h, d = data.draw(st.integers(0, 2)), data.draw(st.sampled_from([0, 1, 7])), data.draw(st.integers(1, 3)), data.draw(st.sampled_from([8, 64]))
    dtype, seed = data.draw(st.sampled_from(FLOATS)), data.draw(st.integers(0, 99))
    oa, ob = _rand((b, s, h, d), dtype, device, seed=seed), _rand((b, s, h, d), dtype, device, seed=seed + 1)
    la, lb = _rand((b, h, s), torch.float32, device, 3, seed + 2), _rand((b, h, s), torch.float32, device, 3, seed + 3)
    if data.draw(st.booleans()) and la.numel():
        la.view(-1)[0] = -math.inf
        lb.view(-1)[0] = -math.inf
    out, lse = op_call("merge_attention_states", _layout(oa, data, "oa"), _layout(la, data, "la"), _layout(ob, data, "ob"), lb)
    ref_out, ref_lse = oracles.merge_attention_states(oa, la, ob, lb)
    _close(out, ref_out, 4 * EPS[dtype] * (oa.cpu().double().abs() + ob.cpu().double().abs()), "out")
    _close(lse, ref_lse, 1e-5 * (1 + ref_lse.abs().nan_to_num(0, 0, 0)), "lse")


@shape_test("shared_prefix_attention")
def _shared_prefix(device, data):
    batch, sq, p, s = data.draw(st.integers(0, 3)), data.draw(st.sampled_from([1, 2, 5])), data.draw(st.sampled_from([0, 1, 17, 64])), data.draw(st.sampled_from([0, 1, 9]))
    hkv, group, d = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.sampled_from([8, 64, 128]))
    dtype, seed = data.draw(st.sampled_from(FLOATS)), data.draw(st.integers(0, 99))
    q = _rand((batch, sq, hkv * group, d), dtype, device, seed=seed)
    pk, pv = _rand((p, hkv, d), dtype, device, seed=seed + 1), _rand((p, hkv, d), dtype, device, seed=seed + 2)
    sk, sv = _rand((batch, s, hkv, d), dtype, device, seed=seed + 3), _rand((batch, s, hkv, d), dtype, device, seed=seed + 4)
    lens = (torch.randint(0, s + 1, (batch,), generator=torch.Generator().manual_seed(seed), dtype=torch.int32).to(device)
            if data.draw(st.booleans()) else None)
    out = op_call("shared_prefix_attention", _layout(q, data, "q"), _layout(pk, data, "pk"), pv, sk, _layout(sv, data, "sv"), lens, None)
    if batch == 0:
        assert out.shape == q.shape
        return
    ref = oracles.shared_prefix_attention(q, pk, pv, sk, sv, lens)
    _close(out, ref, _attention_bound(q, torch.cat([pk.cpu(), sk.cpu().reshape(-1, hkv, d)]), torch.cat([pv.cpu(), sv.cpu().reshape(-1, hkv, d)]), dtype), "out")


def op_call(name, *args):
    return call(name, args, {})


def test_every_op_has_a_shape_test():
    assert set(CPU_OPS) <= set(SHAPE_TESTS), sorted(set(CPU_OPS) - set(SHAPE_TESTS))


@pytest.mark.parametrize("name", CPU_OPS)
@fuzz_settings(ci_examples=60)
@given(data=st.data())
def test_drawn_shapes_match_the_oracle(name, data):
    SHAPE_TESTS[name]("cpu", data)


@requires_cuda
@pytest.mark.parametrize("name", CPU_OPS)
@fuzz_settings(ci_examples=CUDA_EXAMPLES)
@given(data=st.data())
def test_drawn_shapes_match_the_oracle_cuda(name, data):
    device = "cuda"
    if name in ("bsr_spmm_packed", "bsr_from_csr", "bsr_reorder_rows") and device != "cpu":
        pytest.skip(f"{name} runs on the CPU only")
    SHAPE_TESTS[name](device, data)
