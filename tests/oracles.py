"""float64 / int64 oracles: the simplest readable formula for every op."""

from __future__ import annotations

import torch


def int8_mm(a_i8: torch.Tensor, b_i8: torch.Tensor) -> torch.Tensor:
    """Exact a @ b.T in int64 (computed on CPU, where int64 matmul exists)."""
    return a_i8.cpu().long() @ b_i8.cpu().long().T


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
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", probs, v), lse


def _causal_visible(seq_q, key_len, seq_k):
    """[Sq, Sk]: key j < key_len and j <= key_len - Sq + i (the last query sees the last key)."""
    i = torch.arange(seq_q)[:, None]
    j = torch.arange(seq_k)[None, :]
    return (j < key_len) & (j <= key_len - seq_q + i)


def _on_cpu(dtype, *tensors):
    return [t.detach().cpu().to(dtype) for t in tensors]


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
