"""Real model integrations (issue 27): a transformers Llama with LLM.int8 weights, and
Hydragen shared-prefix attention inside ``generate`` (mlx_kernels.hf).

Models are small Llama-architecture configs with seeded random weights (no hub download),
so the whole file runs in well under a minute on 2 cores."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import mlx_kernels  # noqa: E402
import oracles  # noqa: E402
from conftest import DEVICES, assert_close_to_oracle, requires_cuda  # noqa: E402
from mlx_kernels import hf  # noqa: E402
from mlx_kernels.bench import generation as generation_bench  # noqa: E402
from mlx_kernels.bench.__main__ import run_case  # noqa: E402
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

random_llama = generation_bench.random_llama


def _decoder(device: str = "cpu"):
    """The generation tests' model, in bf16 on the GPU (where the tensor-core kernels run),
    fp32 on the CPU; weights at 5x Llama's default init (0.1), so that greedy decoding does
    not collapse onto one repeated token."""
    return random_llama(device, torch.bfloat16 if device == "cuda" else torch.float32, initializer_range=0.1)


def _prompt(length: int, vocab: int, device: str, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(vocab, (1, length), generator=generator).to(device)


# --- LLM.int8 on a decoder LLM -----------------------------------------------------------

OUTLIER_COLUMNS = [5, 77, 190]


def _with_outlier_features(model, scale: float = 20.0):
    """LLM.int8's "emergent outlier features": a few hidden dimensions that every
    attention/MLP input norm scales up (as in OPT/LLaMA models past ~6.7B parameters), so
    those activation columns exceed the 6.0 threshold in almost every row."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module).__name__ == "LlamaRMSNorm" and name != "model.norm":
                module.weight[OUTLIER_COLUMNS] = scale
    return model


def _relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x.double() - reference.double()).norm() / reference.double().norm()).item()


# LLM.int8's error model (Dettmers et al., 2022; vector-wise absmax quantization): each row r
# of x and of W is rounded to steps of Δ_r = absmax_r / 127, an error uniform in ±Δ_r/2
# (variance Δ_r²/12). For y = x·w over K terms the relative error of y is then
#     ε = sqrt(ρ_x² + ρ_w²) / (127·√12),   ρ = absmax / rms of the row (its crest factor),
# whatever K is. The outlier columns (|x| > threshold) go through the 16-bit product and are
# left out of x's absmax, which is what keeps ρ_x small. Here the weights (normal init) and
# the inputs of q/k/v/o/gate/up (Gaussian-like once the outlier columns are out) have
# ρ ≈ 3 (the largest of 256-512 normal values), ≤ 4.5 in practice; down_proj's input
# SiLU(gate)·up has a product's heavier tails: ρ ≈ 6.6, ≤ 9. So each Int8Linear is within
# ε = 1.45% (2.29% for down_proj). The n rounding errors are independent and, in this model
# (Llama's default init, 0.02: each block a small perturbation of the residual stream,
# attention near-uniform), each reaches the logits at most at its own relative size (the
# lm_head stays fp32), so they add in quadrature:
#     ‖logits_int8 − logits_fp‖ / ‖logits_fp‖ ≤ sqrt(Σ ε_i²)   (6.0% for these 14 Linears).
GAUSSIAN_CREST, PRODUCT_CREST = 4.5, 9.0


def _int8_error_bound(model) -> float:
    """LLM.int8's error model above, over the model's Int8Linear layers."""
    def per_linear(name):
        crest_x = PRODUCT_CREST if name.endswith("down_proj") else GAUSSIAN_CREST
        return math.hypot(crest_x, GAUSSIAN_CREST) / (127 * math.sqrt(12))
    return math.sqrt(sum(per_linear(name) ** 2 for name, module in model.named_modules()
                         if isinstance(module, mlx_kernels.Int8Linear)))


def _check_int8_llm(device: str):
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = _with_outlier_features(random_llama(device, dtype))
    tokens = torch.randint(model.config.vocab_size, (4, 48), generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        reference = model(tokens).logits
        pure_int8 = mlx_kernels.quantize_model_int8(copy.deepcopy(model), threshold=0.0)
        quantized = mlx_kernels.quantize_model_int8(model, threshold=6.0)
        logits = quantized(tokens).logits
        pure_logits = pure_int8(tokens).logits
    linears = sum(isinstance(m, mlx_kernels.Int8Linear) for m in quantized.modules())
    assert linears == 7 * quantized.config.num_hidden_layers  # q, k, v, o, gate, up, down; lm_head skipped
    assert type(quantized.lm_head) is torch.nn.Linear

    bound = _int8_error_bound(quantized)
    error = _relative_error(logits, reference)
    assert error <= bound, f"int8 logits' relative error {error:.4f} exceeds LLM.int8's error model's {bound:.4f}"
    # Without the 16-bit outlier path the outlier columns set every row's absmax: ρ_x of the
    # inputs of q/k/v/gate/up goes from ~3 to ~20, their ε about 6x. Their errors reach the
    # logits damped (q/k errors barely move near-uniform attention): it is ~2.2x worse here.
    assert _relative_error(pure_logits, reference) > 1.5 * error

    prompt = tokens[:1, :16]
    generated = quantized.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
    assert generated.shape == (1, 24) and torch.equal(generated[:, :16], prompt)


def test_int8_llama_logits_within_llm_int8_error_model_and_generates():
    _check_int8_llm("cpu")


@requires_cuda
def test_int8_llama_on_gpu():
    _check_int8_llm("cuda")


# --- Hydragen inside generate ------------------------------------------------------------


def _teacher_forced(model, sequences: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Logits [N, T, V] predicting tokens prompt_len.. of `sequences`, computed the way
    generate does with the model's own attention: the prompt prefilled for every sequence,
    then one token per step through a DynamicCache."""
    with torch.no_grad():
        out = model(sequences[:, :prompt_len], use_cache=True)
        cache, steps = out.cache, [out.logits[:, -1]]
        for t in range(prompt_len, sequences.shape[1] - 1):
            out = model(sequences[:, t:t + 1], cache=cache, use_cache=True)
            steps.append(out.logits[:, -1])
    return torch.stack(steps, dim=1).float()


def _float64_logits(model, sequences: torch.Tensor) -> torch.Tensor:
    """The float64 oracle: the same weights in float64 on the CPU, eager attention, no cache."""
    oracle = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    oracle.set_attn_implementation("eager")
    with torch.no_grad():
        return oracle(sequences.cpu()).logits


@pytest.mark.parametrize("device", DEVICES)
def test_sampled_completions_logits_match_default_attention(device):
    # Sampling makes the N suffixes differ, so each sequence's own keys are really its own.
    model = _decoder(device)
    prompt_len, num_sequences, new_tokens = 37, 4, 6
    prompt = _prompt(prompt_len, model.config.vocab_size, device)
    out = hf.generate_shared_prefix(model, prompt, num_sequences, new_tokens, do_sample=True,
                                    return_dict_in_generate=True, output_logits=True)
    sequences = out.sequences
    assert sequences.shape == (num_sequences, prompt_len + new_tokens)
    assert len({tuple(s) for s in sequences[:, prompt_len:].tolist()}) > 1
    ours = torch.stack(out.logits, dim=1)
    assert model.config._attn_implementation == "sdpa"  # restored after generate
    # Tolerance rule: our error against float64 at most 2x that of the default attention (SDPA,
    # prompt prefilled per sequence, one token per step) computing the same logits in this dtype.
    assert_close_to_oracle(ours.cpu(), _float64_logits(model, sequences)[:, prompt_len - 1:-1],
                           _teacher_forced(model, sequences, prompt_len).cpu(), atol=1e-6)
    # The prompt (but its last token) is held once; each sequence holds its own T positions.
    cache = out.cache
    assert isinstance(cache, hf.SharedPrefixCache)
    assert (cache.prefix_length, cache.num_sequences) == (prompt_len - 1, num_sequences)
    assert cache.suffix_length == new_tokens
    layer = cache.layers[0]
    assert layer.prefix_keys.shape == (prompt_len - 1, model.config.num_key_value_heads, model.config.head_dim)


@pytest.mark.parametrize("search", [dict(do_sample=False), dict(do_sample=False, num_beams=3)], ids=["greedy", "beam"])
def test_greedy_and_beam_search_give_the_default_attentions_tokens(search):
    model = _decoder()
    prompt_len, num_sequences = 29, 2
    prompt = _prompt(prompt_len, model.config.vocab_size, "cpu")
    ours = hf.generate_shared_prefix(model, prompt, num_sequences, 8, **search)
    input_ids = prompt.expand(num_sequences, -1)
    default = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=8, **search)
    assert torch.equal(ours, default)


def test_one_token_prompt_leaves_the_shared_prefix_empty():
    # Nothing to prefill: every sequence's tokens are its own from the start (P = 0).
    model = _decoder()
    prompt = _prompt(1, model.config.vocab_size, "cpu")
    out = hf.generate_shared_prefix(model, prompt, 3, 6, do_sample=False, return_dict_in_generate=True)
    default = model.generate(prompt.expand(3, -1), attention_mask=torch.ones(3, 1, dtype=torch.long),
                             max_new_tokens=6, do_sample=False)
    assert torch.equal(out.sequences, default)
    assert (out.cache.prefix_length, out.cache.num_sequences) == (0, 3)


def test_prefix_is_attended_once_per_step_as_one_batched_call(monkeypatch):
    model = _decoder()
    prompt_len, num_sequences, new_tokens = 40, 5, 4
    calls = []
    kernel = mlx_kernels.ops.shared_prefix_attention

    def recording(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens=None, scale=None):
        calls.append((tuple(q.shape), tuple(prefix_k.shape), tuple(suffix_k.shape[:1]), suffix_lens.tolist()))
        return kernel(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale)

    monkeypatch.setattr(mlx_kernels.ops, "shared_prefix_attention", recording)
    prompt = _prompt(prompt_len, model.config.vocab_size, "cpu")
    hf.generate_shared_prefix(model, prompt, num_sequences, new_tokens, do_sample=True)
    config = model.config
    heads = (config.num_attention_heads, config.head_dim)
    # One call per layer per step: all 5 queries against the one prefix copy of P - 1 tokens.
    assert len(calls) == config.num_hidden_layers * new_tokens
    for step in range(new_tokens):
        for layer in range(config.num_hidden_layers):
            q_shape, prefix_shape, suffix_batch, lens = calls[step * config.num_hidden_layers + layer]
            assert q_shape == (num_sequences, 1, *heads)
            assert prefix_shape == (prompt_len - 1, config.num_key_value_heads, config.head_dim)
            assert suffix_batch == (num_sequences,) and lens == [step + 1] * num_sequences


def test_prompt_cache_is_reused_without_change():
    model = _decoder()
    prompt = _prompt(50, model.config.vocab_size, "cpu")
    prompt_cache = hf.prefill_prompt(model, prompt)
    prefix = prompt_cache.layers[0].prefix_keys.clone()
    first = hf.generate_shared_prefix(model, prompt, 3, 5, prompt_cache=prompt_cache, do_sample=False)
    second = hf.generate_shared_prefix(model, prompt, 6, 5, prompt_cache=prompt_cache, do_sample=False)
    fresh = hf.generate_shared_prefix(model, prompt, 3, 5, do_sample=False)
    assert torch.equal(first, fresh) and torch.equal(second[:3], fresh)
    assert (prompt_cache.prefix_length, prompt_cache.num_sequences) == (49, None)
    assert torch.equal(prompt_cache.layers[0].prefix_keys, prefix)
    # A single sequence (batch 1 throughout) keeps extending its own copy, never the shared one.
    single = hf.generate_shared_prefix(model, prompt, 1, 5, prompt_cache=prompt_cache, do_sample=False)
    assert torch.equal(single, fresh[:1]) and torch.equal(prompt_cache.layers[0].prefix_keys, prefix)


@pytest.mark.parametrize("padded", [False, True], ids=["causal", "padded"])
def test_plain_forward_with_the_attention_matches_sdpa(padded):
    # Outside a shared prompt: the causal pattern runs attention_with_lse, a padding mask
    # goes to SDPA; both give the default attention's logits.
    model = _decoder()
    tokens = torch.randint(model.config.vocab_size, (3, 24), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(tokens)
    if padded:
        mask[1, :5] = 0
        mask[2, :11] = 0
    with torch.no_grad():
        reference = model(tokens, attention_mask=mask).logits
        with hf.shared_prefix_attention_enabled(model):
            ours = model(tokens, attention_mask=mask).logits
    if padded:
        rows = mask.bool()
        torch.testing.assert_close(ours[rows], reference[rows], rtol=0, atol=0)
    else:
        assert_close_to_oracle(ours, _float64_logits(model, tokens), reference, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_attention_function_over_the_cache_matches_oracle(device, dtype):
    heads_q, heads_kv, head_dim, prefix_len, num_sequences, suffix_len = 8, 2, 64, 70, 3, 5
    generator = torch.Generator().manual_seed(4)

    def rand(*shape):
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    layer = hf.SharedPrefixLayer()
    for chunk in (30, 40):  # the prompt in two chunks, batch 1 (transformers' layout [B, Hkv, S, D])
        layer.update(rand(1, heads_kv, chunk, head_dim), rand(1, heads_kv, chunk, head_dim))
    keys, values = layer.update(rand(num_sequences, heads_kv, 2, head_dim), rand(num_sequences, heads_kv, 2, head_dim))
    keys, values = layer.update(rand(num_sequences, heads_kv, 3, head_dim), rand(num_sequences, heads_kv, 3, head_dim))
    assert isinstance(keys, hf.SharedPrefixKV) and keys.prefix.shape[0] == prefix_len
    query = rand(num_sequences, heads_q, 3, head_dim)
    module = torch.nn.Module()
    out, weights = hf.shared_prefix_attention_forward(module, query, keys, values, None, scaling=head_dim**-0.5)
    assert weights is None and out.shape == (num_sequences, 3, heads_q, head_dim) and out.dtype == dtype
    suffix_k, suffix_v = keys.suffix[:, :suffix_len], values.suffix[:, :suffix_len]
    args = (query.transpose(1, 2), keys.prefix, values.prefix, suffix_k, suffix_v)
    assert_close_to_oracle(out.cpu(), oracles.shared_prefix_attention(*args),
                           oracles.shared_prefix_attention(*args, dtype=dtype), atol=1e-6)


def test_misuse_is_refused_with_a_clear_error():
    layer = hf.SharedPrefixLayer()
    layer.update(torch.randn(1, 2, 4, 64), torch.randn(1, 2, 4, 64))
    keys, values = layer.update(torch.randn(3, 2, 1, 64), torch.randn(3, 2, 1, 64))
    query = torch.randn(3, 4, 1, 64)
    with pytest.raises(ValueError, match="batch 2"):
        layer.update(torch.randn(2, 2, 1, 64), torch.randn(2, 2, 1, 64))
    with pytest.raises(ValueError, match="padding or custom attention mask"):
        hf.shared_prefix_attention_forward(torch.nn.Module(), query, keys, values, torch.ones(3, 1, 1, 6, dtype=bool))
    with pytest.raises(AttributeError, match="set_attn_implementation"):  # the cache under another attention
        sdpa_attention_forward(torch.nn.Module(), query, keys, values, None)
    model = _decoder()
    prompt = _prompt(12, model.config.vocab_size, "cpu")
    with pytest.raises(ValueError, match="attention_mask"):
        hf.generate_shared_prefix(model, prompt, 2, 3, attention_mask=torch.ones(2, 12))
    with pytest.raises(ValueError, match="holds 10 tokens"):
        hf.generate_shared_prefix(model, prompt, 2, 3, prompt_cache=hf.prefill_prompt(model, prompt[:, :11]))
    with pytest.raises(ValueError, match=r"\[P\] or \[1, P\]"):
        hf.generate_shared_prefix(model, prompt.expand(2, -1), 2, 3)


# --- benchmark case ---------------------------------------------------------------------


def test_generation_benchmark_quick_case_runs():
    cases = generation_bench.shared_prefix_generate_cases("cpu", quick=True)
    assert len(cases) == 1
    row = run_case(cases[0], "cpu", quick=True)
    assert set(row["baselines_ms"]) == {"SDPA, prompt copied per sequence"}
    assert row["rates"]["ours_tokens_per_s"] > 0
    assert row["extra"]["kv_cache_bytes_ours"] < row["extra"]["kv_cache_bytes_copied_prompt"]
