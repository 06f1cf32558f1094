"""Shared-prefix attention samples for opcheck and bad-input tests."""

import torch

import mlx_kernels
from cases import op_pattern


def _r(*shape, device, dtype=torch.float32):
    return torch.randn(shape, device=device, dtype=dtype)


def _lens(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def _spa_args(d, dtype=torch.float32, batch=3, seq_q=2, heads_q=4, heads_kv=2, head_dim=64, prefix=5, suffix=6):
    return (_r(batch, seq_q, heads_q, head_dim, device=d, dtype=dtype), _r(prefix, heads_kv, head_dim, device=d, dtype=dtype),
            _r(prefix, heads_kv, head_dim, device=d, dtype=dtype), _r(batch, suffix, heads_kv, head_dim, device=d, dtype=dtype),
            _r(batch, suffix, heads_kv, head_dim, device=d, dtype=dtype))


def _attn_args(d, dtype=torch.float32, seq_k=9, head_dim=64):
    return (_r(2, 5, 4, head_dim, device=d, dtype=dtype), _r(2, seq_k, 2, head_dim, device=d, dtype=dtype),
            _r(2, seq_k, 2, head_dim, device=d, dtype=dtype))


def _merge_args(d, dtype=torch.float32):
    lse_b = _r(2, 4, 3, device=d)
    lse_b[0, 0] = float("-inf")
    return (_r(2, 3, 4, 64, device=d, dtype=dtype), _r(2, 4, 3, device=d), _r(2, 3, 4, 64, device=d, dtype=dtype), lse_b)


def _grad(args):
    """The float arguments requiring grad: opcheck then checks the registered backward too."""
    return tuple(a.requires_grad_() if a.is_floating_point() else a for a in args)


OPCHECK = [
    ("attention_with_lse", lambda d: ("attention_with_lse", _attn_args(d), {"causal": True})),
    ("attention_with_lse_bf16", lambda d: ("attention_with_lse", _attn_args(d, torch.bfloat16), {"scale": 0.3})),
    ("attention_with_lse_empty_keys", lambda d: ("attention_with_lse", _attn_args(d, seq_k=0), {})),
    ("attention_with_lse_ragged", lambda d: ("attention_with_lse_ragged", (*_attn_args(d), _lens([3, 0], d)),
                                             {"causal": True})),
    ("merge_attention_states", lambda d: ("merge_attention_states", _merge_args(d), {})),
    ("merge_attention_states_fp16", lambda d: ("merge_attention_states", _merge_args(d, torch.float16), {})),
    ("shared_prefix_attention", lambda d: ("shared_prefix_attention", (*_spa_args(d), _lens([6, 0, 2], d)), {})),
    ("shared_prefix_attention_fp16", lambda d: ("shared_prefix_attention", _spa_args(d, torch.float16), {"scale": 0.2})),
    ("shared_prefix_attention_no_prefix", lambda d: ("shared_prefix_attention", _spa_args(d, prefix=0), {})),
    ("attention_with_lse_grad", lambda d: ("attention_with_lse", _grad(_attn_args(d)), {"causal": True})),
    ("attention_with_lse_ragged_grad", lambda d: ("attention_with_lse_ragged", (*_grad(_attn_args(d)), _lens([3, 0], d)),
                                                  {"causal": True})),
    ("merge_attention_states_grad", lambda d: ("merge_attention_states", _grad(_merge_args(d)), {})),
    ("shared_prefix_attention_grad", lambda d: ("shared_prefix_attention", (*_grad(_spa_args(d)), _lens([6, 0, 2], d)),
                                                {})),
]


def _spa_call(d, change):
    """A shared_prefix_attention call with one argument made bad by `change(args) -> args`."""
    def call():
        args = dict(zip(("q", "prefix_k", "prefix_v", "suffix_k", "suffix_v"), _spa_args(d)))
        args = change(args)
        return mlx_kernels.shared_prefix_attention(**args)
    return call


_SPA = op_pattern("shared_prefix_attention")
_AWL = op_pattern("attention_with_lse")
_MERGE = op_pattern("merge_attention_states")

BAD_INPUTS = [
    ("spa_head_dim_mismatch", lambda d: _spa_call(d, lambda a: {**a, "prefix_k": a["prefix_k"][..., :32],
                                                                "prefix_v": a["prefix_v"][..., :32]}),
     RuntimeError, _SPA + r".*'prefix_k'.*head_dim"),
    ("spa_suffix_head_dim_mismatch", lambda d: _spa_call(d, lambda a: {**a, "suffix_k": a["suffix_k"][..., :32],
                                                                       "suffix_v": a["suffix_v"][..., :32]}),
     RuntimeError, _SPA + r".*'suffix_k'.*head_dim"),
    ("spa_gqa_ratio", lambda d: _spa_call(d, lambda a: {**a, "q": _r(3, 2, 3, 64, device=d)}),
     RuntimeError, _SPA + r".*multiple of the KV heads"),
    ("spa_lens_too_long", lambda d: _spa_call(d, lambda a: {**a, "suffix_lens": _lens([1, 7, 0], d)}),
     RuntimeError, _SPA + r".*'suffix_lens' must lie in \[0, 6\].*7"),
    ("spa_lens_negative", lambda d: _spa_call(d, lambda a: {**a, "suffix_lens": _lens([1, -1, 0], d)}),
     RuntimeError, _SPA + r".*'suffix_lens' must lie in \[0, 6\].*-1"),
    ("spa_lens_dtype", lambda d: _spa_call(d, lambda a: {**a, "suffix_lens": _lens([1, 1, 0], d).long()}),
     RuntimeError, _SPA + r".*'suffix_lens'.*int32.*int64"),
    ("spa_lens_size", lambda d: _spa_call(d, lambda a: {**a, "suffix_lens": _lens([1, 1], d)}),
     RuntimeError, _SPA + r".*'suffix_lens'.*batch size"),
    ("spa_dtype_mismatch", lambda d: _spa_call(d, lambda a: {**a, "prefix_v": a["prefix_v"].half()}),
     RuntimeError, _SPA + r".*'prefix_v'.*float16.*'q'.*float32"),
    ("spa_int_dtype", lambda d: _spa_call(d, lambda a: {**a, "q": a["q"].int()}),
     RuntimeError, _SPA + r".*'q'.*float16 or bfloat16 or float32.*int32"),
    ("spa_prefix_batch_dim", lambda d: _spa_call(d, lambda a: {**a, "prefix_k": a["prefix_k"][None],
                                                               "prefix_v": a["prefix_v"][None]}),
     RuntimeError, _SPA + r".*'prefix_k' must be 3-D.*no batch dim"),
    ("spa_suffix_batch", lambda d: _spa_call(d, lambda a: {**a, "suffix_k": a["suffix_k"][:2], "suffix_v": a["suffix_v"][:2]}),
     RuntimeError, _SPA + r".*'suffix_k'.*batch size"),
    ("spa_suffix_heads", lambda d: _spa_call(d, lambda a: {**a, "suffix_k": _r(3, 6, 4, 64, device=d),
                                                           "suffix_v": _r(3, 6, 4, 64, device=d)}),
     RuntimeError, _SPA + r".*'suffix_k'.*KV heads"),
    ("spa_kv_shape_mismatch", lambda d: _spa_call(d, lambda a: {**a, "suffix_v": a["suffix_v"][:, :5]}),
     RuntimeError, _SPA + r".*'suffix_k' and 'suffix_v' must have one shape"),
    ("awl_head_dim_mismatch", lambda d: lambda: mlx_kernels.attention_with_lse(
        _r(2, 5, 4, 64, device=d), _r(2, 9, 2, 128, device=d), _r(2, 9, 2, 128, device=d)),
     RuntimeError, _AWL + r".*'k'.*head_dim"),
    ("awl_gqa_ratio", lambda d: lambda: mlx_kernels.attention_with_lse(
        _r(2, 5, 4, 64, device=d), _r(2, 9, 3, 64, device=d), _r(2, 9, 3, 64, device=d)),
     RuntimeError, _AWL + r".*multiple of the KV heads"),
    ("awl_rank", lambda d: lambda: mlx_kernels.attention_with_lse(
        _r(5, 4, 64, device=d), _r(9, 2, 64, device=d), _r(9, 2, 64, device=d)),
     RuntimeError, _AWL + r".*'q' must be 4-D"),
    ("awl_dtype_mismatch", lambda d: lambda: mlx_kernels.attention_with_lse(
        *_attn_args(d)[:2], _attn_args(d, torch.bfloat16)[2]),
     RuntimeError, _AWL + r".*'v'.*bfloat16.*'q'.*float32"),
    ("awl_batch_mismatch", lambda d: lambda: mlx_kernels.attention_with_lse(
        _r(3, 5, 4, 64, device=d), *_attn_args(d)[1:]),
     RuntimeError, _AWL + r".*'k'.*batch size"),
    ("merge_lse_shape", lambda d: lambda: mlx_kernels.merge_attention_states(
        *_merge_args(d)[:3], _r(2, 3, 4, device=d)),
     RuntimeError, _MERGE + r".*'lse_b' must have shape \[B, H, S\]"),
    ("merge_lse_dtype", lambda d: lambda: mlx_kernels.merge_attention_states(
        _merge_args(d)[0], _merge_args(d)[1].half(), *_merge_args(d)[2:]),
     RuntimeError, _MERGE + r".*'lse_a'.*float32.*float16"),
    ("merge_out_dtype", lambda d: lambda: mlx_kernels.merge_attention_states(
        *_merge_args(d)[:2], _merge_args(d, torch.float16)[2], _merge_args(d)[3]),
     RuntimeError, _MERGE + r".*'out_b'.*float16.*'out_a'.*float32"),
    ("merge_out_shape", lambda d: lambda: mlx_kernels.merge_attention_states(
        *_merge_args(d)[:2], _r(2, 3, 4, 32, device=d), _merge_args(d)[3]),
     RuntimeError, _MERGE + r".*'out_a' and 'out_b' must have one shape"),
]
