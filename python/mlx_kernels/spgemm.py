"""Sparse × sparse matrix product (SpGEMM) for torch sparse tensors and scipy sparse matrices."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Tuple

import torch
from torch import Tensor

from . import ops
from ._autograd import register_non_differentiable

__all__ = ["spgemm"]

_FLOAT_DTYPES = (torch.float32, torch.float64)
_SPARSE_LAYOUTS = (torch.sparse_csr, torch.sparse_csc, torch.sparse_coo, torch.sparse_bsr, torch.sparse_bsc)

register_non_differentiable(
    "spgemm_csr",
    "its outputs are a sparsity structure (integer crow/col) and values on it; no backward is implemented. "
    "Detach a_val/b_val, or use torch.sparse.mm on torch sparse tensors for a differentiable product",
)


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


def _drop_zeros(crow: Tensor, col: Tensor, val: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Remove the stored entries whose value is exactly 0 (±0; NaN is kept), as scipy does."""
    keep = val != 0
    if col.numel() == 0 or bool(keep.all()):
        return crow, col, val
    kept_before = torch.zeros(col.numel() + 1, dtype=torch.int64, device=col.device)
    torch.cumsum(keep, 0, out=kept_before[1:])
    return kept_before[crow.long()].to(crow.dtype), col[keep], val[keep]


def _as_csr(t: Tensor, name: str) -> Tensor:
    """A 2-D torch sparse tensor of any layout as sparse_csr (same values, structure unchanged)."""
    if t.layout == torch.strided:
        raise TypeError(f"mlx_kernels.spgemm: {name} is a dense (strided) tensor; spgemm multiplies sparse "
                        f"matrices: convert it with {name}.to_sparse_csr(), or use torch.matmul for dense operands")
    if t.layout not in _SPARSE_LAYOUTS:
        raise TypeError(f"mlx_kernels.spgemm: {name} has layout {t.layout}; expected a torch sparse layout "
                        f"(sparse_csr, sparse_csc, sparse_coo, sparse_bsr or sparse_bsc)")
    if t.dense_dim() != 0:
        raise ValueError(f"mlx_kernels.spgemm: {name} is a hybrid sparse tensor with {t.dense_dim()} dense "
                         f"dimension(s) (shape {tuple(t.shape)}); only scalar values per stored entry are supported")
    if t.dim() != 2:
        raise ValueError(f"mlx_kernels.spgemm: {name} must be a 2-D matrix, got shape {tuple(t.shape)} "
                         f"(batched sparse tensors are not supported)")
    if t.layout == torch.sparse_csr:
        return t
    if t.layout in (torch.sparse_bsr, torch.sparse_bsc):
        # Every entry of a stored block is a stored entry (zeros included), as in torch.
        t = t.to_sparse_coo()
    return t.to_sparse_csr()  # COO duplicates are summed, as coalesce() does


def _spgemm_torch_eager(a: Tensor, b: Tensor, drop_zeros: bool) -> Tensor:
    a, b = _as_csr(a, "a"), _as_csr(b, "b")
    _check_shapes(a.shape, b.shape)
    if a.device != b.device:
        raise ValueError(f"mlx_kernels.spgemm: a is on {a.device} and b on {b.device}; they must share a device")
    value_dtype = torch.promote_types(a.dtype, b.dtype)
    if a.dtype not in _FLOAT_DTYPES or b.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"mlx_kernels.spgemm: values must be float32 or float64, got {a.dtype} and {b.dtype}")
    index_dtype = torch.promote_types(a.crow_indices().dtype, b.crow_indices().dtype)
    crow, col, val = ops.spgemm_csr(
        a.crow_indices().to(index_dtype), a.col_indices().to(index_dtype), a.values().to(value_dtype),
        b.crow_indices().to(index_dtype), b.col_indices().to(index_dtype), b.values().to(value_dtype),
        b.shape[1],
    )
    if drop_zeros:
        crow, col, val = _drop_zeros(crow, col, val)
    return torch.sparse_csr_tensor(crow, col, val, size=(a.shape[0], b.shape[1]))


# torch.compile cannot trace sparse tensors (dynamo refuses to wrap them, or died
# wrapping crow_indices() with an IndexError): the sparse-tensor path always runs
# eagerly, a graph break inside a compiled function, announced once.
_EAGER_REASON = ("mlx_kernels.spgemm multiplies torch sparse tensors, which dynamo cannot trace: it runs eagerly "
                 "(a graph break; fullgraph=True refuses it). Inside a fullgraph region call "
                 "mlx_kernels.spgemm_csr on the CSR index/value tensors instead")
_spgemm_torch = torch.compiler.disable(_spgemm_torch_eager, reason=_EAGER_REASON)
_warned_eager = False


@functools.partial(torch.compiler.disable, reason=_EAGER_REASON)
def _note_eager_fallback() -> None:
    global _warned_eager
    if not _warned_eager:
        _warned_eager = True
        warnings.warn(
            "mlx_kernels.spgemm runs eagerly under torch.compile (dynamo cannot trace sparse tensors): "
            "the call is a graph break. To put SpGEMM inside a compiled graph, call "
            "mlx_kernels.spgemm_csr on the CSR index/value tensors instead (with "
            "torch._dynamo.config.capture_dynamic_output_shape_ops = True).",
            stacklevel=3,
        )


def _spgemm_scipy(a, b, drop_zeros: bool):
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
    if drop_zeros:
        crow, col, val = _drop_zeros(crow, col, val)
    out = sp.csr_matrix((val.numpy(), col.numpy(), crow.numpy()), shape=(a.shape[0], b.shape[1]))
    out.has_sorted_indices = True
    return out


def spgemm(a, b, *, drop_zeros: bool = False):
    """C = A @ B for two sparse matrices (Gustavson row-wise, hash-table accumulators).

    Args:
        a: sparse matrix A of shape [m, k].
        b: sparse matrix B of shape [k, n]. Both torch sparse tensors or both
            scipy sparse matrices/arrays:

            * torch: any 2-D sparse layout (``sparse_csr``, ``sparse_csc``,
              ``sparse_coo``, ``sparse_bsr``, ``sparse_bsc``; the others are
              converted to CSR first: COO duplicates are summed, every entry of
              a stored BSR/BSC block counts as stored). CPU or CUDA, both on one
              device. No batch or dense (hybrid) dimensions.
            * scipy: any format (converted to CSR; duplicates summed).

            Values float32 or float64; mixed dtypes promote (scipy integer and
            bool matrices multiply in float64; float16/complex are refused).
            Index dtypes int32 or int64; mixed ones promote to int64 (torch COO
            and converted BSR/BSC indices are int64).
        drop_zeros: False (default): the structure is symbolic, as in cuSPARSE
            and ``torch.sparse.mm``: (i, j) is stored whenever some product
            ``A[i, k] * B[k, j]`` exists, even if the products sum to 0 (or an
            input stores explicit zeros). True: scipy's semantics: entries whose
            value is exactly ±0 are removed afterwards (NaN and Inf are never
            removed), so the result's structure equals ``a @ b`` in scipy.

    Returns:
        torch input: a ``torch.sparse_csr`` tensor [m, n] on the inputs' device,
        with the promoted value and index dtypes (always CSR, whatever the input
        layouts). scipy input: a ``scipy.sparse.csr_matrix`` [m, n]. Column
        indices are sorted within each row; no duplicates.

    NaN/Inf in a value propagate to every output entry whose products touch
    them (NaN·0 is NaN), as in scipy and torch. With int32 indices a result with
    more than 2^31 - 1 stored entries raises an error: use int64 indices. Not
    differentiable: use ``torch.sparse.mm`` when a gradient is needed.

    ``torch.compile``: the torch-sparse path always runs eagerly (a graph break,
    with a one-time warning; ``fullgraph=True`` refuses it): dynamo cannot trace
    sparse tensors. ``mlx_kernels.spgemm_csr`` on the CSR arrays compiles.

    Typical uses::

        # A·A: two-hop paths of a graph, squaring an operator (multigrid, Markov chains)
        two_hop = mlx_kernels.spgemm(adj, adj)
        # A·Aᵀ: row-row similarity / co-occurrence Gram matrix (A is [items, features])
        gram = mlx_kernels.spgemm(a, a.T)                    # scipy: any format works
        gram = mlx_kernels.spgemm(a, a.t())                  # torch: aᵀ is CSC, converted to CSR
    """
    if torch.compiler.is_compiling():
        _note_eager_fallback()
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return _spgemm_torch(a, b, bool(drop_zeros))
    if _is_scipy_sparse(a) and _is_scipy_sparse(b):
        return _spgemm_scipy(a, b, bool(drop_zeros))
    kinds = [("a torch tensor" if isinstance(x, Tensor) else "a scipy sparse matrix" if _is_scipy_sparse(x)
              else type(x).__name__) for x in (a, b)]
    hint = ""
    if isinstance(a, Tensor) != isinstance(b, Tensor) and (_is_scipy_sparse(a) or _is_scipy_sparse(b)):
        hint = ("; convert one side: scipy -> torch with torch.sparse_csr_tensor(torch.from_numpy(m.indptr), "
                "torch.from_numpy(m.indices), torch.from_numpy(m.data), size=m.shape) (m = m.tocsr()), "
                "torch -> scipy with scipy.sparse.csr_matrix((t.values().cpu().numpy(), "
                "t.col_indices().cpu().numpy(), t.crow_indices().cpu().numpy()), shape=t.shape) "
                "(t = t.to_sparse_csr())")
    raise TypeError("mlx_kernels.spgemm: a and b must both be torch sparse tensors (sparse_csr or another "
                    "sparse layout) or both scipy sparse matrices, got "
                    f"{kinds[0]} and {kinds[1]}{hint}")
