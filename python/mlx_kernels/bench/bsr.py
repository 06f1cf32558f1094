"""bsr family benchmarks: bsr_spmm (BlockSparseMatrix @ dense) on SuiteSparse and
synthetic matrices against cuSPARSE CSR/BSR (torch.sparse), dense torch.matmul
and scipy on CPU.

Throughput counts the useful work, 2·nnz·n FLOP (not the padded blocks). Each
case's ``extra`` records the fill (nnz / stored block entries) with and without
the SMaT row reordering, the block counts and the reordering's cost.
"""

from __future__ import annotations

import time
from typing import List

import torch

from ..bsr import BlockSparseMatrix
from .core import Case, Measure
from .datasets import sparse_matrices


_NS = (32, 128, 512)
_SYNTHETIC_DENSITIES = (0.001, 0.01, 0.05, 0.3, 0.5)
_QUICK_MATRICES = ("cryg2500",)
# Dense baselines only where the dense A fits comfortably.
_DENSE_LIMIT = {"cuda": 2 ** 28, "cpu": 2 ** 24}


OURS = {"bsr_spmm": lambda device: (
    "BlockSparseMatrix.from_scipy(a, reorder=True) @ b, 16x16 blocks, SMaT row reordering (" +
    ("mma.sync tensor-core kernel, fp16" if device == "cuda" else "CPU bit-map kernel bsr_spmm_packed, fp32") + ")")}


def _real_matrices(quick: bool):
    """The SuiteSparse matrices, or generated ones of the same classes when they are missing."""
    for name, load, _ in sparse_matrices(quick, _QUICK_MATRICES):
        yield name, load


def _synthetic_matrices(device: str, quick: bool):
    import scipy.sparse as sp

    size = 512 if quick else (8192 if device == "cuda" else 2048)
    densities = (0.05,) if quick else _SYNTHETIC_DENSITIES
    for density in densities:
        yield f"random{size}-d{density}", lambda density=density: sp.random(
            size, size, density=density, format="csr", random_state=0)


def _case(name: str, load, n: int, device: str, quick: bool) -> Case:
    import numpy as np

    dtype = torch.float16 if device == "cuda" else torch.float32
    params = {"matrix": name, "n": n, "dtype": str(dtype).replace("torch.", "")}
    extra: dict = {}
    # 2·nnz·n, set once make() has loaded the matrix (run_case reads it after make()).
    measure = Measure(0.0, "FLOP", peak="fp16" if device == "cuda" else None)

    def make():
        a_sp = load().astype(np.float32 if dtype == torch.float32 else np.float16)
        a_sp.sum_duplicates()
        plain = BlockSparseMatrix.from_scipy(a_sp, reorder=False)
        t0 = time.perf_counter()
        ours_a = BlockSparseMatrix.from_scipy(a_sp, reorder=True)
        build_ms = (time.perf_counter() - t0) * 1e3
        csr = torch.sparse_csr_tensor(torch.from_numpy(a_sp.indptr).long(), torch.from_numpy(a_sp.indices).long(),
                                      torch.from_numpy(a_sp.data), size=a_sp.shape)
        t0 = time.perf_counter()
        torch.ops.mlx.bsr_reorder_rows(csr.crow_indices(), csr.col_indices(), a_sp.shape[1], 16, 16)
        reorder_ms = (time.perf_counter() - t0) * 1e3
        measure.amount = 2.0 * a_sp.nnz * n
        extra.update(m=a_sp.shape[0], k=a_sp.shape[1], nnz=int(a_sp.nnz),
                     fill_before=plain.fill, fill_after=ours_a.fill,
                     nblocks_before=plain.nblocks, nblocks_after=ours_a.nblocks,
                     reorder_ms=reorder_ms, build_ms=build_ms)
        ours_a = ours_a.to(device)
        b = torch.randn(a_sp.shape[1], n, dtype=dtype, device=device)
        baselines = {}
        csr_dev = csr.to(device)
        baselines["torch.sparse CSR" + (" (cuSPARSE)" if device == "cuda" else "")] = lambda: csr_dev @ b
        bsr = plain.to(device)
        padded = (-(-a_sp.shape[0] // 16) * 16, -(-a_sp.shape[1] // 16) * 16)
        bsr_torch = torch.sparse_bsr_tensor(bsr.crow, bsr.col, bsr.blocks, size=padded)
        b_padded = torch.zeros(padded[1], n, dtype=dtype, device=device)
        b_padded[: a_sp.shape[1]] = b
        baselines["torch.sparse BSR" + (" (cuSPARSE)" if device == "cuda" else "")] = lambda: bsr_torch @ b_padded
        if a_sp.shape[0] * a_sp.shape[1] <= _DENSE_LIMIT[device]:
            dense = ours_a.to_dense()
            baselines["dense torch.matmul"] = lambda: dense @ b
        if device == "cpu":
            b_np = b.numpy()
            baselines["scipy"] = lambda: a_sp @ b_np
        return (lambda: ours_a @ b), baselines

    return Case(label=f"{name} n={n}", params=params, measure=measure, make=make, extra=extra)


def bsr_spmm_cases(device: str, quick: bool) -> List[Case]:
    ns = (32,) if quick else _NS
    cases = []
    for source in (_real_matrices(quick), _synthetic_matrices(device, quick)):
        for name, load in source:
            cases += [_case(name, load, n, device, quick) for n in ns]
    return cases


BENCHMARKS = {"bsr_spmm": bsr_spmm_cases}
