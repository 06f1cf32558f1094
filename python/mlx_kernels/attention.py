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

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .ops import attention_with_lse, attention_with_lse_ragged, merge_attention_states, shared_prefix_attention

__all__ = [
    "attention_with_lse",
    "merge_attention_states",
    "shared_prefix_attention",
    "hierarchical_shared_prefix_attention",
]

PrefixLevel = Tuple[Tensor, Tensor, Optional[Tensor]]


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
    batch = q.shape[0]
    if suffix_lens is None:
        suffix_lens = torch.full((batch,), suffix_k.shape[1], dtype=torch.int32, device=q.device)
    out, lse = attention_with_lse_ragged(q, suffix_k, suffix_v, suffix_lens, causal=True, scale=scale)
    out = out.float()  # merge in fp32 (each level arrives rounded to q's dtype), round once at the end
    for k, v, group_ids in prefixes:
        level_out, level_lse = _level_attention(q, k, v, group_ids, scale)
        out, lse = merge_attention_states(level_out, level_lse, out, lse)
    return out.to(q.dtype)
