"""float64 / int64 oracles: the simplest readable formula for every op."""

from __future__ import annotations

import math

import torch


def int8_mm(a_i8: torch.Tensor, b_i8: torch.Tensor) -> torch.Tensor:
    """Exact a @ b.T in int64 (computed on CPU, where int64 matmul exists)."""
    return a_i8.cpu().long() @ b_i8.cpu().long().T


# --- int8 ---


def int8_vectorwise_quant(x: torch.Tensor, threshold: float = 0.0):
    """LLM.int8 activation quantization in float64.

    Returns (x_i8 as float64 [..., K], row_absmax [rows], outlier_cols int64).
    Outlier columns: any |x| > threshold (threshold > 0); they are excluded from
    the absmax and quantize to 0. A row with absmax 0 quantizes to zeros.
    """
    k, rows = x.shape[-1], math.prod(x.shape[:-1])
    x2 = x.detach().cpu().double().reshape(rows, k)
    outlier = (x2.abs() > threshold).any(0) if threshold > 0 else torch.zeros(k, dtype=torch.bool)
    absmax = x2.abs().masked_fill(outlier, 0).amax(1) if k > 0 else torch.zeros(x2.shape[0], dtype=torch.float64)
    scale = torch.where(absmax > 0, 127.0 / absmax, torch.zeros_like(absmax))
    x_i8 = torch.round(x2 * scale[:, None]).masked_fill(outlier, 0)
    return x_i8.reshape(x.shape), absmax, outlier.nonzero().flatten()


def int8_gemm(x, w_i8, w_absmax, bias=None, threshold: float = 6.0) -> torch.Tensor:
    """LLM.int8 in float64: the int8 product dequantized by absmax_x·absmax_w/127²,
    plus the outlier columns of x against the dequantized weight columns, plus bias."""
    k, n, rows = x.shape[-1], w_i8.shape[0], math.prod(x.shape[:-1])
    x_i8, x_absmax, cols = int8_vectorwise_quant(x, threshold)
    x2 = x.detach().cpu().double().reshape(rows, k)
    w_absmax = w_absmax.cpu().double()
    w_deq = w_i8.cpu().double() * w_absmax[:, None] / 127.0
    out = (x_i8.reshape(rows, k) @ w_i8.cpu().double().T) * x_absmax[:, None] * w_absmax[None, :] / 127.0**2
    out = out + x2[:, cols] @ w_deq[:, cols].T
    if bias is not None:
        out = out + bias.cpu().double()
    return out.reshape(*x.shape[:-1], n)
