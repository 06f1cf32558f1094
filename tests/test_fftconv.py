"""fftconv family: fft_conv / FFTConv against float64 oracles, the tolerance rule, autograd.

Tolerance reference ("plain torch computing the same thing in the same dtype"): the gates
multiplied in the input dtype and the convolution through torch.fft (rfft/irfft) in fp32
for fp16/bf16 inputs — torch.fft has no fp16/bf16 FFT on CPU (nor for non-power-of-two
sizes on GPU) — and in fp32 for fp32 inputs, the result rounded to the input dtype.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mlx_kernels
import oracles
from conftest import assert_close_to_oracle, requires_cuda
from mlx_kernels import FFTConv, ops

LENGTHS = [1, 3, 100, 256, 1000, 1024, 4096, 8191, 16384, 65536]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def _shape(L):
    # Keep the big sizes cheap: the oracle and the kernel are O(B·H·L log L).
    return (3, 2) if L <= 4096 else (1, 2)


def oracle(u, k, pre=None, post=None, keep_blocks=8):
    if keep_blocks == 8 and u.shape[-1] <= 1024:
        return oracles.fft_conv(u, k, pre, post)
    return oracles.fft_conv_spectral(u, k, pre, post, keep_blocks)


def torch_reference(u, k, pre=None, post=None, keep_blocks=8):
    """Plain torch in u's dtype: gates in u's dtype, the FFT convolution in fp32."""
    v = u * pre if pre is not None else u
    y = oracles.fft_conv_spectral(v, k, keep_blocks=keep_blocks, dtype=torch.float32).to(u.dtype)
    return y * post if post is not None else y


def make_inputs(B, H, L, Lk, dtype, gates, device="cpu"):
    u = torch.randn(B, H, L, dtype=dtype, device=device)
    k = torch.randn(H, Lk, device=device) / Lk**0.5
    pre = torch.randn(B, H, L, dtype=dtype, device=device) if gates else None
    post = torch.randn(B, H, L, dtype=dtype, device=device) if gates else None
    return u, k, pre, post


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gates", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("partial", [False, True], ids=["Lk=L", "Lk<L"])
@pytest.mark.parametrize("L", LENGTHS)
def test_fft_conv_matches_oracle(device, L, partial, gates, dtype):
    B, H = _shape(L)
    Lk = max(1, L // 3) if partial else L
    u, k, pre, post = make_inputs(B, H, L, Lk, dtype, gates)
    out = mlx_kernels.fft_conv(*(t.to(device) if t is not None else None for t in (u, k, pre, post)))
    assert out.dtype == dtype and out.shape == u.shape and out.device.type == device
    assert_close_to_oracle(out.cpu(), oracle(u, k, pre, post), torch_reference(u, k, pre, post), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("keep_blocks", [1, 3, 7])
@pytest.mark.parametrize("L", [100, 1000, 4096, 16384])
def test_frequency_sparse_matches_truncated_oracle(device, L, keep_blocks, dtype):
    B, H = _shape(L)
    u, k, pre, post = make_inputs(B, H, L, L // 2, dtype, gates=True)
    k_f = ops.fft_conv_spectrum(k.to(device), L, keep_blocks)
    out = ops.fft_conv_spectral(u.to(device), k_f, keep_blocks, pre.to(device), post.to(device))
    expected = oracle(u, k, pre, post, keep_blocks)
    assert_close_to_oracle(out.cpu(), expected, torch_reference(u, k, pre, post, keep_blocks), atol=1e-6)
    # Truncation really happened: the dense result differs by far more than rounding.
    assert (expected - oracle(u, k, pre, post)).abs().max() > 1e-2


def test_spectral_with_dense_spectrum_equals_fft_conv(device):
    u, k, pre, post = make_inputs(3, 4, 300, 120, torch.float32, gates=True, device=device)
    dense = ops.fft_conv_spectral(u, ops.fft_conv_spectrum(k, 300, 8), 8, pre, post)
    torch.testing.assert_close(dense, mlx_kernels.fft_conv(u, k, pre, post), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_fft_conv_non_contiguous(device, layout):
    if layout == "transposed":
        u = torch.randn(3, 50, 4, device=device).transpose(1, 2)
        k = torch.randn(50, 4, device=device).t()
        pre = torch.randn(3, 50, 4, device=device).transpose(1, 2)
    else:
        u = torch.randn(3, 4, 100, device=device)[..., ::2]
        k = torch.randn(4, 60, device=device)[:, ::2]
        pre = torch.randn(6, 4, 50, device=device)[::2]
    out = mlx_kernels.fft_conv(u, k, pre)
    u, k, pre = u.cpu(), k.cpu(), pre.cpu()
    assert_close_to_oracle(out.cpu(), oracle(u, k, pre), torch_reference(u, k, pre), atol=1e-6)


@pytest.mark.parametrize("shape", [(0, 2, 5), (2, 0, 5), (2, 3, 0)])
def test_fft_conv_empty(device, shape):
    u = torch.randn(*shape, device=device)
    k = torch.randn(shape[1], min(shape[2], 3), device=device)
    out = mlx_kernels.fft_conv(u, k)
    assert out.shape == shape


def test_fft_conv_is_linear_and_causal():
    u, k, _, _ = make_inputs(2, 3, 200, 50, torch.float32, gates=False)
    y = mlx_kernels.fft_conv(u, k)
    u2 = u.clone()
    u2[..., 150:] += 1.0  # changing the future must not change the past
    torch.testing.assert_close(mlx_kernels.fft_conv(u2, k)[..., :150], y[..., :150], rtol=0, atol=1e-5)
    torch.testing.assert_close(mlx_kernels.fft_conv(2 * u, k), 2 * y, rtol=1e-5, atol=1e-5)


def test_fft_conv_matches_scipy_peer():
    scipy_signal = pytest.importorskip("scipy.signal")
    u, k, _, _ = make_inputs(2, 3, 777, 300, torch.float32, gates=False)
    expected = torch.stack([
        torch.stack([torch.from_numpy(scipy_signal.fftconvolve(u[b, h].double().numpy(), k[h].double().numpy())[:777])
                     for h in range(3)]) for b in range(2)])
    assert_close_to_oracle(mlx_kernels.fft_conv(u, k), expected, torch_reference(u, k), atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(B=st.integers(1, 4), H=st.integers(1, 3), L=st.integers(1, 700), frac=st.floats(0.0, 1.0),
       gates=st.booleans())
def test_fft_conv_property_cpu(B, H, L, frac, gates):
    Lk = max(1, round(frac * L))
    u, k, pre, post = make_inputs(B, H, L, Lk, torch.float32, gates)
    assert_close_to_oracle(mlx_kernels.fft_conv(u, k, pre, post), oracle(u, k, pre, post),
                           torch_reference(u, k, pre, post), atol=1e-6)


# --- FFTConv ---------------------------------------------------------------------


def test_fftconv_module_caches_spectrum_and_sees_k_changes():
    module = FFTConv(500, torch.float32)
    u, k, pre, post = make_inputs(2, 3, 500, 200, torch.float32, gates=True)
    y1 = module(u, k, pre, post)
    cached = module._cache_spectrum
    assert module(u, k, pre, post).equal(y1) and module._cache_spectrum is cached
    with torch.no_grad():
        k.mul_(2.0)  # in place: same storage, new version
    y2 = module(u, k, pre, post)
    assert module._cache_spectrum is not cached
    torch.testing.assert_close(y2, 2 * y1, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_fftconv_module_sees_a_filter_recomputed_each_call():
    # k = f(params) each call, as Hyena's implicit filter: the allocator would hand the
    # new k the freed address of the last one, whose version counter also starts at 0.
    module = FFTConv(256, torch.float32)
    u, w, _, _ = make_inputs(1, 4, 256, 64, torch.float32, gates=False)
    for step in range(6):
        k = w * (1 + step)
        torch.testing.assert_close(module(u, k), mlx_kernels.fft_conv(u, k), rtol=1e-5, atol=1e-5)
        del k
    transposed = torch.randn(8, 8).t()  # the same address and shape as its base, other strides
    square = FFTConv(16, torch.float32)
    x = torch.randn(1, 8, 16)
    square(x, transposed.t())
    torch.testing.assert_close(square(x, transposed), mlx_kernels.fft_conv(x, transposed), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("freq_keep,blocks", [(None, 8), (1.0, 8), (0.5, 4), (0.3, 3), (0.01, 1)])
def test_fftconv_freq_keep_blocks(freq_keep, blocks):
    module = FFTConv(300, torch.bfloat16, freq_keep=freq_keep)
    assert module.keep_blocks == blocks
    u, k, pre, post = make_inputs(2, 3, 300, 300, torch.bfloat16, gates=True)
    out = module(u.float(), k, pre, post)  # u cast to the module's dtype
    assert out.dtype == torch.bfloat16
    assert_close_to_oracle(out, oracle(u, k, pre, post, blocks), torch_reference(u, k, pre, post, blocks), atol=1e-6)


def test_fftconv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="freq_keep"):
        FFTConv(10, freq_keep=0.0)
    with pytest.raises(ValueError, match=r"\[B, H, 10\]"):
        FFTConv(10)(torch.randn(1, 2, 11), torch.randn(2, 3))


def test_fftconv_torch_compile_fullgraph():
    module = FFTConv(256, torch.float32, freq_keep=0.5)
    u, k, pre, post = make_inputs(2, 3, 256, 100, torch.float32, gates=True)
    compiled = torch.compile(module, fullgraph=True)
    torch.testing.assert_close(compiled(u, k, pre, post), module(u, k, pre, post), rtol=1e-5, atol=1e-5)


# --- autograd ----------------------------------------------------------------------


@pytest.mark.parametrize("B,H,L,Lk", [(3, 2, 9, 4), (2, 1, 17, 17), (1, 2, 1, 1)])
def test_fft_conv_gradcheck(B, H, L, Lk):
    def f64(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    u, k, pre, post = f64(B, H, L), f64(H, Lk), f64(B, H, L), f64(B, H, L)
    assert torch.autograd.gradcheck(mlx_kernels.fft_conv, (u, k, pre, post))
    assert torch.autograd.gradcheck(lambda u, k: mlx_kernels.fft_conv(u, k), (u, k))


def test_frequency_sparse_gradcheck():
    u, pre, post = (torch.randn(3, 2, 24, dtype=torch.float64, requires_grad=True) for _ in range(3))
    k_f = ops.fft_conv_spectrum(torch.randn(2, 16, dtype=torch.float64), 24, 3)
    assert torch.autograd.gradcheck(lambda u, p, q: ops.fft_conv_spectral(u, k_f, 3, p, q), (u, pre, post))


@pytest.mark.parametrize("L,Lk,keep", [(24, 9, 3), (24, 24, 1), (40, 17, 5)])
def test_frequency_sparse_module_gradcheck(L, Lk, keep):
    # FFTConv(freq_keep) differentiates u, both gates and k (through the truncated spectrum).
    # A fresh module per call: gradcheck perturbs k through .data, which the
    # spectrum cache (keyed on k's version counter) cannot see.
    def conv(*args):
        module = FFTConv(L, torch.float64, freq_keep=keep / 8)
        assert module.keep_blocks == keep
        return module(*args)

    u, pre, post = (torch.randn(3, 2, L, dtype=torch.float64, requires_grad=True) for _ in range(3))
    k = torch.randn(2, Lk, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (u, k, pre, post))
    assert torch.autograd.gradcheck(lambda k: conv(u.detach(), k), (k,))


def test_frequency_sparse_module_gradients_match_torch_fft():
    L, Lk, keep = 300, 120, 3
    module = FFTConv(L, torch.float32, freq_keep=keep / 8)
    u, k, pre, post = (t.requires_grad_() for t in make_inputs(2, 3, L, Lk, torch.float32, gates=True))
    module(u, k, pre, post).square().sum().backward()
    leaves = [t.detach().double().requires_grad_() for t in (u, k, pre, post)]
    n = mlx_kernels.fft_size_for(L)
    f = torch.arange(n)
    mask = torch.minimum(f, n - f) < keep * (n // 16)
    spectrum = torch.fft.fft(leaves[0] * leaves[2], n=n) * torch.fft.fft(leaves[1], n=n) * mask
    (torch.fft.ifft(spectrum).real[..., :L] * leaves[3]).square().sum().backward()
    for ours, ref in zip((u, k, pre, post), leaves):
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-4, atol=1e-4)


def test_frequency_sparse_module_compiles_with_k_gradients():
    module = FFTConv(256, torch.float32, freq_keep=0.5)
    u, k, pre, post = (t.requires_grad_() for t in make_inputs(2, 3, 256, 100, torch.float32, gates=True))
    torch.compile(module, fullgraph=True)(u, k, pre, post).square().sum().backward()
    compiled_grads = [t.grad.clone() for t in (u, k, pre, post)]
    for t in (u, k, pre, post):
        t.grad = None
    module(u, k, pre, post).square().sum().backward()
    for compiled, eager in zip(compiled_grads, (u.grad, k.grad, pre.grad, post.grad)):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_fftconv_module_backward_matches_oracle_gradients():
    module = FFTConv(64, torch.float32)
    u, k, pre, post = (t.requires_grad_() for t in make_inputs(2, 3, 64, 30, torch.float32, gates=True))
    module(u, k, pre, post).square().sum().backward()
    leaves = [t.detach().double().requires_grad_() for t in (u, k, pre, post)]
    oracles_out = torch.nn.functional.conv1d(
        torch.nn.functional.pad(leaves[0] * leaves[2], (29, 0)), leaves[1].flip(-1)[:, None], groups=3) * leaves[3]
    oracles_out.square().sum().backward()
    for ours, ref in zip((u, k, pre, post), leaves):
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-4, atol=1e-4)


# --- CUDA vs CPU ---------------------------------------------------------------------


def cuda_reference(u, k, pre, post):
    """Plain torch on the GPU in u's dtype: cuFFT in fp16 for fp16 (N is a power of two);
    cuFFT has no bf16 transform, so for bf16 the fp32 transform with its spectra stored in bf16."""
    u, k, pre, post = u.cuda(), k.cuda(), pre.cuda(), post.cuda()
    n = mlx_kernels.fft_size_for(u.shape[-1])
    v = u * pre
    if u.dtype == torch.float16:
        # norm="forward": the 1/n on the forward transform of v. With the default norm cuFFT
        # writes the unnormalized inverse (n·y) in fp16 before torch scales it, which is inf
        # for n >= 16384 (L >= 8192) and makes the tolerance check vacuous.
        spectrum = torch.fft.rfft(v, n=n, norm="forward") * torch.fft.rfft(k.half(), n=n)
        y = torch.fft.irfft(spectrum, n=n, norm="forward")[..., : u.shape[-1]]
    elif u.dtype == torch.bfloat16:
        def to_bf16(z):
            return torch.complex(z.real.bfloat16().float(), z.imag.bfloat16().float())
        spectrum = to_bf16(to_bf16(torch.fft.rfft(v.float(), n=n)) * to_bf16(torch.fft.rfft(k, n=n)))
        y = torch.fft.irfft(spectrum, n=n)[..., : u.shape[-1]]
    else:
        y = torch.fft.irfft(torch.fft.rfft(v, n=n) * torch.fft.rfft(k, n=n), n=n)[..., : u.shape[-1]]
    return (y.to(u.dtype) * post).cpu()


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("keep_blocks", [8, 3])
@pytest.mark.parametrize("L", [1, 100, 4096, 8192, 16384, 65536, 1 << 20])
def test_fft_conv_cuda_matches_oracle(L, keep_blocks, dtype):
    B, H = (3, 2) if L <= 16384 else (1, 1)
    u, k, pre, post = make_inputs(B, H, L, max(1, L // 2), dtype, gates=True)
    k_f = ops.fft_conv_spectrum(k.cuda(), L, keep_blocks)
    ours = ops.fft_conv_spectral(u.cuda(), k_f, keep_blocks, pre.cuda(), post.cuda()).cpu()
    cpu = ops.fft_conv_spectral(u, ops.fft_conv_spectrum(k, L, keep_blocks), keep_blocks, pre, post)
    expected = oracles.fft_conv_spectral(u, k, pre, post, keep_blocks)
    reference = cuda_reference(u, k, pre, post) if keep_blocks == 8 else cpu
    assert torch.isfinite(reference).all(), "the reference overflowed: the check would be vacuous"
    assert_close_to_oracle(ours, expected, reference, atol=1e-6)


@requires_cuda
@pytest.mark.parametrize("gates", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("L", [1024, 4096])
def test_fft_conv_cuda_fp32_matches_oracle(L, gates):
    # fp32 runs every Monarch stage in FFMA (radix-16 column stages and the fused last
    # stage); a direct 16-term sum per radix-16 DFT output gave 2-3x the error of torch's
    # fp32 FFT at these sizes. The rule compares with the fp32 torch.fft convolution.
    u, k, pre, post = make_inputs(2, 2, L, L, torch.float32, gates)
    out = mlx_kernels.fft_conv(*(t.cuda() if t is not None else None for t in (u, k, pre, post))).cpu()
    assert_close_to_oracle(out, oracles.fft_conv_spectral(u, k, pre, post), torch_reference(u, k, pre, post))


# --- non-finite input ----------------------------------------------------------------
# An FFT convolution spreads a NaN or Inf over its whole (b, h) row (as torch.fft's
# does); the kernels pair rows into one complex signal, which must not carry it
# into the partner row: a different sequence.


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("where", ["u_nan", "u_inf", "pregate", "k", "postgate"])
@pytest.mark.parametrize("L", [100, 9000])  # 9000: the two-pass CUDA path (N = 32768)
def test_nonfinite_input_stays_in_its_row(device, where, L, dtype):
    B, H = 3, 3  # rows pair (0, 1) per head, row 2 alone
    u = torch.randn(B, H, L, device=device).to(dtype)
    k = torch.randn(H, min(L, 40), device=device)
    pre, post = torch.ones_like(u), torch.ones_like(u)
    t = L // 2
    if where == "u_nan":
        u[1, 2, t] = float("nan")
    elif where == "u_inf":
        u[0, 1, t] = float("inf")
    elif where == "pregate":
        pre[1, 0, t] = float("nan")
    elif where == "k":
        k[0, 3] = float("nan")
    else:
        post[1, 2, t] = float("nan")
    y = mlx_kernels.fft_conv(u, k, pre, post).float().cpu()
    clean = mlx_kernels.fft_conv(u.nan_to_num(0, 0, 0), k.nan_to_num(0, 0, 0)).float().cpu()
    expected_bad = torch.zeros(B, H, L, dtype=torch.bool)
    if where == "u_nan":
        expected_bad[1, 2] = True
    elif where == "u_inf":
        expected_bad[0, 1] = True
    elif where == "pregate":
        expected_bad[1, 0] = True
    elif where == "k":
        expected_bad[:, 0] = True  # every sequence convolved with head 0's kernel
    else:
        expected_bad[1, 2, t] = True
    assert torch.equal(~torch.isfinite(y), expected_bad)
    # Everything else as without the non-finite value (the partner row's rounding may differ).
    torch.testing.assert_close(y[~expected_bad], clean[~expected_bad], rtol=2e-2, atol=2e-2)


def test_nonfinite_kernel_spectrum_stays_in_its_head(device):
    k = torch.randn(4, 33, device=device)
    k[2, 7] = float("inf")
    spectrum = mlx_kernels.ops.fft_conv_spectrum(k, 64, 8).cpu()
    assert torch.isnan(spectrum[2]).all()
    assert torch.isfinite(spectrum[[0, 1, 3]]).all()
    k[2, 7] = 0
    torch.testing.assert_close(spectrum[[0, 1, 3]], mlx_kernels.ops.fft_conv_spectrum(k, 64, 8).cpu()[[0, 1, 3]],
                               rtol=1e-5, atol=1e-6)
