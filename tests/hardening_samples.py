"""Op samples shared by the hardening tests (test_hardening.py, test_fuzz.py).

Every op of the package, internal ones included, with valid arguments: the
opcheck samples of tests/cases/ plus the CPU-only helpers they do not call
(bsr_reorder_rows, bsr_from_csr), and a few medium-sized inputs whose CPU
kernels really split their work across threads (the opcheck samples are tiny).
"""

from __future__ import annotations

import torch

import mlx_kernels
from cases import collect


def op(name: str):
    return getattr(getattr(torch.ops, mlx_kernels.OPS_NAMESPACE), name)


def _csr(m, k, density, seed, index_dtype=torch.int64, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    dense = (torch.rand(m, k, generator=g) < density) * torch.randn(m, k, generator=g)
    csr = dense.to(dtype).to_sparse_csr()
    return csr.crow_indices().to(index_dtype), csr.col_indices().to(index_dtype), csr.values()


def _extra_cpu_samples():
    crow, col, values = _csr(37, 45, 0.2, 1)
    return [
        ("bsr_reorder_rows", lambda device: ("bsr_reorder_rows", (crow, col, 45, 16, 16), {})),
        ("bsr_reorder_rows_int32", lambda device: ("bsr_reorder_rows", (crow.int(), col.int(), 45, 4, 8), {})),
        ("bsr_from_csr", lambda device: ("bsr_from_csr", (crow, col, values, 45, 16, 16, None), {})),
        ("bsr_from_csr_perm", lambda device: (
            "bsr_from_csr", (crow, col, values.double(), 45, 8, 4, torch.randperm(37, generator=torch.Generator().manual_seed(2))), {})),
    ]


def samples(device: str):
    """[(id, op_name, args, kwargs)] for every op sample on `device` (CPU-only ops on CPU only)."""
    out = []
    import pytest

    for sample_id, factory in collect("OPCHECK"):
        try:
            name, args, kwargs = factory(device)
        except pytest.skip.Exception:  # a CPU-only sample on CUDA
            continue
        out.append((sample_id, name, args, kwargs))
    if device == "cpu":
        for sample_id, factory in _extra_cpu_samples():
            name, args, kwargs = factory(device)
            out.append((sample_id, name, args, kwargs))
    return out


def medium_samples(device: str):
    """Inputs large enough that the CPU kernels run on several threads."""
    g = torch.Generator().manual_seed(7)

    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    def i8(*shape):
        return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8).to(device)

    out = []
    out.append(("int8_mm", (i8(192, 640), i8(160, 640)), {}))
    x = rand(160, 512, dtype=torch.float16)
    x[:, 3] *= 40
    w_i8, w_absmax, _ = op("int8_vectorwise_quant")(rand(224, 512), 0.0)
    out.append(("int8_vectorwise_quant", (x, 6.0), {}))
    out.append(("int8_gemm", (x, w_i8, w_absmax, rand(224, dtype=torch.float16), 6.0), {}))
    a_planes, _ = op("bipolar_quantize")(rand(128, 1000), 3)
    w_planes, w_scale = op("bipolar_quantize")(rand(96, 1000), 2)
    out.append(("bipolar_gemm", (a_planes, w_planes, 1000), {}))
    out.append(("bipolar_quantize", (rand(256, 777), 4), {}))
    out.append(("bipolar_linear", (rand(128, 1000, dtype=torch.bfloat16), w_planes, w_scale, 4, None), {}))
    crow, col, values = _csr(400, 300, 0.05, 3, dtype=torch.float64)
    crow, col, values = crow.to(device), col.to(device), values.to(device)
    out.append(("spgemm_csr", (crow, col, values, *[t.to(device) for t in _csr(300, 500, 0.05, 4, dtype=torch.float64)], 500), {}))
    bsr = mlx_kernels.BlockSparseMatrix.from_dense(rand(300, 1600) * (rand(300, 1600) > 1.0), block=(16, 16), reorder=False)
    out.append(("bsr_spmm", (bsr.crow, bsr.col, bsr.blocks.detach(), rand(1600, 96), 300, None), {}))
    out.append(("fft_conv", (rand(4, 16, 3000), rand(16, 1500)), {}))
    q, k, v = rand(2, 200, 8, 64), rand(2, 300, 2, 64), rand(2, 300, 2, 64)
    out.append(("attention_with_lse", (q, k, v, True, None), {}))
    out.append(("shared_prefix_attention", (q, rand(150, 2, 64), rand(150, 2, 64), k, v, None, None), {}))
    if device == "cpu":
        crow, col, values = _csr(3000, 2000, 0.01, 5)
        out.append(("bsr_reorder_rows", (crow, col, 2000, 16, 16), {}))
        out.append(("bsr_from_csr", (crow, col, values, 2000, 16, 16, None), {}))
    return out


def call(name, args, kwargs):
    with torch.no_grad():
        return op(name)(*args, **kwargs)


def assert_same(a, b, what=""):
    """Bitwise equal (NaN equal to NaN), through tuples."""
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), what
        for x, y in zip(a, b):
            assert_same(x, y, what)
        return
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
    torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")
