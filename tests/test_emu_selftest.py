"""The SIMT emulator catches what it claims to (csrc/emu/selftest.cpp).

Each self-test kernel comes in a correct variant and one with a planted defect:
the correct one matches a torch reference under several scheduling seeds; the
defective one gives a wrong answer (under at least one seed) or raises. The
shipped kernels are not touched. Runs with MLX_EMU=1 (scripts/build_emu.sh).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

import conftest
from conftest import EMU_OPS, requires_emu

SEEDS = [1, 2, 3, 4, 5]


def small_ints(*shape: int, bound: int = 8) -> torch.Tensor:
    """Integer-valued floats: every sum of them is exact in any order."""
    return torch.randint(-bound, bound + 1, shape).float()


@requires_emu
def test_removed_syncthreads_gives_a_wrong_sum():
    x = small_ints(4 * 256)
    reference = x.view(4, 256).sum(1)
    for seed in SEEDS:
        assert torch.equal(EMU_OPS.selftest_block_sum(x, False, seed), reference), f"seed {seed}"
    wrong = [seed for seed in SEEDS if not torch.equal(EMU_OPS.selftest_block_sum(x, True, seed), reference)]
    assert wrong, "the reduction without its barrier matched the reference under every seed"


@requires_emu
def test_too_permissive_cp_async_wait_reads_stale_tiles():
    blocks, tiles = 3, 5
    x = small_ints(blocks, tiles, 64, 4)
    # Thread i sums the 16-byte chunk of thread 63 - i of every tile.
    reference = x.flip(2).sum((1, 3))
    for seed in SEEDS:
        assert torch.equal(EMU_OPS.selftest_cp_async_sum(x.flatten(), tiles, False, seed), reference), f"seed {seed}"
    # wait_group 2 lets tile t's own copies stay in flight: the buffer still holds
    # zeros (tiles 0 and 1), then tile t - 2. The last two tiles are never read.
    stale = x[:, : tiles - 2].flip(2).sum((1, 3))
    for seed in SEEDS:
        out = EMU_OPS.selftest_cp_async_sum(x.flatten(), tiles, True, seed)
        assert not torch.equal(out, reference), f"seed {seed}"
        assert torch.equal(out, stale), f"seed {seed}"


@requires_emu
def test_shared_write_past_the_end_is_an_error():
    x = small_ints(2 * 64)
    reference = torch.cat([torch.zeros(2, 1), x.view(2, 64)[:, :-1]], 1).flatten()
    assert torch.equal(EMU_OPS.selftest_shared_overflow(x, False), reference)
    if EMU_OPS.selftest_sanitized():
        # Under AddressSanitizer the guard bytes are poisoned: the store itself
        # aborts the process, so the defect runs in a child process.
        code = (
            "import sys, torch\n"
            "torch.ops.load_library(sys.argv[1])\n"
            f"torch.ops.{EMU_OPS.name}.selftest_shared_overflow(torch.zeros(64), True)\n"
        )
        child = subprocess.run([sys.executable, "-c", code, os.path.abspath(conftest.EMU_LIB)],
                               capture_output=True, text=True, timeout=300)
        # UBSan's bounds check or ASan's poisoned guard bytes, whichever sees the store first.
        assert child.returncode != 0 and re.search("use-after-poison|out of bounds", child.stderr), child.stderr[-2000:]
    else:
        with pytest.raises(RuntimeError, match="past the end") as error:
            EMU_OPS.selftest_shared_overflow(x, True)
        assert "shift_kernel" in str(error.value) and "selftest.cpp" in str(error.value), str(error.value)


@requires_emu
def test_swapped_fragment_registers_give_a_wrong_product():
    a = small_ints(16, 16, bound=4).half()
    b = small_ints(16, 8, bound=4).half()
    reference = a.float() @ b.float()  # exact: small integers
    for seed in SEEDS:
        assert torch.equal(EMU_OPS.selftest_mma(a, b, False, seed), reference), f"seed {seed}"
    # a[1] (rows 8-15, k 0-7) and a[2] (rows 0-7, k 8-15) exchanged: the product
    # of an A with those two 8 × 8 blocks swapped.
    swapped = a.float().clone()
    swapped[8:, :8], swapped[:8, 8:] = a[:8, 8:].float(), a[8:, :8].float()
    for seed in SEEDS:
        out = EMU_OPS.selftest_mma(a, b, True, seed)
        assert not torch.equal(out, reference), f"seed {seed}"
        assert torch.equal(out, swapped @ b.float()), f"seed {seed}"


@requires_emu
def test_barrier_in_divergent_code_is_a_deadlock():
    lanes = torch.arange(64, dtype=torch.int32) % 32
    for seed in SEEDS:
        assert torch.equal(EMU_OPS.selftest_divergent_barrier(False, seed), lanes)
        with pytest.raises(RuntimeError, match="deadlock") as error:
            EMU_OPS.selftest_divergent_barrier(True, seed)
        message = str(error.value)
        assert "divergent_barrier_kernel" in message and "__syncthreads" in message and "__syncwarp" in message, message


@requires_emu
def test_barrier_split_across_branches_is_an_error():
    mirrored = torch.arange(63, -1, -1, dtype=torch.int32)
    for seed in SEEDS:
        assert torch.equal(EMU_OPS.selftest_split_barrier(False, seed), mirrored)
        with pytest.raises(RuntimeError, match="a barrier in divergent code") as error:
            EMU_OPS.selftest_split_barrier(True, seed)
        assert "split_barrier_kernel" in str(error.value), str(error.value)


@requires_emu
def test_divergent_warp_collectives_are_an_error():
    for seed in SEEDS:
        assert torch.equal(EMU_OPS.selftest_divergent_collective(False, seed),
                           torch.arange(32, dtype=torch.int32) ^ 1)
        with pytest.raises(RuntimeError, match="divergent warp collectives") as error:
            EMU_OPS.selftest_divergent_collective(True, seed)
        message = str(error.value)
        assert "__ballot_sync" in message and "__shfl_sync" in message, message
