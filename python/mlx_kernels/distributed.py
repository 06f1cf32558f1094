"""The kernels across processes, through ``torch.distributed`` alone (no communication layer of our own).

``import mlx_kernels.distributed`` (explicitly: ``import mlx_kernels`` does not load torch.distributed).
Every function here is a collective: call it on every rank of the process group.

- Tensor parallelism for the quantized linears: :class:`QuantizedColwiseParallel` and
  :class:`QuantizedRowwiseParallel`, styles for ``torch.distributed.tensor.parallel.parallelize_module``
  that shard ``Int8Linear`` and ``BipolarLinear`` (and hand ``nn.Linear`` / ``nn.Embedding`` to torch's own
  ``ColwiseParallel`` / ``RowwiseParallel``, which they extend).
- Sequence parallelism for shared-prefix attention: :func:`sequence_parallel_shared_prefix_attention`, the
  prefix's keys split across ranks and the partial attentions merged by their log-sum-exp.
- Row-partitioned sparse products: :func:`row_parallel_spmm` (``BlockSparseMatrix @ b``) and
  :func:`row_parallel_spgemm` (sparse @ sparse): each rank multiplies its rows of A, the rows are gathered.
- :func:`shard_range`: the part of an axis a rank owns, by DTensor's ``Shard`` rule.

Gradients: the sharded linears' input gradient crosses the ranks as with torch's own styles (DTensor
redistributions at the module boundary); the attention and the sparse products are forward only.
"""

from __future__ import annotations

from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel
from torch.distributed.tensor.placement_types import Placement

from . import ops
from .attention import _merged_with_suffix, attention_with_lse
from .bipolar import BipolarLinear
from .bsr import BlockSparseMatrix
from .int8 import Int8Linear
from .spgemm import _as_csr, _is_scipy_sparse, spgemm

__all__ = [
    "QuantizedColwiseParallel",
    "QuantizedRowwiseParallel",
    "sequence_parallel_shared_prefix_attention",
    "row_parallel_spmm",
    "row_parallel_spgemm",
    "shard_range",
]


def shard_range(size: int, group: Optional[ProcessGroup] = None) -> range:
    """The indices of an axis of ``size`` that this rank of ``group`` owns, by DTensor's ``Shard`` rule:
    chunks of ceil(size / world) in rank order, the last ones shorter or empty (10 over 4 ranks: 3, 3, 3, 1;
    3 over 4 ranks: 1, 1, 1, 0). The tensor-parallel styles split the weights this way."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    chunk = -(-size // world)
    start = min(rank * chunk, size)
    return range(start, min(start + chunk, size))


# --- tensor parallelism for Int8Linear / BipolarLinear -----------------------------------------
#
# torch's ColwiseParallel / RowwiseParallel refuse any module but nn.Linear and nn.Embedding, and their
# partitioning wraps every parameter in a DTensor the module's forward would then hand to our ops, which
# have no DTensor sharding rules (and need none). So the styles below keep torch's interface (input_layouts,
# output_layouts, use_local_output, src_data_rank) and its DTensor redistributions at the module boundary,
# but shard the quantized state themselves into plain local tensors: the module then runs its usual forward
# on this rank's shard, and hooks turn the input into that shard's layout and the output back into
# DTensor's. Each rank's state_dict holds its own shard (as Megatron-LM's does).


def _check_mesh(style: str, module: nn.Module, mesh: DeviceMesh) -> None:
    if mesh.ndim != 1:
        raise ValueError(f"{style}: tensor parallelism shards over a 1-D mesh, got a {mesh.ndim}-D mesh")
    if getattr(module, "_distribute_module_applied", False):
        raise RuntimeError(f"{style}: this {type(module).__name__} is already parallelized (sharding it again "
                           "would split its shard)")
    module._distribute_module_applied = True  # the guard torch's distribute_module sets


def _local_part(tensor: Tensor, placement: Placement, mesh: DeviceMesh, src_data_rank: Optional[int]) -> Tensor:
    """This rank's part of ``tensor`` under ``placement``: DTensor's own split (of src_data_rank's copy,
    or of each rank's own when it is None), as a plain contiguous tensor."""
    return distribute_tensor(tensor.detach(), mesh, [placement], src_data_rank=src_data_rank).to_local().contiguous()


def _set_local(module: nn.Module, name: str, value: Optional[Tensor]) -> None:
    """Replace a parameter or buffer, keeping a parameter a parameter (and its requires_grad)."""
    old = getattr(module, name)
    if isinstance(old, nn.Parameter) and value is not None:
        value = nn.Parameter(value, requires_grad=old.requires_grad)
    setattr(module, name, value)


def _contiguous_stride(shape: Sequence[int]) -> Tuple[int, ...]:
    stride, step = [], 1
    for size in reversed(shape):
        stride.append(step)
        step *= max(size, 1)
    return tuple(reversed(stride))


def _dtensor(local: Tensor, mesh: DeviceMesh, placements: Tuple[Placement, ...],
             shape: Optional[Sequence[int]]) -> DTensor:
    """``DTensor.from_local`` with the global shape given: shards may be uneven (DTensor would assume even)."""
    if shape is None:
        return DTensor.from_local(local, mesh, placements, run_check=False)
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=torch.Size(shape),
                              stride=_contiguous_stride(shape))


def _input_to_local(mesh: DeviceMesh, given: Tuple[Placement, ...], wanted: Tuple[Placement, ...],
                    grad_placements: Optional[Tuple[Placement, ...]], in_features: int, module: nn.Module,
                    args: tuple) -> tuple:
    """Forward pre-hook: x (a plain tensor laid out as ``given``, or a DTensor) as this rank's part of the
    layout the shard multiplies (``wanted``). It goes through a DTensor even when nothing moves, so that
    its gradient is redistributed as torch's styles redistribute it (``grad_placements``: what this
    rank's gradient of its part is, e.g. a partial sum)."""
    x = args[0]
    if not isinstance(x, DTensor):
        placement = given[0]
        if isinstance(placement, Replicate):
            shape = x.shape
        elif isinstance(placement, Shard) and placement.dim in (-1, x.dim() - 1):
            shape = (*x.shape[:-1], in_features)
        else:
            shape = None  # sharded along another axis: its global size is unknown here, DTensor's even split
        x = _dtensor(x, mesh, given, shape)
    return (x.redistribute(placements=wanted).to_local(grad_placements=grad_placements), *args[1:])


def _to_output(result: DTensor, layouts: Tuple[Placement, ...], use_local_output: bool):
    result = result.redistribute(placements=layouts)
    return result.to_local() if use_local_output else result


def _columns_output(mesh: DeviceMesh, layouts: Tuple[Placement, ...], use_local_output: bool, out_features: int,
                    module: nn.Module, args: tuple, out: Tensor):
    """Forward hook of a column shard: its output features, redistributed to ``layouts``."""
    columns = _dtensor(out, mesh, (Shard(out.dim() - 1),), (*out.shape[:-1], out_features))
    return _to_output(columns, layouts, use_local_output)


def _partial_output(mesh: DeviceMesh, layouts: Tuple[Placement, ...], use_local_output: bool, module: nn.Module,
                    args: tuple, out: Tensor):
    """Forward hook of a row shard: its summand of the output, summed into ``layouts``."""
    return _to_output(_dtensor(out, mesh, (Partial(),), out.shape), layouts, use_local_output)


class QuantizedColwiseParallel(ColwiseParallel):
    """``ColwiseParallel`` (same arguments) for ``Int8Linear`` and ``BipolarLinear`` too: each rank keeps
    its chunk of the output features — the int8 weight rows with their ``weight_absmax`` (or the
    bit-planes' rows with their ``w_scale``) and the bias — and multiplies the whole (replicated) input.

    The input is quantized on every rank exactly as the unsharded layer quantizes it (same row absmax,
    same LLM.int8 outlier columns), so each output column is computed as the unsharded layer computes it
    (bitwise on the CPU; on CUDA the GEMM picks its tiling by N, which may round the 16-bit part apart).
    ``nn.Linear`` and ``nn.Embedding`` go to torch's ``ColwiseParallel``.
    """

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if not isinstance(module, (Int8Linear, BipolarLinear)):
            return super()._apply(module, device_mesh)
        _check_mesh(type(self).__name__, module, device_mesh)
        part = partial(_local_part, mesh=device_mesh, src_data_rank=self.src_data_rank)
        out_features = module.out_features
        if isinstance(module, Int8Linear):
            _set_local(module, "weight", part(module.weight, Shard(0)))
            _set_local(module, "weight_absmax", part(module.weight_absmax, Shard(0)))
            module.out_features = module.weight.shape[0]
        else:
            _set_local(module, "w_planes", part(module.w_planes, Shard(1)))  # [bits, N, words]: rows are dim 1
            _set_local(module, "w_scale", part(module.w_scale, Shard(0)))
            module.out_features = module.w_scale.shape[0]
        if module.bias is not None:
            _set_local(module, "bias", part(module.bias, Shard(0)))
        # Every rank multiplies the whole x by its columns: its gradient of x is a partial sum.
        module.register_forward_pre_hook(partial(
            _input_to_local, device_mesh, self.input_layouts, self.desired_input_layouts, (Partial(),),
            module.in_features))
        module.register_forward_hook(partial(
            _columns_output, device_mesh, self.output_layouts, self.use_local_output, out_features))
        return module


class QuantizedRowwiseParallel(RowwiseParallel):
    """``RowwiseParallel`` (same arguments) for ``Int8Linear`` and ``BipolarLinear`` too: each rank keeps
    its chunk of the input features (of every weight row; the bit-planes are unpacked, split and packed
    again, so any split works, not only multiples of 32), the whole ``weight_absmax`` / ``w_scale``, and
    multiplies its chunk of the input; the partial outputs are summed by DTensor (an all-reduce for the
    default replicated output). The bias is added once: only the mesh's first rank keeps it.

    Not bit-identical to the unsharded layer, within DESIGN.md's tolerance rule of it: each rank quantizes
    its slice of every input row with that slice's own absmax (a finer scale than the whole row's), and
    16-bit outputs are rounded per rank before the sum. LLM.int8 outliers are decided per shard, but an
    outlier is a column property (any |x| in the column above the threshold), so the outlier columns are
    the same ones the unsharded layer finds, each handled by the rank that owns it.
    ``nn.Linear`` and ``nn.Embedding`` go to torch's ``RowwiseParallel``.
    """

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if not isinstance(module, (Int8Linear, BipolarLinear)):
            return super()._apply(module, device_mesh)
        _check_mesh(type(self).__name__, module, device_mesh)
        part = partial(_local_part, mesh=device_mesh, src_data_rank=self.src_data_rank)
        in_features = module.in_features
        if isinstance(module, Int8Linear):
            _set_local(module, "weight", part(module.weight, Shard(1)))
            _set_local(module, "weight_absmax", part(module.weight_absmax, Replicate()))
            module.in_features = module.weight.shape[1]
        else:
            levels = part(ops.bipolar_unpack(module.w_planes, in_features), Shard(1))
            _set_local(module, "w_planes", ops.bipolar_pack(levels, module.w_bits))
            _set_local(module, "w_scale", part(module.w_scale, Replicate()))
            module.in_features = levels.shape[1]
        if module.bias is not None:
            bias = part(module.bias, Replicate())  # src_data_rank's bias, wherever it is
            _set_local(module, "bias", bias if device_mesh.get_local_rank() == 0 else None)
        # RowwiseParallel sets the layout it multiplies in its own _apply, which this one replaces.
        self.desired_input_layouts = (Shard(-1),)
        module.register_forward_pre_hook(partial(
            _input_to_local, device_mesh, self.input_layouts, self.desired_input_layouts, None, in_features))
        module.register_forward_hook(partial(
            _partial_output, device_mesh, self.output_layouts, self.use_local_output))
        return module


# --- sequence-parallel shared-prefix attention --------------------------------------------------


def sequence_parallel_shared_prefix_attention(
    q: Tensor,
    prefix_k: Tensor,
    prefix_v: Tensor,
    suffix_k: Tensor,
    suffix_v: Tensor,
    suffix_lens: Optional[Tensor] = None,
    scale: Optional[float] = None,
    *,
    group: Optional[ProcessGroup] = None,
) -> Tensor:
    """``shared_prefix_attention`` with the shared prefix's keys split across the ranks of ``group``.

    Args: as :func:`mlx_kernels.shared_prefix_attention`, except that ``prefix_k`` / ``prefix_v``
    [P_r, Hkv, D] are this rank's keys of the prefix — any split of the prefix's keys into disjoint
    parts, one per rank (e.g. the keys ``shard_range(P)``), uneven or empty. ``q``, the suffixes,
    ``suffix_lens`` and ``scale`` are the same on every rank.

    Each rank attends all B·Sq queries to its prefix keys (one ``attention_with_lse``, batched across
    sequences as in Hydragen), the ranks all-gather those partial (out, lse) pairs (one collective), and
    every rank merges them in rank order with its own suffix attention (computed on every rank: it needs
    no communication) by ``merge_attention_states``, in fp32, rounding once at the end. Returns
    [B, Sq, Hq, D] in q's dtype, the same on every rank: the softmax over the whole prefix and the
    visible suffix, as ``shared_prefix_attention`` computes it in one process (within its tolerance:
    the parts are rounded to q's dtype before the merge). Not differentiable across ranks.
    """
    batch, seq_q, heads_q, head_dim = q.shape
    rows, value_dim = batch * seq_q, prefix_v.shape[-1]
    prefix_out, prefix_lse = attention_with_lse(q.reshape(1, rows, heads_q, head_dim), prefix_k[None],
                                                prefix_v[None], scale=scale)
    # One buffer, one all-gather: the partial output (in fp32, the LSE's dtype), then the LSE.
    local = torch.cat([prefix_out.float().flatten(), prefix_lse.flatten()])
    values = rows * heads_q * value_dim
    parts = ((part[:values].view(batch, seq_q, heads_q, value_dim),
              part[values:].view(heads_q, batch, seq_q).transpose(0, 1)) for part in _all_gather_equal(local, group))
    return _merged_with_suffix(q, parts, suffix_k, suffix_v, suffix_lens, scale)


# --- row-partitioned sparse products --------------------------------------------------------------


def row_parallel_spmm(a_rows: BlockSparseMatrix, b: Optional[Tensor], *, group: Optional[ProcessGroup] = None,
                      src: Optional[int] = None) -> Tensor:
    """C = A @ B with A's rows split across the ranks of ``group``.

    Args:
        a_rows: this rank's block of consecutive rows of A [m, k], as a ``BlockSparseMatrix`` [m_r, k]
            (blocks in rank order: rank 0 the first rows; any sizes, 0 included; e.g. the rows
            ``shard_range(m)``). Each rank may block and reorder its rows as it likes.
        b: B [k, n] or [k] (dense), the same on every rank; or, with ``src``, only on the global rank
            ``src`` (the others pass None), which broadcasts it.

    Returns C [m, n] (or [m]) on every rank: each rank's ``a_rows @ b`` gathered in rank order. On the CPU
    it is bitwise the one-process product (the CPU kernel sums each row's non-zeros in column order,
    however the rows are blocked); on CUDA, where blocks go through tensor cores, within rounding of it.
    """
    if src is not None:
        b = _broadcast_operand(b, src, group, a_rows.device)
    return _all_gather_rows(a_rows @ b, group)


def row_parallel_spgemm(a_rows, b, *, group: Optional[ProcessGroup] = None, src: Optional[int] = None,
                        drop_zeros: bool = False):
    """C = A @ B for sparse A and B (``mlx_kernels.spgemm``) with A's rows split across the ranks of ``group``.

    Args:
        a_rows: this rank's block of consecutive rows of A [m, k] (blocks in rank order, any sizes, 0
            included): a torch sparse matrix (any layout ``spgemm`` takes) or a scipy sparse matrix
            (its result is gathered as CPU tensors: a CPU backend such as gloo; NCCL gathers only
            CUDA tensors).
        b: B [k, n] of the same kind, the same on every rank; or, with ``src``, only on the global rank
            ``src`` (the others pass None), which broadcasts it (torch: as CSR arrays through the
            backend; scipy: pickled, it lives on the CPU).
        drop_zeros: as in ``spgemm``.

    Returns C [m, n] on every rank, CSR (``torch.sparse_csr`` or ``scipy.sparse.csr_matrix``, as the
    inputs): the ranks' row blocks of C stacked in rank order. SpGEMM computes every row of C from that
    row of A alone, so C is what one process computes (the CUDA kernel's float atomics aside).
    """
    if src is not None:
        b = _broadcast_operand(b, src, group, None if _is_scipy_sparse(a_rows) else a_rows.device)
    c = spgemm(a_rows, b, drop_zeros=drop_zeros)
    scipy_result = _is_scipy_sparse(c)
    if scipy_result:
        crow, col, val = (torch.from_numpy(array) for array in (c.indptr, c.indices, c.data))
    else:
        crow, col, val = c.crow_indices(), c.col_indices(), c.values()
    row_nnz = _all_gather_rows(crow.diff(), group)
    col, val = _all_gather_rows(col, group), _all_gather_rows(val, group)
    crow = torch.cat([row_nnz.new_zeros(1), row_nnz.cumsum(0)]).to(crow.dtype)
    shape = (row_nnz.numel(), c.shape[1])
    if not scipy_result:
        return torch.sparse_csr_tensor(crow, col, val, size=shape)
    import scipy.sparse as sp

    out = sp.csr_matrix((val.numpy(), col.numpy(), crow.numpy()), shape=shape)
    out.has_sorted_indices = True
    return out


# --- collectives ------------------------------------------------------------------------------------


def _all_gather_equal(local: Tensor, group: Optional[ProcessGroup]) -> List[Tensor]:
    """Every rank's ``local`` (all of one shape), in rank order."""
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    if local.numel():  # every rank has the same shape, so every rank skips an empty gather together
        dist.all_gather(parts, local.contiguous(), group=group)
    return parts


def _all_gather_rows(local: Tensor, group: Optional[ProcessGroup]) -> Tensor:
    """Every rank's ``local`` concatenated along dim 0 in rank order; the ranks' row counts may differ
    (the backends gather equal sizes: the counts go first, then the rows padded to the longest)."""
    counts = _all_gather_equal(torch.tensor([local.shape[0]], dtype=torch.int64, device=local.device), group)
    counts = [int(count) for count in counts]
    padded = local.new_zeros((max(counts), *local.shape[1:]))
    padded[:local.shape[0]] = local
    parts = _all_gather_equal(padded, group)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def _broadcast_operand(b, src: int, group: Optional[ProcessGroup], device: Optional[torch.device]):
    """B from the global rank ``src`` (the other ranks pass None): a dense tensor or a torch sparse matrix
    (sent as CSR arrays through the backend, arriving on ``device``), or a scipy sparse matrix (pickled)."""
    is_src = dist.get_rank() == src
    kind, payload, tensors = None, None, []
    if is_src:
        if _is_scipy_sparse(b):
            kind, payload = "scipy", b
        elif b.layout == torch.strided:
            kind, tensors = "dense", [b.contiguous()]
        else:
            b = _as_csr(b, "b")
            kind, payload, tensors = "csr", tuple(b.shape), [b.crow_indices(), b.col_indices(), b.values()]
    header = [(kind, payload, [(tuple(t.shape), t.dtype) for t in tensors])]
    dist.broadcast_object_list(header, src=src, group=group)
    kind, payload, specs = header[0]
    if not is_src:
        tensors = [torch.empty(shape, dtype=dtype, device=device) for shape, dtype in specs]
    for tensor in tensors:
        if tensor.numel():  # the shapes are known everywhere now: every rank skips an empty one together
            dist.broadcast(tensor, src=src, group=group)
    if kind == "scipy":
        return payload
    if kind == "dense":
        return tensors[0]
    return torch.sparse_csr_tensor(*tensors, size=payload)
