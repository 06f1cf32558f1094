"""Shared-prefix attention (Hydragen).

When many sequences share a prefix (a system prompt, few-shot examples, a
document with many questions), attention over the prefix is computed once for
all of them: the queries of every sequence are stacked into one query block and
multiplied against the single copy of the prefix keys/values (a compute-bound
matrix multiply instead of one memory-bound matrix-vector product per
sequence); each sequence's own suffix is attended separately, and the partial
results are combined exactly through their log-sum-exp (LSE).

Layout everywhere: [batch, seq, heads, head_dim]; LSE [batch, heads, seq] in
fp32, natural log. Grouped-query attention: query heads a multiple of KV heads.

- :func:`attention_with_lse` — softmax attention that also returns the LSE.
- :func:`merge_attention_states` — exact merge of two attentions over disjoint keys.
- :func:`shared_prefix_attention` — one shared prefix + per-sequence suffixes.
- :func:`hierarchical_shared_prefix_attention` — several nested shared prefixes
  (a prompt shared by all, a document shared by a sub-group, ...).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import ops as _ops
from ._autograd import needs_grad
from .ops import attention_with_lse, attention_with_lse_ragged, merge_attention_states, shared_prefix_attention

__all__ = [
    "attention_with_lse",
    "merge_attention_states",
    "shared_prefix_attention",
    "hierarchical_shared_prefix_attention",
]

PrefixLevel = Tuple[Tensor, Tensor, Optional[Tensor]]


# --- autograd --------------------------------------------------------------------
#
# Backward by recomputation, FlashAttention-2's equations in torch math (fp32):
# with P = softmax(scale·QKᵀ) over the visible keys, dO the output gradient and dL the LSE's,
#   dV = Pᵀ·dO,  dS = P ∘ (dO·Vᵀ − Δ),  Δ = rowsum(dO ∘ O) − dL,  dQ = scale·dS·K,  dK = scale·dSᵀ·Q.
# P and Δ are recomputed from the scores themselves (never from the forward's rounded
# LSE and output), so they agree to the last bit; over several key sets (Hydragen's
# prefix and suffix) P comes from the softmax's row max and sum, not an fp32 LSE. Queries go in chunks so the scores of
# one chunk stay under _SCORE_CHUNK elements.

_SCORE_CHUNK = 1 << 24


def _lse_to_rows(lse: Tensor) -> Tensor:
    """[B, H, S] (LSE layout) -> [B, S, H] (output layout)."""
    return lse.transpose(1, 2)


class _Keys:
    """The keys and values one set of queries attends to, in fp32 and the grouped
    layout: queries [B, Hkv, G, Sq, D] (G query heads per KV head), keys and values
    [B, Hkv, 1, Sk, D]; per-query rows such as the LSE are [B, Hkv, G, Sq, 1]."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: Optional[float],
                 key_lens: Optional[Tensor] = None):
        self.q_shape = q.shape
        self.batch, self.seq_q, heads_q, head_dim = q.shape
        self.seq_k, self.heads_kv = k.shape[1], k.shape[2]
        self.group = heads_q // self.heads_kv
        self.scale = head_dim ** -0.5 if scale is None else scale
        self.causal, self.key_lens = causal, key_lens
        self.q = self.grouped(q)
        self.k = k.float().permute(0, 2, 1, 3).unsqueeze(2)
        self.v = v.float().permute(0, 2, 1, 3).unsqueeze(2)
        self.chunk = max(1, _SCORE_CHUNK // max(1, self.batch * heads_q * self.seq_k))

    def grouped(self, x: Tensor) -> Tensor:
        """[B, Sq, Hq, X] -> fp32 [B, Hkv, G, Sq, X]."""
        return x.float().view(self.batch, self.seq_q, self.heads_kv, self.group, -1).permute(0, 2, 3, 1, 4)

    def ungrouped(self, x: Tensor) -> Tensor:
        """[B, Hkv, G, Sq, X] -> [B, Sq, Hq, X]."""
        return x.permute(0, 3, 1, 2, 4).reshape(*self.q_shape[:3], x.shape[-1])

    def _visible(self, start: int, count: int) -> Optional[Tensor]:
        """bool [B or 1, 1, 1, count, Sk]: the keys queries start.. start+count see (None: all)."""
        if not self.causal and self.key_lens is None:
            return None
        device = self.q.device
        j = torch.arange(self.seq_k, device=device).view(1, 1, -1)
        lens = (self.key_lens.to(device=device, dtype=torch.int64).view(-1, 1, 1) if self.key_lens is not None
                else torch.full((1, 1, 1), self.seq_k, dtype=torch.int64, device=device))
        visible = j < lens
        if self.causal:  # the last query sees the last key
            i = torch.arange(start, start + count, device=device).view(1, -1, 1)
            visible = visible & (j <= lens - self.seq_q + i)
        return visible.unsqueeze(1).unsqueeze(1)

    def scores(self):
        """(rows, scale·Q·Kᵀ of those queries with -inf at invisible keys), chunk by chunk."""
        for start in range(0, self.seq_q, self.chunk):
            rows = slice(start, min(self.seq_q, start + self.chunk))
            scores = torch.matmul(self.q[:, :, :, rows], self.k.transpose(-1, -2)) * self.scale
            visible = self._visible(start, rows.stop - start)
            yield rows, scores if visible is None else scores.masked_fill(~visible, -torch.inf)

    def row_stats(self) -> Tuple[Tensor, Tensor]:
        """The softmax's row max m and sum l = Σ_j exp(s_j − m) (m = -inf, l = 0: no key)."""
        shape = self.q.shape[:-1] + (1,)
        row_max, row_sum = self.q.new_empty(shape), self.q.new_empty(shape)
        for rows, scores in self.scores():
            m = scores.amax(dim=-1, keepdim=True) if self.seq_k else scores.new_full(scores.shape[:-1] + (1,), -torch.inf)
            row_max[:, :, :, rows] = m
            row_sum[:, :, :, rows] = torch.exp(scores - _finite_or_zero(m)).sum(-1, keepdim=True)
        return row_max, row_sum

    def partial_out(self, stats: Tuple[Tensor, Tensor]) -> Tensor:
        """Σ_j p_j·v_j over these keys with the probabilities of a larger softmax (stats)."""
        out = self.q.new_empty(self.q.shape[:-1] + (self.v.shape[-1],))
        for rows, scores in self.scores():
            out[:, :, :, rows] = torch.matmul(_probs(scores, stats, rows), self.v)
        return out

    def grads(self, dout: Optional[Tensor], dlse: Optional[Tensor] = None,
              stats: Optional[Tuple[Tensor, Tensor]] = None,
              delta: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """(dq [B, Sq, Hq, D], dk, dv [B, Sk, Hkv, D]) in fp32 for the output gradient dout
        (grouped) and the LSE's dlse. stats and delta, when given, come from a larger
        softmax these keys are part of (see row_stats; Δ given); else P is this
        attention's own softmax and Δ = rowsum(P ∘ dP) − dlse."""
        dq = torch.zeros_like(self.q)
        dk = torch.zeros(self.k.shape[:2] + self.k.shape[3:], dtype=torch.float32, device=self.q.device)
        dv = torch.zeros(self.v.shape[:2] + self.v.shape[3:], dtype=torch.float32, device=self.q.device)
        for rows, scores in self.scores():
            # A query that sees no key gets P = 0, not NaN.
            probs = torch.softmax(scores, dim=-1).nan_to_num(0.0) if stats is None else \
                _probs(scores, stats, rows)
            dprobs = torch.zeros_like(probs)
            if dout is not None:
                dv += torch.matmul(probs.transpose(-1, -2), dout[:, :, :, rows]).sum(2)
                dprobs = torch.matmul(dout[:, :, :, rows], self.v.transpose(-1, -2))
            if delta is not None:
                row_delta = delta[:, :, :, rows]
            else:
                row_delta = (probs * dprobs).sum(-1, keepdim=True)
                if dlse is not None:
                    row_delta = row_delta - dlse[:, :, :, rows]
            dscores = probs * (dprobs - row_delta) * self.scale
            dq[:, :, :, rows] = torch.matmul(dscores, self.k)
            dk += torch.matmul(dscores.transpose(-1, -2), self.q[:, :, :, rows]).sum(2)
        return self.ungrouped(dq), dk.permute(0, 2, 1, 3), dv.permute(0, 2, 1, 3)


def _finite_or_zero(row_max: Tensor) -> Tensor:
    return torch.where(torch.isneginf(row_max), 0.0, row_max)


def _probs(scores: Tensor, stats: Tuple[Tensor, Tensor], rows: slice) -> Tensor:
    """exp(s − m)/l from a row max and sum: s − m loses nothing, unlike s − lse with an
    fp32 LSE. A query with no visible key gets 0."""
    row_max, row_sum = stats[0][:, :, :, rows], stats[1][:, :, :, rows]
    return torch.exp(scores - _finite_or_zero(row_max)) / torch.where(row_sum == 0, 1.0, row_sum)


def _merge_row_stats(a: Tuple[Tensor, Tensor], b: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tensor]:
    """Row stats of the softmax over two disjoint key sets."""
    row_max = torch.maximum(a[0], b[0])
    shift = _finite_or_zero(row_max)
    return row_max, a[1] * torch.exp(a[0] - shift) + b[1] * torch.exp(b[0] - shift)


def _cast_grads(grads, tensors, needs):
    return tuple(g.to(t.dtype) if need else None for g, t, need in zip(grads, tensors, needs))


def _attention_setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    key_lens = inputs[3] if len(inputs) > 3 and isinstance(inputs[3], Tensor) else None
    rest = inputs[4:] if key_lens is not None else inputs[3:]
    ctx.causal = rest[0] if len(rest) > 0 else False
    ctx.scale = rest[1] if len(rest) > 1 else None
    ctx.ragged = key_lens is not None
    ctx.save_for_backward(q, k, v, key_lens)


def _attention_backward(ctx, grad_out, grad_lse):
    q, k, v, key_lens = ctx.saved_tensors
    keys = _Keys(q, k, v, ctx.causal, ctx.scale, key_lens)
    dout = None if grad_out is None else keys.grouped(grad_out)
    dlse = None if grad_lse is None else grad_lse.float().view(keys.q.shape[:-1] + (1,))
    needs = needs_grad(ctx, 6 if ctx.ragged else 5)
    result = _cast_grads(keys.grads(dout, dlse), (q, k, v), needs[:3]) + ((None,) if ctx.ragged else ()) + (None, None)
    return result[:len(ctx.needs_input_grad)]


for _op in ("attention_with_lse", "attention_with_lse_ragged"):
    torch.library.register_autograd(_ops._name(_op), _attention_backward, setup_context=_attention_setup_context)


def _merge_weights(lse_a: Tensor, lse_b: Tensor):
    """(w_a, w_b, lse) of the softmax merge; a side with lse -inf (and both) weighs 0."""
    lse = torch.logaddexp(lse_a, lse_b)
    empty = torch.isneginf(lse)
    w_a = torch.where(empty, 0.0, torch.exp(lse_a - lse))
    w_b = torch.where(empty, 0.0, torch.exp(lse_b - lse))
    return w_a, w_b, lse


def _merge_grads(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor, grad_out: Optional[Tensor],
                 grad_lse: Optional[Tensor]):
    """Closed-form backward of out = w_a·out_a + w_b·out_b, lse = log(e^lse_a + e^lse_b),
    w_x = e^(lse_x − lse):  d out_x = w_x·dO,  d lse_x = w_x·(rowsum(dO ∘ (out_x − out)) + dL).
    fp32, in the inputs' layouts."""
    f32 = torch.float32
    w_a, w_b, _ = _merge_weights(lse_a, lse_b)
    wa_rows, wb_rows = _lse_to_rows(w_a)[..., None], _lse_to_rows(w_b)[..., None]
    oa, ob = out_a.to(f32), out_b.to(f32)
    merged = wa_rows * oa + wb_rows * ob
    dout = torch.zeros_like(merged) if grad_out is None else grad_out.to(f32)
    dlse = torch.zeros_like(lse_a) if grad_lse is None else grad_lse.to(f32)
    d_lse_a = w_a * (_lse_to_rows((dout * (oa - merged)).sum(-1)) + dlse)
    d_lse_b = w_b * (_lse_to_rows((dout * (ob - merged)).sum(-1)) + dlse)
    return wa_rows * dout, d_lse_a, wb_rows * dout, d_lse_b


def _merge_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _merge_backward(ctx, grad_out, grad_lse):
    inputs = ctx.saved_tensors
    grads = _merge_grads(*inputs, grad_out, grad_lse)
    return _cast_grads(grads, inputs, needs_grad(ctx, 4))


torch.library.register_autograd(_ops._name("merge_attention_states"), _merge_backward,
                                setup_context=_merge_setup_context)


def _shared_prefix_setup_context(ctx, inputs, output):
    q, prefix_k, prefix_v, suffix_k, suffix_v = inputs[:5]
    suffix_lens = inputs[5] if len(inputs) > 5 else None
    ctx.scale = inputs[6] if len(inputs) > 6 else None
    ctx.save_for_backward(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens)


def _shared_prefix_backward(ctx, grad_out):
    # One attention over [prefix; own suffix] per sequence, differentiated as such: the
    # row LSE over both key sets and the output are recomputed from the scores, then
    # each key set's share of the gradient — the prefix's as one attention of all B·Sq
    # queries against the single prefix copy, as in the forward.
    q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens = ctx.saved_tensors
    batch, seq_q, heads_q, head_dim = q.shape
    suffix = _Keys(q, suffix_k, suffix_v, True, ctx.scale, suffix_lens)
    prefix = _Keys(q.reshape(1, batch * seq_q, heads_q, head_dim), prefix_k[None], prefix_v[None], False, ctx.scale)

    def stacked(rows: Tensor) -> Tensor:  # [B, Hkv, G, Sq, X] -> [1, Hkv, G, B·Sq, X]
        return rows.permute(1, 2, 0, 3, 4).reshape(1, *rows.shape[1:3], batch * seq_q, rows.shape[-1])

    def per_sequence(rows: Tensor) -> Tensor:  # the inverse
        return rows.view(*rows.shape[1:3], batch, seq_q, rows.shape[-1]).permute(2, 0, 1, 3, 4)

    stats = _merge_row_stats(suffix.row_stats(), tuple(per_sequence(t) for t in prefix.row_stats()))
    prefix_stats = tuple(stacked(t) for t in stats)
    out = suffix.partial_out(stats) + per_sequence(prefix.partial_out(prefix_stats))
    dout = suffix.grouped(grad_out)
    delta = (dout * out).sum(-1, keepdim=True)
    dq_s, dk_s, dv_s = suffix.grads(dout, stats=stats, delta=delta)
    dq_p, dk_p, dv_p = prefix.grads(stacked(dout), stats=prefix_stats, delta=stacked(delta))
    grads = (dq_s + dq_p.view(q.shape), dk_p[0], dv_p[0], dk_s, dv_s)
    result = _cast_grads(grads, (q, prefix_k, prefix_v, suffix_k, suffix_v), needs_grad(ctx, 7)[:5]) + (None, None)
    return result[:len(ctx.needs_input_grad)]


torch.library.register_autograd(_ops._name("shared_prefix_attention"), _shared_prefix_backward,
                                setup_context=_shared_prefix_setup_context)


def _level_attention(q: Tensor, k: Tensor, v: Tensor, group_ids: Optional[Tensor],
                     scale: Optional[float]) -> Tuple[Tensor, Tensor]:
    """Attention of every sequence's queries over its group's copy of one prefix level.

    k, v [G, P, Hkv, D] (or [P, Hkv, D] for G = 1); group_ids int [B] in [0, G)
    or None (every sequence in group 0). Each group's queries (its sequences ×
    Sq) are stacked into ONE sequence against the group's single copy. Returns
    fp32 out [B, Sq, Hq, D] and lse [B, Hq, Sq].
    """
    batch, seq_q, heads_q, head_dim = q.shape
    if k.dim() == 3:
        k, v = k.unsqueeze(0), v.unsqueeze(0)
    if k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"hierarchical_shared_prefix_attention: a prefix level's k and v must both be [G, P, Hkv, D] "
                         f"or [P, Hkv, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    groups = k.shape[0]
    if group_ids is None:
        if groups != 1:
            raise ValueError(f"hierarchical_shared_prefix_attention: a level with {groups} prefix copies needs group_ids")
        out, lse = attention_with_lse(q.reshape(1, batch * seq_q, heads_q, head_dim), k, v, scale=scale)
        return out.view(batch, seq_q, heads_q, head_dim).float(), lse.view(heads_q, batch, seq_q).transpose(0, 1)

    if group_ids.shape != (batch,):
        raise ValueError(f"hierarchical_shared_prefix_attention: group_ids must have shape [{batch}], "
                         f"got {tuple(group_ids.shape)}")
    if group_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"hierarchical_shared_prefix_attention: group_ids must be int32 or int64, got {group_ids.dtype}")
    if batch > 0 and not bool(((group_ids >= 0) & (group_ids < groups)).all()):
        # An id outside [0, G) would silently drop the level for that sequence.
        raise ValueError(f"hierarchical_shared_prefix_attention: group_ids must lie in [0, {groups}) "
                         f"(the level's prefix copies), got values in [{int(group_ids.min())}, {int(group_ids.max())}]")
    out = q.new_zeros((batch, seq_q, heads_q, head_dim), dtype=torch.float32)
    lse = q.new_full((batch, heads_q, seq_q), float("-inf"), dtype=torch.float32)
    for group in range(groups):
        members = (group_ids == group).nonzero().squeeze(1)
        n = members.numel()  # explicit sizes: -1 cannot be inferred when Sq = 0
        queries = q.index_select(0, members).reshape(1, n * seq_q, heads_q, head_dim)
        group_out, group_lse = attention_with_lse(queries, k[group:group + 1], v[group:group + 1], scale=scale)
        out[members] = group_out.view(n, seq_q, heads_q, head_dim).float()
        lse[members] = group_lse.view(heads_q, n, seq_q).transpose(0, 1)
    return out, lse


def hierarchical_shared_prefix_attention(
    q: Tensor,
    prefixes: Sequence[PrefixLevel],
    suffix_k: Tensor,
    suffix_v: Tensor,
    suffix_lens: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tensor:
    """Attention over several nested shared prefixes plus each sequence's own suffix.

    Sequence b's keys are, in order, its group's copy of every prefix level,
    then its first ``suffix_lens[b]`` suffix keys (causal inside the suffix, the
    last query aligned with the last key, as in :func:`shared_prefix_attention`).

    Args:
        q: [B, Sq, Hq, D].
        prefixes: levels ``(k, v, group_ids)``, e.g. a prompt shared by all
            (``(k [P0, Hkv, D], v, None)``) then a document per sub-group
            (``(k [G, P1, Hkv, D], v, group_ids int [B])``). Each level costs one
            batched attention per group: the group's queries against its copy.
        suffix_k, suffix_v: [B, S, Hkv, D]; suffix_lens: int32 [B] in [0, S] or None (S).
        scale: softmax scale, default 1/sqrt(D).

    Returns [B, Sq, Hq, D] in q's dtype; a query that sees no key gets 0.
    """
    levels = (_level_attention(q, k, v, group_ids, scale) for k, v, group_ids in prefixes)
    return _merged_with_suffix(q, levels, suffix_k, suffix_v, suffix_lens, scale)


def _merged_with_suffix(q: Tensor, parts: Iterable[Tuple[Tensor, Tensor]], suffix_k: Tensor, suffix_v: Tensor,
                       suffix_lens: Optional[Tensor], scale: Optional[float]) -> Tensor:
    """Each sequence's causal attention over its own suffix, merged in turn with the attention ``parts``
    over other keys (each fp32 out [B, Sq, Hq, Dv] and lse [B, Hq, Sq]) by their log-sum-exp.

    The merge runs in fp32 (each part arrives rounded to q's dtype) and rounds once at the end: the
    output [B, Sq, Hq, Dv] in q's dtype. suffix_lens: int32 [B] in [0, S], or None (S).
    """
    if suffix_lens is None:
        suffix_lens = torch.full((q.shape[0],), suffix_k.shape[1], dtype=torch.int32, device=q.device)
    out, lse = attention_with_lse_ragged(q, suffix_k, suffix_v, suffix_lens, causal=True, scale=scale)
    out = out.float()
    for part_out, part_lse in parts:
        out, lse = merge_attention_states(part_out, part_lse, out, lse)
    return out.to(q.dtype)
