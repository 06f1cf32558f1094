"""Shared-prefix attention benchmarks in Hydragen's setting.

Decode (one query per sequence), bf16, head_dim 128, 32 query heads over 8 KV
heads (4:1) and 64 over 8 (Hydragen's 8:1), batch 32/256/1024, a shared prefix
of 1K/4K/16K tokens and 128 suffix tokens per sequence. Baselines:
- SDPA with the prefix copied into every sequence's KV cache (the no-sharing
  baseline; skipped, and reported in ``extra``, when the copies do not fit in
  GPU memory),
- FlashInfer's two-level cascade attention when flashinfer is importable.

Each row reports decode tokens/s of attention for ours and every baseline
(``rates``); ``python -m mlx_kernels.bench.attention`` also prints the
throughput drop from the shortest to the longest prefix.
"""

from __future__ import annotations

from typing import Dict, List

import torch

from .. import ops
from .core import Case, Measure

_GPU_BATCHES = [32, 256, 1024]
_GPU_PREFIXES = [1024, 4096, 16384]
_GPU_HEADS = [(32, 8), (64, 8)]
_SUFFIX = 128
_HEAD_DIM = 128
# CPU: the same shape family, smaller: (batch, prefix, suffix, (heads_q, heads_kv)), fp32,
# head_dim 64. Four small cases, then the grid of issue 26's CPU target (batch 8-64, prefix
# 512-8K, suffix 1-64; B64 P4K decode is where sharing the prefix should pay most).
_CPU_CASES = [(4, 256, 32, (8, 2)), (4, 1024, 32, (8, 2)), (16, 256, 32, (8, 2)), (16, 1024, 32, (8, 1)),
              (8, 512, 1, (8, 2)), (8, 512, 64, (8, 2)), (8, 8192, 1, (8, 2)), (16, 4096, 16, (8, 2)),
              (32, 2048, 32, (8, 2)), (64, 512, 64, (8, 2)), (64, 4096, 1, (8, 2)), (64, 8192, 64, (8, 2))]
_CPU_HEAD_DIM = 64
_GiB = 1024**3


def _sdpa_copied_bytes(batch, prefix, suffix, heads_kv, head_dim, dtype) -> int:
    """K and V with the prefix copied per sequence (what the no-sharing baseline holds)."""
    return 2 * batch * (prefix + suffix) * heads_kv * head_dim * torch.finfo(dtype).bits // 8


def _flashinfer_cascade(q, prefix_k, prefix_v, suffix_k, suffix_v):
    """FlashInfer's MultiLevelCascadeAttentionWrapper: level 0 the shared prefix
    (all queries as one request), level 1 each sequence's suffix; page size 1."""
    import flashinfer

    batch, _, heads_q, head_dim = q.shape
    prefix, heads_kv = prefix_k.shape[0], prefix_k.shape[1]
    suffix = suffix_k.shape[1]
    device = q.device
    # Unified paged cache [pages, 2 (K/V), page_size = 1, Hkv, D]: prefix pages first.
    kv_cache = torch.stack([torch.cat([prefix_k, suffix_k.reshape(-1, heads_kv, head_dim)]),
                            torch.cat([prefix_v, suffix_v.reshape(-1, heads_kv, head_dim)])], dim=1)[:, :, None]

    def i32(values):
        return torch.as_tensor(values, dtype=torch.int32, device=device)

    workspace = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=device)
    wrapper = flashinfer.MultiLevelCascadeAttentionWrapper(2, workspace, "NHD")
    wrapper.plan(
        [i32([0, batch]), torch.arange(batch + 1, dtype=torch.int32, device=device)],
        [i32([0, prefix]), torch.arange(batch + 1, dtype=torch.int32, device=device) * suffix],
        [torch.arange(prefix, dtype=torch.int32, device=device),
         torch.arange(prefix, prefix + batch * suffix, dtype=torch.int32, device=device)],
        [i32([1]), torch.ones(batch, dtype=torch.int32, device=device)],
        heads_q, heads_kv, head_dim, 1,
    )
    queries = q.reshape(batch, heads_q, head_dim)
    return lambda: wrapper.run(queries, kv_cache)


def _has_flashinfer() -> bool:
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return False
    return True


def _case(device, batch, prefix, heads, suffix, head_dim, dtype) -> Case:
    heads_q, heads_kv = heads
    tokens = batch  # decode: one query per sequence
    flop_per_token = 4.0 * heads_q * (prefix + suffix) * head_dim  # Q·Kᵀ and P·V
    extra: Dict[str, object] = {"attention_flop_per_token": flop_per_token}
    copied = _sdpa_copied_bytes(batch, prefix, suffix, heads_kv, head_dim, dtype)
    sdpa_fits = device != "cuda" or copied < 0.6 * torch.cuda.mem_get_info()[0]
    if not sdpa_fits:
        extra["sdpa_copied_prefix"] = f"skipped: the copied KV cache needs {copied / _GiB:.1f} GiB"
    if device == "cuda" and not _has_flashinfer():
        extra["flashinfer_cascade"] = "skipped: flashinfer not importable"

    def make():
        q = torch.randn(batch, 1, heads_q, head_dim, device=device, dtype=dtype)
        prefix_k, prefix_v = (torch.randn(prefix, heads_kv, head_dim, device=device, dtype=dtype) for _ in range(2))
        suffix_k, suffix_v = (torch.randn(batch, suffix, heads_kv, head_dim, device=device, dtype=dtype)
                              for _ in range(2))
        baselines = {}
        if sdpa_fits:
            # [B, Hkv, P + S, D]: the prefix copied into every sequence.
            keys = torch.cat([prefix_k.expand(batch, -1, -1, -1), suffix_k], dim=1).transpose(1, 2).contiguous()
            values = torch.cat([prefix_v.expand(batch, -1, -1, -1), suffix_v], dim=1).transpose(1, 2).contiguous()
            queries = q.transpose(1, 2)
            baselines["SDPA copied prefix"] = lambda: torch.nn.functional.scaled_dot_product_attention(
                queries, keys, values, enable_gqa=True)
        if device == "cuda" and _has_flashinfer():
            baselines["FlashInfer cascade"] = _flashinfer_cascade(q, prefix_k, prefix_v, suffix_k, suffix_v)
        return (lambda: ops.shared_prefix_attention(q, prefix_k, prefix_v, suffix_k, suffix_v)), baselines

    prefix_label = f"P{prefix // 1024}K" if prefix >= 1024 else f"P{prefix}"
    label = f"B{batch} {prefix_label} S{suffix} H{heads_q}/{heads_kv}"
    return Case(label=label,
                params={"batch": batch, "prefix": prefix, "suffix": suffix, "heads_q": heads_q, "heads_kv": heads_kv,
                        "head_dim": head_dim, "seq_q": 1, "dtype": str(dtype).replace("torch.", "")},
                measure=Measure(tokens * flop_per_token, "FLOP", peak="bf16" if dtype == torch.bfloat16 else "fp32"),
                make=make, extra=extra, per_call={"tokens": tokens})


def shared_prefix_attention_cases(device: str, quick: bool) -> List[Case]:
    if device != "cuda":
        cases = _CPU_CASES[:2] if quick else _CPU_CASES
        return [_case(device, b, p, h, s, _CPU_HEAD_DIM, torch.float32) for b, p, s, h in cases]
    batches = [256] if quick else _GPU_BATCHES
    prefixes = [1024, 16384] if quick else _GPU_PREFIXES
    heads_list = _GPU_HEADS[:1] if quick else _GPU_HEADS
    return [_case(device, b, p, h, _SUFFIX, _HEAD_DIM, torch.bfloat16)
            for h in heads_list for b in batches for p in prefixes]


BENCHMARKS = {"shared_prefix_attention": shared_prefix_attention_cases}

# What "ours" is in the tables and plots.
OURS = {"shared_prefix_attention": lambda device: (
    "torch.ops.mlx.shared_prefix_attention (Hydragen: the prefix attended once for all sequences, "
    "suffix per sequence, LSE merge" + (", FlashAttention-2-style mma.sync kernels)" if device == "cuda" else
                                      ", tiled online-softmax CPU kernels)"))}


# --- tokens/s and the 1K -> 16K drop from measured rows -----------------------------


def tokens_per_second(row: dict) -> Dict[str, float]:
    """Decode tokens per second of attention for ours and every baseline of a result row."""
    suffix = "_tokens_per_s"
    return {name[: -len(suffix)]: rate for name, rate in row["rates"].items() if name.endswith(suffix)}


def prefix_drop(rows: List[dict]) -> Dict[str, float]:
    """Per (batch, heads): our throughput loss (%) from the shortest to the longest prefix."""
    drops = {}
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        p = row["params"]
        groups.setdefault((p["batch"], p["heads_q"], p["heads_kv"]), []).append(row)
    for (batch, heads_q, heads_kv), group in groups.items():
        group.sort(key=lambda r: r["params"]["prefix"])
        first, last = tokens_per_second(group[0])["ours"], tokens_per_second(group[-1])["ours"]
        key = f"B{batch} H{heads_q}/{heads_kv} P{group[0]['params']['prefix']}->{group[-1]['params']['prefix']}"
        drops[key] = 100.0 * (1.0 - last / first)
    return drops


def main() -> None:
    import argparse

    from .__main__ import run_case

    parser = argparse.ArgumentParser(description="shared_prefix_attention: tokens/s and the prefix-length drop")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = []
    for case in shared_prefix_attention_cases(args.device, args.quick):
        row = run_case(case, args.device, args.quick)
        rows.append(row)
        rates = ", ".join(f"{name} {rate:,.0f}" for name, rate in tokens_per_second(row).items())
        print(f"{row['label']:>22}: ours {row['ours_ms']:.3f} ms; tokens/s {rates}")
    for key, drop in prefix_drop(rows).items():
        print(f"throughput drop {key}: {drop:.1f}%")


if __name__ == "__main__":
    main()
