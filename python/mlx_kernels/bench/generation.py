"""End-to-end generation benchmark: N completions of one prompt with Hydragen attention.

A small Llama-architecture model with random weights (transformers; no download) decodes
N sequences that all continue one prompt of P tokens, greedily, T new tokens each:

- ours: :func:`mlx_kernels.hf.generate_shared_prefix` — the prompt's keys/values stored
  once (:class:`~mlx_kernels.hf.SharedPrefixCache`) and attended by all N queries as one
  batched matmul (``shared_prefix_attention``), each sequence's own tokens separately;
- baseline: transformers' default (SDPA attention, ``DynamicCache``) with the prompt's
  keys/values copied into each of the N sequences' caches, as sampling N completions
  stores them without prefix sharing.

Both start from the prompt prefilled once at batch 1 (not timed: it is the same work for
both); a timed call is the N sequences' T decoding steps, the baseline's copies of the
prompt included. Rows report generated tokens/s (``rates``) and the KV-cache bytes each
holds at the end (``extra``). Needs ``transformers`` (the op is skipped without it).
"""

from __future__ import annotations

from typing import List

import torch

from .core import Case, Measure, NoCases

# (num_sequences, prompt tokens)
_CASES = [(n, p) for p in (1024, 8192) for n in (1, 8, 64)]
_QUICK_CASES = [(4, 256)]
_NEW_TOKENS = {"quick": 2, "cpu": 8, "cuda": 32}

# A small Llama: 2 layers, hidden 256, 4 query heads over 1 KV head (GQA 4:1), head_dim 64.
MODEL_SHAPE = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=64)


def random_llama(device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0, **shape):
    """A ``LlamaForCausalLM`` with seeded random weights in eval mode, SDPA attention;
    ``shape`` overrides :data:`MODEL_SHAPE` (any ``LlamaConfig`` field). No BOS/EOS/pad
    token, so generation always runs its full length."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**MODEL_SHAPE, **shape}, max_position_embeddings=16384, bos_token_id=None,
                         eos_token_id=None, pad_token_id=None, attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(device=device, dtype=dtype).eval()


def _linear_params(model) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def _kv_bytes(config, tokens: int, dtype: torch.dtype) -> int:
    """Bytes of keys and values for `tokens` positions across all layers."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * tokens * dtype.itemsize


def _case(device: str, shape, num_sequences: int, prompt: int, new_tokens: int, dtype: torch.dtype) -> Case:
    """shape: the model on the meta device (its sizes, for the work count)."""
    from transformers import DynamicCache

    from ..hf import generate_shared_prefix, prefill_prompt

    config = shape.config
    tokens = num_sequences * new_tokens
    # Per generated token: every Linear (2 FLOP per weight) and Q·Kᵀ + P·V over the mean context.
    context = prompt + new_tokens / 2
    attention = 4.0 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * context
    flop = tokens * (2.0 * _linear_params(shape) + attention)
    # Tokens cached at the end: the prompt but its last token, then each sequence's T own
    # positions (the prompt's last token and T - 1 generated ones).
    extra = {
        "kv_cache_bytes_ours": _kv_bytes(config, prompt - 1 + num_sequences * new_tokens, dtype),
        "kv_cache_bytes_copied_prompt": _kv_bytes(config, num_sequences * (prompt - 1 + new_tokens), dtype),
    }

    def make():
        model = random_llama(device, dtype)
        generator = torch.Generator().manual_seed(num_sequences * 100003 + prompt)
        prompt_ids = torch.randint(config.vocab_size, (1, prompt), generator=generator).to(device)
        prompt_cache = prefill_prompt(model, prompt_ids)
        with torch.no_grad():  # the default attention's own prefill of the prompt, batch 1
            prefilled = model(input_ids=prompt_ids[:, :-1], use_cache=True, logits_to_keep=1).cache
        input_ids = prompt_ids.expand(num_sequences, -1)
        attention_mask = torch.ones_like(input_ids)

        def ours():
            return generate_shared_prefix(model, prompt_ids, num_sequences, new_tokens, prompt_cache=prompt_cache,
                                          do_sample=False)

        def copied_prompt():
            cache = DynamicCache([(layer.keys.expand(num_sequences, -1, -1, -1),
                                   layer.values.expand(num_sequences, -1, -1, -1)) for layer in prefilled.layers],
                                 config=model.config)
            return model.generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache,
                                  max_new_tokens=new_tokens, do_sample=False)

        return ours, {"SDPA, prompt copied per sequence": copied_prompt}

    label = f"N{num_sequences} P{prompt // 1024}K" if prompt >= 1024 else f"N{num_sequences} P{prompt}"
    return Case(label=label,
                params={"num_sequences": num_sequences, "prompt": prompt, "new_tokens": new_tokens,
                        **{k: v for k, v in MODEL_SHAPE.items() if k != "vocab_size"},
                        "dtype": str(dtype).replace("torch.", "")},
                measure=Measure(flop, "FLOP", peak="bf16" if dtype == torch.bfloat16 else None),
                make=make, extra=extra, per_call={"tokens": tokens})


def shared_prefix_generate_cases(device: str, quick: bool) -> List[Case]:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise NoCases("needs transformers (pip install transformers)") from None
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    new_tokens = _NEW_TOKENS["quick" if quick else device]
    shape = random_llama("meta")
    return [_case(device, shape, n, p, new_tokens, dtype) for n, p in (_QUICK_CASES if quick else _CASES)]


BENCHMARKS = {"shared_prefix_generate": shared_prefix_generate_cases}

OURS = {"shared_prefix_generate": (
    "mlx_kernels.hf.generate_shared_prefix (transformers generate; the prompt's KV stored once and attended by "
    "all sequences as one batched matmul: shared_prefix_attention)")}
