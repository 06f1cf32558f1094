"""FFT-as-matmul long convolution (FlashFFTConv): the ``FFTConv`` module and autograd.

``fft_conv(u, k, pregate, postgate)`` is the causal convolution
``y[b, h, t] = Σ_{s ≤ min(t, Lk-1)} k[h, s]·v[b, h, t-s]``, ``v = u·pregate``, then
``y·postgate``, computed as FFTs of size ``N = fft_size_for(L)`` (the smallest power of
two ≥ max(16, 2L)) written as Monarch matmuls.

Frequency-sparse kernels: the spectrum of size N is cut into 16 blocks of N/16
frequencies (the last Monarch stage's output columns). ``keep_blocks = K < 8`` keeps the
frequencies f with ``min(f, N - f) < K·N/16`` — the K lowest blocks of positive and of
negative frequencies (Hermitian, so the output stays real) — and zeroes the rest, whose
matmul columns the kernels skip. In formulas::

    y = (ifft_N(mask · fft_N(pad(v)) · fft_N(pad(k))).real)[:L] · postgate

``FFTConv(freq_keep=φ)`` uses ``K = ceil(8·φ)`` (φ = 1 or None: the exact convolution).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from . import ops as _ops
from ._autograd import needs_grad, register_non_differentiable
from .ops import fft_size_for

FREQ_BLOCKS = 16
DENSE_KEEP_BLOCKS = FREQ_BLOCKS // 2


def keep_blocks_for(freq_keep: Optional[float]) -> int:
    """Frequency blocks kept per side for a kept fraction of the spectrum (8 = all)."""
    if freq_keep is None:
        return DENSE_KEEP_BLOCKS
    if not 0.0 < freq_keep <= 1.0:
        raise ValueError(f"FFTConv: freq_keep must be in (0, 1], got {freq_keep}")
    return max(1, min(DENSE_KEEP_BLOCKS, math.ceil(DENSE_KEEP_BLOCKS * freq_keep - 1e-9)))


# --- autograd ------------------------------------------------------------------
#
# y = c·postgate, c = k ∗ v (causal), v = u·pregate. With g_c = dy·postgate:
#   d postgate = dy·c
#   d v[s] = Σ_t g_c[t]·k[t-s]            = flip(conv(flip(g_c), k))  (a correlation)
#   d u = d v·pregate,  d pregate = d v·u
#   d k[j] = Σ_b Σ_t g_c[b, t]·v[b, t-j]  = Σ_b flip(conv(v, flip(g_c)))[j], j < Lk
# every one of them an fft_conv call (the last with the flipped gradient as a
# length-L kernel per (b, h)), computed in float32 (float64 for float64 inputs).


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _correlate_with_signal(v: Tensor, g: Tensor, lk: int, keep_blocks: int = DENSE_KEEP_BLOCKS) -> Tensor:
    """d k [H, Lk] = Σ_b Σ_t g[b, h, t]·v[b, h, t-j]: conv of v with flip(g) per (b, h).

    With keep_blocks < 8 the forward convolution is circular with the masked kernel
    P·k (P = ifft·mask·fft, self-adjoint: the mask is real and symmetric in f), so
    d k = P applied to the full correlation: the same conv of v with flip(g), with the
    mask on flip(g)'s spectrum.
    """
    b, h, length = v.shape
    rows, kernels = v.reshape(1, b * h, length), g.flip(-1).reshape(b * h, length)
    if keep_blocks == DENSE_KEEP_BLOCKS:
        out = _ops.fft_conv(rows, kernels)
    else:
        out = _ops.fft_conv_spectral(rows, _ops.fft_conv_spectrum(kernels, length, keep_blocks), keep_blocks)
    return out.reshape(b, h, length)[..., length - lk:].flip(-1).sum(0)


def _fft_conv_setup_context(ctx, inputs, output):
    u, k, pregate, postgate = inputs
    ctx.save_for_backward(u, k, pregate, postgate)


def _gated_grads(conv, grad, u, pregate, postgate, need_u, need_pre, need_post, need_k=False):
    """Gradients of y = conv(u·pregate)·postgate for u and the gates, the gradient
    g_c at the convolution's output (grad·postgate) and, when need_k, the gated
    signal v = u·pregate (None otherwise), in u's compute dtype. conv(x, gate) is
    the forward convolution of x·gate (gate may be None); its adjoint is
    flip ∘ conv ∘ flip."""
    cd = _compute_dtype(u)
    uc, gc = u.to(cd), grad.to(cd)
    prec = pregate.to(cd) if pregate is not None else None
    grad_u = grad_pre = grad_post = None
    if need_post:
        grad_post = (gc * conv(uc, prec)).to(postgate.dtype)
    if postgate is not None:
        gc = gc * postgate.to(cd)
    if need_u or need_pre:
        grad_v = conv(gc.flip(-1), None).flip(-1)
        if need_u:
            grad_u = (grad_v * prec if prec is not None else grad_v).to(u.dtype)
        if need_pre:
            grad_pre = (grad_v * uc).to(pregate.dtype)
    v = (uc * prec if prec is not None else uc) if need_k else None
    return grad_u, grad_pre, grad_post, gc, v


def _fft_conv_backward(ctx, grad):
    u, k, pregate, postgate = ctx.saved_tensors
    need_u, need_k, need_pre, need_post = needs_grad(ctx, 4)
    kc = k.to(_compute_dtype(u))
    grad_u, grad_pre, grad_post, gc, v = _gated_grads(
        lambda x, gate: _ops.fft_conv(x, kc, gate, None), grad, u, pregate, postgate, need_u, need_pre, need_post,
        need_k)
    grad_k = _correlate_with_signal(v, gc, k.shape[1]).to(k.dtype) if need_k else None
    return (grad_u, grad_k, grad_pre, grad_post)[:len(ctx.needs_input_grad)]


torch.library.register_autograd(
    _ops._name("fft_conv"), _fft_conv_backward, setup_context=_fft_conv_setup_context
)


def _fft_conv_spectral_setup_context(ctx, inputs, output):
    u, k_f, keep_blocks, pregate, postgate = inputs
    ctx.keep_blocks = keep_blocks
    ctx.save_for_backward(u, k_f, pregate, postgate)


def _spectral_conv(k_f: Tensor, keep: int):
    return lambda x, gate: _ops.fft_conv_spectral(x, k_f, keep, gate, None)


def _fft_conv_spectral_backward(ctx, grad):
    # The truncated convolution is a circular one with the masked kernel
    # k_m = ifft(mask·fft(k)); its adjoint on v is still flip ∘ conv ∘ flip with
    # the same k_m, so d u and the gates reuse the same spectrum. The spectrum
    # itself is not differentiated here: FFTConv differentiates k through
    # _FrequencySparseConv.
    u, k_f, pregate, postgate = ctx.saved_tensors
    need_u, _, _, need_pre, need_post = needs_grad(ctx, 5)
    grad_u, grad_pre, grad_post, _, _ = _gated_grads(_spectral_conv(k_f, ctx.keep_blocks), grad, u, pregate,
                                                      postgate, need_u, need_pre, need_post)
    return (grad_u, None, None, grad_pre, grad_post)[:len(ctx.needs_input_grad)]


torch.library.register_autograd(
    _ops._name("fft_conv_spectral"), _fft_conv_spectral_backward, setup_context=_fft_conv_spectral_setup_context
)


register_non_differentiable(
    "fft_conv_spectrum", "differentiate the kernel through fft_conv, or FFTConv (which also covers the "
    "frequency-sparse spectrum)")


class _FrequencySparseConv(torch.autograd.Function):
    """fft_conv_spectral with k's (cached) truncated spectrum, differentiable in k too:
    d k is the masked correlation of the gated signal with the output gradient."""

    @staticmethod
    def forward(u, k, pregate, postgate, k_f, keep_blocks):
        return _ops.fft_conv_spectral(u, k_f, keep_blocks, pregate, postgate)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, k, pregate, postgate, k_f, keep_blocks = inputs
        ctx.keep_blocks = keep_blocks
        ctx.save_for_backward(u, k, pregate, postgate, k_f)

    @staticmethod
    def backward(ctx, grad):
        u, k, pregate, postgate, k_f = ctx.saved_tensors
        need_u, need_k, need_pre, need_post = ctx.needs_input_grad[:4]
        grad_u, grad_pre, grad_post, gc, v = _gated_grads(_spectral_conv(k_f, ctx.keep_blocks), grad, u, pregate,
                                                          postgate, need_u, need_pre, need_post, need_k)
        grad_k = _correlate_with_signal(v, gc, k.shape[1], ctx.keep_blocks).to(k.dtype) if need_k else None
        return grad_u, grad_k, grad_pre, grad_post, None, None


# --- the module ----------------------------------------------------------------


class FFTConv(nn.Module):
    """Causal long convolution ``y = (k ∗ (u·pregate))·postgate`` per channel.

    Args:
        seqlen: the sequence length L the module is built for (u is [B, H, seqlen]).
        dtype: the dtype the convolution runs in: u and the gates are cast to it and
            the output comes in it (float16, bfloat16, float32; float64 on CPU).
        freq_keep: None (exact) or the kept fraction φ ∈ (0, 1] of the spectrum: the
            kernel's spectrum keeps ``ceil(8φ)`` of the 8 frequency blocks per side
            (see the module docstring) and the matmuls of the dropped blocks are skipped.

    ``forward(u [B, H, L], k [H, Lk] float32, pregate=None, postgate=None)``. The kernel's
    spectrum is cached per (k, L) and recomputed when k changes (another tensor, or k
    modified in place: its address, version counter, shape, strides or device; the module
    holds the last k it saw, so a new filter never reuses its address). Autograd covers u, k and both gates: when k requires
    grad the dense path runs ``fft_conv``; the frequency-sparse path differentiates k
    through the truncated spectrum (d k = the masked correlation of the gated signal
    with the output gradient).
    """

    def __init__(self, seqlen: int, dtype: torch.dtype = torch.float32, freq_keep: Optional[float] = None):
        super().__init__()
        if seqlen < 1:
            raise ValueError(f"FFTConv: seqlen must be >= 1, got {seqlen}")
        self.seqlen = seqlen
        self.dtype = dtype
        self.freq_keep = freq_keep
        self.keep_blocks = keep_blocks_for(freq_keep)
        self._cache_key = None
        self._cache_spectrum: Optional[Tensor] = None
        self._cache_filter: Optional[Tensor] = None

    @property
    def fft_size(self) -> int:
        return fft_size_for(self.seqlen)

    def extra_repr(self) -> str:
        return f"seqlen={self.seqlen}, dtype={self.dtype}, freq_keep={self.freq_keep}, fft_size={self.fft_size}"

    def spectrum(self, k: Tensor, seqlen: int) -> Tensor:
        """k's spectrum for sequence length ``seqlen``, cached until k changes."""
        if torch.compiler.is_compiling():
            return _ops.fft_conv_spectrum(k.detach(), seqlen, self.keep_blocks)
        key = (k.data_ptr(), k._version, tuple(k.shape), k.stride(), k.dtype, k.device, seqlen)
        if key != self._cache_key:
            self._cache_spectrum = _ops.fft_conv_spectrum(k.detach(), seqlen, self.keep_blocks)
            self._cache_key = key
            # Held so that its memory cannot go to another filter while the key names its
            # address: a filter recomputed each call (k = f(params)) would land there and
            # match the key with a stale spectrum.
            self._cache_filter = k.detach()
        return self._cache_spectrum

    def forward(self, u: Tensor, k: Tensor, pregate: Optional[Tensor] = None,
                postgate: Optional[Tensor] = None) -> Tensor:
        if u.dim() != 3 or u.shape[-1] != self.seqlen:
            raise ValueError(f"FFTConv: u must be [B, H, {self.seqlen}], got shape {tuple(u.shape)}")
        u = u.to(self.dtype)
        pregate = pregate.to(self.dtype) if pregate is not None else None
        postgate = postgate.to(self.dtype) if postgate is not None else None
        if k.requires_grad and torch.is_grad_enabled():
            if self.keep_blocks == DENSE_KEEP_BLOCKS:
                return _ops.fft_conv(u, k, pregate, postgate)
            return _FrequencySparseConv.apply(u, k, pregate, postgate, self.spectrum(k, u.shape[-1]),
                                              self.keep_blocks)
        return _ops.fft_conv_spectral(u, self.spectrum(k, u.shape[-1]), self.keep_blocks, pregate, postgate)
