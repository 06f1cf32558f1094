"""mlx_kernels.distributed on several processes: tensor-parallel Int8Linear / BipolarLinear, sequence-parallel
shared-prefix attention and row-partitioned sparse products, each against the one-process result.

One spawn per world size (2 and 4 CPU ranks over gloo; 2 GPUs over NCCL when present) runs every check:
starting ranks costs seconds, the checks themselves milliseconds. A failing rank fails the test with its
traceback (torch.multiprocessing stops the other ranks), and a hang fails it after JOIN_TIMEOUT_S.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import os
import time
from collections import OrderedDict

import pytest
import scipy.sparse
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate
from torch.distributed.tensor.parallel import parallelize_module

import mlx_kernels
import mlx_kernels.distributed as mlx_distributed
import oracles
from conftest import FAKE_CUDA, assert_close_to_oracle

JOIN_TIMEOUT_S = 90  # the whole spawn normally takes a few seconds
COLLECTIVE_TIMEOUT_S = 60  # a rank waiting on a peer that died or diverged gives up
# The CPU kernels give the one-process result bitwise where the math per output element is unchanged; the CUDA
# ones pick tiles, splits and atomics by problem size, so there the comparison is torch's default tolerance.
EXACT_ON_CPU = {"cpu": {"rtol": 0, "atol": 0}, "cuda": {}}


# --- checks run on every rank (the same seeds everywhere: every rank builds the same whole tensors) ---------


def _same_on_every_rank(t: torch.Tensor) -> None:
    parts = [torch.empty_like(t.float()) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.float().contiguous())
    assert all(torch.equal(part, parts[0]) for part in parts), "ranks disagree"


def _quantized_mlp(kind: str, device) -> nn.Module:
    """Up-projection (37 hidden features: uneven over 2 and 4 ranks) -> GELU -> down-projection. Hidden
    features 3 and 36 are scaled up: the down-projection's input has LLM.int8 outlier columns on the first
    and the last rank, none on the others (with 4 ranks)."""
    torch.manual_seed(0)
    up, down = nn.Linear(24, 37), nn.Linear(37, 24)
    with torch.no_grad():
        up.weight[[3, 36]] *= 40
    if kind == "int8":
        layers = [mlx_kernels.Int8Linear.from_float(linear, threshold=6.0) for linear in (up, down)]
    else:
        layers = [mlx_kernels.BipolarLinear.from_float(linear, w_bits=4, x_bits=8) for linear in (up, down)]
    return nn.Sequential(OrderedDict(up=layers[0], act=nn.GELU(), down=layers[1])).to(device)


def _mlp_oracle(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """float64 MLP through the weights the quantized layers stand for (their activations unrounded)."""
    out = x.double().cpu()
    for layer in (model.up, model.down):
        out = out @ layer.dequantized_weight().double().cpu().T + layer.bias.double().cpu()
        if layer is model.up:
            out = F.gelu(out)
    return out


def check_tensor_parallel_mlp(device) -> None:
    world, rank = dist.get_world_size(), dist.get_rank()
    mesh = init_device_mesh(device.type, (world,))
    for kind, dtype in [("int8", torch.float32), ("int8", torch.bfloat16), ("bipolar", torch.float32)]:
        model = _quantized_mlp(kind, device)
        x = torch.randn(2, 5, 24, device=device)
        x[..., 7] *= 20  # an outlier column of the up-projection's input
        x = x.to(dtype)
        with torch.no_grad():
            unsharded = model(x)
            sharded_model = parallelize_module(copy.deepcopy(model), mesh, {
                "up": mlx_distributed.QuantizedColwiseParallel(), "down": mlx_distributed.QuantizedRowwiseParallel()})
            out = sharded_model(x)
        hidden = mlx_distributed.shard_range(37)
        assert sharded_model.up.out_features == sharded_model.down.in_features == len(hidden)
        assert (sharded_model.down.bias is not None) == (rank == 0)
        assert out.dtype == dtype and out.shape == unsharded.shape
        # DESIGN.md's rule with the unsharded layer as the reference: the float64 oracle is the MLP
        # of the dequantized weights, which both approximate (rounding the activations).
        assert_close_to_oracle(out.cpu(), _mlp_oracle(model, x), unsharded.cpu(), atol=1e-6)
        _same_on_every_rank(out)

        if dtype == torch.float32:  # x's gradient crosses the ranks as with torch's styles
            x_sharded, x_unsharded = x.clone().requires_grad_(), x.clone().requires_grad_()
            sharded_model(x_sharded).sum().backward()
            model(x_unsharded).sum().backward()
            torch.testing.assert_close(x_sharded.grad, x_unsharded.grad)

        # Column-parallel alone (output gathered): on the CPU every column is computed as the unsharded
        # layer computes it (on CUDA the GEMM's tiling, chosen by N, may round its 16-bit outlier part apart).
        up = parallelize_module(copy.deepcopy(model.up), mesh,
                                mlx_distributed.QuantizedColwiseParallel(output_layouts=Replicate()))
        with torch.no_grad():
            torch.testing.assert_close(up(x), model.up(x), **EXACT_ON_CPU[device.type])

        # Row-parallel alone, given the whole input (each rank takes its slice of it).
        down = parallelize_module(copy.deepcopy(model.down), mesh,
                                  mlx_distributed.QuantizedRowwiseParallel(input_layouts=Replicate()))
        with torch.no_grad():
            hidden_x = model.act(model.up(x))
            oracle = hidden_x.double().cpu() @ model.down.dequantized_weight().double().cpu().T
            assert_close_to_oracle(down(hidden_x).cpu(), oracle + model.down.bias.double().cpu(),
                                   model.down(hidden_x).cpu(), atol=1e-6)


def check_sequence_parallel_attention(device) -> None:
    # (dtype, (Hq, Hkv), prefix length, ragged suffixes, scale): 13 keys split unevenly; 1 key leaves
    # ranks without any; P = 0 leaves every rank without.
    cases = [(torch.float32, (4, 2), 13, True, None), (torch.bfloat16, (8, 1), 1, True, None),
             (torch.float32, (2, 2), 0, True, None), (torch.float32, (4, 1), 6, False, 0.3)]
    for dtype, heads, prefix, ragged, scale in cases:
        torch.manual_seed(1)
        batch, seq_q, suffix, head_dim = 3, 4, 6, 16
        q = torch.randn(batch, seq_q, heads[0], head_dim, device=device, dtype=dtype)
        prefix_k, prefix_v = (torch.randn(prefix, heads[1], head_dim, device=device, dtype=dtype) for _ in range(2))
        suffix_k, suffix_v = (torch.randn(batch, suffix, heads[1], head_dim, device=device, dtype=dtype)
                              for _ in range(2))
        # Ragged: an empty suffix (with P = 0 its queries see nothing: zeros), one shorter than Sq, a full one.
        lens = torch.tensor([0, 2, suffix], dtype=torch.int32, device=device) if ragged else None
        keys = mlx_distributed.shard_range(prefix)
        out = mlx_distributed.sequence_parallel_shared_prefix_attention(
            q, prefix_k[keys.start:keys.stop], prefix_v[keys.start:keys.stop], suffix_k, suffix_v, lens, scale)
        args = (q, prefix_k, prefix_v, suffix_k, suffix_v, lens, scale)
        assert out.dtype == dtype and out.shape == q.shape
        oracle = oracles.shared_prefix_attention(*args)
        assert_close_to_oracle(out.cpu(), oracle, oracles.shared_prefix_attention(*args, dtype=dtype), atol=1e-6)
        # And as accurate as the one-process op (the parts are rounded to q's dtype before the merge, so
        # 16-bit results may differ from it in the last bit).
        assert_close_to_oracle(out.cpu(), oracle, mlx_kernels.shared_prefix_attention(*args).cpu(), atol=1e-6)
        _same_on_every_rank(out)


def check_row_parallel_sparse(device) -> None:
    rank = dist.get_rank()

    def same(ours, single):
        torch.testing.assert_close(ours, single, **EXACT_ON_CPU[device.type])

    for m in (37, 3):  # 3 rows leave the fourth of 4 ranks without any
        torch.manual_seed(2)
        a = torch.randn(m, 29, device=device) * (torch.rand(m, 29, device=device) < 0.2)
        b = torch.randn(29, 5, device=device)
        rows = mlx_distributed.shard_range(m)
        for reorder in (False, True):
            a_rows = mlx_kernels.BlockSparseMatrix.from_dense(a[rows.start:rows.stop], block=(4, 4), reorder=reorder)
            single = mlx_kernels.BlockSparseMatrix.from_dense(a, block=(4, 4), reorder=reorder)
            same(mlx_distributed.row_parallel_spmm(a_rows, b), single @ b)
            same(mlx_distributed.row_parallel_spmm(a_rows, b if rank == 0 else None, src=0), single @ b)
            same(mlx_distributed.row_parallel_spmm(a_rows, b[:, 0]), single @ b[:, 0])

        b_csr = (torch.randn(29, 23, device=device) * (torch.rand(29, 23, device=device) < 0.3)).to_sparse_csr()
        single = mlx_kernels.spgemm(a.to_sparse_csr(), b_csr)
        for src in (None, 0):
            b_here = b_csr if src is None or rank == src else None
            ours = mlx_distributed.row_parallel_spgemm(a[rows.start:rows.stop].to_sparse_csr(), b_here, src=src)
            assert ours.layout == torch.sparse_csr and ours.shape == single.shape
            assert torch.equal(ours.crow_indices(), single.crow_indices())
            assert torch.equal(ours.col_indices(), single.col_indices())
            same(ours.values(), single.values())

    if device.type == "cpu":  # scipy matrices live on the CPU (gloo)
        a_sp = scipy.sparse.random(37, 29, density=0.2, random_state=3, format="csr")
        b_sp = scipy.sparse.random(29, 23, density=0.2, random_state=4, format="csr")
        rows = mlx_distributed.shard_range(37)
        single = mlx_kernels.spgemm(a_sp, b_sp)
        for src in (None, 1):
            b_here = b_sp if src is None or rank == src else None
            ours = mlx_distributed.row_parallel_spgemm(a_sp[rows.start:rows.stop], b_here, src=src)
            assert isinstance(ours, scipy.sparse.csr_matrix) and ours.shape == single.shape
            assert (ours.indptr == single.indptr).all() and (ours.indices == single.indices).all()
            assert (ours.data == single.data).all()


CHECKS = (check_tensor_parallel_mlp, check_sequence_parallel_attention, check_row_parallel_sparse)


def _rank_main(rank: int, world: int, init_method: str, backend: str) -> None:
    torch.set_num_threads(1)  # 2 to 4 ranks share CI's 2 cores
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        for check in CHECKS:
            check(device)
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _ranks_without_fake_gpu():
    """The ranks run the real kernels of their device: the fake GPU of MLX_FAKE_CUDA / MLX_EMU (installed by
    conftest, which the ranks import with this file) belongs to the test process, not to them."""
    saved = {name: os.environ.pop(name) for name in ("MLX_FAKE_CUDA", "MLX_EMU") if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _run_ranks(world: int, backend: str, tmp_path) -> None:
    with _ranks_without_fake_gpu():
        # The ranks fork from one server process that imported torch and this package once (forkserver),
        # instead of each importing them afresh (spawn: ~3 s of CPU per rank, most of this file's time on
        # CI's 2 cores). The server starts on the first call, without the fake GPU. Installed modules only:
        # before Python 3.12 the server does not get this process's sys.path (with the tests' folder).
        mp.get_context("forkserver").set_forkserver_preload(
            ["torch", "torch.distributed.tensor.parallel", "scipy.sparse", "mlx_kernels"])
        context = mp.start_processes(_rank_main, args=(world, f"file://{tmp_path / 'rendezvous'}", backend),
                                     nprocs=world, join=False, start_method="forkserver")
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        while not context.join(timeout=1.0):  # raises with the rank's traceback when one fails
            if time.monotonic() > deadline:
                pytest.fail(f"{world} {backend} ranks still running after {JOIN_TIMEOUT_S} s: a hang")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_cpu(world, tmp_path):
    _run_ranks(world, "gloo", tmp_path)


# conftest's requires_cuda also runs under MLX_FAKE_CUDA / MLX_EMU, whose fake GPU is one CPU device: NCCL
# needs two real ones.
TWO_GPUS = (not FAKE_CUDA and mlx_kernels.WITH_CUDA and torch.cuda.is_available() and torch.cuda.device_count() >= 2
            and dist.is_nccl_available())


@pytest.mark.cuda
@pytest.mark.skipif(not TWO_GPUS, reason="needs 2 real GPUs, a CUDA build and NCCL")
def test_distributed_nccl(tmp_path):
    _run_ranks(2, "nccl", tmp_path)
