"""LLM.int8 in a decoder LLM: every Linear of a Llama-architecture model through int8_gemm.

A small model with random weights (no download), given LLM.int8's "emergent outlier
features": a few hidden dimensions that the layer norms scale up, as in real LLMs past
~6.7B parameters. ``quantize_model_int8`` replaces its Linear layers (all but ``lm_head``)
by ``Int8Linear``; the script compares the logits with the fp32 model's, with and without
the 16-bit outlier path (threshold 6.0 vs 0.0), and lets both models continue a prompt
greedily.

    python examples/int8_llm.py
"""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import mlx_kernels

OUTLIER_COLUMNS = [11, 200, 301]  # of the 384 hidden dimensions


def build_model() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=4096, hidden_size=384, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=6, num_key_value_heads=2, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # the outlier features: large norm weights in a few hidden dimensions
        for layer in model.model.layers:
            layer.input_layernorm.weight[OUTLIER_COLUMNS] = 20.0
            layer.post_attention_layernorm.weight[OUTLIER_COLUMNS] = 20.0
    return model


def linear_bytes(model: torch.nn.Module) -> int:
    total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, mlx_kernels.Int8Linear)):
            total += sum(t.numel() * t.element_size() for t in module.state_dict().values())
    return total


def main() -> None:
    model = build_model()
    tokens = torch.randint(model.config.vocab_size, (4, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(tokens).logits
    print(f"fp32 model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"Linear layers {linear_bytes(model) / 2**20:.1f} MiB")

    quantized = {}
    for threshold in (6.0, 0.0):
        int8_model = mlx_kernels.quantize_model_int8(copy.deepcopy(model), threshold=threshold)
        with torch.no_grad():
            logits = int8_model(tokens).logits
        error = ((logits - reference).norm() / reference.norm()).item()
        agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
        label = "LLM.int8 (outliers in 16 bit)" if threshold else "pure int8 (no outlier path)"
        print(f"threshold {threshold:3.1f} {label:30s}: logits relative error {100 * error:5.2f}%, "
              f"top-1 token agrees at {100 * agree:5.1f}% of positions, "
              f"Linear layers {linear_bytes(int8_model) / 2**20:.1f} MiB")
        quantized[threshold] = int8_model

    prompt = tokens[:1, :24]
    mask = torch.ones_like(prompt)
    fp_tokens = model.generate(prompt, attention_mask=mask, max_new_tokens=16, do_sample=False)[0, 24:]
    int8_tokens = quantized[6.0].generate(prompt, attention_mask=mask, max_new_tokens=16, do_sample=False)[0, 24:]
    print(f"greedy continuation, fp32: {fp_tokens.tolist()}")
    print(f"greedy continuation, int8: {int8_tokens.tolist()}")
    print(f"same tokens: {int((fp_tokens == int8_tokens).sum())} of 16 "
          "(random weights make the top logits nearly tied, so a small error can change a token)")


if __name__ == "__main__":
    main()
