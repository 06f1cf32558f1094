"""SpGEMM family samples for opcheck and bad-input tests."""

import torch

from cases import op_pattern
from mlx_kernels import ops

OP = op_pattern("spgemm_csr")


def _csr(m, k, device, index_dtype=torch.int64, value_dtype=torch.float64, seed=0):
    """CSR arrays of a random [m, k] matrix, about a third of it stored."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(m, k, generator=g) < 0.35
    dense = torch.where(mask, torch.randn(m, k, generator=g, dtype=torch.float64), torch.zeros(()))
    rows, cols = mask.nonzero(as_tuple=True)
    crow = torch.zeros(m + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(rows, minlength=m).cumsum(0)
    return (crow.to(device, index_dtype), cols.to(device, index_dtype), dense[rows, cols].to(device, value_dtype))


def _args(device, m=7, k=9, n=5, index_dtype=torch.int64, value_dtype=torch.float64):
    return [*_csr(m, k, device, index_dtype, value_dtype, 1), *_csr(k, n, device, index_dtype, value_dtype, 2), n]


def _sample(m, k, n, index_dtype, value_dtype):
    return lambda d: ("spgemm_csr", tuple(_args(d, m, k, n, index_dtype, value_dtype)), {})


OPCHECK = [
    ("spgemm_csr_i64_f64", _sample(13, 17, 11, torch.int64, torch.float64)),
    ("spgemm_csr_i32_f32", _sample(9, 6, 14, torch.int32, torch.float32)),
    ("spgemm_csr_empty", _sample(0, 5, 4, torch.int64, torch.float64)),
]


def _bad(mutate, **kwargs):
    """A factory: valid arguments, changed by mutate(args, device), then the op call."""

    def factory(device):
        args = _args(device, **kwargs)
        mutate(args, device)
        return lambda: ops.spgemm_csr(*args)

    return factory


def _set(i, value):
    def mutate(args, device):
        args[i] = args[i].clone()
        args[i][value[0]] = value[1]

    return mutate


def _replace(i, fn):
    def mutate(args, device):
        args[i] = fn(args[i], device)

    return mutate


BAD_INPUTS = [
    ("spgemm_a_crow_not_monotone", _bad(_set(0, (3, 0))), ValueError, OP + r".*'a_crow' is not a CSR row pointer"),
    ("spgemm_a_crow_first", _bad(_set(0, (0, 1))), ValueError, OP + r".*'a_crow' is not a CSR row pointer"),
    ("spgemm_a_crow_last", _bad(_replace(0, lambda t, d: torch.cat([t[:-1], t[-1:] - 1]))), ValueError,
     OP + r".*'a_crow'.*a_crow\[7\] == nnz"),
    ("spgemm_b_crow_not_monotone", _bad(_set(3, (4, 0))), ValueError, OP + r".*'b_crow' is not a CSR row pointer"),
    ("spgemm_a_col_out_of_range", _bad(_set(1, (0, 9))), ValueError, OP + r".*'a_col'.*outside \[0, k = 9\)"),
    ("spgemm_a_col_negative", _bad(_set(1, (0, -1))), ValueError, OP + r".*'a_col'.*outside"),
    ("spgemm_b_col_out_of_range", _bad(_set(4, (0, 5))), ValueError, OP + r".*'b_col'.*outside \[0, n = 5\)"),
    # A [7, 9] times a B with 4 rows: A's columns reach past B's rows.
    ("spgemm_dimension_mismatch", _bad(lambda a, d: a.__setitem__(slice(3, 6), _csr(4, 5, d, seed=3))),
     ValueError, OP + r".*'a_col'.*outside \[0, k = 4\)"),
    ("spgemm_mixed_index_dtypes", _bad(_replace(3, lambda t, d: t.int())), RuntimeError,
     OP + r".*'b_crow'.*index dtype of 'a_crow' \(int64.*got int32"),
    ("spgemm_col_dtype", _bad(_replace(1, lambda t, d: t.int())), RuntimeError, OP + r".*'a_col'.*int64.*got int32"),
    ("spgemm_index_dtype", _bad(lambda a, d: a.__setitem__(0, a[0].short())), RuntimeError,
     OP + r".*'a_crow'.*int32 or int64.*int16"),
    ("spgemm_value_dtype_mismatch", _bad(_replace(5, lambda t, d: t.float())), RuntimeError,
     OP + r".*'b_val'.*float64.*got float32"),
    ("spgemm_value_dtype", _bad(_replace(2, lambda t, d: t.half())), RuntimeError,
     OP + r".*'a_val'.*float32 or float64.*float16"),
    ("spgemm_val_length", _bad(_replace(2, lambda t, d: t[:-1])), RuntimeError, OP + r".*'a_col' and 'a_val'"),
    ("spgemm_rank", _bad(_replace(1, lambda t, d: t[None])), RuntimeError, OP + r".*'a_col' must be 1-D"),
    ("spgemm_empty_crow", _bad(_replace(0, lambda t, d: t[:0])), RuntimeError, OP + r".*'a_crow'.*m \+ 1 >= 1"),
    ("spgemm_negative_n", _bad(lambda a, d: a.__setitem__(6, -1)), ValueError, OP + r".*'n'.*>= 0"),
    ("spgemm_int32_n", _bad(lambda a, d: a.__setitem__(6, 2**31), index_dtype=torch.int32), RuntimeError,
     OP + r".*n = 2147483648 does not fit in int32"),
]
