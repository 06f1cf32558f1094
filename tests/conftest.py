"""Shared test helpers: devices to run on, and the tolerance rule of DESIGN.md."""

from __future__ import annotations

import os
import time

import pytest
import torch

import mlx_kernels

# MLX_FAKE_CUDA=1: the CUDA tests run against the CPU kernels on a fake cuda:0, to
# find test-side bugs without a GPU (tests/fake_cuda.py says what it can and cannot show).
# MLX_EMU=1: the same fake cuda:0, with this package's ops running their CUDA kernels on the
# SIMT emulator (scripts/build_emu.sh builds it; MLX_EMU_LIB names another build of it).
EMU = os.environ.get("MLX_EMU") == "1"
FAKE_CUDA = os.environ.get("MLX_FAKE_CUDA") == "1" or EMU
if FAKE_CUDA:
    import fake_cuda

    fake_cuda.install()
EMU_LIB = None  # the emulator build loaded (MLX_EMU=1)
if EMU:
    import glob

    EMU_LIB = os.environ.get("MLX_EMU_LIB") or next(
        iter(sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "build", "emu", "_emu*.so")))), None)
    if EMU_LIB is None:
        raise RuntimeError("MLX_EMU=1 needs the emulator build: run scripts/build_emu.sh (or set MLX_EMU_LIB)")
    fake_cuda.load_emulator(EMU_LIB)
HAS_CUDA = FAKE_CUDA or (torch.cuda.is_available() and mlx_kernels.WITH_CUDA)

# Every op test that takes a `device` runs on CPU, and on CUDA when a GPU and a
# CUDA build are both present (skipped cleanly otherwise). Both carry the
# `cuda` mark: `pytest -m cuda` runs exactly the tests that need the GPU.
_NEEDS_CUDA = "needs a GPU and a CUDA build"
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=_NEEDS_CUDA)]),
]


def requires_cuda(test):
    """Decorator for a test that only runs on the GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not HAS_CUDA, reason=_NEEDS_CUDA)(test))


# The emulator's own ops (torch.ops.<namespace>_emu: the emulated kernels and its self-tests).
EMU_OPS = getattr(torch.ops, mlx_kernels.OPS_NAMESPACE + "_emu") if EMU else None


def requires_emu(test):
    """Decorator for a test of the SIMT emulator itself (runs with MLX_EMU=1)."""
    return pytest.mark.emu(pytest.mark.skipif(not EMU, reason="needs MLX_EMU=1 (scripts/build_emu.sh)")(test))


def pytest_collection_modifyitems(config, items):
    if not FAKE_CUDA:
        return
    for item in items:
        reason = fake_cuda.needs_real_gpu(item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"needs a real GPU: {reason}"))
        elif EMU and (reason := fake_cuda.too_slow_to_emulate(item.nodeid)) is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a GPU and a CUDA build (select with -m cuda)")
    config.addinivalue_line("markers", "emu: tests of the SIMT emulator itself (select with -m emu, MLX_EMU=1)")


# MLX_TEST_DEADLINE (seconds since the epoch): stop cleanly between tests once it
# passes, with the usual summary. scripts/gpu_session.sh time-boxes runs with it
# (under compute-sanitizer too, which then still prints its own summary).
_DEADLINE = float(os.environ.get("MLX_TEST_DEADLINE", "inf"))


def pytest_runtest_teardown(item, nextitem):
    if nextitem is not None and time.time() > _DEADLINE:
        item.session.shouldstop = "MLX_TEST_DEADLINE reached"


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    if FAKE_CUDA:
        fake_cuda.CUDA_GENERATOR.manual_seed(0)


def max_abs_error(x: torch.Tensor, oracle: torch.Tensor) -> float:
    if x.numel() == 0:
        return 0.0
    return (x.double() - oracle.double()).abs().max().item()


def assert_close_to_oracle(out: torch.Tensor, oracle: torch.Tensor, reference: torch.Tensor,
                           factor: float = 2.0, atol: float = 0.0) -> None:
    """DESIGN.md's tolerance rule (FlashAttention's): our error against the
    float64 oracle is at most ``factor`` × the error of plain torch computing the
    same thing in the same dtype (``reference``), plus ``atol`` for results whose
    reference error happens to be exactly zero.
    """
    assert out.shape == oracle.shape, f"shape {tuple(out.shape)} != oracle {tuple(oracle.shape)}"
    assert not torch.isnan(out).any() or torch.isnan(oracle).any(), "NaN in output"
    ours = max_abs_error(out, oracle)
    theirs = max_abs_error(reference, oracle)
    assert ours <= factor * theirs + atol, (
        f"max error {ours:.3e} vs float64 oracle exceeds {factor}x plain torch's {theirs:.3e} (+{atol:.1e})"
    )
