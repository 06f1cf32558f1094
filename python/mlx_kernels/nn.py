"""Sequence-mixing layers built on this package's kernels: ``HyenaOperator``.

The Hyena operator (Poli et al., "Hyena Hierarchy: Towards Larger Convolutional Language
Models", ICML 2023, arXiv:2302.10866) mixes a sequence without attention: a projection of
the input into a value v and two gates x1, x2, a short causal depthwise convolution of all
three, and a causal convolution of v with an implicit long filter as long as the sequence,
between the gates. The long convolution runs through ``FFTConv`` with the gates fused into
it as its pregate and postgate, the way FlashFFTConv (Fu et al., "FlashFFTConv: Efficient
Convolutions for Long Sequences with Tensor Cores", ICLR 2024, arXiv:2311.05908) runs Hyena:
``y = (k ∗ (v·x1))·x2`` in one call, gradients included.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .fftconv import FFTConv

__all__ = ["HyenaFilter", "HyenaOperator"]


class _Sine(nn.Module):
    """sin(freq·x) with a learned frequency per unit: the implicit filter's activation
    (periodic, so the MLP can draw the high-frequency content of a long filter)."""

    def __init__(self, width: int, freq: float, device=None, dtype=None):
        super().__init__()
        self.freq = nn.Parameter(torch.full((width,), freq, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """Hyena's implicit long filter: ``k[c, t] = window_c(t)·MLP(pos(t))[c]``, t < length.

    ``pos(t) = [t/(seq_len-1), cos(2πft/seq_len), sin(2πft/seq_len) for f = 1..(emb_dim-1)/2]``
    feeds an MLP of ``depth`` hidden ``width``-wide layers with sine activations; the
    window ``exp(-|δ_c|·t/(seq_len-1))`` decays channel c to ``target`` between
    ``fast_decay_pct`` and ``slow_decay_pct`` of the sequence (δ spread over the channels),
    so some channels stay local and others reach the whole sequence. The parameters are
    the MLP's, so the filter's size does not grow with the sequence.

    ``forward(length) -> k [channels, length]`` in the parameters' dtype, for any
    ``length <= seq_len`` (the first ``length`` taps of the ``seq_len``-long filter).
    """

    def __init__(self, channels: int, seq_len: int, emb_dim: int = 33, width: int = 64, depth: int = 2,
                 freq: float = 1.0, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                 target: float = 1e-2, device=None, dtype=None):
        super().__init__()
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"HyenaFilter: emb_dim must be odd and >= 3 (time, then cosine/sine pairs), got {emb_dim}")
        factory = {"device": device, "dtype": dtype}
        self.channels, self.seq_len = channels, seq_len
        self.bands = (emb_dim - 1) // 2
        self.decay_range = (math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct)
        layers = [nn.Linear(emb_dim, width, **factory), _Sine(width, freq, **factory)]
        for _ in range(depth):
            layers += [nn.Linear(width, width, **factory), _Sine(width, freq, **factory)]
        layers.append(nn.Linear(width, channels, bias=False, **factory))
        self.mlp = nn.Sequential(*layers)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, seq_len={self.seq_len}, bands={self.bands}"

    def forward(self, length: int) -> Tensor:
        # The encoding and the window are computed in float32 whatever the parameters' dtype:
        # in bfloat16, positions t/(seq_len-1) of a long sequence would collapse together.
        device, dtype = self.mlp[0].weight.device, self.mlp[0].weight.dtype
        steps = torch.arange(length, device=device, dtype=torch.float32)[:, None]
        times = steps / max(self.seq_len - 1, 1)
        angles = steps * (2 * math.pi / self.seq_len) * torch.arange(1, self.bands + 1, device=device)
        positions = torch.cat([times, torch.cos(angles), torch.sin(angles)], dim=1)
        rates = torch.linspace(*self.decay_range, self.channels, device=device).abs()
        window = torch.exp(-times * rates)
        return (self.mlp(positions.to(dtype)) * window.to(dtype)).t()


class HyenaOperator(nn.Module):
    """Order-2 Hyena operator whose long convolution is ``FFTConv`` (FlashFFTConv).

    ``forward(x [B, L, d_model]) -> [B, L, d_model]``, causal, for any ``L <= seq_len``::

        x1, x2, v = short_filter(in_proj(x))        # depthwise causal conv of width short_filter_order
        y = (k ∗ (v·x1))·x2                         # FFTConv(v, k, pregate=x1, postgate=x2)
        out = out_proj(y)

    with ``k`` the implicit long filter (``HyenaFilter``, one per channel) plus Hyena's
    filter bias D on its lag-0 tap (Hyena's skip term ``D·(v·x1)``, so it runs inside the
    same convolution, under both gates).

    Dtypes: the operator computes in its parameters' dtype (``dtype=`` at construction or
    ``.to(dtype)``): float32, float16 or bfloat16 on any device, float64 on the CPU. The
    filter reaches FFTConv in float32 (float64 for float64), as FFTConv takes it.
    Gradients: every parameter and the input, the long convolution's through ``fft_conv``'s
    backward (itself FFT convolutions).

    Args:
        d_model: channels of the input and output.
        seq_len: the longest sequence; it also scales the filter's positional encoding.
        filter_emb_dim, filter_width, filter_depth: the implicit filter's positional encoding
            size (odd), MLP width and number of hidden layers (``HyenaFilter``).
        short_filter_order: width of the short depthwise convolution.
    """

    def __init__(self, d_model: int, seq_len: int, *, filter_emb_dim: int = 33, filter_width: int = 64,
                 filter_depth: int = 2, short_filter_order: int = 3, device=None, dtype=None):
        super().__init__()
        if d_model < 1 or seq_len < 1 or short_filter_order < 1:
            raise ValueError(f"HyenaOperator: d_model, seq_len and short_filter_order must be >= 1, got "
                             f"{d_model}, {seq_len}, {short_filter_order}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.seq_len = d_model, seq_len
        self.in_proj = nn.Linear(d_model, 3 * d_model, **factory)
        # Padded on both sides by order - 1; forward keeps the first L outputs, so each sees
        # only its own step and the ones before it.
        self.short_filter = nn.Conv1d(3 * d_model, 3 * d_model, short_filter_order, groups=3 * d_model,
                                      padding=short_filter_order - 1, **factory)
        self.filter = HyenaFilter(d_model, seq_len, filter_emb_dim, filter_width, filter_depth, **factory)
        self.filter_bias = nn.Parameter(torch.randn(d_model, **factory))
        self.out_proj = nn.Linear(d_model, d_model, **factory)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, seq_len={self.seq_len}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.d_model or x.shape[1] > self.seq_len:
            raise ValueError(f"HyenaOperator: x must be [B, L, {self.d_model}] with L <= {self.seq_len}, "
                             f"got shape {tuple(x.shape)}")
        length = x.shape[1]
        projected = self.short_filter(self.in_proj(x).transpose(1, 2))[..., :length]
        x1, x2, v = projected.split(self.d_model, dim=1)
        y = self.long_convolution(v, self.long_filter(length), x1, x2)
        return self.out_proj(y.transpose(1, 2))

    def long_filter(self, length: int) -> Tensor:
        """The long filter k [d_model, length] with the filter bias on its lag-0 tap, in
        float32 (float64 for a float64 operator)."""
        k = self.filter(length)
        k = torch.cat([k[:, :1] + self.filter_bias[:, None], k[:, 1:]], dim=1)
        return k.to(torch.float64 if k.dtype == torch.float64 else torch.float32)

    def long_convolution(self, v: Tensor, k: Tensor, pregate: Optional[Tensor], postgate: Optional[Tensor]) -> Tensor:
        """``(k ∗ (v·pregate))·postgate``, causal, per channel, in v's dtype (v [B, d_model, L])."""
        # A fresh FFTConv per call: k is recomputed from the parameters at every call, so
        # there is no spectrum to keep from one call to the next.
        return FFTConv(v.shape[-1], v.dtype)(v, k, pregate, postgate)
