"""float64 / int64 oracles: the simplest readable formula for every op."""

from __future__ import annotations

import torch


def int8_mm(a_i8: torch.Tensor, b_i8: torch.Tensor) -> torch.Tensor:
    """Exact a @ b.T in int64 (computed on CPU, where int64 matmul exists)."""
    return a_i8.cpu().long() @ b_i8.cpu().long().T


# --- fftconv ---


def fft_conv(u: torch.Tensor, k: torch.Tensor, pregate=None, postgate=None) -> torch.Tensor:
    """Direct causal convolution in float64: y[b,h,t] = Σ_{s ≤ min(t, Lk-1)} k[h,s]·v[b,h,t-s]."""
    v = u.detach().cpu().double()
    if pregate is not None:
        v = v * pregate.detach().cpu().double()
    kd = k.detach().cpu().double()
    y = torch.zeros_like(v)
    for s in range(kd.shape[1]):
        y[..., s:] += kd[:, s, None] * v[..., : v.shape[-1] - s]
    if postgate is not None:
        y = y * postgate.detach().cpu().double()
    return y


def fft_conv_spectral(u: torch.Tensor, k: torch.Tensor, pregate=None, postgate=None, keep_blocks: int = 8,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The same convolution through torch.fft at FFT size N = fft_size_for(L), in ``dtype``,
    with the spectrum truncated to min(f, N - f) < keep_blocks·N/16 when keep_blocks < 8."""
    import mlx_kernels

    v = u.detach().cpu().to(dtype)
    if pregate is not None:
        v = v * pregate.detach().cpu().to(dtype)
    n = mlx_kernels.fft_size_for(v.shape[-1])
    spectrum = torch.fft.fft(v, n=n) * torch.fft.fft(k.detach().cpu().to(dtype), n=n)
    if keep_blocks < 8:
        f = torch.arange(n)
        spectrum = spectrum * (torch.minimum(f, n - f) < keep_blocks * (n // 16))
    y = torch.fft.ifft(spectrum).real[..., : v.shape[-1]]
    if postgate is not None:
        y = y * postgate.detach().cpu().to(dtype)
    return y
