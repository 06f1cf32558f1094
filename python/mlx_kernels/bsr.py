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
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import ops

Block = Tuple[int, int]


class BlockSparseMatrix:
    """A [m, k] in BCSR with br × bc dense blocks; ``a @ b`` = A @ b."""

    def __init__(self, crow: Tensor, col: Tensor, blocks: Tensor, shape: Tuple[int, int],
                 row_perm: Optional[Tensor] = None, nnz: Optional[int] = None, *, _checked: bool = False):
        m, k = shape
        if not _checked:
            # A product with no columns runs every check of bsr_spmm (dtypes, shapes and index
            # values) and no arithmetic.
            ops.bsr_spmm(crow, col, blocks, blocks.new_empty((int(k), 0)), int(m), row_perm)
        self.crow, self.col, self.blocks = crow, col, blocks
        self.shape = (int(m), int(k))
        self.row_perm = row_perm
        # Stored non-zeros of the source matrix (defaults to the non-zero block entries).
        self.nnz = int(nnz) if nnz is not None else int(torch.count_nonzero(blocks))
        self._packed = _pack_rows(crow, col, blocks, self.shape) if blocks.device.type == "cpu" else None

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
        """A copy on ``device`` (indices, blocks and permutation move together)."""
        perm = None if self.row_perm is None else self.row_perm.to(device)
        index_dtype = _index_dtype(device, self.nblocks, self.shape[1], self.block[1])
        return BlockSparseMatrix(self.crow.to(device, index_dtype), self.col.to(device, index_dtype),
                                 self.blocks.to(device), self.shape, perm, self.nnz, _checked=True)

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
        """A @ b for b [k, n] (or [k]), in b's dtype. Inside torch.compile call
        ``a.matmul(b)``: dynamo does not route ``@`` on a non-tensor object."""
        vector = b.dim() == 1
        if vector:
            b = b.unsqueeze(1)
        if b.dim() != 2 or b.shape[0] != self.shape[1]:
            raise ValueError(f"BlockSparseMatrix @ b: A is {self.shape}, so b must be [{self.shape[1]}, n] "
                             f"(or [{self.shape[1]}]), got shape {tuple(b.shape)}")
        if self._packed is not None and b.device.type == "cpu":
            out = ops.bsr_spmm_packed(*self._packed, b, self.shape[0], *self.block, self.row_perm)
        else:
            out = ops.bsr_spmm_unchecked(self.crow, self.col, self.blocks, b, self.shape[0], self.row_perm)
        return out.squeeze(1) if vector else out

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
