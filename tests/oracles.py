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
# --- bipolar ---


def bipolar_unpack(planes: torch.Tensor, K: int) -> torch.Tensor:
    """int64 [R, K] values Σ_b 2^b·(2·bit_b − 1) of bit-planes [bits, R, ceil(K/32)]."""
    planes = planes.cpu().long() & 0xFFFFFFFF
    k = torch.arange(K)
    bits = (planes[:, :, k // 32] >> (k % 32)) & 1  # [bits, R, K]
    weights = 2 ** torch.arange(planes.shape[0]).view(-1, 1, 1)
    return ((2 * bits - 1) * weights).sum(0)


def bipolar_pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Bit-planes int32 [bits, R, ceil(K/32)] of odd values: bit b of (v + 2^bits − 1)/2."""
    values = values.cpu().long()
    rows, k = values.shape
    codes = (values + 2**bits - 1) // 2
    words = (k + 31) // 32
    padded = torch.zeros(rows, words * 32, dtype=torch.long)
    planes = torch.zeros(bits, rows, words, dtype=torch.long)
    for b in range(bits):
        padded[:, :k] = (codes >> b) & 1
        planes[b] = (padded.view(rows, words, 32) << torch.arange(32)).sum(-1)
    return planes.to(torch.int64).where(planes < 2**31, planes - 2**32).to(torch.int32)


def bipolar_gemm(a_planes: torch.Tensor, w_planes: torch.Tensor, K: int) -> torch.Tensor:
    """Exact int64 unpack(a) @ unpack(w).T."""
    return bipolar_unpack(a_planes, K) @ bipolar_unpack(w_planes, K).T


def bipolar_random_values(rows: int, k: int, bits: int, device="cpu") -> torch.Tensor:
    """Uniform random odd integers in [−(2^bits − 1), 2^bits − 1], int32."""
    return 2 * torch.randint(0, 2**bits, (rows, k), device=device, dtype=torch.int32) - (2**bits - 1)


def bipolar_quantize_levels(x: torch.Tensor, bits: int):
    """The quantizer's definition in float32: scale = absmax/(2^bits − 1) per row and the nearest
    odd level of x/scale (ties up), clamped; zero rows get scale 0 and level +1."""
    x = x.cpu().float()
    top = 2**bits - 1
    scale = x.abs().amax(-1) / top if x.shape[-1] else torch.zeros(x.shape[0])
    v = torch.where(scale[:, None] > 0, x / scale[:, None], torch.zeros_like(x))
    level = (2 * torch.floor(v * 0.5) + 1).clamp(-top, top)
    return level.long(), scale
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
# --- fftconv ---


def fft_conv(u: torch.Tensor, k: torch.Tensor, pregate=None, postgate=None) -> torch.Tensor:
    """Direct causal convolution in float64: y[b,h,t] = Σ_{s ≤ min(t, Lk-1)} k[h,s]·v[b,h,t-s]."""
    v = u.detach().cpu().double()
    if pregate is not None:
        v = v * pregate.detach().cpu().double()
    kd = k.detach().cpu().double()
    y = torch.zeros_like(v)
    for s in range(kd.shape[1]):
        y[..., s:] += kd[:, s, None] * v[..., : v.shape[-1] - s]
    if postgate is not None:
        y = y * postgate.detach().cpu().double()
    return y


def fft_conv_spectral(u: torch.Tensor, k: torch.Tensor, pregate=None, postgate=None, keep_blocks: int = 8,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The same convolution through torch.fft at FFT size N = fft_size_for(L), in ``dtype``,
    with the spectrum truncated to min(f, N - f) < keep_blocks·N/16 when keep_blocks < 8."""
    import mlx_kernels

    v = u.detach().cpu().to(dtype)
    if pregate is not None:
        v = v * pregate.detach().cpu().to(dtype)
    n = mlx_kernels.fft_size_for(v.shape[-1])
    spectrum = torch.fft.fft(v, n=n) * torch.fft.fft(k.detach().cpu().to(dtype), n=n)
    if keep_blocks < 8:
        f = torch.arange(n)
        spectrum = spectrum * (torch.minimum(f, n - f) < keep_blocks * (n // 16))
    y = torch.fft.ifft(spectrum).real[..., : v.shape[-1]]
    if postgate is not None:
        y = y * postgate.detach().cpu().to(dtype)
    return y
# --- attention ---
# Each function computes in float64 by default; dtype=<q's dtype> gives "plain
# torch in the same dtype", the reference of the tolerance rule.


def _masked_softmax_attention(q, k, v, visible, scale):
    """q [Sq, Hq, D], k/v [Sk, Hkv, D], visible bool [Sq, Sk] -> out [Sq, Hq, D], lse [Hq, Sq].
    A query that sees no key gets out 0 and lse -inf."""
    group = q.shape[1] // max(k.shape[1], 1)
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1)
    # A query that sees no key gets 0; any other NaN (a NaN or +inf score) stays, as in torch.
    probs = torch.where(visible.any(-1)[None, :, None], torch.softmax(scores, dim=-1), 0.0)
    return torch.einsum("hqk,khd->qhd", probs, v), lse


def _causal_visible(seq_q, key_len, seq_k):
    """[Sq, Sk]: key j < key_len and j <= key_len - Sq + i (the last query sees the last key)."""
    i = torch.arange(seq_q)[:, None]
    j = torch.arange(seq_k)[None, :]
    return (j < key_len) & (j <= key_len - seq_q + i)


def _on_cpu(dtype, *tensors):
    return [t.cpu().to(dtype) for t in tensors]  # differentiable: gradient oracles too


def attention_with_lse(q, k, v, causal=False, scale=None, key_lens=None, dtype=torch.float64):
    """Plain softmax attention per sequence: (out [B, Sq, Hq, D], lse [B, Hq, Sq])."""
    q, k, v = _on_cpu(dtype, q, k, v)
    batch, seq_q, _, head_dim = q.shape
    seq_k = k.shape[1]
    scale = head_dim**-0.5 if scale is None else scale
    outs, lses = [], []
    for b in range(batch):
        key_len = seq_k if key_lens is None else int(key_lens[b])
        if causal:
            visible = _causal_visible(seq_q, key_len, seq_k)
        else:
            visible = (torch.arange(seq_k) < key_len)[None, :].expand(seq_q, seq_k)
        out, lse = _masked_softmax_attention(q[b], k[b], v[b], visible, scale)
        outs.append(out)
        lses.append(lse)
    return torch.stack(outs), torch.stack(lses)


def shared_prefix_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens=None, scale=None,
                            dtype=torch.float64):
    """Each sequence attends over [prefix; its own suffix] with the prefix copied (no sharing)."""
    q, prefix_k, prefix_v, suffix_k, suffix_v = _on_cpu(dtype, q, prefix_k, prefix_v, suffix_k, suffix_v)
    batch, seq_q, _, head_dim = q.shape
    prefix_len, seq_s = prefix_k.shape[0], suffix_k.shape[1]
    scale = head_dim**-0.5 if scale is None else scale
    outs = []
    for b in range(batch):
        suffix_len = seq_s if suffix_lens is None else int(suffix_lens[b])
        keys = torch.cat([prefix_k, suffix_k[b]])
        values = torch.cat([prefix_v, suffix_v[b]])
        visible = torch.cat([torch.ones(seq_q, prefix_len, dtype=torch.bool),
                             _causal_visible(seq_q, suffix_len, seq_s)], dim=1)
        outs.append(_masked_softmax_attention(q[b], keys, values, visible, scale)[0])
    return torch.stack(outs)


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    """Softmax merge in float64: weights exp(lse_x - lse); an empty (-inf) side weighs 0."""
    out_a, out_b, lse_a, lse_b = _on_cpu(torch.float64, out_a, out_b, lse_a, lse_b)
    lse = torch.logaddexp(lse_a, lse_b)
    w_a = torch.exp(lse_a - lse).nan_to_num(0.0).transpose(1, 2)[..., None]
    w_b = torch.exp(lse_b - lse).nan_to_num(0.0).transpose(1, 2)[..., None]
    return w_a * out_a + w_b * out_b, lse
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
