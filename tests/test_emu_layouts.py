"""The SIMT emulator's tensor-core fragment layouts against NVIDIA CuTe's.

csrc/emu/primitives.h writes the layouts of mma.m16n8k16 (f16/bf16),
mma.m16n8k256 (b1, and.popc) and ldmatrix.x4[.trans] down once;
``emu_fragment_layout`` (csrc/emu/layout_ops.cpp) tabulates them, and
tests/emu/cute_layouts.cu tabulates CuTe's MMA_Traits / Copy_Traits for the same
instructions on the host (compiled with nvcc, no GPU needed). Every (lane,
register, element) -> (row, col) entry must agree exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess

import pytest
import torch

from conftest import EMU_OPS, requires_emu

NVCC = shutil.which("nvcc")
requires_nvcc = pytest.mark.skipif(NVCC is None, reason="needs nvcc to build the CuTe layout program")
SOURCE = os.path.join(os.path.dirname(__file__), "emu", "cute_layouts.cu")


def _cutlass_include() -> str | None:
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    include = os.path.join(list(spec.submodule_search_locations)[0], "source", "include")
    return include if os.path.isdir(os.path.join(include, "cute")) else None


@pytest.fixture(scope="module")
def cute_tables(tmp_path_factory) -> dict:
    """CuTe's tables, {name: [lane][register][element] -> [row, col]}: built and run once."""
    include = _cutlass_include()
    if include is None:
        pytest.skip("needs the nvidia-cutlass wheel's CuTe headers (cutlass_library)")
    exe = str(tmp_path_factory.mktemp("cute_layouts") / "cute_layouts")
    # Not under a sanitized suite's preloaded ASan runtime (nvcc's own binaries crash under it).
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    build = subprocess.run([NVCC, "-std=c++17", f"-I{include}", SOURCE, "-o", exe],
                           capture_output=True, text=True, timeout=600, env=env)
    assert build.returncode == 0, f"nvcc failed:\n{build.stderr}"
    run = subprocess.run([exe], capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0, f"cute_layouts failed:\n{run.stderr}"
    return json.loads(run.stdout)


# (CuTe table, emulator operand). The f16 and bf16 atoms share one layout, as
# the emulator does; both accumulators are the m16n8 "c" layout.
PAIRS = [
    ("f16.k16_a", "k16_a"), ("f16.k16_b", "k16_b"), ("f16.k16_c", "c"),
    ("bf16.k16_a", "k16_a"), ("bf16.k16_b", "k16_b"), ("bf16.k16_c", "c"),
    ("b1.k256_a", "k256_a"), ("b1.k256_b", "k256_b"), ("b1.k256_c", "c"),
    ("ldmatrix", "ldmatrix"), ("ldmatrix_trans", "ldmatrix_trans"),
]

# (rows, cols) of the matrix each emulator table indexes; ldmatrix: 32 source
# rows (8 per matrix, named by the lane that addressed them) × 8 b16 columns.
EXTENTS = {"k16_a": (16, 16), "k16_b": (16, 8), "c": (16, 8), "k256_a": (16, 256), "k256_b": (256, 8),
           "ldmatrix": (32, 8), "ldmatrix_trans": (32, 8)}


@requires_emu
@requires_nvcc
@pytest.mark.parametrize("cute_name,operand", PAIRS, ids=[p[0] for p in PAIRS])
def test_layout_matches_cute(cute_tables, cute_name, operand):
    ours = EMU_OPS.emu_fragment_layout(operand)
    theirs = torch.tensor(cute_tables[cute_name], dtype=torch.int64)
    assert ours.shape == theirs.shape, (
        f"(lane, register, element, 2) shape {tuple(ours.shape)} != CuTe's {tuple(theirs.shape)}")
    wrong = (ours != theirs).any(dim=-1).nonzero().tolist()
    assert not wrong, f"{len(wrong)} entries differ from CuTe's {cute_name}; first (lane, reg, elem): " + "; ".join(
        f"{tuple(i)}: emu {ours[tuple(i)].tolist()} vs CuTe {theirs[tuple(i)].tolist()}" for i in wrong[:8])


@requires_emu
@pytest.mark.parametrize("operand", list(EXTENTS))
def test_layout_covers_matrix_once(operand):
    # Each table is a bijection from (lane, register, element) onto the matrix:
    # every element is held by exactly one lane's register.
    table = EMU_OPS.emu_fragment_layout(operand).reshape(-1, 2)
    rows, cols = EXTENTS[operand]
    assert table.shape[0] == rows * cols
    assert ((table[:, 0] >= 0) & (table[:, 0] < rows) & (table[:, 1] >= 0) & (table[:, 1] < cols)).all()
    assert torch.unique(table[:, 0] * cols + table[:, 1]).numel() == rows * cols


@requires_emu
def test_unknown_operand():
    with pytest.raises(RuntimeError, match="unknown operand"):
        EMU_OPS.emu_fragment_layout("k8_a")
