"""fftconv family benchmarks: FFTConv (cached kernel spectrum, gated) against torch.fft
rfft/irfft convolutions, and FlashFFTConv's published H100 times as a reference column.

Throughput counts the Monarch matmuls as dense complex matmuls (8·radix real FLOP per point
per stage, forward and inverse, one complex transform per pair of batch rows).
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch

from .. import ops
from ..fftconv import FFTConv
from .core import Case, Measure

# FlashFFTConv (Fu et al. 2023), Table: B=64, H=768, fp16 with gating, H100, ms.
FLASHFFTCONV_H100_MS = {256: 0.11, 1024: 0.29, 4096: 1.43, 8192: 3.58, 16384: 12.2, 32768: 26.3}

_GPU_SHAPES = [(64, 768, L) for L in FLASHFFTCONV_H100_MS] + [(4, 64, 1 << 18), (1, 16, 1 << 20)]
_GPU_QUICK = [(64, 768, 1024), (64, 768, 4096)]
# CPU: small shapes, then issue 26's target (B4 H64, L 1K-1M; at 1M, B1 H8 keeps torch.fft's
# complex temporaries to a few hundred MB).
_CPU_SHAPES = [(2, 32, 1024), (2, 32, 4096), (2, 32, 16384), (2, 8, 65536), (8, 32, 4096),
               (4, 64, 1024), (4, 64, 16384), (4, 64, 65536), (1, 8, 1 << 20)]
_CPU_QUICK = [(2, 8, 1024), (2, 8, 4096)]


def monarch_radices(n: int) -> List[int]:
    """The stage radices of fftconv.h's factorization of N."""
    full, rest = 0, n
    while rest % 16 == 0:
        rest //= 16
        full += 1
    radices = [16] * full
    if rest > 1:
        radices.insert(1 if full >= 2 else 0, rest)
    return radices


def monarch_flops(b: int, h: int, length: int) -> float:
    n = ops.fft_size_for(length)
    per_transform = sum(8.0 * r * n for r in monarch_radices(n))
    return 2.0 * per_transform * h * math.ceil(b / 2)


def torch_fft_conv(u, k_f, pre, post, n: int):
    """The plain torch convolution: rfft/irfft at size n (k_f = rfft(k, n) or None to compute it)."""
    length = u.shape[-1]
    v = u * pre if pre is not None else u
    y = torch.fft.irfft(torch.fft.rfft(v, n=n) * k_f, n=n)[..., :length]
    return y * post if post is not None else y


def fft_conv_cases(device: str, quick: bool) -> List[Case]:
    if device == "cuda":
        shapes = _GPU_QUICK if quick else _GPU_SHAPES
        dtype = torch.float16
    else:
        shapes = _CPU_QUICK if quick else _CPU_SHAPES
        dtype = torch.float32
    cases = []
    for b, h, length in shapes:

        def make(b=b, h=h, length=length):
            u = torch.randn(b, h, length, device=device, dtype=dtype)
            pre, post = torch.randn_like(u), torch.randn_like(u)
            k = torch.randn(h, length, device=device) / length**0.5
            module = FFTConv(length, dtype)
            module(u, k, pre, post)  # fills the spectrum cache, as in a model's forward
            n = 2 * length
            baselines = {
                "fft_conv (spectrum per call)": lambda: ops.fft_conv(u, k, pre, post),
                "torch.fft fp32": lambda: torch_fft_conv(
                    u.float(), torch.fft.rfft(k, n=n), pre.float(), post.float(), n),
            }
            k32 = torch.fft.rfft(k, n=n)
            baselines["torch.fft fp32, cached rfft(k)"] = lambda: torch_fft_conv(u.float(), k32, pre.float(),
                                                                                  post.float(), n)
            if dtype != torch.float32:
                k16 = torch.fft.rfft(k.to(dtype), n=n)
                baselines[f"torch.fft {str(dtype).split('.')[-1]}"] = lambda: torch_fft_conv(u, k16, pre, post, n)
            return (lambda: module(u, k, pre, post)), baselines

        extra: dict = {"dtype": str(dtype), "gated": True, "fft_size": ops.fft_size_for(length)}
        published: Optional[float] = FLASHFFTCONV_H100_MS.get(length) if (b, h) == (64, 768) else None
        if device == "cuda" and published is not None:
            extra["flashfftconv_h100_published_ms"] = published
        cases.append(Case(label=f"B{b} H{h} L{length}", params={"B": b, "H": h, "L": length},
                          measure=Measure(monarch_flops(b, h, length), "FLOP", peak="fp16" if device == "cuda" else None),
                          make=make, extra=extra))
    return cases


BENCHMARKS = {"fft_conv": fft_conv_cases}

# What "ours" is in the tables and plots.
OURS = {"fft_conv": lambda device: (
    "FFTConv module, kernel spectrum cached, gated (Monarch FFT as matmuls: " +
    ("fused shared-memory kernel, mma.sync on split bf16, fp16 I/O" if device == "cuda" else
     "CPU Monarch stages of 16-point DFTs, fp32") + ")")}
