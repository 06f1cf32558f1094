"""mlx_kernels.HyenaOperator: the order-2 Hyena operator whose long convolution is FFTConv.

Its gradients (every parameter and the input) against the same operator with the long
convolution done by torch.fft (TorchFFTHyena), by DESIGN.md's tolerance rule: the oracle is
that operator in float64, the reference ("plain torch in the same dtype") that operator in
the dtype under test with its FFT in fp32 for fp16/bf16 (torch.fft has no fp16/bf16 FFT on
the CPU), as in test_fftconv.py. And training: a few steps on a delayed-copy task.
"""

from __future__ import annotations

import pytest
import torch

from conftest import assert_close_to_oracle
from mlx_kernels import HyenaOperator

D_MODEL, SEQ_LEN = 8, 64
SMALL_FILTER = {"filter_emb_dim": 5, "filter_width": 16}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


class TorchFFTHyena(HyenaOperator):
    """The same operator with its long convolution through torch.fft: the reference path."""

    def long_convolution(self, v, k, pregate, postgate):
        length = v.shape[-1]
        fft_dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
        gated = (v * pregate).to(fft_dtype)
        n = 2 * length  # no wrap-around: the circular convolution of size 2L is the causal one on [0, L)
        spectrum = torch.fft.rfft(gated, n=n) * torch.fft.rfft(k.to(fft_dtype), n=n)
        return torch.fft.irfft(spectrum, n=n)[..., :length].to(v.dtype) * postgate


def operators(dtype, device):
    """(ours, reference, oracle): one set of weights, rounded to ``dtype`` once; the oracle
    holds those rounded weights in float64 on the CPU."""
    ours = HyenaOperator(D_MODEL, SEQ_LEN, **SMALL_FILTER, device=device, dtype=dtype)
    reference = TorchFFTHyena(D_MODEL, SEQ_LEN, **SMALL_FILTER, device=device, dtype=dtype)
    oracle = TorchFFTHyena(D_MODEL, SEQ_LEN, **SMALL_FILTER, dtype=torch.float64)
    reference.load_state_dict(ours.state_dict())
    oracle.load_state_dict(ours.state_dict())
    return ours, reference, oracle


def output_and_gradients(operator, x, cotangent):
    """The output, then d(Σ output·cotangent) for the input and every parameter, by name."""
    x = x.detach().requires_grad_()
    out = operator(x)
    out.backward(cotangent)
    return {"output": out.detach(), "input": x.grad, **{name: p.grad for name, p in operator.named_parameters()}}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradients_match_torch_fft(device, dtype):
    ours, reference, oracle = operators(dtype, device)
    x = torch.randn(2, SEQ_LEN, D_MODEL).to(device, dtype)
    cotangent = torch.randn(2, SEQ_LEN, D_MODEL).to(device, dtype)
    got = output_and_gradients(ours, x, cotangent)
    expected = output_and_gradients(oracle, x.cpu().double(), cotangent.cpu().double())
    plain = output_and_gradients(reference, x, cotangent)
    assert got.keys() == expected.keys() and len(got) == 2 + len(list(ours.parameters()))
    for name, value in got.items():
        assert value is not None and value.dtype == dtype, f"{name}: {None if value is None else value.dtype}"
        # Plus one unit of roundoff at the tensor's scale, for entries whose reference
        # error happens to be near zero.
        atol = torch.finfo(dtype).eps * expected[name].abs().max().item()
        try:
            assert_close_to_oracle(value.cpu(), expected[name], plain[name].cpu(), atol=atol)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


def test_float64_matches_torch_fft():
    # float64 (CPU): the rule has no coarser reference to compare with; both paths are
    # FFT convolutions in float64 and must agree to float64 roundoff.
    ours, _, oracle = operators(torch.float64, "cpu")
    x = torch.randn(2, SEQ_LEN, D_MODEL, dtype=torch.float64)
    cotangent = torch.randn_like(x)
    got, expected = output_and_gradients(ours, x, cotangent), output_and_gradients(oracle, x, cotangent)
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12, msg=name)


def test_causal_and_shorter_sequences():
    # Output step t depends on x[:, :t + 1] only, so a prefix of the sequence gives the
    # prefix of the output (a shorter L runs a shorter FFT: equal up to rounding).
    operator = HyenaOperator(D_MODEL, SEQ_LEN, **SMALL_FILTER)
    x = torch.randn(2, SEQ_LEN, D_MODEL)
    full = operator(x)
    for length in (1, 17, SEQ_LEN // 2):
        torch.testing.assert_close(operator(x[:, :length]), full[:, :length], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"L <= 64"):
        operator(torch.randn(1, SEQ_LEN + 1, D_MODEL))


def test_no_grad_forward_sees_updated_parameters():
    # Without autograd FFTConv takes the filter's spectrum from its cache, keyed on the
    # filter tensor's address; the filter is recomputed at every call (and may land at the
    # last one's address), so an in-place update of its parameters (an optimizer step)
    # must reach the next evaluation all the same.
    operator = HyenaOperator(D_MODEL, SEQ_LEN, **SMALL_FILTER)
    x = torch.randn(2, SEQ_LEN, D_MODEL)
    with torch.no_grad():
        before = operator(x)
        for p in operator.filter.parameters():
            p.mul_(1.5)
        after = operator(x)
    torch.testing.assert_close(after, operator(x).detach(), rtol=1e-6, atol=1e-6)
    assert (after - before).abs().max() > 1e-2


def delayed_copy_batch(generator, batch=8, delay=5):
    """x [batch, SEQ_LEN, D_MODEL] and the target x delayed by ``delay`` steps (zeros before)."""
    x = torch.randn(batch, SEQ_LEN, D_MODEL, generator=generator)
    return x, torch.nn.functional.pad(x, (0, 0, delay, 0))[:, :SEQ_LEN]


def test_training_reduces_loss(device):
    # A lag of 5 is beyond the short filter's reach (lags 0..2): only the long convolution
    # can bridge it. Initialized on the CPU, so every device starts from the same weights.
    operator = HyenaOperator(D_MODEL, SEQ_LEN, **SMALL_FILTER).to(device)
    optimizer = torch.optim.Adam(operator.parameters(), lr=3e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(80):
        x, target = (t.to(device) for t in delayed_copy_batch(generator))
        loss = torch.nn.functional.mse_loss(operator(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"loss {first:.4f} -> {last:.4f}: {losses}"
