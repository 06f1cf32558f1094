"""bsr family samples for opcheck and bad-input tests."""

import os

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

            pytest.skip("CPU only: bsr_spmm_packed")
        return factory(d)
    return on_device


def _packed_args(n=7, **kwargs):
    a = _bsr(**kwargs)
    b = torch.randn(a.shape[1], n, dtype=a.dtype)
    return [*a._packed, b, a.shape[0], *a.block, a.row_perm]


def _packed_call(change):
    """A zero-argument call of bsr_spmm_packed (CPU only) with one argument broken by `change(args)`.
    args: crow 0, col 1, row_words 2, row_values 3, word_blocks 4, word_cols 5, values 6, b 7, m 8,
    block_rows 9, block_cols 10, row_perm 11."""
    args = _packed_args()
    args[11] = torch.arange(args[8] - 1, -1, -1)  # a valid row_perm to break
    change(args)
    return lambda: mlx_kernels.ops.bsr_spmm_packed(*args)


OPCHECK = [
    ("bsr_spmm", lambda d: ("bsr_spmm", tuple(_spmm_args(d)), {})),
    ("bsr_spmm_perm_int32_16x8", lambda d: ("bsr_spmm", tuple(_spmm_args(d, index_dtype=torch.int32, reorder=True,
                                                                          block=(16, 8))), {})),
    ("bsr_spmm_fp16", lambda d: ("bsr_spmm", tuple(_spmm_args(d, dtype=torch.float16, n=16)), {})),
    ("bsr_spmm_empty", lambda d: ("bsr_spmm", tuple(_spmm_args(d, density=0.0)), {})),
    ("bsr_spmm_unchecked_perm_bf16", lambda d: ("bsr_spmm_unchecked", tuple(_spmm_args(
        d, reorder=True, dtype=torch.bfloat16, n=16)), {})),
    ("bsr_spmm_packed", lambda d: _cpu_only(lambda _: ("bsr_spmm_packed", tuple(_packed_args()), {}))(d)),
    ("bsr_spmm_packed_perm_16x8_bf16", lambda d: _cpu_only(lambda _: (
        "bsr_spmm_packed", tuple(_packed_args(reorder=True, block=(16, 8), dtype=torch.bfloat16)), {}))(d)),
]

def _grad_spmm_args(device, **kwargs):
    """bsr_spmm's sample with blocks and b requiring grad (opcheck's autograd checks). Not on the
    fake GPU (tests/fake_cuda.py): aot_autograd of the backward asks for the CUDA context."""
    if device != "cpu" and "1" in (os.environ.get("MLX_FAKE_CUDA"), os.environ.get("MLX_EMU")):
        import pytest

        pytest.skip("needs a real GPU: aot_autograd of its backward asks for the CUDA context")
    args = _spmm_args(device, **kwargs)
    args[2] = args[2].clone().requires_grad_()
    args[3] = args[3].clone().requires_grad_()
    return args


def _sddmm_args(device, n=7, index_dtype=torch.int64, reorder=False, **kwargs):
    a = _bsr(device=device, reorder=reorder, **kwargs)
    m, k = a.shape
    row_perm = torch.randperm(m).to(device) if reorder else None
    x = torch.randn(m, n, dtype=a.dtype, device=device)
    y = torch.randn(k, n, dtype=a.dtype, device=device)
    return [a.crow.to(index_dtype), a.col.to(index_dtype), x, y, *a.block, row_perm]


OPCHECK += [
    ("bsr_spmm_grad", lambda d: ("bsr_spmm", tuple(_grad_spmm_args(d, dtype=torch.float64)), {})),
    ("bsr_spmm_grad_perm_16x8", lambda d: ("bsr_spmm", tuple(_grad_spmm_args(d, reorder=True, block=(16, 8),
                                                                              index_dtype=torch.int32)), {})),
    ("bsr_spmm_grad_ragged_3x5", lambda d: ("bsr_spmm", tuple(_grad_spmm_args(d, block=(3, 5))), {})),
    ("bsr_spmm_grad_empty", lambda d: ("bsr_spmm", tuple(_grad_spmm_args(d, density=0.0)), {})),
    ("bsr_spmm_unchecked_grad_bf16", lambda d: ("bsr_spmm_unchecked", tuple(_grad_spmm_args(
        d, reorder=True, dtype=torch.bfloat16, n=16)), {})),
    ("bsr_sddmm", lambda d: ("bsr_sddmm", tuple(_sddmm_args(d)), {})),
    ("bsr_sddmm_perm_int32_16x8_fp16", lambda d: ("bsr_sddmm", tuple(_sddmm_args(
        d, reorder=True, index_dtype=torch.int32, block=(16, 8), dtype=torch.float16)), {})),
    ("bsr_sddmm_unchecked_3x5_bf16", lambda d: ("bsr_sddmm_unchecked", tuple(_sddmm_args(
        d, block=(3, 5), dtype=torch.bfloat16)), {})),
    ("bsr_sddmm_empty", lambda d: ("bsr_sddmm", tuple(_sddmm_args(d, density=0.0)), {})),
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

# Index values: CUDA finds a bad one in one pass on the device, then names it
# with the CPU checks, so both devices give the same message.
BAD_INPUTS += [
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


_PACKED = op_pattern("bsr_spmm_packed")


def _flip_column_bit(pick):
    """Flips one bit of a word_cols entry: pick(args) -> (word, bit)."""
    def change(args):
        word, bit = pick(args)
        args[5] = args[5].clone()
        args[5][word] ^= 1 << bit
    return change


def _last_block_column_word(args):
    # The first word in A's last block column (k = 45: its 16-wide block holds columns 32..44).
    return int((args[1][args[4]] == args[1].max()).nonzero()[0, 0]), 15


def _clear_bit(args):
    return 0, (int(args[5][0]) & -int(args[5][0])).bit_length() - 1  # word 0's lowest set bit


def _unset_bit(args):
    return 0, next(c for c in range(13) if not int(args[5][0]) >> c & 1)  # a clear bit below k in every block


BAD_INPUTS += [(name, _cpu_only(lambda d, change=change: _packed_call(change)), exc, pattern)
               for name, change, exc, pattern in [
    ("bsr_spmm_packed_index_dtype", _set(0, lambda a: a[0].int()), RuntimeError, _PACKED + r".*'crow'.*int64"),
    ("bsr_spmm_packed_words_dtype", _set(2, lambda a: a[2].int()), RuntimeError, _PACKED + r".*'row_words'.*int64"),
    ("bsr_spmm_packed_words_length", _set(2, lambda a: a[2][:-1]), RuntimeError, _PACKED + r".*'row_words'.*m \+ 1"),
    ("bsr_spmm_packed_values_dtype", _set(6, lambda a: a[6].double()), RuntimeError,
     _PACKED + r".*'values' and 'b' must have one dtype"),
    ("bsr_spmm_packed_word_cols_length", _set(5, lambda a: a[5][:-1]), RuntimeError,
     _PACKED + r".*'word_cols'.*word_blocks' length"),
    ("bsr_spmm_packed_words_end", _poke(2, -1, 1000), RuntimeError,
     _PACKED + r".*'row_words' must start at 0 and end at word_blocks.numel\(\)"),
    ("bsr_spmm_packed_words_decreasing", lambda a: _poke(2, -2, int(a[2][-1]) + 1)(a), RuntimeError,
     _PACKED + r".*'row_words' must be non-decreasing"),
    ("bsr_spmm_packed_values_count", _set(6, lambda a: a[6][:-1]), RuntimeError,
     _PACKED + r".*'row_values' must end at values.numel\(\)"),
    ("bsr_spmm_packed_row_values_decreasing", _poke(3, 1, 1000), RuntimeError,
     _PACKED + r".*'row_values' must be non-decreasing"),
    ("bsr_spmm_packed_block_cols", _set(10, lambda a: 65), RuntimeError,
     _PACKED + r".*'block_cols' must be in \[1, 64\]"),
    ("bsr_spmm_packed_bit_past_bc", _set(10, lambda a: 4), RuntimeError,
     _PACKED + r".*'word_cols'\[\d+\] marks a column past block_cols = 4"),
    ("bsr_spmm_packed_column_past_k", _flip_column_bit(_last_block_column_word), RuntimeError,
     _PACKED + r".*marks a column past block_cols = 16 or past k = 45"),
    ("bsr_spmm_packed_word_block", _poke(4, 0, 0x7FFF), RuntimeError,
     _PACKED + r".*'word_blocks'\[0\] = 32767 is not a block of stored row \d+'s block row"),
    ("bsr_spmm_packed_more_values", _flip_column_bit(_unset_bit), RuntimeError,
     _PACKED + r".*words mark more values than 'row_values' gives it"),
    ("bsr_spmm_packed_fewer_values", _flip_column_bit(_clear_bit), RuntimeError,
     _PACKED + r".*words mark \d+ values, but 'row_values' gives it \d+"),
    ("bsr_spmm_packed_col_range", _poke(1, 0, 3), RuntimeError, _PACKED + r".*'col'\[0\] = 3 is out of range"),
    ("bsr_spmm_packed_perm", _poke(11, 0, 1), RuntimeError, _PACKED + r".*'row_perm' must be a permutation"),
]]


_SDDMM = op_pattern("bsr_sddmm")


def _sddmm_call(device, change):
    """A zero-argument call of bsr_sddmm with one argument broken by `change(args)`.
    args: crow 0, col 1, a 2, b 3, br 4, bc 5, row_perm 6."""
    args = _sddmm_args(device, reorder=True)
    change(args)
    return lambda: mlx_kernels.ops.bsr_sddmm(*args)


BAD_INPUTS += [(name, lambda d, change=change: _sddmm_call(d, change), exc, pattern)
               for name, change, exc, pattern in [
    ("bsr_sddmm_a_rank", _set(2, lambda a: a[2][:, 0]), RuntimeError, _SDDMM + r".*'a' must be 2-D"),
    ("bsr_sddmm_dtype_mismatch", _set(3, lambda a: a[3].double()), RuntimeError,
     _SDDMM + r".*'a' and 'b' must have one dtype"),
    ("bsr_sddmm_int_dtype", _set(2, lambda a: a[2].int()), RuntimeError, _SDDMM + r".*'a' must have dtype"),
    ("bsr_sddmm_n_mismatch", _set(3, lambda a: a[3][:, :-1]), RuntimeError,
     _SDDMM + r".*'a' \[m, n\] and 'b' \[k, n\] must have one n"),
    ("bsr_sddmm_block_shape", _set(5, lambda a: 0), RuntimeError, _SDDMM + r".*'br' and 'bc' .* must be >= 1"),
    ("bsr_sddmm_crow_length", _set(2, lambda a: a[2][:-16]), RuntimeError,
     _SDDMM + r".*'crow'.*ceil\(m / br\) \+ 1"),
    ("bsr_sddmm_col_range", _set(3, lambda a: a[3][:16]), RuntimeError,
     _SDDMM + r".*'col'\[\d+\] = \d+ is out of range: b has k = 16 rows"),
    ("bsr_sddmm_perm", _poke(6, 0, 1000), RuntimeError, _SDDMM + r".*'row_perm' must be a permutation"),
    ("bsr_sddmm_crow_decreasing", _poke(0, 1, 100), RuntimeError, _SDDMM + r".*'crow' must be non-decreasing"),
]]
