"""float64 / int64 oracles: the simplest readable formula for every op."""

from __future__ import annotations

import torch


def int8_mm(a_i8: torch.Tensor, b_i8: torch.Tensor) -> torch.Tensor:
    """Exact a @ b.T in int64 (computed on CPU, where int64 matmul exists)."""
    return a_i8.cpu().long() @ b_i8.cpu().long().T


# --- bsr ---


def bsr_to_dense(crow, col, blocks, m, k, row_perm=None) -> torch.Tensor:
    """A [m, k] in float64 from its BCSR (stored row r is A's row row_perm[r])."""
    br, bc = blocks.shape[1], blocks.shape[2]
    block_rows, block_cols = -(-m // br), -(-k // bc)
    stored = torch.zeros(block_rows * br, block_cols * bc, dtype=torch.float64)
    crow, col, blocks = crow.cpu().tolist(), col.cpu().tolist(), blocks.cpu().double()
    for rb in range(block_rows):
        for j in range(crow[rb], crow[rb + 1]):
            stored[rb * br:(rb + 1) * br, col[j] * bc:(col[j] + 1) * bc] = blocks[j]
    stored = stored[:m, :k]
    if row_perm is None:
        return stored
    a = torch.empty_like(stored)
    a[row_perm.cpu()] = stored
    return a


def bsr_spmm(crow, col, blocks, b, m, row_perm=None) -> torch.Tensor:
    """A @ b in float64 with A given in BCSR."""
    return bsr_to_dense(crow, col, blocks, m, b.shape[0], row_perm) @ b.cpu().double()
