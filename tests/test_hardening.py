"""Hardening: huge requests refused before allocating, every op from 8 threads
and from forked DataLoader workers, bitwise reproducibility (runs, thread
counts, torch.use_deterministic_algorithms), and flat memory over 10^4 calls.
The fuzzing of valid and corrupted inputs is test_fuzz.py."""

from __future__ import annotations

import os
import threading

import pytest
import torch

import mlx_kernels
from cases import op_pattern
from conftest import DEVICES, EMU, FAKE_CUDA, requires_cuda
from hardening_samples import assert_same, call, medium_samples, op, samples

SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def _ids(items):
    return [item[0] for item in items]


# --- huge requests ------------------------------------------------------------------

TiB = 2**40


def _huge_cases(device):
    """(op, call) pairs whose output (or a buffer) cannot exist: > any device's memory, or > int64 bytes."""
    long = dict(dtype=torch.int64, device=device)
    z8 = lambda *s: torch.zeros(*s, dtype=torch.int8, device=device)  # noqa: E731
    f32 = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
    cases = [
        # m = 2^40 rows from a 1025-entry crow: blocks [0, 2^30, 1] (no block stored)
        ("bsr_spmm", lambda: op("bsr_spmm")(torch.zeros(1025, **long), torch.zeros(0, **long), f32(0, 2**30, 1),
                                            f32(1, 4), TiB, None)),
        ("bsr_spmm_unchecked", lambda: op("bsr_spmm_unchecked")(torch.zeros(1025, **long), torch.zeros(0, **long),
                                                                f32(0, 2**30, 1), f32(1, 4), TiB, None)),
        # bytes past int64: m = 2^62 with n = 8
        ("bsr_spmm", lambda: op("bsr_spmm")(torch.zeros(1025, **long), torch.zeros(0, **long), f32(0, 2**52, 1),
                                            f32(1, 8), 2**62, None)),
        # br = 2^40: one block of 2^40 x 1
        ("bsr_sddmm", lambda: op("bsr_sddmm")(torch.tensor([0, 1], **long), torch.zeros(1, **long), f32(4, 2),
                                              f32(1, 2), TiB, 1, None)),
        ("bsr_sddmm", lambda: op("bsr_sddmm")(torch.tensor([0, 1], **long), torch.zeros(1, **long), f32(4, 2),
                                              f32(1, 2), 2**62, 2**62, None)),
        ("fft_conv_spectrum", lambda: op("fft_conv_spectrum")(f32(1, 4), TiB, 8)),
        ("fft_conv_spectrum", lambda: op("fft_conv_spectrum")(f32(1, 4), 2**63 - 1, 8)),
        # outputs of long thin (expanded) operands
        ("int8_mm", lambda: op("int8_mm")(z8(1, 16).expand(2**20, 16), z8(1, 16).expand(2**20, 16))),
        ("int8_gemm", lambda: op("int8_gemm")(f32(1, 16).half().expand(2**20, 16), z8(1, 16).expand(2**20, 16),
                                              f32(1).expand(2**20), None, 0.0)),
        ("bipolar_gemm", lambda: op("bipolar_gemm")(torch.zeros(1, 1, 1, dtype=torch.int32, device=device).expand(1, 2**20, 1),
                                                    torch.zeros(1, 1, 1, dtype=torch.int32, device=device).expand(1, 2**20, 1), 32)),
        ("bipolar_linear", lambda: op("bipolar_linear")(f32(1, 32).expand(2**20, 32),
                                                        torch.zeros(1, 1, 1, dtype=torch.int32, device=device).expand(1, 2**20, 1),
                                                        f32(1).expand(2**20), 2, None)),
        # an expanded input bigger than memory (read densely by the op)
        ("attention_with_lse", lambda: op("attention_with_lse")(f32(1, 1, 1, 64).expand(2**16, 2**16, 1, 64),
                                                                f32(1, 1, 1, 64).expand(2**16, 1, 1, 64),
                                                                f32(1, 1, 1, 64).expand(2**16, 1, 1, 64), False, None)),
        ("fft_conv", lambda: op("fft_conv")(f32(1, 1, 1).expand(2**20, 2**10, 2**10), f32(1, 1).expand(2**10, 1),
                                            None, None)),
        ("int8_vectorwise_quant", lambda: op("int8_vectorwise_quant")(f32(1, 1).expand(2**30, 2**12), 0.0)),
    ]
    if device == "cpu":
        crow, col = torch.tensor([0, 1], **long), torch.tensor([5], **long)
        cases += [
            ("bsr_from_csr", lambda: op("bsr_from_csr")(crow, col, f32(1), TiB, 2**40, 2**40, None)),
            ("bsr_from_csr", lambda: op("bsr_from_csr")(crow, col, f32(1), 2**62, 2**62, 2**62, None)),
        ]
    return cases


@pytest.mark.parametrize("device", DEVICES)
def test_huge_requests_refused_before_allocating(device):
    for name, request in _huge_cases(device):
        # the unchecked variants report under their checked op's name
        with pytest.raises(RuntimeError, match=op_pattern(name.replace("_unchecked", "")) +
                           ".*(refused before allocating|does not fit|must)"):
            request()


@pytest.mark.parametrize("device", DEVICES)
def test_huge_integer_arguments_never_overflow(device):
    """Integer arguments near 2^63 get an error (or an answer), never undefined behaviour (UBSan checks)."""
    planes = torch.zeros(1, 2, 1, dtype=torch.int32, device=device)
    for k in (2**63 - 1, 2**62, 2**40, -1, -(2**63)):
        with pytest.raises((RuntimeError, ValueError), match=op_pattern("bipolar_unpack")):
            op("bipolar_unpack")(planes, k)
        with pytest.raises((RuntimeError, ValueError), match=op_pattern("bipolar_gemm")):
            op("bipolar_gemm")(planes, planes, k)
        with pytest.raises((RuntimeError, ValueError), match=op_pattern("bsr_spmm")):
            op("bsr_spmm")(torch.zeros(2, dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int64, device=device),
                           torch.zeros(0, 16, 16, device=device), torch.zeros(3, 4, device=device), k, None)


def test_reorder_rows_of_a_very_wide_matrix_is_cheap():
    """bsr_reorder_rows on k = 2^40 columns holding 3 entries: O(nnz) memory, not O(k)."""
    crow = torch.tensor([0, 1, 2, 3])
    col = torch.tensor([2**40 - 1, 5, 2**40 - 1])
    perm = op("bsr_reorder_rows")(crow, col, 2**40, 2, 1)
    assert sorted(perm.tolist()) == [0, 1, 2]
    assert perm.tolist()[:2] in ([0, 2], [2, 0])  # the two rows sharing a column share a block row


# --- concurrency ----------------------------------------------------------------------

def _reference(items):
    return [call(name, args, kwargs) for _, name, args, kwargs in items]


@pytest.mark.parametrize("device", DEVICES)
def test_eight_threads_give_single_threaded_answers(device):
    items = samples(device) + [(f"medium_{name}", name, args, kwargs) for name, args, kwargs in medium_samples(device)]
    expected = _reference(items)
    rounds = 1 if EMU else 3
    errors = []
    barrier = threading.Barrier(8)

    def worker(index):
        try:
            barrier.wait()
            for r in range(rounds):
                order = list(range(len(items)))
                # each thread walks the samples from another starting point: different ops overlap
                order = order[(index * 7 + r) % len(order):] + order[:(index * 7 + r) % len(order)]
                for i in order:
                    sample_id, name, args, kwargs = items[i]
                    assert_same(call(name, args, kwargs), expected[i], f"{sample_id} (thread {index})")
        except BaseException as error:  # noqa: BLE001  (reported below, with its thread)
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


class _OpDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        _, name, args, kwargs = self.items[i]
        return call(name, args, kwargs)


@pytest.mark.skipif(SANITIZED, reason="fork under the sanitizer runtime is slow; the 8-thread test covers races")
def test_forked_dataloader_workers_give_the_same_answers():
    """Ops used in the parent first (thread pool, FFT plans cached), then in forked workers."""
    items = samples("cpu") + [(f"medium_{name}", name, args, kwargs) for name, args, kwargs in medium_samples("cpu")]
    expected = _reference(items)
    ctx = torch.multiprocessing.get_context("fork")
    loader = torch.utils.data.DataLoader(_OpDataset(items), batch_size=None, num_workers=2, multiprocessing_context=ctx,
                                         timeout=300)
    got = list(loader)
    assert len(got) == len(items)
    for (sample_id, *_), out, ref in zip(items, got, expected):
        assert_same(out, ref, sample_id)


# --- determinism -----------------------------------------------------------------------

def test_cpu_kernels_are_bitwise_reproducible_across_runs_and_thread_counts():
    items = samples("cpu") + [(f"medium_{name}", name, args, kwargs) for name, args, kwargs in medium_samples("cpu")]
    before = torch.get_num_threads()
    try:
        results = {}
        for threads in (1, 2, 3, max(4, os.cpu_count() or 1)):
            torch.set_num_threads(threads)
            results[threads] = [_reference(items) for _ in range(2)]
    finally:
        torch.set_num_threads(before)
    first = results[1][0]
    for threads, runs in results.items():
        for run in runs:
            for (sample_id, *_), out, ref in zip(items, run, first):
                assert_same(out, ref, f"{sample_id} with {threads} threads")


def _long_block_row_bsr(device):
    """A BCSR whose block rows hold far more than 32 blocks (the CUDA kernel splits those)."""
    g = torch.Generator().manual_seed(3)
    dense = torch.randn(64, 16 * 80, generator=g)
    a = mlx_kernels.BlockSparseMatrix.from_dense(dense, block=(16, 16), reorder=False)
    b = torch.randn(16 * 80, 40, generator=g, dtype=torch.float32)
    return (a.crow.to(device), a.col.to(device), a.blocks.detach().to(device), b.to(device), 64, None)


@pytest.fixture
def deterministic():
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


@pytest.mark.parametrize("device", DEVICES)
def test_bsr_spmm_deterministic_mode_is_bitwise_reproducible(device, deterministic):
    args = _long_block_row_bsr(device)
    first = call("bsr_spmm", args, {})
    for _ in range(3):
        assert_same(call("bsr_spmm", args, {}), first, "bsr_spmm under use_deterministic_algorithms")
    assert_same(call("bsr_spmm_unchecked", args, {}), first, "bsr_spmm_unchecked under use_deterministic_algorithms")


@requires_cuda
def test_spgemm_csr_cuda_raises_the_determinism_alert(deterministic):
    crow = torch.tensor([0, 2, 3], device="cuda")
    col = torch.tensor([0, 1, 1], device="cuda")
    val = torch.tensor([1.0, 2.0, 3.0], device="cuda")
    with pytest.raises(RuntimeError, match=op_pattern("spgemm_csr") + ".*does not have a deterministic implementation"):
        op("spgemm_csr")(crow, col, val, crow, col, val, 2)
    torch.use_deterministic_algorithms(True, warn_only=True)  # a warning, and the product
    c_crow, c_col, c_val = op("spgemm_csr")(crow, col, val, crow, col, val, 2)
    assert c_crow.tolist() == [0, 2, 3] and c_val.tolist() == [1.0, 8.0, 9.0]


def test_cpu_ops_run_under_deterministic_algorithms(deterministic):
    """Every CPU kernel is deterministic: none raises the alert."""
    for sample_id, name, args, kwargs in samples("cpu"):
        call(name, args, kwargs)


# --- memory ------------------------------------------------------------------------------

def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _one_sample_per_op(device):
    chosen = {}
    for sample_id, name, args, kwargs in samples(device):
        chosen.setdefault(name, (sample_id, name, args, kwargs))
    return list(chosen.values())


CALLS = int(os.environ.get("MLX_MEMORY_CALLS", "10000"))


@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine holds freed memory: RSS is not flat by design there")
@pytest.mark.skipif(FAKE_CUDA, reason="CPU memory test (the fake GPU's tensors live in CPU memory)")
def test_ten_thousand_calls_of_each_op_leave_resident_memory_flat():
    for sample_id, name, args, kwargs in _one_sample_per_op("cpu"):
        for _ in range(CALLS // 10):  # warm-up: caches, allocator arenas, thread pool
            call(name, args, kwargs)
        start = _rss_bytes()
        for _ in range(CALLS):
            call(name, args, kwargs)
        grown = _rss_bytes() - start
        assert grown < 8 << 20, f"{sample_id}: resident memory grew by {grown / 2**20:.1f} MiB over {CALLS} calls"


@requires_cuda
@pytest.mark.skipif(FAKE_CUDA, reason="torch.cuda.memory_allocated needs a real GPU")
def test_cuda_ops_leave_allocated_memory_where_it_was():
    items = _one_sample_per_op("cuda")
    for sample_id, name, args, kwargs in items:
        call(name, args, kwargs)  # warm-up
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for sample_id, name, args, kwargs in items:
        for _ in range(100):
            call(name, args, kwargs)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
