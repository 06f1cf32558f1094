"""bsr family samples for opcheck and bad-input tests."""

import torch

import mlx_kernels
from cases import op_pattern


def _sparse(m, k, density, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).to(dtype)
    return a * (torch.rand(m, k, generator=g) < density)


def _bsr(m=37, k=45, block=(16, 16), reorder=False, dtype=torch.float32, device="cpu", density=0.2):
    return mlx_kernels.BlockSparseMatrix.from_dense(_sparse(m, k, density, dtype), block=block,
                                                    reorder=reorder).to(device)


def _spmm_args(device, n=7, index_dtype=torch.int64, **kwargs):
    a = _bsr(device=device, **kwargs)
    b = torch.randn(a.shape[1], n, dtype=a.dtype, device=device)
    return [a.crow.to(index_dtype), a.col.to(index_dtype), a.blocks, b, a.shape[0], a.row_perm]


def _spmm_call(device, change):
    """A zero-argument call of bsr_spmm with one argument broken by `change(args)`."""
    args = _spmm_args(device)
    args[5] = torch.arange(args[4] - 1, -1, -1, device=device)  # a valid row_perm to break
    change(args)
    return lambda: mlx_kernels.bsr_spmm(*args)


def _set(index, value_fn):
    def change(args):
        args[index] = value_fn(args)
    return change


def _poke(index, position, value):
    def change(args):
        args[index] = args[index].clone()
        args[index][position] = value
    return change


def _cpu_only(factory):
    def on_device(d):
        if d != "cpu":
            import pytest

            pytest.skip("CPU only: bsr_spmm's value checks, bsr_spmm_packed")
        return factory(d)
    return on_device


def _packed_args(n=7, **kwargs):
    a = _bsr(**kwargs)
    b = torch.randn(a.shape[1], n, dtype=a.dtype)
    return [a.crow, a.col, *a._packed, b, a.shape[0], *a.block, a.row_perm]


def _packed_call(change):
    """A zero-argument call of bsr_spmm_packed (CPU only) with one argument broken by `change(args)`."""
    args = _packed_args()
    args[9] = torch.arange(args[6] - 1, -1, -1)  # a valid row_perm to break
    change(args)
    return lambda: mlx_kernels.ops.bsr_spmm_packed(*args)


OPCHECK = [
    ("bsr_spmm", lambda d: ("bsr_spmm", tuple(_spmm_args(d)), {})),
    ("bsr_spmm_perm_int32_16x8", lambda d: ("bsr_spmm", tuple(_spmm_args(d, index_dtype=torch.int32, reorder=True,
                                                                          block=(16, 8))), {})),
    ("bsr_spmm_fp16", lambda d: ("bsr_spmm", tuple(_spmm_args(d, dtype=torch.float16, n=16)), {})),
    ("bsr_spmm_empty", lambda d: ("bsr_spmm", tuple(_spmm_args(d, density=0.0)), {})),
    ("bsr_spmm_packed", lambda d: _cpu_only(lambda _: ("bsr_spmm_packed", tuple(_packed_args()), {}))(d)),
    ("bsr_spmm_packed_perm_16x8_bf16", lambda d: _cpu_only(lambda _: (
        "bsr_spmm_packed", tuple(_packed_args(reorder=True, block=(16, 8), dtype=torch.bfloat16)), {}))(d)),
]

_SPMM = op_pattern("bsr_spmm")

BAD_INPUTS = [
    ("bsr_spmm_crow_length", lambda d: _spmm_call(d, _set(0, lambda a: a[0][:-1])),
     RuntimeError, _SPMM + r".*'crow'.*ceil\(m / br\) \+ 1"),
    ("bsr_spmm_col_length", lambda d: _spmm_call(d, _set(1, lambda a: a[1][:-1])),
     RuntimeError, _SPMM + r".*'col'.*one column index per block"),
    ("bsr_spmm_blocks_rank", lambda d: _spmm_call(d, _set(2, lambda a: a[2].flatten(1))),
     RuntimeError, _SPMM + r".*'blocks' must be 3-D"),
    ("bsr_spmm_dtype_mismatch", lambda d: _spmm_call(d, _set(3, lambda a: a[3].double())),
     RuntimeError, _SPMM + r".*'blocks' and 'b' must have one dtype.*float32.*float64"),
    ("bsr_spmm_b_dtype", lambda d: _spmm_call(d, _set(3, lambda a: a[3].int())),
     RuntimeError, _SPMM + r".*'b' must have dtype"),
    ("bsr_spmm_index_dtype", lambda d: _spmm_call(d, _set(0, lambda a: a[0].float())),
     RuntimeError, _SPMM + r".*'crow' must have dtype int32 or int64"),
    ("bsr_spmm_index_mismatch", lambda d: _spmm_call(d, _set(1, lambda a: a[1].int())),
     RuntimeError, _SPMM + r".*'crow' and 'col' must have one index dtype"),
    ("bsr_spmm_b_rank", lambda d: _spmm_call(d, _set(3, lambda a: a[3][:, 0])),
     RuntimeError, _SPMM + r".*'b' must be 2-D"),
    ("bsr_spmm_negative_m", lambda d: _spmm_call(d, _set(4, lambda a: -1)),
     RuntimeError, _SPMM + r".*'m' must be >= 0"),
    ("bsr_spmm_perm_length", lambda d: _spmm_call(d, _set(5, lambda a: a[5][:-1])),
     RuntimeError, _SPMM + r".*'row_perm'.*one entry per row"),
    ("bsr_spmm_perm_dtype", lambda d: _spmm_call(d, _set(5, lambda a: a[5].int())),
     RuntimeError, _SPMM + r".*'row_perm' must have dtype int64"),
]

# Value checks need the indices on the host: CPU only (CUDA checks shapes and
# dtypes; its kernels clamp every index, see csrc/bsr/bsr_spmm.cu).
_CPU_ONLY = [
    ("bsr_spmm_b_rows", lambda d: _spmm_call(d, _set(3, lambda a: a[3][:16])),
     RuntimeError, _SPMM + r".*'col'\[\d+\] = \d+ is out of range: b has k = 16 rows"),
    ("bsr_spmm_col_negative", lambda d: _spmm_call(d, _poke(1, 0, -1)),
     RuntimeError, _SPMM + r".*'col'\[0\] = -1 is out of range"),
    ("bsr_spmm_crow_start", lambda d: _spmm_call(d, _poke(0, 0, 1)),
     RuntimeError, _SPMM + r".*'crow' must start at 0"),
    ("bsr_spmm_crow_end", lambda d: _spmm_call(d, _poke(0, -1, 1000)),
     RuntimeError, _SPMM + r".*'crow' must (end at nblocks|be non-decreasing)"),
    ("bsr_spmm_crow_decreasing", lambda d: _spmm_call(d, _poke(0, 1, 100)),
     RuntimeError, _SPMM + r".*'crow' must be non-decreasing"),
    ("bsr_spmm_perm_repeat", lambda d: _spmm_call(d, _poke(5, 0, 1)),
     RuntimeError, _SPMM + r".*'row_perm' must be a permutation.*(repeats)"),
    ("bsr_spmm_perm_range", lambda d: _spmm_call(d, _poke(5, 0, 37)),
     RuntimeError, _SPMM + r".*'row_perm' must be a permutation.*out of range"),
]


BAD_INPUTS += [(name, _cpu_only(factory), exc, pattern) for name, factory, exc, pattern in _CPU_ONLY]

_PACKED = op_pattern("bsr_spmm_packed")


def _extra_bit(index, bit):
    """Sets `bit` in a word of args[index] (block_row_bits: the last block, in the last
    block row; row_col_bits: the first row of a block in the last block column), adding
    the values the new bit would need."""
    def change(args):
        words = args[index].clone()
        if index == 2:  # block_row_bits: the last block
            position = -1
            args[3] = torch.cat([args[3], args[3][:1]])
        else:  # row_col_bits: the first row word of a block in the last block column
            last = int((args[1] == args[1].max()).nonzero()[0, 0])
            position = int(sum(bin(int(w) & (2 ** 64 - 1)).count("1") for w in args[2][:last]))
        words[position] |= 1 << bit
        args[index] = words
        args[4] = torch.cat([args[4], args[4][:1]])
    return change


BAD_INPUTS += [(name, _cpu_only(lambda d, change=change: _packed_call(change)), exc, pattern)
               for name, change, exc, pattern in [
    ("bsr_spmm_packed_index_dtype", _set(0, lambda a: a[0].int()), RuntimeError, _PACKED + r".*'crow'.*int64"),
    ("bsr_spmm_packed_bits_dtype", _set(2, lambda a: a[2].int()), RuntimeError,
     _PACKED + r".*'block_row_bits'.*int64"),
    ("bsr_spmm_packed_bits_length", _set(2, lambda a: a[2][:-1]), RuntimeError, _PACKED + r".*'col'"),
    ("bsr_spmm_packed_values_dtype", _set(4, lambda a: a[4].double()), RuntimeError,
     _PACKED + r".*'values' and 'b' must have one dtype"),
    ("bsr_spmm_packed_word_count", _set(3, lambda a: a[3][:-1]), RuntimeError,
     _PACKED + r".*'row_col_bits' must hold one word per set bit"),
    ("bsr_spmm_packed_values_count", _set(4, lambda a: a[4][:-1]), RuntimeError,
     _PACKED + r".*'values' must hold one entry per set bit"),
    ("bsr_spmm_packed_block_cols", _set(8, lambda a: 65), RuntimeError, _PACKED + r".*'block_cols' must be in \[1, 64\]"),
    ("bsr_spmm_packed_bit_past_bc", _set(8, lambda a: 4), RuntimeError, _PACKED + r".*marks entries outside its blocks"),
    ("bsr_spmm_packed_row_past_m", _extra_bit(2, 15), RuntimeError,
     _PACKED + r".*block row 2 marks entries outside its blocks"),
    ("bsr_spmm_packed_column_past_k", _extra_bit(3, 15), RuntimeError,
     _PACKED + r".*marks entries outside its blocks.*past k = 45"),
    ("bsr_spmm_packed_col_range", _poke(1, 0, 3), RuntimeError, _PACKED + r".*'col'\[0\] = 3 is out of range"),
    ("bsr_spmm_packed_perm", _poke(9, 0, 1), RuntimeError, _PACKED + r".*'row_perm' must be a permutation"),
]]
