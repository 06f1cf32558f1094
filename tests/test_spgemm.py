"""SpGEMM family: spgemm_csr against the float64 oracle, scipy.sparse and torch.sparse.mm."""

from __future__ import annotations


import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mlx_kernels
import oracles
from conftest import assert_close_to_oracle, requires_cuda
from mlx_kernels import ops
from mlx_kernels.bench.datasets import load_suitesparse, suitesparse_names



REAL_MATRICES = suitesparse_names()

INDEX_DTYPES = {"int32": torch.int32, "int64": torch.int64}
VALUE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --- inputs -----------------------------------------------------------------------


def random_csr(m, k, row_lengths, seed=0, sorted_cols=True):
    """scipy CSR [m, k] whose row i has row_lengths[i] distinct random columns, values in [-1, 1)."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(np.asarray(row_lengths, dtype=np.int64), k)
    cols = [rng.choice(k, size=int(n), replace=False) for n in lengths]
    indices = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    data = rng.uniform(-1, 1, size=indices.size)
    out = sp.csr_matrix((data, indices, indptr), shape=(m, k))
    if sorted_cols:
        out.sort_indices()
    return out


def row_lengths(kind, m, k, seed=0):
    rng = np.random.default_rng(seed + 1)
    if kind == "uniform":
        return rng.integers(0, min(k, 12) + 1, size=m)
    if kind == "power_law":  # Zipf-like: most rows short, a few very long
        return np.minimum(rng.zipf(1.6, size=m), k)
    if kind == "one_dense_row":
        lengths = rng.integers(0, 4, size=m)
        lengths[m // 2] = k
        return lengths
    if kind == "empty_rows":
        lengths = rng.integers(1, 6, size=m)
        lengths[rng.random(m) < 0.6] = 0
        return lengths
    raise ValueError(kind)


def op_args(a, b, index_dtype=torch.int64, value_dtype=torch.float64, device="cpu"):
    def arrays(mat):
        return (torch.from_numpy(mat.indptr.astype(np.int64)).to(device, index_dtype),
                torch.from_numpy(mat.indices.astype(np.int64)).to(device, index_dtype),
                torch.from_numpy(mat.data).to(device, value_dtype))

    return (*arrays(a), *arrays(b), b.shape[1])


def to_scipy(out, shape):
    crow, col, val = (t.cpu().numpy() for t in out)
    return sp.csr_matrix((val.astype(np.float64), col, crow), shape=shape)


# --- checks -----------------------------------------------------------------------


def check_csr(out, m, n, index_dtype, value_dtype, device):
    """A well-formed CSR result: dtypes, device, row pointer, sorted in-range columns."""
    crow, col, val = out
    assert crow.dtype == index_dtype and col.dtype == index_dtype and val.dtype == value_dtype
    assert crow.device.type == device and col.device.type == device and val.device.type == device
    crow, col = crow.cpu().long(), col.cpu().long()
    assert crow.shape == (m + 1,) and crow[0] == 0 and crow[-1] == col.numel() == val.numel()
    assert (crow.diff() >= 0).all()
    if col.numel():
        assert col.min() >= 0 and col.max() < n
        row_of = torch.repeat_interleave(torch.arange(m), crow.diff())
        same_row = row_of[1:] == row_of[:-1]
        assert (col[1:][same_row] > col[:-1][same_row]).all(), "columns not strictly sorted within rows"


def check_against_oracle(out, args):
    """Exact structure; values: float64 within 1e-12 relative, float32 by the 2x-torch rule."""
    value_dtype = args[2].dtype
    m, n = args[0].numel() - 1, args[6]
    check_csr(out, m, n, args[0].dtype, value_dtype, args[0].device.type)
    expected, structure = oracles.spgemm_csr(*args)
    crow, col, val = (t.cpu() for t in out)
    rows = torch.repeat_interleave(torch.arange(m), crow.long().diff())
    ours_structure = torch.zeros(m, n, dtype=torch.bool)
    ours_structure[rows, col.long()] = True
    assert torch.equal(ours_structure, structure)
    ours = torch.zeros(m, n, dtype=torch.float64)
    ours[rows, col.long()] = val.double()
    if value_dtype == torch.float64:
        scale = oracles.spgemm_csr(args[0], args[1], args[2].abs(), args[3], args[4], args[5].abs(), n)[0]
        assert ((ours - expected).abs() <= 1e-12 * scale).all()
    else:
        a_crow, a_col, a_val, b_crow, b_col, b_val, _ = args
        a32 = torch.sparse_csr_tensor(a_crow.cpu().long(), a_col.cpu().long(), a_val.cpu(),
                                      size=(m, b_crow.numel() - 1)).to_dense()
        b32 = torch.sparse_csr_tensor(b_crow.cpu().long(), b_col.cpu().long(), b_val.cpu(),
                                      size=(b_crow.numel() - 1, n)).to_dense()
        assert_close_to_oracle(ours, expected, a32 @ b32, atol=1e-6)


def ones_like(mat):
    out = sp.csr_matrix(mat, copy=True)
    out.data[:] = 1
    return out


def check_against_scipy(ours, a, b):
    """ours (scipy CSR from our op) vs scipy: ours == pattern(A)·pattern(B) exactly
    (hence ⊇ scipy's structure after eliminate_zeros, which is checked too), and
    values within 1e-12 of scipy's relative to Σ|products| of each entry."""
    expected = (a @ b).tocsr()
    expected.eliminate_zeros()
    pattern = (ones_like(a) @ ones_like(b)).tocsr()  # positive sums: nothing cancels
    pattern.sort_indices()
    assert np.array_equal(ours.indptr, pattern.indptr) and np.array_equal(ours.indices, pattern.indices)
    assert ones_like(expected).multiply(ones_like(ours)).nnz == expected.nnz
    scale = abs(a) @ abs(b)
    assert (abs(ours - expected) - 1e-12 * scale).max() <= 0


# --- tests ------------------------------------------------------------------------


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES.values(), ids=INDEX_DTYPES.keys())
@pytest.mark.parametrize("value_dtype", VALUE_DTYPES.values(), ids=VALUE_DTYPES.keys())
@pytest.mark.parametrize("kind", ["uniform", "power_law", "one_dense_row", "empty_rows"])
@pytest.mark.parametrize("m,k,n", [(37, 53, 41), (120, 90, 150)])
def test_random_matches_oracle(device, kind, m, k, n, index_dtype, value_dtype):
    a = random_csr(m, k, row_lengths(kind, m, k, seed=m), seed=m)
    b = random_csr(k, n, row_lengths(kind, k, n, seed=k), seed=k)
    args = op_args(a, b, index_dtype, value_dtype, device)
    check_against_oracle(ops.spgemm_csr(*args), args)


@pytest.mark.parametrize("m,k,n,nnz_a,nnz_b", [
    (0, 5, 7, 0, 3), (5, 0, 7, 0, 0), (5, 7, 0, 4, 0), (6, 6, 6, 0, 0), (1, 1, 1, 1, 1), (1, 1, 1, 0, 1),
])
def test_empty_and_tiny(device, m, k, n, nnz_a, nnz_b):
    a = random_csr(m, k, [nnz_a] + [0] * (m - 1) if m else [])
    b = random_csr(k, n, [nnz_b] + [0] * (k - 1) if k else [])
    args = op_args(a, b, device=device)
    out = ops.spgemm_csr(*args)
    check_against_oracle(out, args)


def test_cancellation_keeps_symbolic_entry(device):
    # C = [1 1] @ [1; -1] = 0: stored (as in cuSPARSE and torch), dropped by scipy.
    a = sp.csr_matrix(np.array([[1.0, 1.0]]))
    b = sp.csr_matrix(np.array([[1.0], [-1.0]]))
    crow, col, val = ops.spgemm_csr(*op_args(a, b, device=device))
    assert crow.tolist() == [0, 1] and col.tolist() == [0] and val.tolist() == [0.0]


def test_unsorted_and_explicit_zero_inputs(device):
    # Input columns in any order and explicitly stored zeros: structure still symbolic, output sorted.
    a = random_csr(60, 50, row_lengths("uniform", 60, 50), seed=3, sorted_cols=False)
    b = random_csr(50, 70, row_lengths("uniform", 50, 70), seed=4, sorted_cols=False)
    b.data[::5] = 0.0
    args = op_args(a, b, device=device)
    check_against_oracle(ops.spgemm_csr(*args), args)


def test_non_contiguous_inputs(device):
    a = random_csr(40, 30, row_lengths("uniform", 40, 30), seed=5)
    b = random_csr(30, 20, row_lengths("uniform", 30, 20), seed=6)
    args = list(op_args(a, b, device=device))
    for i in (1, 2, 4, 5):  # every other element of a twice-as-long buffer
        spread = torch.zeros(2 * args[i].numel(), dtype=args[i].dtype, device=device)
        spread[::2] = args[i]
        args[i] = spread[::2]
        assert not args[i].is_contiguous() or args[i].numel() <= 1
    check_against_oracle(ops.spgemm_csr(*args), tuple(args))


def test_long_rows_use_every_bin(device):
    # Row bounds from 0 to several thousand products: every shared-memory bin and
    # the global-memory fallback on CUDA; hash and dense accumulators on CPU.
    lengths = np.array([0, 1, 3, 9, 20, 40, 90, 200, 400, 700, 1500, 3000])
    a = random_csr(len(lengths), 3000, lengths, seed=7)
    b = random_csr(3000, 5000, np.full(3000, 6), seed=8)
    args = op_args(a, b, device=device)
    check_against_oracle(ops.spgemm_csr(*args), args)


def test_dense_accumulator_loop_switch_and_full_rows(device):
    # Rows alternate between heavy column reuse (the CPU's branching loop) and
    # none (its branch-free loop), and some rows fill all n columns from more
    # than n products (the branch-free loop's spare column slot).
    n = 64
    b = sp.vstack([sp.csr_matrix(np.ones((1, n))),                        # row 0: every column
                   random_csr(40, n, np.full(40, 1), seed=11)]).tocsr()   # rows 1..40: one column each
    rows = []
    for i in range(30):
        dense = np.zeros(41)
        if i % 3 == 0:
            dense[[0, 1, 2, 3]] = 1.0                   # full row of C from n + 3 products
        elif i % 3 == 1:
            dense[1 + (np.arange(8) * 5 + i) % 40] = 1.0  # a new column per product
        else:
            dense[[0] + list(range(1, 41, 4))] = 1.0    # mostly reuse
        rows.append(dense * np.linspace(0.5, 1.5, 41))
    a = sp.csr_matrix(np.array(rows))
    args = op_args(a, b, device=device)
    check_against_oracle(ops.spgemm_csr(*args), args)


def test_large_n_uses_hash_tables():
    # n far beyond the dense-accumulator threshold: short rows go through the CPU hash tables.
    a = random_csr(300, 300, np.full(300, 5), seed=9)
    b = random_csr(300, 1 << 20, np.full(300, 7), seed=10)
    out = ops.spgemm_csr(*op_args(a, b))
    check_against_scipy(to_scipy(out, (300, 1 << 20)), a, b)


def test_int32_output_overflow_is_refused():
    # A = ones column [m, 1], B = ones row [1, m]: C is dense m x m with m² > 2^31 - 1
    # entries. Every row of C holds at least B's only row, so the lower bound
    # already proves the overflow: refused before anything is allocated.
    m = 46341
    assert m * m > 2**31 - 1
    crow_a, col_a = torch.arange(m + 1, dtype=torch.int32), torch.zeros(m, dtype=torch.int32)
    crow_b, col_b = torch.tensor([0, m], dtype=torch.int32), torch.arange(m, dtype=torch.int32)
    vals = torch.ones(m, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"spgemm_csr.*2147488281.*int32.*int64"):
        ops.spgemm_csr(crow_a, col_a, vals, crow_b, col_b, vals, m)


@pytest.mark.skipif(not REAL_MATRICES, reason="SuiteSparse matrices not found")
@pytest.mark.parametrize("name", REAL_MATRICES)
@pytest.mark.parametrize("product", ["AA", "AAt"])
def test_real_matrices_match_scipy(device, name, product):
    a = load_suitesparse(name).copy()
    b = a if product == "AA" else a.T.tocsr()
    index_dtype = torch.int32 if product == "AA" else torch.int64
    out = ops.spgemm_csr(*op_args(a, b, index_dtype=index_dtype, device=device))
    check_csr(out, a.shape[0], b.shape[1], index_dtype, torch.float64, device)
    check_against_scipy(to_scipy(out, (a.shape[0], b.shape[1])), a, b)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 40), k=st.integers(0, 40), n=st.integers(0, 40), max_len=st.integers(0, 40),
       seed=st.integers(0, 2**16), int32=st.booleans(), fp32=st.booleans())
def test_property_cpu(m, k, n, max_len, seed, int32, fp32):
    rng = np.random.default_rng(seed)
    a = random_csr(m, k, rng.integers(0, max_len + 1, size=m), seed=seed)
    b = random_csr(k, n, rng.integers(0, max_len + 1, size=k), seed=seed + 1)
    args = op_args(a, b, torch.int32 if int32 else torch.int64, torch.float32 if fp32 else torch.float64)
    check_against_oracle(ops.spgemm_csr(*args), args)


# --- Python API -------------------------------------------------------------------


def test_spgemm_scipy_api():
    a = random_csr(50, 40, row_lengths("power_law", 50, 40), seed=11)
    for b in (a.T, a.T.tocsc(), a.T.tocoo()):  # A·Aᵀ from any scipy format
        out = mlx_kernels.spgemm(a, b)
        assert isinstance(out, sp.csr_matrix) and out.shape == (50, 50) and out.has_sorted_indices
        check_against_scipy(out, a, b.tocsr())
    ints = sp.csr_matrix(np.array([[1, 2], [0, 3]], dtype=np.int64))
    assert np.array_equal(mlx_kernels.spgemm(ints, ints).toarray(), (ints @ ints).toarray())


def test_spgemm_torch_api(device):
    a = random_csr(30, 25, row_lengths("uniform", 30, 25), seed=12)
    b = random_csr(25, 35, row_lengths("uniform", 25, 35), seed=13)
    ta = torch.sparse_csr_tensor(torch.from_numpy(a.indptr), torch.from_numpy(a.indices), torch.from_numpy(a.data),
                                 size=a.shape).to(device)
    tb = torch.sparse_csr_tensor(torch.from_numpy(b.indptr.astype(np.int64)), torch.from_numpy(b.indices.astype(np.int64)),
                                 torch.from_numpy(b.data).float(), size=b.shape).to(device)
    out = mlx_kernels.spgemm(ta, tb)  # int32 + int64 indices, float64 + float32 values promote
    assert out.layout == torch.sparse_csr and out.shape == (30, 35) and out.device.type == device
    assert out.dtype == torch.float64 and out.crow_indices().dtype == torch.int64
    torch.testing.assert_close(out.to_dense().cpu(), torch.from_numpy((a @ b.astype(np.float32)).toarray()),
                               rtol=1e-6, atol=1e-6)


def torch_csr(mat, index_dtype=torch.int64, value_dtype=torch.float64, device="cpu"):
    return torch.sparse_csr_tensor(torch.from_numpy(mat.indptr.astype(np.int64)).to(index_dtype),
                                   torch.from_numpy(mat.indices.astype(np.int64)).to(index_dtype),
                                   torch.from_numpy(mat.data).to(value_dtype), size=mat.shape).to(device)


LAYOUTS = {
    "csr": lambda t: t,
    "csc": lambda t: t.to_sparse_csc(),
    "coo": lambda t: t.to_sparse_coo(),
    "bsr": lambda t: t.to_dense().to_sparse_bsr((2, 2)),
    "bsc": lambda t: t.to_dense().to_sparse_bsc((2, 2)),
}


@pytest.mark.parametrize("layout_b", LAYOUTS)
@pytest.mark.parametrize("layout_a", LAYOUTS)
def test_spgemm_torch_any_layout_gives_csr(device, layout_a, layout_b):
    a = random_csr(12, 8, row_lengths("uniform", 12, 8), seed=21)
    b = random_csr(8, 10, row_lengths("power_law", 8, 10), seed=22)
    ta, tb = LAYOUTS[layout_a](torch_csr(a, device=device)), LAYOUTS[layout_b](torch_csr(b, device=device))
    out = mlx_kernels.spgemm(ta, tb)
    assert out.layout == torch.sparse_csr and out.shape == (12, 10) and out.device.type == device
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.to_dense().cpu(), torch.from_numpy((a @ b).toarray()), rtol=1e-12, atol=1e-12)
    if layout_a in ("csr", "csc", "coo") and layout_b in ("csr", "csc", "coo"):
        # Same stored entries as the CSR product (symbolic structure of the same inputs).
        expected = to_scipy(ops.spgemm_csr(*op_args(a, b)), (12, 10))
        assert torch.equal(out.crow_indices().cpu(), torch.from_numpy(expected.indptr))
        assert torch.equal(out.col_indices().cpu(), torch.from_numpy(expected.indices))
    else:
        # Every entry of a stored block is stored: the structure can only grow, never lose an entry.
        assert out._nnz() >= to_scipy(ops.spgemm_csr(*op_args(a, b)), (12, 10)).nnz


def test_spgemm_torch_uncoalesced_coo_sums_duplicates():
    i = torch.tensor([[0, 0, 1, 0], [1, 1, 0, 1]])
    a = torch.sparse_coo_tensor(i, torch.tensor([1.0, 2.0, 3.0, -0.5], dtype=torch.float64), (2, 2))
    out = mlx_kernels.spgemm(a, a)
    torch.testing.assert_close(out.to_dense(), a.to_dense() @ a.to_dense(), rtol=0, atol=0)


def test_drop_zeros_matches_scipy_semantics(device):
    # [1 1] @ [1; -1] = 0 from cancellation, an explicit stored zero, -0.0, NaN and Inf.
    a = sp.csr_matrix((np.array([1.0, 1.0, 0.0, 2.0, np.nan, 1.0]), np.array([0, 1, 0, 0, 1, 0]),
                       np.array([0, 2, 3, 4, 6])), shape=(4, 2))
    b = sp.csr_matrix((np.array([1.0, -1.0]), np.array([0, 0]), np.array([0, 1, 2])), shape=(2, 1))
    kept = mlx_kernels.spgemm(a, b)
    assert kept.nnz == 4 and kept.toarray()[:3, 0].tolist() == [0.0, 0.0, 2.0]
    dropped = mlx_kernels.spgemm(a, b, drop_zeros=True)
    expected = (a @ b).tocsr()
    assert dropped.indptr.tolist() == expected.indptr.tolist() == [0, 0, 0, 1, 2]
    assert dropped.indices.tolist() == expected.indices.tolist() == [0, 0]
    assert dropped.data[0] == 2.0 and np.isnan(dropped.data[1])  # NaN is never dropped
    neg_zero = sp.csr_matrix((np.array([-0.0]), np.array([0]), np.array([0, 1])), shape=(1, 1))
    assert mlx_kernels.spgemm(neg_zero, neg_zero, drop_zeros=True).nnz == 0
    # torch path, every device, int32 indices kept.
    ta, tb = torch_csr(a, torch.int32, device=device), torch_csr(b, torch.int32, device=device)
    out = mlx_kernels.spgemm(ta, tb, drop_zeros=True)
    assert out.crow_indices().dtype == torch.int32 and out.crow_indices().tolist() == [0, 0, 0, 1, 2]
    assert out.col_indices().tolist() == [0, 0] and out.values()[0].item() == 2.0
    assert out.values()[1].isnan().item()
    assert mlx_kernels.spgemm(ta, tb).values().numel() == 4


@pytest.mark.skipif("add32" not in REAL_MATRICES, reason="SuiteSparse matrix add32 not found")
def test_drop_zeros_on_add32_equals_scipy():
    # The symbolic A·A of add32 stores 102,422 entries; scipy keeps the 56,412 nonzero ones.
    a = load_suitesparse("add32").copy()
    assert mlx_kernels.spgemm(a, a).nnz == 102_422
    expected = (a @ a).tocsr()
    expected.sort_indices()
    for ours in (mlx_kernels.spgemm(a, a, drop_zeros=True), to_scipy_tensor(mlx_kernels.spgemm(
            torch_csr(a, torch.int32), torch_csr(a, torch.int32), drop_zeros=True))):
        assert ours.nnz == expected.nnz == 56_412
        assert np.array_equal(ours.indptr, expected.indptr) and np.array_equal(ours.indices, expected.indices)
        assert abs(ours - expected).max() <= 1e-12 * abs(expected).max()


def to_scipy_tensor(t):
    return sp.csr_matrix((t.values().cpu().numpy(), t.col_indices().cpu().numpy(), t.crow_indices().cpu().numpy()),
                         shape=t.shape)


def test_nan_and_inf_propagate_to_the_entries_they_touch(device):
    # NaN and Inf in A or B reach exactly the output entries whose products use them
    # (NaN·0 = NaN, Inf·0 = NaN, Inf - Inf = NaN), as scipy computes; nothing else changes.
    rng = np.random.default_rng(5)
    a = random_csr(30, 20, row_lengths("uniform", 30, 20), seed=31)
    b = random_csr(20, 25, row_lengths("uniform", 20, 25), seed=32)
    a.data[rng.choice(a.nnz, 3, replace=False)] = [np.nan, np.inf, -np.inf]
    b.data[rng.choice(b.nnz, 2, replace=False)] = [np.nan, np.inf]
    b.data[rng.choice(b.nnz, 2, replace=False)] = 0.0  # explicit zeros: Inf·0 = NaN
    with np.errstate(invalid="ignore"):
        expected = (a @ b).toarray()
        touched = (ones_like(a) @ ones_like(b)).toarray() > 0
    assert (~np.isfinite(expected)).any()
    for value_dtype in (torch.float64, torch.float32):
        out = mlx_kernels.spgemm(torch_csr(a, value_dtype=value_dtype, device=device),
                                 torch_csr(b, value_dtype=value_dtype, device=device))
        ours = out.to_dense().cpu().double().numpy()
        assert np.array_equal(np.isnan(ours), np.isnan(expected))
        assert np.array_equal(np.isposinf(ours), np.isposinf(expected))
        assert np.array_equal(np.isneginf(ours), np.isneginf(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(ours[finite], expected[finite], rtol=1e-5, atol=1e-6)
        assert not ours[~touched].any()
    with np.errstate(invalid="ignore"):
        out = mlx_kernels.spgemm(a, b, drop_zeros=True)
        assert np.array_equal(np.isnan(out.toarray()), np.isnan(expected))


def test_gradient_through_spgemm_csr_raises_naming_the_op():
    a = random_csr(6, 5, row_lengths("uniform", 6, 5), seed=41)
    args = list(op_args(a, a.T.tocsr()))
    args[2] = args[2].clone().requires_grad_()
    crow, col, val = ops.spgemm_csr(*args)
    assert val.requires_grad
    with pytest.raises(RuntimeError, match=r"mlx\.spgemm_csr is not differentiable"):
        val.sum().backward()
    # Through the public API on a torch sparse tensor that requires grad: the same error, never a silent None.
    ta = torch_csr(a).requires_grad_()
    out = mlx_kernels.spgemm(ta, torch_csr(a.T.tocsr()))
    assert out.requires_grad
    with pytest.raises(RuntimeError, match=r"mlx\.spgemm_csr is not differentiable.*torch.sparse.mm"):
        out.values().sum().backward()


def test_spgemm_under_torch_compile_falls_back_to_eager_with_one_warning():
    import sys
    import warnings

    import torch._dynamo

    module = sys.modules["mlx_kernels.spgemm"]
    a = random_csr(20, 30, row_lengths("uniform", 20, 30), seed=14)
    b = random_csr(30, 25, row_lengths("power_law", 30, 25), seed=15)
    ta, tb = torch_csr(a), torch_csr(b).to_sparse_csc()

    def two_hop(x, y):
        return mlx_kernels.spgemm(x, y, drop_zeros=True).to_dense() * 2

    torch._dynamo.reset()
    module._warned_eager = False
    compiled = torch.compile(two_hop)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = compiled(ta, tb)
        second = compiled(ta, tb)
    expected = two_hop(ta, tb)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    notes = [w for w in caught if "runs eagerly under torch.compile" in str(w.message)]
    assert len(notes) == 1 and "spgemm_csr" in str(notes[0].message)
    # fullgraph=True cannot graph-break: refused with the reason, never an IndexError from inside dynamo.
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match=r"runs eagerly.*spgemm_csr on the CSR"):
        torch.compile(two_hop, fullgraph=True)(ta, tb)


@pytest.mark.parametrize("bad,match", [
    (lambda a: (a, torch.zeros(3, 3).to_sparse_csr()), "inner dimensions"),
    (lambda a: (a, a.to_dense()), "sparse_csr"),
    (lambda a: (a.to(torch.float16), a.t().to_sparse_csr().to(torch.float16)), "float32 or float64"),
    (lambda a: (a, sp.csr_matrix((5, 2))), r"must both be torch sparse tensors .* or both scipy sparse matrices, "
     r"got a torch tensor and a scipy sparse matrix; convert one side: scipy -> torch with torch.sparse_csr_tensor"),
    (lambda a: (sp.csr_matrix((3, 4)), a), r"got a scipy sparse matrix and a torch tensor; convert one side"),
    (lambda a: (a, None), r"must both be torch sparse tensors .* got a torch tensor and NoneType"),
    (lambda a: (torch.stack([a.to_dense()] * 2).to_sparse_csr(), a), r"a must be a 2-D matrix, got shape \(2, 4, 5\)"),
    (lambda a: (a.to_dense()[:, :, None].to_sparse(2), a.t()), r"a is a hybrid sparse tensor with 1 dense dimension"),
    (lambda a: (a, a.t().to(torch.int64)), r"values must be float32 or float64"),
])
def test_spgemm_api_bad_inputs(bad, match):
    a = torch.eye(4, 5, dtype=torch.float64).to_sparse_csr()
    with pytest.raises((TypeError, ValueError), match=match):
        mlx_kernels.spgemm(*bad(a))


def test_torch_compile_fullgraph():
    import torch._dynamo

    a = random_csr(20, 30, row_lengths("uniform", 20, 30), seed=14)
    b = random_csr(30, 25, row_lengths("power_law", 30, 25), seed=15)
    args = op_args(a, b)

    def square_values(*args):
        crow, col, val = ops.spgemm_csr(*args)
        return crow, col, val * 2

    torch._dynamo.reset()
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        crow, col, val = torch.compile(square_values, fullgraph=True)(*args)
    expected = ops.spgemm_csr(*args)
    assert torch.equal(crow, expected[0]) and torch.equal(col, expected[1])
    torch.testing.assert_close(val, expected[2] * 2, rtol=0, atol=0)


# --- CUDA -------------------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("name", REAL_MATRICES[:4])
def test_cuda_matches_cpu_and_cusparse(name):
    a = load_suitesparse(name).copy()
    args = op_args(a, a, torch.int32, torch.float64, "cuda")
    gpu = ops.spgemm_csr(*args)
    cpu = ops.spgemm_csr(*(t.cpu() if isinstance(t, torch.Tensor) else t for t in args))
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
    torch.testing.assert_close(gpu[2].cpu(), cpu[2], rtol=1e-12, atol=1e-12)
    ta = torch.sparse_csr_tensor(*args[:3], size=a.shape)
    ref = torch.sparse.mm(ta, ta).to_dense()
    torch.testing.assert_close(mlx_kernels.spgemm(ta, ta).to_dense(), ref, rtol=1e-12, atol=1e-12)


@requires_cuda
def test_cuda_global_tables_in_several_batches():
    # 1100 rows of 1000 × 5 products each: every row's hash table lives in global
    # memory (2^14 slots), more rows than one batch of the 2^24-slot pool holds.
    a = random_csr(1100, 3000, np.full(1100, 1000), seed=1)
    b = random_csr(3000, 20000, np.full(3000, 5), seed=2)
    out = ops.spgemm_csr(*op_args(a, b, device="cuda"))
    check_csr(out, 1100, 20000, torch.int64, torch.float64, "cuda")
    check_against_scipy(to_scipy(out, (1100, 20000)), a, b)


@requires_cuda
def test_cuda_one_row_larger_than_the_table_pool():
    # One output row of 2^23 + 1 columns: its tables (2^25 slots) exceed the pool.
    n = 2**23 + 1
    a = sp.csr_matrix(np.array([[2.0]]))
    b = sp.csr_matrix((np.linspace(-1, 1, n), np.arange(n), np.array([0, n])), shape=(1, n))
    crow, col, val = ops.spgemm_csr(*op_args(a, b, device="cuda"))
    assert crow.tolist() == [0, n]
    assert torch.equal(col.cpu(), torch.arange(n))
    assert torch.equal(val.cpu(), 2 * torch.from_numpy(b.data))


@requires_cuda
def test_cuda_mixed_devices_rejected():
    a = random_csr(5, 5, np.full(5, 2))
    args = list(op_args(a, a))
    args[3] = args[3].cuda()
    with pytest.raises(RuntimeError, match=r"spgemm_csr.*one device"):
        ops.spgemm_csr(*args)
