"""float64 / int64 oracles: the simplest readable formula for every op."""

from __future__ import annotations

import torch


def int8_mm(a_i8: torch.Tensor, b_i8: torch.Tensor) -> torch.Tensor:
    """Exact a @ b.T in int64 (computed on CPU, where int64 matmul exists)."""
    return a_i8.cpu().long() @ b_i8.cpu().long().T


# --- spgemm ---


def spgemm_csr(a_crow, a_col, a_val, b_crow, b_col, b_val, n):
    """Dense float64 C = A @ B, and C's symbolic structure: (i, j) is stored when
    some stored A[i, k] meets some stored B[k, j] (pattern(A) @ pattern(B) > 0)."""

    def dense(crow, col, val, cols):
        crow, col = crow.cpu().long(), col.cpu().long()
        rows = torch.repeat_interleave(torch.arange(crow.numel() - 1), crow.diff())
        out = torch.zeros(crow.numel() - 1, cols, dtype=torch.float64)
        out.index_put_((rows, col), val.cpu().double(), accumulate=True)
        return out

    k = b_crow.numel() - 1
    a, b = dense(a_crow, a_col, a_val, k), dense(b_crow, b_col, b_val, n)
    a_pattern = dense(a_crow, a_col, torch.ones(a_col.numel()), k)
    b_pattern = dense(b_crow, b_col, torch.ones(b_col.numel()), n)
    return a @ b, (a_pattern @ b_pattern) > 0
