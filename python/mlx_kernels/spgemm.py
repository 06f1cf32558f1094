"""Sparse × sparse matrix product (SpGEMM) for torch CSR tensors and scipy sparse matrices."""

from __future__ import annotations

from typing import Any

import torch

from . import ops

__all__ = ["spgemm"]

_FLOAT_DTYPES = (torch.float32, torch.float64)


def _is_scipy_sparse(x: Any) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # scipy is a dependency, but keep torch-only use working
        return False
    return sp.issparse(x)


def _check_shapes(a_shape, b_shape) -> None:
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise ValueError(f"mlx_kernels.spgemm: a and b must be 2-D matrices, got shapes {tuple(a_shape)} "
                         f"and {tuple(b_shape)}")
    if a_shape[1] != b_shape[0]:
        raise ValueError(f"mlx_kernels.spgemm: inner dimensions differ: a is {tuple(a_shape)} and b is "
                         f"{tuple(b_shape)} (a @ b needs a.shape[1] == b.shape[0])")


def _spgemm_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    for name, t in (("a", a), ("b", b)):
        if t.layout != torch.sparse_csr:
            raise TypeError(f"mlx_kernels.spgemm: {name} must be a torch.sparse_csr tensor, got layout {t.layout}")
    _check_shapes(a.shape, b.shape)
    if a.device != b.device:
        raise ValueError(f"mlx_kernels.spgemm: a is on {a.device} and b on {b.device}; they must share a device")
    value_dtype = torch.promote_types(a.dtype, b.dtype)
    if value_dtype not in _FLOAT_DTYPES:
        raise TypeError(f"mlx_kernels.spgemm: values must be float32 or float64, got {a.dtype} and {b.dtype}")
    index_dtype = torch.promote_types(a.crow_indices().dtype, b.crow_indices().dtype)
    crow, col, val = ops.spgemm_csr(
        a.crow_indices().to(index_dtype), a.col_indices().to(index_dtype), a.values().to(value_dtype),
        b.crow_indices().to(index_dtype), b.col_indices().to(index_dtype), b.values().to(value_dtype),
        b.shape[1],
    )
    return torch.sparse_csr_tensor(crow, col, val, size=(a.shape[0], b.shape[1]))


def _spgemm_scipy(a, b):
    import numpy as np
    import scipy.sparse as sp

    _check_shapes(a.shape, b.shape)
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    value_dtype = np.result_type(a.dtype, b.dtype)
    if value_dtype.kind == "c":
        raise TypeError(f"mlx_kernels.spgemm: complex matrices are not supported, got {a.dtype} and {b.dtype}")
    if value_dtype not in (np.float32, np.float64):  # integer and bool matrices multiply in float64
        value_dtype = np.dtype(np.float64)
    index_dtype = np.result_type(a.indices.dtype, b.indices.dtype)

    def arrays(m):
        return (torch.from_numpy(np.ascontiguousarray(m.indptr, dtype=index_dtype)),
                torch.from_numpy(np.ascontiguousarray(m.indices, dtype=index_dtype)),
                torch.from_numpy(np.ascontiguousarray(m.data, dtype=value_dtype)))

    crow, col, val = ops.spgemm_csr(*arrays(a), *arrays(b), b.shape[1])
    out = sp.csr_matrix((val.numpy(), col.numpy(), crow.numpy()), shape=(a.shape[0], b.shape[1]))
    out.has_sorted_indices = True
    return out


def spgemm(a, b):
    """C = A @ B for two sparse matrices, Gustavson row-wise with hash-table accumulators.

    ``a`` and ``b`` are either both ``torch.sparse_csr`` tensors (CPU or CUDA, one
    device; returns a ``sparse_csr`` tensor) or both scipy sparse matrices of any
    format (returns a ``scipy.sparse.csr_matrix``). Values are float32 or float64
    (scipy integer/bool matrices are multiplied in float64; mixed dtypes promote);
    int32 and int64 indices both work, mixed ones promote to int64. Column indices
    of the result are sorted within each row.

    The result's structure is symbolic: entry (i, j) is stored whenever some
    ``A[i, k] * B[k, j]`` product exists, even if the products cancel to 0 (as in
    cuSPARSE and ``torch.sparse.mm``; scipy drops such zeros, so compare with
    ``scipy_result.eliminate_zeros()``). With int32 indices a result with more
    than 2^31 - 1 stored entries raises an error; use int64 indices.

    Typical uses::

        # A·A: two-hop paths of a graph, squaring an operator (multigrid, Markov chains)
        two_hop = mlx_kernels.spgemm(adj, adj)
        # A·Aᵀ: row-row similarity / co-occurrence Gram matrix (A is [items, features])
        gram = mlx_kernels.spgemm(a, a.T)                           # scipy: any format works
        gram = mlx_kernels.spgemm(a, a.t().to_sparse_csr())         # torch: transpose back to CSR
    """
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return _spgemm_torch(a, b)
    if _is_scipy_sparse(a) and _is_scipy_sparse(b):
        return _spgemm_scipy(a, b)
    raise TypeError("mlx_kernels.spgemm: a and b must both be torch.sparse_csr tensors or both scipy sparse "
                    f"matrices, got {type(a).__name__} and {type(b).__name__}")
