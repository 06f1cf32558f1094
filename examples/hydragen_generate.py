"""Hydragen in transformers' generate: N completions of one prompt, the prompt stored once.

``mlx_kernels.hf.generate_shared_prefix`` prefills the prompt once (batch 1), keeps its
keys/values once in a ``SharedPrefixCache`` and, at every decoding step, attends it with one
batched matmul of all N sequences' queries (``shared_prefix_attention``), each sequence's
own tokens separately. The default way, ``model.generate`` on N copies of the prompt,
prefills and stores the prompt N times. A small Llama-architecture model with random
weights (no download); the script times both, compares their KV caches, and checks that
greedy decoding gives the same tokens either way.

    python examples/hydragen_generate.py
"""

from __future__ import annotations

import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mlx_kernels import hf

PROMPT_TOKENS, NUM_SEQUENCES, NEW_TOKENS = 512, 16, 16


def kv_mib(model, tokens: int) -> float:
    config = model.config
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * tokens * 4 / 2**20


def main() -> None:
    config = LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    prompt = torch.randint(config.vocab_size, (1, PROMPT_TOKENS))
    n, t = NUM_SEQUENCES, NEW_TOKENS

    start = time.perf_counter()
    ours = hf.generate_shared_prefix(model, prompt, n, t, do_sample=True, top_p=0.95, return_dict_in_generate=True)
    ours_s = time.perf_counter() - start
    cache = ours.cache
    print(f"{n} sampled completions of a {PROMPT_TOKENS}-token prompt, {t} new tokens each")
    print(f"  shared prefix: {ours_s:.2f} s ({n * t / ours_s:.0f} tokens/s); KV cache: prompt "
          f"{cache.prefix_length} tokens once + {cache.num_sequences} x {cache.suffix_length} own tokens = "
          f"{kv_mib(model, cache.prefix_length + cache.num_sequences * cache.suffix_length):.1f} MiB")

    input_ids = prompt.expand(n, -1)
    start = time.perf_counter()
    model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=t, do_sample=True, top_p=0.95)
    default_s = time.perf_counter() - start
    print(f"  default (prompt per sequence): {default_s:.2f} s ({n * t / default_s:.0f} tokens/s); KV cache: "
          f"{n} x {PROMPT_TOKENS + t - 1} tokens = {kv_mib(model, n * (PROMPT_TOKENS + t - 1)):.1f} MiB")
    for i, completion in enumerate(ours.sequences[:3, PROMPT_TOKENS:].tolist()):
        print(f"  completion {i}: {completion}")

    greedy_ours = hf.generate_shared_prefix(model, prompt, 2, 8, do_sample=False)
    greedy_default = model.generate(input_ids[:2], attention_mask=torch.ones_like(input_ids[:2]), max_new_tokens=8,
                                    do_sample=False)
    same = torch.equal(greedy_ours, greedy_default)
    print(f"greedy decoding, shared prefix vs default attention: {'same tokens' if same else 'DIFFERENT tokens'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
