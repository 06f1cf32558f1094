"""Block-sparse matrices for tensor-core SpMM (SMaT).

``BlockSparseMatrix`` holds a sparse A [m, k] in BCSR (torch sparse_bsr
conventions: ``crow``, ``col``, ``blocks`` [nblocks, br, bc]) plus an optional
row permutation: with ``reorder=True`` the rows of A are first regrouped so rows
with similar column patterns share block rows (fewer, denser blocks), and
``a @ b`` undoes the permutation inside the kernel's output store.

Construction (reordering and blocking) runs on the CPU in C++; the result is
moved back to the input's device. A matrix built from raw BCSR tensors has its
index values checked once, when it is built; ``a @ b`` then skips those checks
(``bsr_spmm_unchecked``), which on CUDA would cost a device sync per product.

On the CPU a zero inside a block costs as much as any value (no tensor cores
make the padding free), so a CPU-resident matrix also keeps its blocks packed as
bit maps, row by row: for each row, one word per block of its block row holding
a non-zero in that row (the block's index and a bit per non-zero column), then
the row's non-zeros. ``a @ b`` on the CPU multiplies those
(``bsr_spmm_packed``): the same blocks and B tiles, without reading the padding,
which at the 1-5% fill of real sparse matrices is 20-100x the non-zeros, and in
row order, so each output row is summed in registers in one pass.

Autograd. ``bsr_spmm`` and ``bsr_spmm_unchecked`` are differentiable w.r.t.
``blocks`` and ``b`` (registered with ``torch.library.register_autograd``):
d/db = Aᵀ · g is a block-sparse product on the BCSR of the stored matrix's
transpose (blocks transposed, row_perm turned into a gather of g's rows), and
d/dblocks = (g · bᵀ) at the stored blocks is ``bsr_sddmm``; padding entries get
gradient 0. ``bsr_spmm_packed`` is a snapshot of the blocks for fast frozen
products and is not differentiable: ``a @ b`` takes the dense blocks whenever a
gradient is needed (b or ``a.blocks`` requires grad, grad mode on). To train A,
``a.requires_grad_()`` and hand ``a.blocks`` to an optimizer (see
``BlockSparseMatrix``).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import ops
from ._autograd import needs_grad, register_non_differentiable

Block = Tuple[int, int]

_VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --- autograd ---------------------------------------------------------------------------


def _transpose_structure(crow: Tensor, col: Tensor, k: int, bc: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The BCSR structure of Sᵀ, S [m, k] the stored matrix of (crow, col) with br × bc
    blocks: (tcrow [ceil(k / bc) + 1], tcol [nblocks], order [nblocks], int64) where block i
    of Sᵀ is block order[i] of S, transposed (bc × br). Index dtypes are kept. Torch ops
    only, no host sync on CUDA. Sᵀ's padding is S's: its rows past k are never stored and
    its columns past m never read."""
    block_rows, nblocks, block_cols = crow.numel() - 1, col.numel(), -(-k // bc)
    col64 = col.long()
    block_row = torch.repeat_interleave(torch.arange(block_rows, device=crow.device), crow.long().diff(),
                                        output_size=nblocks)
    order = torch.argsort(col64 * max(block_rows, 1) + block_row)
    counts = torch.zeros(block_cols, dtype=torch.int64, device=crow.device).index_add_(
        0, col64, torch.ones_like(col64))
    tcrow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return tcrow.to(crow.dtype), block_row[order].to(col.dtype), order


def _spmm_transposed(crow: Tensor, col: Tensor, blocks: Tensor, g: Tensor, k: int,
                     row_perm: Optional[Tensor]) -> Tensor:
    """Aᵀ @ g [k, n] for A [m, k] given as bsr_spmm's arguments (g [m, n]): Sᵀ @ g[row_perm]."""
    tcrow, tcol, order = _transpose_structure(crow, col, k, blocks.shape[2])
    g_stored = g if row_perm is None else g.index_select(0, row_perm)
    return ops.bsr_spmm_unchecked(tcrow, tcol, blocks.index_select(0, order).transpose(1, 2), g_stored, k)


def _bsr_spmm_setup_context(ctx, inputs, output):
    crow, col, blocks, b, m, row_perm = inputs
    _, _, need_blocks, need_b = needs_grad(ctx, 6)[:4]
    ctx.block, ctx.k = (blocks.shape[1], blocks.shape[2]), b.shape[0]
    # d/dblocks reads b, d/db reads the blocks.
    ctx.save_for_backward(crow, col, blocks if need_b else None, b if need_blocks else None, row_perm)


def _bsr_spmm_backward(ctx, grad):
    crow, col, blocks, b, row_perm = ctx.saved_tensors
    _, _, need_blocks, need_b = needs_grad(ctx, 6)[:4]
    grad_blocks = grad_b = None
    if need_blocks:
        grad_blocks = ops.bsr_sddmm_unchecked(crow, col, grad, b, *ctx.block, row_perm)
    if need_b:
        grad_b = _spmm_transposed(crow, col, blocks, grad, ctx.k, row_perm)
    return (None, None, grad_blocks, grad_b, None, None)[:len(ctx.needs_input_grad)]


for _op in ("bsr_spmm", "bsr_spmm_unchecked"):
    torch.library.register_autograd(ops._name(_op), _bsr_spmm_backward, setup_context=_bsr_spmm_setup_context)

register_non_differentiable(
    "bsr_spmm_packed", "it multiplies a snapshot of the blocks (BlockSparseMatrix's CPU form); BlockSparseMatrix "
    "routes products that need a gradient through bsr_spmm_unchecked, and bsr_spmm is differentiable")
register_non_differentiable("bsr_sddmm", "it is bsr_spmm's backward (no double backward)")
register_non_differentiable("bsr_sddmm_unchecked", "it is bsr_spmm's backward (no double backward)")
register_non_differentiable("bsr_from_csr", "it builds the BCSR structure; train BlockSparseMatrix.blocks instead")
register_non_differentiable("bsr_reorder_rows", "it returns a permutation (integers)")


class BlockSparseMatrix:
    """A sparse matrix A [m, k] in BCSR with br × bc dense blocks, for ``a @ b`` = A @ b.

    Build it with ``from_dense``, ``from_csr`` or ``from_scipy`` (each takes ``block=(br, bc)``,
    default 16 × 16, and ``reorder=True``: the SMaT row reordering that groups rows with similar
    column patterns so blocks get denser), or from raw BCSR tensors (checked once, here):

    Args:
        crow: [ceil(m / br) + 1] int32 or int64 block-row offsets (torch ``sparse_bsr`` conventions).
        col: [nblocks] block-column indices, crow's dtype.
        blocks: [nblocks, br, bc] fp16, bf16, fp32 or fp64 values, zero-padded past row m and
            column k (the padding is never read, whatever it holds).
        shape: (m, k).
        row_perm: optional int64 [m]: stored row r is A's row row_perm[r].
        nnz: the source matrix's stored entries (default: the non-zero block entries).

    All tensors live on one device (CPU or CUDA; ``.to(device)`` moves them together; on CUDA
    the indices are int32 when they fit). Attributes: ``crow``, ``col``, ``blocks``,
    ``row_perm``, ``shape``, ``nnz``; properties ``block``, ``nblocks``, ``fill``, ``dtype``,
    ``device``.

    Training: ``a.blocks`` is the matrix's one value tensor. ``a.requires_grad_()`` makes it a
    leaf that requires grad; ``a @ b`` then back-propagates into ``a.blocks.grad`` (every entry
    of the stored blocks, stored zeros included, so the block structure is the sparsity pattern;
    padding entries get 0) and into ``b``. Give ``[a.blocks]`` to an optimizer. On the CPU a
    frozen matrix multiplies a packed snapshot of its non-zeros; it is not used while a gradient
    is needed, and is rebuilt when the blocks change (their version counter moves) before an
    eager product and by ``requires_grad_``. Code compiled by torch.compile cannot see the
    version counter: after editing a frozen matrix's blocks in place, call
    ``a.requires_grad_(False)`` (or one eager product) before the compiled code runs.
    """

    def __init__(self, crow: Tensor, col: Tensor, blocks: Tensor, shape: Tuple[int, int],
                 row_perm: Optional[Tensor] = None, nnz: Optional[int] = None, *, _checked: bool = False):
        m, k = shape
        if not _checked:
            # A product with no columns runs every check of bsr_spmm (dtypes, shapes and index
            # values) and no arithmetic. Its errors name the arguments given here.
            try:
                with torch.no_grad():
                    ops.bsr_spmm(crow, col, blocks, blocks.new_empty((int(k), 0)), int(m), row_perm)
            except RuntimeError as e:
                raise RuntimeError(f"BlockSparseMatrix(crow, col, blocks, shape={tuple(shape)}, row_perm): "
                                   f"invalid BCSR arguments: {e}") from None
        self.crow, self.col, self.blocks = crow, col, blocks
        self.shape = (int(m), int(k))
        self.row_perm = row_perm
        # Stored non-zeros of the source matrix (defaults to the non-zero block entries).
        self.nnz = int(nnz) if nnz is not None else int(torch.count_nonzero(blocks))
        self._packed = None
        self._packed_version = -1
        self._pack()

    # --- constructors -----------------------------------------------------------------

    @classmethod
    def from_csr(cls, a: Tensor, block: Block = (16, 16), reorder: bool = True) -> "BlockSparseMatrix":
        """From a torch ``sparse_csr`` tensor [m, k]; values keep their dtype."""
        if a.layout != torch.sparse_csr:
            raise ValueError(f"BlockSparseMatrix.from_csr: expected a sparse_csr tensor, got layout {a.layout}")
        if a.dim() != 2:
            raise ValueError(f"BlockSparseMatrix.from_csr: expected a 2-D matrix, got shape {tuple(a.shape)}")
        return cls._from_csr_parts(a.crow_indices(), a.col_indices(), a.values(), tuple(a.shape), block, reorder,
                                   a.device)

    @classmethod
    def from_dense(cls, a: Tensor, block: Block = (16, 16), reorder: bool = True) -> "BlockSparseMatrix":
        """From a dense [m, k] tensor; its zeros are not stored."""
        if a.dim() != 2:
            raise ValueError(f"BlockSparseMatrix.from_dense: expected a 2-D matrix, got shape {tuple(a.shape)}")
        csr = a.detach().cpu().to_sparse_csr()
        return cls._from_csr_parts(csr.crow_indices(), csr.col_indices(), csr.values(), tuple(a.shape), block,
                                   reorder, a.device)

    @classmethod
    def from_scipy(cls, a, block: Block = (16, 16), reorder: bool = True) -> "BlockSparseMatrix":
        """From any scipy.sparse matrix/array (duplicates summed); values keep their dtype."""
        csr = a.tocsr()
        crow = torch.from_numpy(csr.indptr.astype("int64"))
        col = torch.from_numpy(csr.indices.astype("int64"))
        values = torch.from_numpy(csr.data.copy())
        return cls._from_csr_parts(crow, col, values, csr.shape, block, reorder, torch.device("cpu"))

    @classmethod
    def _from_csr_parts(cls, crow: Tensor, col: Tensor, values: Tensor, shape, block: Block, reorder: bool,
                        device: torch.device) -> "BlockSparseMatrix":
        br, bc = (int(block[0]), int(block[1]))
        if br < 1 or bc < 1:
            raise ValueError(f"BlockSparseMatrix: block shape must be positive, got {block}")
        m, k = int(shape[0]), int(shape[1])
        crow, col, values = crow.cpu().to(torch.int64), col.cpu().to(torch.int64), values.cpu()
        perm = ops.bsr_reorder_rows(crow, col, k, br, bc) if reorder else None
        if perm is not None and torch.equal(perm, torch.arange(m)):
            perm = None  # the original order was already the best one: no gather at all
        bcrow, bcol, blocks = ops.bsr_from_csr(crow, col, values, k, br, bc, perm)
        nnz = int(torch.count_nonzero(values))
        index_dtype = _index_dtype(device, bcol.numel(), k, bc)
        return cls(bcrow.to(device, index_dtype), bcol.to(device, index_dtype), blocks.to(device), (m, k),
                   None if perm is None else perm.to(device), nnz, _checked=True)

    # --- properties -------------------------------------------------------------------

    @property
    def block(self) -> Block:
        return (int(self.blocks.shape[1]), int(self.blocks.shape[2]))

    @property
    def nblocks(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def fill(self) -> float:
        """Non-zeros over stored block entries (1.0 = every stored entry is used)."""
        stored = self.blocks.numel()
        return self.nnz / stored if stored else 1.0

    @property
    def dtype(self) -> torch.dtype:
        return self.blocks.dtype

    @property
    def device(self) -> torch.device:
        return self.blocks.device

    def to(self, device) -> "BlockSparseMatrix":
        """A copy on ``device`` (indices, blocks and permutation move together). The blocks move
        with ``Tensor.to``: differentiable, so gradients of the copy reach a trainable source."""
        perm = None if self.row_perm is None else self.row_perm.to(device)
        index_dtype = _index_dtype(device, self.nblocks, self.shape[1], self.block[1])
        return BlockSparseMatrix(self.crow.to(device, index_dtype), self.col.to(device, index_dtype),
                                 self.blocks.to(device), self.shape, perm, self.nnz, _checked=True)

    @property
    def requires_grad(self) -> bool:
        return self.blocks.requires_grad

    def requires_grad_(self, requires_grad: bool = True) -> "BlockSparseMatrix":
        """Make ``blocks`` trainable (a leaf tensor requiring grad), or freeze it; returns self."""
        if requires_grad and not self.blocks.is_leaf:
            self.blocks = self.blocks.detach()
        self.blocks.requires_grad_(requires_grad)
        self._packed_version = -1  # the blocks may have been trained: repack for frozen products
        if not requires_grad:
            self._pack()
        return self

    def to_dense(self) -> Tensor:
        """A as a dense [m, k] tensor in the blocks' dtype, in A's original row order."""
        m, k = self.shape
        br, bc = self.block
        block_rows, block_cols = -(-m // br), -(-k // bc)
        counts = self.crow[1:] - self.crow[:-1]
        block_row_of = torch.repeat_interleave(torch.arange(block_rows, device=self.device), counts)
        tiles = self.blocks.new_zeros((block_rows, block_cols, br, bc))
        tiles[block_row_of, self.col.long()] = self.blocks
        stored = tiles.permute(0, 2, 1, 3).reshape(block_rows * br, block_cols * bc)[:m, :k]
        if self.row_perm is None:
            return stored
        dense = torch.empty_like(stored)
        dense[self.row_perm] = stored
        return dense

    # --- product ----------------------------------------------------------------------

    def __matmul__(self, b: Tensor) -> Tensor:
        return self.matmul(b)

    def matmul(self, b: Tensor) -> Tensor:
        """A @ b.

        Args:
            b: [k, n] or [k], on the matrix's device. Its dtype and the matrix's are promoted as
                ``torch.result_type`` does (e.g. an fp64 matrix times fp32 b gives fp64); the
                result must be fp16, bf16, fp32 or fp64.

        Returns:
            [m, n] (or [m]) in the promoted dtype, on the matrix's device, A's original row
            order. Differentiable w.r.t. ``b`` and ``self.blocks``.

        Inside torch.compile call ``a.matmul(b)``: dynamo does not route ``@`` on a non-tensor
        object."""
        if not isinstance(b, Tensor):
            raise TypeError(f"BlockSparseMatrix @ b: b must be a torch.Tensor, got {type(b).__name__}")
        vector = b.dim() == 1
        if vector:
            b = b.unsqueeze(1)
        if b.dim() != 2 or b.shape[0] != self.shape[1]:
            raise ValueError(f"BlockSparseMatrix @ b: A is {self.shape}, so b must be [{self.shape[1]}, n] "
                             f"(or [{self.shape[1]}]), got shape {tuple(b.shape)}")
        if b.device != self.device:
            raise ValueError(f"BlockSparseMatrix @ b: A is on {self.device}, b on {b.device}; move one of them "
                             f"(a.to(device) or b.to(device))")
        dtype = torch.promote_types(self.dtype, b.dtype)
        if dtype not in _VALUE_DTYPES:
            raise TypeError(f"BlockSparseMatrix @ b: A is {self.dtype} and b is {b.dtype}, whose promoted dtype "
                            f"{dtype} is not one of float16, bfloat16, float32, float64")
        b = b.to(dtype)
        blocks = self.blocks.to(dtype)
        needs_grad = torch.is_grad_enabled() and (b.requires_grad or blocks.requires_grad)
        packed = None if needs_grad or b.device.type != "cpu" else self._pack()
        if packed is not None:
            *structure, values = packed
            out = ops.bsr_spmm_packed(*structure, values.to(dtype), b, self.shape[0], *self.block, self.row_perm)
        else:
            out = ops.bsr_spmm_unchecked(self.crow, self.col, blocks, b, self.shape[0], self.row_perm)
        return out.squeeze(1) if vector else out

    def _pack(self) -> Optional[Tuple[Tensor, ...]]:
        """The packed CPU form of the current blocks (None off the CPU or for blocks over 64 wide),
        rebuilt when the blocks were changed in place or replaced since it was made."""
        if self.blocks.device.type != "cpu":
            return None
        if torch.compiler.is_compiling():
            # dynamo cannot guard on the version counter: compiled code multiplies the form
            # of the last eager product or requires_grad_ call.
            return self._packed if self._packed_version != -1 else None
        version = (id(self.blocks), self.blocks._version)
        if self._packed_version != version:
            with torch.no_grad():
                self._packed = _pack_rows(self.crow, self.col, self.blocks, self.shape)
            self._packed_version = version
        return self._packed

    def __repr__(self) -> str:
        return (f"BlockSparseMatrix(shape={self.shape}, block={self.block}, nblocks={self.nblocks}, "
                f"fill={self.fill:.3f}, reordered={self.row_perm is not None}, dtype={self.dtype}, "
                f"device={self.device})")


def _index_dtype(device, nblocks: int, k: int, bc: int) -> torch.dtype:
    """int32 indices on CUDA when they fit (crow counts blocks, col names one of
    ceil(k / bc) block columns): the kernels read int32 and would otherwise
    convert int64 indices on every product."""
    fits = max(nblocks, -(-k // bc)) < 2**31
    return torch.int32 if torch.device(device).type == "cuda" and fits else torch.int64


def _pack_rows(crow: Tensor, col: Tensor, blocks: Tensor, shape: Tuple[int, int]) -> Optional[Tuple[Tensor, ...]]:
    """The leading arguments of bsr_spmm_packed for this BCSR: (crow, col as int64, row_words,
    row_values, word_blocks, word_cols, values). Stored row s has one word per block of its
    block row with a non-zero in row s, in block order: word_blocks holds the block, bit c of
    word_cols marks column c of that block; values holds the non-zeros row by row, word by
    word, column by column; row_words / row_values [m + 1] are where each row's words / values
    begin. None when a block is taller or wider than 64 (one bit per column): the dense
    blocks then run. The structure must be valid (BlockSparseMatrix checks it first)."""
    m, k = shape
    nblocks, br, bc = blocks.shape
    if br > 64 or bc > 64:
        return None
    block_rows = -(-m // br)
    crow, col = crow.long(), col.long()
    rows = torch.repeat_interleave(torch.arange(block_rows), crow.diff())[:, None] * br + torch.arange(br)
    cols = col[:, None] * bc + torch.arange(bc)
    nonzero = blocks != 0  # [nblocks, br, bc], then without the padding past m or k (never read)
    nonzero &= (rows < m)[:, :, None]
    nonzero &= (cols < k)[:, None, :]
    j, r = nonzero.any(dim=2).nonzero(as_tuple=True)  # (block, row) of each word, block-major
    order = torch.argsort(rows[j, r] * max(nblocks, 1) + j)  # row-major, blocks ascending within a row
    j, r = j[order], r[order]
    stored_row = rows[j, r]
    word_bits = nonzero[j, r]  # [words, bc]
    word_cols = (word_bits.long() * (torch.ones(bc, dtype=torch.int64) << torch.arange(bc))).sum(dim=1)

    def offsets(per_word: Tensor) -> Tensor:  # [m + 1]: per-row sums of per_word, accumulated
        per_row = torch.zeros(m, dtype=torch.int64).index_add_(0, stored_row, per_word)
        return torch.cat([per_row.new_zeros(1), per_row.cumsum(0)])

    return (crow, col, offsets(torch.ones_like(j)), offsets(word_bits.sum(dim=1)), j, word_cols,
            blocks[j, r][word_bits])
