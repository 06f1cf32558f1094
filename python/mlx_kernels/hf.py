"""Hugging Face transformers integration: Hydragen shared-prefix attention in ``generate``.

Sampling N completions of one prompt with the default attention stores the prompt's
keys and values N times (one copy per sequence in the KV cache) and reads all N copies
at every decoding step. Here the prompt is stored once, and every step attends it as one
batched matmul of all N queries against that single copy (``shared_prefix_attention``),
each sequence's own generated tokens separately, the two merged exactly by their
log-sum-exp (Hydragen, Juravsky et al., 2024).

Pieces (importing this module needs ``transformers``; ``import mlx_kernels`` does not):

- :func:`generate_shared_prefix` — the one call: ``model.generate`` for N sequences that
  all start with one prompt, the prompt prefilled and stored once.
- :class:`SharedPrefixCache` — the KV cache (a transformers ``Cache``): the prompt's keys
  and values once, ``[P, Hkv, D]``, plus each sequence's own ``[N, S, Hkv, D]``.
  :func:`prefill_prompt` builds one for a prompt; ``cache.fork()`` reuses it (no copy)
  for further batches of completions.
- :data:`ATTENTION` — ``"mlx_shared_prefix"`` (``"<namespace>_shared_prefix"`` in a vendored
  copy), the name under which the attention function is registered in
  transformers' ``AttentionInterface`` (and its mask function in ``AttentionMaskInterface``):
  ``model.set_attn_implementation(ATTENTION)``, or temporarily with
  :func:`shared_prefix_attention_enabled`.

Which kernel runs: when the cache holds a shared prompt and per-sequence tokens,
``shared_prefix_attention``; for anything else on the plain causal pattern (the prompt's
prefill, or any other cache), ``attention_with_lse`` (causal, the last query aligned with
the last key). A padding or custom mask, dropout, soft-capping, a sliding window or
attention sinks go to transformers' SDPA attention instead, except with a shared prompt,
where they raise (every sequence must be the prompt followed by its own tokens).

Works with models whose attention layers pass the cache's output straight to the attention
function, as Llama, Mistral, Qwen2/3 and most decoder LLMs in transformers do.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor, nn
from transformers import AttentionInterface, Cache
from transformers.cache_utils import CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

from . import ops
from ._build_config import OPS_NAMESPACE

__all__ = [
    "ATTENTION",
    "SharedPrefixCache",
    "SharedPrefixKV",
    "generate_shared_prefix",
    "prefill_prompt",
    "shared_prefix_attention_enabled",
    "shared_prefix_attention_forward",
]

# Named after the op namespace, so a vendored copy (another MLX_NAMESPACE) registers its own.
ATTENTION = f"{OPS_NAMESPACE}_shared_prefix"

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MIN_CAPACITY = 16


@dataclass
class SharedPrefixKV:
    """What :class:`SharedPrefixCache` hands the attention function in place of a key (or
    value) tensor once sequences diverge: the prompt's part once, each sequence's own part.

    prefix [P, Hkv, D]; suffix [N, capacity, Hkv, D], of which the first ``lengths[n]``
    positions are filled; lengths int32 [N] (all equal: the sequences advance together)."""

    prefix: Tensor
    suffix: Tensor
    lengths: Tensor

    def __getattr__(self, name):
        # Reached only for attributes a dataclass does not have, e.g. another attention
        # implementation asking for `.shape` of what it takes for a key tensor.
        raise AttributeError(
            f"'{type(self).__name__}' has no attribute '{name}': a SharedPrefixCache's keys and values are read by "
            f"the '{ATTENTION}' attention implementation only; call model.set_attn_implementation("
            f"mlx_kernels.hf.ATTENTION) or use mlx_kernels.hf.generate_shared_prefix")


def _append(buffer: Optional[Tensor], used: int, new: Tensor, dim: int, capacity: int) -> Tensor:
    """``buffer`` with ``new`` written after its first ``used`` entries along ``dim``; a
    full buffer is replaced by one twice as large (at least ``capacity``), so appending one
    token per step costs amortized O(1) copies instead of a whole-cache ``torch.cat``."""
    needed = used + new.shape[dim]
    if buffer is None or buffer.shape[dim] < needed:
        shape = list(new.shape)
        shape[dim] = max(needed, capacity, 2 * (buffer.shape[dim] if buffer is not None else 0))
        grown = new.new_zeros(shape)
        if used:
            grown.narrow(dim, 0, used).copy_(buffer.narrow(dim, 0, used))
        buffer = grown
    buffer.narrow(dim, used, new.shape[dim]).copy_(new)
    return buffer


def _hf_layout(prefix: Tensor) -> Tensor:
    """[P, Hkv, D] -> [1, Hkv, P, D] (a view)."""
    return prefix[None].transpose(1, 2)


class SharedPrefixLayer(CacheLayerMixin):
    """One attention layer's part of a :class:`SharedPrefixCache`.

    Updates of batch 1 extend the shared prefix (the prompt) and are attended causally as
    one sequence; the first update of a larger batch N freezes the prefix and starts N
    per-sequence suffixes, which every later update extends (batch N again)."""

    is_sliding = False

    def __init__(self, suffix_capacity: int = _MIN_CAPACITY):
        super().__init__()
        self.suffix_capacity = suffix_capacity
        self._clear()

    def _clear(self) -> None:
        # Our layout [.., seq, Hkv, D] (transformers' is [.., Hkv, seq, D]); buffers have room
        # beyond the filled length.
        self.prefix_keys: Optional[Tensor] = None  # [capacity, Hkv, D]
        self.prefix_values: Optional[Tensor] = None
        self.prefix_len = 0
        self.suffix_keys: Optional[Tensor] = None  # [N, capacity, Hkv, D]
        self.suffix_values: Optional[Tensor] = None
        self.suffix_len = 0
        self.lengths: Optional[Tensor] = None  # int32 [N], suffix_len each

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        """key_states/value_states [B, Hkv, S, D] (transformers' layout). Returns plain
        tensors [1, Hkv, P, D] (the whole prefix) while B = 1 extends the prefix, else a
        :class:`SharedPrefixKV` pair."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = key_states.transpose(1, 2), value_states.transpose(1, 2)
        batch, seq = keys.shape[:2]
        if self.suffix_keys is None and batch == 1:
            self.prefix_keys = _append(self.prefix_keys, self.prefix_len, keys[0], 0, _MIN_CAPACITY)
            self.prefix_values = _append(self.prefix_values, self.prefix_len, values[0], 0, _MIN_CAPACITY)
            self.prefix_len += seq
            return _hf_layout(self._prefix(self.prefix_keys)), _hf_layout(self._prefix(self.prefix_values))
        if self.suffix_keys is None:
            self._freeze_prefix(keys, values)
        elif batch != self.suffix_keys.shape[0]:
            raise ValueError(f"SharedPrefixCache: this cache holds {self.suffix_keys.shape[0]} sequences after the "
                             f"shared prefix; an update came with batch {batch}")
        self.suffix_keys = _append(self.suffix_keys, self.suffix_len, keys, 1, self.suffix_capacity)
        self.suffix_values = _append(self.suffix_values, self.suffix_len, values, 1, self.suffix_capacity)
        self.suffix_len += seq
        self.lengths = torch.full((batch,), self.suffix_len, dtype=torch.int32, device=keys.device)
        return (SharedPrefixKV(self._prefix(self.prefix_keys), self.suffix_keys, self.lengths),
                SharedPrefixKV(self._prefix(self.prefix_values), self.suffix_values, self.lengths))

    def _prefix(self, buffer: Tensor) -> Tensor:
        return buffer[:self.prefix_len]  # a leading-dim slice: contiguous, no copy

    def _freeze_prefix(self, keys: Tensor, values: Tensor) -> None:
        if self.prefix_keys is None:  # no prompt was prefilled: every token is a sequence's own
            self.prefix_keys = keys.new_zeros((0, *keys.shape[2:]))
            self.prefix_values = values.new_zeros((0, *values.shape[2:]))
        elif self.prefix_keys.shape[0] > self.prefix_len:
            # Drop the growth room once, so the prompt is held in exactly P rows from now on.
            self.prefix_keys = self._prefix(self.prefix_keys).clone()
            self.prefix_values = self._prefix(self.prefix_values).clone()

    def fork(self, suffix_capacity: int) -> "SharedPrefixLayer":
        """A layer sharing this one's prefix tensors (no copy) with no suffixes. The shared
        buffers are handed over at their exact length, so a fork that extends its prefix
        (batch 1) grows into a buffer of its own and never writes into this one's."""
        forked = SharedPrefixLayer(suffix_capacity)
        if self.prefix_keys is not None:
            forked.prefix_keys, forked.prefix_values = self._prefix(self.prefix_keys), self._prefix(self.prefix_values)
            forked.prefix_len = self.prefix_len
            forked.lazy_initialization(forked.prefix_keys, forked.prefix_values)
        return forked

    def get_seq_length(self) -> int:
        return self.prefix_len + self.suffix_len

    def get_mask_sizes(self, query_length: int) -> Tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self._clear()
        self.is_initialized = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: the beams' own tokens follow their beams; the prompt is every beam's."""
        if self.suffix_keys is not None:
            beam_idx = beam_idx.to(self.suffix_keys.device)
            self.suffix_keys = self.suffix_keys.index_select(0, beam_idx)
            self.suffix_values = self.suffix_values.index_select(0, beam_idx)


class SharedPrefixCache(Cache):
    """A transformers KV cache that keeps a prompt's keys and values once for all the
    sequences generated from it (see :class:`SharedPrefixLayer` for how updates are split).

    Use it with the :data:`ATTENTION` attention implementation (:func:`generate_shared_prefix`
    does both). ``suffix_capacity``: per-sequence tokens to allocate room for up front
    (the buffers double beyond it).

    Properties: ``prefix_length`` (the shared prompt's tokens), ``num_sequences`` (None
    until the sequences diverge) and ``suffix_length`` (each sequence's own tokens)."""

    def __init__(self, suffix_capacity: int = _MIN_CAPACITY):
        super().__init__(layer_class_to_replicate=functools.partial(SharedPrefixLayer, suffix_capacity))
        self.suffix_capacity = suffix_capacity

    def fork(self, suffix_capacity: Optional[int] = None) -> "SharedPrefixCache":
        """A cache holding this one's prefix (shared, not copied) and no suffixes: sample
        another batch of completions of the same prompt without prefilling it again."""
        capacity = self.suffix_capacity if suffix_capacity is None else suffix_capacity
        forked = SharedPrefixCache(capacity)
        forked.layers = [layer.fork(capacity) for layer in self.layers]
        return forked

    @property
    def prefix_length(self) -> int:
        return self.layers[0].prefix_len if self.layers else 0

    @property
    def suffix_length(self) -> int:
        return self.layers[0].suffix_len if self.layers else 0

    @property
    def num_sequences(self) -> Optional[int]:
        suffix = self.layers[0].suffix_keys if self.layers else None
        return None if suffix is None else suffix.shape[0]


def _unsupported(module: nn.Module, query: Tensor, attention_mask: Optional[Tensor], dropout: float,
                 kwargs: dict) -> Optional[str]:
    """Why the kernels cannot compute this attention call (None: they can)."""
    if attention_mask is not None:
        return "a padding or custom attention mask"
    if dropout > 0.0:
        return "attention dropout"
    if kwargs.get("softcap") is not None:
        return "logit soft-capping"
    if kwargs.get("sliding_window") is not None:
        return "a sliding window"
    if getattr(module, "sinks", None) is not None:
        return "attention sinks"
    if query.dtype not in _KERNEL_DTYPES:
        return f"dtype {query.dtype}"
    return None


def shared_prefix_attention_forward(module: nn.Module, query: Tensor, key, value, attention_mask: Optional[Tensor],
                                    dropout: float = 0.0, scaling: Optional[float] = None,
                                    is_causal: Optional[bool] = None, **kwargs) -> Tuple[Tensor, None]:
    """The attention function registered as :data:`ATTENTION` (transformers' signature).

    query [B, Hq, Sq, D]; key/value [B, Hkv, Sk, D] tensors, or :class:`SharedPrefixKV`
    from a :class:`SharedPrefixCache`. Returns (out [B, Sq, Hq, D], None): no attention
    weights are materialized."""
    reason = _unsupported(module, query, attention_mask, dropout, kwargs)
    q = query.transpose(1, 2)
    if isinstance(key, SharedPrefixKV):
        if reason is not None:
            raise ValueError(f"{ATTENTION} attention over a shared prompt does not support {reason}: every sequence "
                             "must be the prompt followed by its own tokens, attended causally")
        out = ops.shared_prefix_attention(q, key.prefix, value.prefix, key.suffix, value.suffix, key.lengths, scaling)
        return out, None
    if reason is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out, _ = ops.attention_with_lse(q, key.transpose(1, 2), value.transpose(1, 2), causal, scaling)
    return out, None


def _shared_prefix_mask(*, mask_function=causal_mask_function, attention_mask: Optional[Tensor] = None,
                        allow_is_causal_skip: bool = True, **kwargs) -> Optional[Tensor]:
    """The mask :data:`ATTENTION` gets: None for the plain causal pattern without padding
    (the kernels apply it themselves, the last query aligned with the last key), otherwise
    SDPA's boolean mask (and the attention goes to SDPA, or refuses over a shared prompt)."""
    if allow_is_causal_skip and mask_function is causal_mask_function and (
            attention_mask is None or bool(attention_mask.all())):
        return None
    return sdpa_mask(mask_function=mask_function, attention_mask=attention_mask,
                     allow_is_causal_skip=allow_is_causal_skip, **kwargs)


AttentionInterface.register(ATTENTION, shared_prefix_attention_forward)
AttentionMaskInterface.register(ATTENTION, _shared_prefix_mask)


@contextlib.contextmanager
def shared_prefix_attention_enabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` attends with :data:`ATTENTION`; its own implementation
    (``sdpa``, ``eager``, ...) is restored on exit."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)


def _prompt_row(model: nn.Module, prompt_ids: Tensor) -> Tensor:
    if prompt_ids.dim() == 2 and prompt_ids.shape[0] == 1:
        prompt_ids = prompt_ids[0]
    if prompt_ids.dim() != 1 or prompt_ids.numel() == 0 or prompt_ids.is_floating_point():
        raise ValueError(f"mlx_kernels.hf: prompt_ids must be one non-empty sequence of token ids, [P] or [1, P]; "
                         f"got {prompt_ids.dtype} of shape {tuple(prompt_ids.shape)}")
    return prompt_ids.to(model.device)[None]


@torch.no_grad()
def prefill_prompt(model: nn.Module, prompt_ids: Tensor, suffix_capacity: int = _MIN_CAPACITY) -> SharedPrefixCache:
    """A :class:`SharedPrefixCache` holding all of the prompt but its last token (which
    ``generate`` feeds to every sequence as its first step), computed once, batch 1.
    Reuse it for several batches of completions with ``generate_shared_prefix(...,
    prompt_cache=cache)``."""
    prompt = _prompt_row(model, prompt_ids)
    cache = SharedPrefixCache(suffix_capacity)
    if prompt.shape[1] > 1:
        with shared_prefix_attention_enabled(model):
            model(input_ids=prompt[:, :-1], cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def generate_shared_prefix(model: nn.Module, prompt_ids: Tensor, num_sequences: int, max_new_tokens: int, *,
                           prompt_cache: Optional[SharedPrefixCache] = None, **generate_kwargs):
    """``model.generate`` for ``num_sequences`` sequences that all continue ``prompt_ids``,
    with the prompt's keys and values stored and attended once (Hydragen).

    Args:
        model: a transformers causal LM (Llama, Mistral, Qwen2, ... : see the module doc).
        prompt_ids: token ids [P] or [1, P] (moved to the model's device).
        num_sequences: N, the completions to generate.
        max_new_tokens: tokens to generate per sequence.
        prompt_cache: from :func:`prefill_prompt` for this prompt, to skip its prefill; it is
            not modified (a fork of it is used).
        generate_kwargs: anything ``model.generate`` takes (``do_sample``, ``temperature``,
            ``top_p``, ``num_beams``, ``return_dict_in_generate``, ``output_logits``, ...).
            No ``attention_mask``: the sequences are the prompt plus their own tokens.

    Returns what ``model.generate`` returns: token ids [N, P + new tokens], or with
    ``return_dict_in_generate=True`` an output whose ``cache`` is the
    :class:`SharedPrefixCache` (prefix ``[P - 1, Hkv, D]`` once, suffixes ``[N, ...]``).
    """
    if num_sequences < 1:
        raise ValueError(f"generate_shared_prefix: num_sequences must be >= 1, got {num_sequences}")
    if "attention_mask" in generate_kwargs:
        raise ValueError("generate_shared_prefix: no attention_mask: every sequence is the prompt followed by "
                         "its own tokens (padding is not supported over a shared prompt)")
    prompt = _prompt_row(model, prompt_ids)
    if prompt_cache is None:
        prompt_cache = prefill_prompt(model, prompt)
    elif prompt_cache.get_seq_length() != prompt.shape[1] - 1:
        raise ValueError(f"generate_shared_prefix: prompt_cache holds {prompt_cache.get_seq_length()} tokens; "
                         f"prefill_prompt of this {prompt.shape[1]}-token prompt holds {prompt.shape[1] - 1}")
    cache = prompt_cache.fork(suffix_capacity=max_new_tokens + 1)
    input_ids = prompt.expand(num_sequences, -1)
    with shared_prefix_attention_enabled(model):
        return model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), cache=cache,
                              max_new_tokens=max_new_tokens, **generate_kwargs)
