"""float64 / int64 oracles: the simplest readable formula for every op."""

from __future__ import annotations

import torch


def int8_mm(a_i8: torch.Tensor, b_i8: torch.Tensor) -> torch.Tensor:
    """Exact a @ b.T in int64 (computed on CPU, where int64 matmul exists)."""
    return a_i8.cpu().long() @ b_i8.cpu().long().T
