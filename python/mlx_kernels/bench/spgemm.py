"""SpGEMM benchmarks: spgemm_csr on the SuiteSparse matrices (A·A and A·Aᵀ) against
scipy.sparse (CPU) and cuSPARSE through torch.sparse.mm (GPU). Without the
SuiteSparse files (see datasets.py, MLX_MATRIX_DIR) it runs on generated matrices
of the same classes (FEM mesh, power-law graph, circuit) and says so.

Work is 2 × (number of partial products), so the throughput column is the
usual SpGEMM "GFLOP/s" (shown in TFLOP/s). ``extra`` records nnz(C), the
product count and, on GPU, the peak extra device memory of ours and cuSPARSE
(torch.cuda.max_memory_allocated over what was allocated before the call).
"""

from __future__ import annotations

import functools
from typing import List

import numpy as np
import torch

from .. import ops
from .core import Case, Measure
from .datasets import sparse_matrices

_QUICK_CPU = ["cryg2500", "USpowerGrid", "add32"]
_QUICK_GPU = ["bcsstk13", "bayer10"]


OURS = {"spgemm_csr": lambda device: (
    "torch.ops.mlx.spgemm_csr, fp32 (" + ("symbolic + numeric passes, rows binned into shared-memory hash tables, "
                                           "atomics" if device == "cuda" else
                                           "Gustavson rows, per-thread hash/dense accumulators, all threads") + ")")}


def _csr_arrays(mat, device):
    return (torch.from_numpy(mat.indptr).to(device), torch.from_numpy(mat.indices).to(device),
            torch.from_numpy(mat.data).to(device))


def _peak_extra_bytes(fn) -> int:
    """Peak device memory ``fn`` allocates beyond what is already allocated (its outputs included)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return int(peak)


def spgemm_cases(device: str, quick: bool) -> List[Case]:
    matrices = sparse_matrices(quick, _QUICK_GPU if device == "cuda" else _QUICK_CPU)
    products = ["AA"] if quick else ["AA", "AAt"]
    cases = []
    for name, load, source in matrices:
        for product in products:
            a = load().astype(np.float32)
            b = a if product == "AA" else a.T.tocsr()
            partial_products = int(np.diff(b.indptr)[a.indices].sum())
            extra = {"products": partial_products}

            def make(a=a, b=b, extra=extra):
                args = (*_csr_arrays(a, device), *_csr_arrays(b, device), b.shape[1])
                ours = functools.partial(ops.spgemm_csr, *args)
                extra["nnz_c"] = int(ours()[0][-1])
                if device == "cuda":
                    ta = torch.sparse_csr_tensor(*args[:3], size=a.shape)
                    tb = torch.sparse_csr_tensor(*args[3:6], size=b.shape)
                    cusparse = functools.partial(torch.sparse.mm, ta, tb)
                    extra["ours_peak_extra_bytes"] = _peak_extra_bytes(ours)
                    extra["cusparse_peak_extra_bytes"] = _peak_extra_bytes(cusparse)
                    return ours, {"cuSPARSE (torch.sparse.mm)": cusparse}
                return ours, {"scipy": lambda: a @ b}

            cases.append(Case(label=f"{name} {product}", params={"matrix": name, "source": source,
                                                                 "product": product, "m": a.shape[0],
                                                                 "nnz_a": a.nnz},
                              measure=Measure(2.0 * partial_products, "FLOP"), make=make, extra=extra))
    return cases


BENCHMARKS = {"spgemm_csr": spgemm_cases}
