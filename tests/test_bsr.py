"""bsr family: bsr_spmm and BlockSparseMatrix against the float64 oracle, scipy
and real SuiteSparse matrices; SMaT row reordering; internal CPU ops."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mlx_kernels
import oracles
from conftest import assert_close_to_oracle, requires_cuda
from mlx_kernels import BlockSparseMatrix, ops
from mlx_kernels.bench.datasets import load_suitesparse, suitesparse_names

sp = pytest.importorskip("scipy.sparse")

# Small/medium SuiteSparse matrices (the larger ones run in the benchmark only).
REAL = ["cryg2500", "USpowerGrid", "add32", "bcsstk13", "ca-GrQc"]


def random_sparse(m, k, density, dtype=torch.float32, device="cpu"):
    a = torch.randn(m, k, dtype=torch.float64)
    return (a * (torch.rand(m, k) < density)).to(dtype).to(device)


def block_structured(m, k, block, block_density, entry_density, shuffle_rows=False, seed=0):
    """A matrix whose non-zeros fall in a random subset of aligned blocks (then,
    optionally, with its rows shuffled so only a reordering recovers the blocks)."""
    g = torch.Generator().manual_seed(seed)
    br, bc = block
    mask = torch.rand(-(-m // br), -(-k // bc), generator=g) < block_density
    mask = mask.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:m, :k]
    a = torch.randn(m, k, generator=g) * mask * (torch.rand(m, k, generator=g) < entry_density)
    if shuffle_rows:
        a = a[torch.randperm(m, generator=g)]
    return a


def reference_same_dtype(a_dense, b):
    """Plain torch computing the same product in the same dtype (the tolerance rule's reference)."""
    return (a_dense.cpu() @ b.cpu()).to(b.dtype)


def check_product(a: BlockSparseMatrix, a_dense, b):
    out = a @ b
    assert out.shape == (a.shape[0], b.shape[1]) and out.dtype == b.dtype and out.device == b.device
    oracle = oracles.bsr_spmm(a.crow, a.col, a.blocks, b, a.shape[0], a.row_perm)
    torch.testing.assert_close(oracle, a_dense.cpu().double() @ b.cpu().double())  # the oracle reads A right
    assert_close_to_oracle(out.cpu(), oracle, reference_same_dtype(a_dense, b), atol=1e-12)
    return out


# --- bsr_spmm against the float64 oracle --------------------------------------------


@pytest.mark.parametrize("block", [(16, 16), (16, 8), (8, 4), (3, 5), (1, 1)])
@pytest.mark.parametrize("reorder", [False, True])
@pytest.mark.parametrize(
    "m,k,n,density",
    [(0, 5, 7, 0.5), (5, 0, 7, 0.5), (5, 7, 0, 0.5), (1, 1, 1, 1.0), (37, 45, 7, 0.2), (100, 64, 33, 0.05),
     (64, 200, 128, 0.01), (50, 30, 9, 1.0), (70, 90, 40, 0.0)],
)
def test_bsr_spmm_matches_oracle(device, block, reorder, m, k, n, density):
    a_dense = random_sparse(m, k, density)
    a = BlockSparseMatrix.from_dense(a_dense, block=block, reorder=reorder).to(device)
    b = torch.randn(k, n, device=device)
    check_product(a, a_dense, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("block", [(16, 16), (16, 8), (4, 8)])
def test_bsr_spmm_dtypes(device, dtype, block):
    a_dense = random_sparse(83, 150, 0.15, dtype)
    a = BlockSparseMatrix.from_dense(a_dense, block=block).to(device)
    assert a.dtype == dtype
    b = torch.randn(150, 70, dtype=dtype, device=device)
    check_product(a, a_dense, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("block", [(16, 16), (16, 8), (3, 5), (2, 64), (64, 3), (1, 1)])
@pytest.mark.parametrize("reorder", [False, True])
@pytest.mark.parametrize("n", [1, 33])
def test_packed_cpu_path_matches_dense_blocks(dtype, block, reorder, n):
    # On the CPU, a @ b runs on the packed rows (bsr_spmm_packed, its own walk for
    # n = 1); the public op on the dense blocks visits the same terms in the same
    # order: equal bit for bit. Rows 0-4 hold more than one 64-term partial sum.
    a_dense = random_sparse(77, 150, 0.1, dtype)
    a_dense[:5] = random_sparse(5, 150, 0.7, dtype)
    a_dense[20:30] = 0
    a = BlockSparseMatrix.from_dense(a_dense, block=block, reorder=reorder)
    assert a._packed is not None
    _, _, row_words, row_values, word_blocks, word_cols, values = a._packed
    nonzero_rows = (a.blocks != 0).any(dim=2)
    assert word_blocks.numel() == word_cols.numel() == int(nonzero_rows.sum()) == int(row_words[-1])
    assert values.numel() == a.nnz == int(row_values[-1])
    # Each row lists its blocks in ascending order (the dense path's term order).
    for s in range(77):
        blocks_of_row = word_blocks[row_words[s]:row_words[s + 1]]
        assert bool((blocks_of_row.diff() > 0).all())
    b = torch.randn(150, n, dtype=dtype)
    packed = a @ b
    torch.testing.assert_close(packed, mlx_kernels.bsr_spmm(a.crow, a.col, a.blocks, b, 77, a.row_perm),
                               rtol=0, atol=0)
    check_product(a, a_dense, b)


def test_packed_error_in_a_later_part_is_raised_once():
    # Large enough for several parallel parts: a bad word in the last row is found
    # by its part's kernel and reported after the loop, the same error each time.
    a = BlockSparseMatrix.from_dense(random_sparse(600, 300, 0.05), block=(16, 16), reorder=False)
    b = torch.randn(300, 256)
    crow, col, row_words, row_values, word_blocks, word_cols, values = a._packed
    word_blocks = word_blocks.clone()
    word_blocks[int(row_words[-2])] = 0  # the last row's first word names a block of block row 0
    for _ in range(3):
        with pytest.raises(RuntimeError, match=r"'word_blocks'\[\d+\] = 0 is not a block of stored row 599"):
            ops.bsr_spmm_packed(crow, col, row_words, row_values, word_blocks, word_cols, values, b, 600, 16, 16)


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("variant", ["bsr_spmm", "bsr_spmm_unchecked", "bsr_spmm_packed"])
def test_ops_survive_corrupted_indices(variant, index_dtype, device):
    # No index array is trusted: random corruptions (any position, values in and far
    # out of range, single flipped bits) raise a RuntimeError naming the op or give a
    # result, and never read or write out of bounds (on the CPU that would crash this
    # process; on CUDA it is an illegal-address error here and a compute-sanitizer
    # finding). bsr_spmm_unchecked checks no index value on CUDA: there every call must
    # give a result. Block rows of 75 blocks also take CUDA's split-row path.
    if variant == "bsr_spmm_packed" and (device != "cpu" or index_dtype != torch.int64):
        pytest.skip("bsr_spmm_packed is a CPU op with int64 indices")
    a = BlockSparseMatrix.from_dense(random_sparse(70, 1200, 0.1), block=(16, 16), reorder=False)
    b = torch.randn(1200, 5)
    row_perm = torch.randperm(70)  # any permutation: the values of the product are not checked
    if variant == "bsr_spmm_packed":
        args = [*a._packed, b, 70, 16, 16, row_perm]
        indices = [0, 1, 2, 3, 4, 5, 11]  # crow, col, row_words, row_values, word_blocks, word_cols, row_perm
    else:
        a, b = a.to(device), b.to(device)
        args = [a.crow.to(index_dtype), a.col.to(index_dtype), a.blocks, b, 70, row_perm.to(device)]
        indices = [0, 1, 5]  # crow, col, row_perm
    op, name = getattr(ops, variant), variant.removesuffix("_unchecked")
    always_a_result = variant == "bsr_spmm_unchecked" and device == "cuda"
    g = torch.Generator().manual_seed(1)
    for trial in range(300):
        broken = list(args)
        index = indices[int(torch.randint(0, len(indices), (1,), generator=g))]
        broken[index] = broken[index].clone()
        position = int(torch.randint(0, broken[index].numel(), (1,), generator=g))
        bits = torch.iinfo(broken[index].dtype).bits  # values far out of range, in the array's type
        far = 2 ** (bits - 2)
        if trial % 2:
            choices = [-far, -1, 0, 1, 15, 16, 63, 64, 1000, far]
            broken[index][position] = choices[int(torch.randint(0, len(choices), (1,), generator=g))]
        else:
            broken[index][position] ^= 1 << int(torch.randint(0, bits - 1, (1,), generator=g))
        try:
            out = op(*broken)
            if device == "cuda":
                torch.cuda.synchronize()  # a fault in the kernels surfaces here
        except RuntimeError as e:
            assert not always_a_result and name in str(e), str(e)
        else:
            assert out.shape == (70, 5)


def test_malformed_structure_is_reported_when_built(device):
    # A matrix from raw BCSR tensors is checked once, by bsr_spmm's checks, when it is
    # built: its products then skip the index checks (a device sync on CUDA).
    a = BlockSparseMatrix.from_dense(random_sparse(40, 50, 0.3), block=(16, 16), reorder=False).to(device)
    for crow, col, blocks, row_perm, error in [
            (a.crow.flip(0), a.col, a.blocks, None, r"'crow' must start at 0"),
            (a.crow, a.col + 3, a.blocks, None, r"'col'\[\d+\] = \d+ is out of range"),
            (a.crow, a.col, a.blocks, torch.zeros(40, dtype=torch.int64, device=device),
             r"'row_perm' must be a permutation"),
            (a.crow.float(), a.col, a.blocks, None, r"'crow' must have dtype int32 or int64"),
            (a.crow, a.col, a.blocks.flatten(1), None, r"'blocks' must be 3-D"),
            (a.crow, a.col, a.blocks[:, :0], None, r"'blocks' must be \[nblocks, br, bc\] with br, bc >= 1")]:
        with pytest.raises(RuntimeError, match=r"bsr_spmm: .*" + error):
            BlockSparseMatrix(crow, col, blocks, a.shape, row_perm)
    rebuilt = BlockSparseMatrix(a.crow, a.col, a.blocks, a.shape)
    b = torch.randn(50, 3, device=device)
    torch.testing.assert_close(rebuilt @ b, a @ b, rtol=0, atol=0)


def test_blocks_wider_than_64_use_dense_blocks():
    a_dense = random_sparse(30, 150, 0.1)
    a = BlockSparseMatrix.from_dense(a_dense, block=(4, 70))
    assert a._packed is None  # one bit per column: at most 64 columns
    check_product(a, a_dense, torch.randn(150, 5))


def test_bsr_spmm_int32_indices_and_noncontiguous(device):
    a_dense = random_sparse(40, 50, 0.3)
    a = BlockSparseMatrix.from_dense(a_dense, block=(16, 8), reorder=True).to(device)
    b = torch.randn(24, 50, device=device).t()  # a transposed view
    blocks = a.blocks.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    out = mlx_kernels.bsr_spmm(a.crow.int(), a.col.int(), blocks, b, 40, a.row_perm)
    torch.testing.assert_close(out.cpu().double(), a_dense.double() @ b.cpu().double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,block", [(torch.float32, (16, 16)), (torch.bfloat16, (16, 16)),
                                         (torch.float16, (16, 8)), (torch.float32, (8, 8))])
def test_bsr_spmm_never_reads_padding_columns_past_k(device, dtype, block):
    # Garbage in the padding columns of the last block column must not matter:
    # every kernel stops at b's row k (the tensor-core one zero-fills A's columns
    # past k, element by element where an 8-value piece straddles k = 21).
    a_dense = random_sparse(20, 21, 0.5).to(dtype)
    a = BlockSparseMatrix.from_dense(a_dense, block=block, reorder=False)
    blocks = a.blocks.clone()
    last_block_col = a.col == a.col.max()
    blocks[last_block_col, :, 21 % block[1]:] = float("nan")
    b = torch.randn(21, 3).to(dtype)
    expected = a_dense.double() @ b.double()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    out = mlx_kernels.bsr_spmm(a.crow.to(device), a.col.to(device), blocks.to(device), b.to(device), 20)
    torch.testing.assert_close(out.cpu().double(), expected, **tol)
    # BlockSparseMatrix multiplies the same blocks on CUDA; on the CPU its packed
    # form drops the padding (rows past m too) when it is built.
    blocks[int(a.crow[-2]):, 20 % block[0]:] = float("nan")  # the last block row's rows past m = 20
    packed = BlockSparseMatrix(a.crow, a.col, blocks, a.shape).to(device)
    torch.testing.assert_close((packed @ b.to(device)).cpu().double(), expected, **tol)


@pytest.mark.parametrize("dtype,block", [(torch.float32, (16, 16)), (torch.bfloat16, (16, 16)),
                                         (torch.float16, (16, 8)), (torch.float64, (3, 5))])
def test_bsr_spmm_stored_zeros_against_inf_and_nan(device, dtype, block):
    # The rule (bsr.h): an entry of a stored block is multiplied as in a dense
    # matmul, zeros included, so a stored zero times Inf or NaN in b is NaN; an
    # entry outside the stored blocks, or in the padding past m or k, adds nothing.
    # Both devices and both CPU forms (dense and packed blocks) follow it.
    m, k, n = 20, 21, 5
    a_dense = torch.zeros(m, k, dtype=torch.float64)
    a_dense[0, 0], a_dense[1, 1] = 2.0, -3.0  # block (0, 0) is stored, zeros and all
    a_dense[17, 18] = 1.0  # a block of the last block row, with padding past m
    a_dense = a_dense.to(dtype)
    a = BlockSparseMatrix.from_dense(a_dense, block=block, reorder=False)
    stored = oracles.bsr_to_dense(a.crow, a.col, torch.ones_like(a.blocks), m, k) != 0
    b = torch.randn(k, n, dtype=torch.float64)
    b[0, 0], b[1, 1], b[1, 2], b[18, 3] = float("inf"), float("nan"), float("-inf"), float("inf")
    b = b.to(dtype)
    # The rule, term by term in float64 (the IEEE sum of the stored entries' products).
    terms = a_dense.double()[:, :, None] * b.double()[None, :, :]
    expected = torch.where(stored[:, :, None], terms, 0.0).sum(1)
    assert expected[0, 1].isnan() and expected[0, 0].isinf() and expected[16, 3].isnan()
    assert expected[:, 4].isfinite().all()  # b's column 4 is finite
    tol = dict(rtol=2e-2, atol=2e-2) if dtype in (torch.float16, torch.bfloat16) else dict(rtol=1e-5, atol=1e-5)
    out = mlx_kernels.bsr_spmm(a.crow.to(device), a.col.to(device), a.blocks.to(device), b.to(device), m)
    torch.testing.assert_close(out.cpu().double(), expected, equal_nan=True, **tol)
    on_device = a.to(device)
    torch.testing.assert_close((on_device @ b.to(device)).cpu().double(), expected, equal_nan=True, **tol)


def test_bsr_spmm_empty_rows_and_all_empty(device):
    a_dense = random_sparse(80, 64, 0.3)
    a_dense[16:48] = 0  # two empty block rows
    a_dense[70:] = 0  # a partly empty last block row
    b = torch.randn(64, 10, device=device)
    for reorder in (False, True):
        check_product(BlockSparseMatrix.from_dense(a_dense, reorder=reorder).to(device), a_dense, b)
    empty = BlockSparseMatrix.from_dense(torch.zeros(50, 64), reorder=True).to(device)
    assert empty.nblocks == 0
    assert (empty @ b).abs().max().item() == 0


def test_bsr_spmm_long_block_rows(device):
    # Block rows far longer than one CUDA chunk (32 blocks) next to short ones.
    a_dense = random_sparse(64, 16 * 120, 0.02)
    a_dense[:16] = torch.randn(16, 16 * 120)  # 120 dense blocks in the first block row
    a = BlockSparseMatrix.from_dense(a_dense, reorder=False).to(device)
    check_product(a, a_dense, torch.randn(16 * 120, 100, device=device))


@settings(max_examples=20, deadline=None)
@given(m=st.integers(0, 60), k=st.integers(0, 60), n=st.integers(0, 20), br=st.integers(1, 17),
       bc=st.integers(1, 17), density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), reorder=st.booleans())
def test_bsr_spmm_property_cpu(m, k, n, br, bc, density, reorder):
    a_dense = random_sparse(m, k, density)
    a = BlockSparseMatrix.from_dense(a_dense, block=(br, bc), reorder=reorder)
    torch.testing.assert_close(a.to_dense(), a_dense)
    check_product(a, a_dense, torch.randn(k, n))


# --- against scipy --------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.002, 0.02, 0.2])
@pytest.mark.parametrize("block", [(16, 16), (16, 8)])
def test_bsr_matches_scipy_random(device, density, block):
    a_sp = sp.random(300, 257, density=density, format="csr", dtype=np.float64, random_state=1)
    b = np.random.default_rng(0).standard_normal((257, 32))
    expected = a_sp @ b
    for reorder in (False, True):
        a = BlockSparseMatrix.from_scipy(a_sp, block=block, reorder=reorder).to(device)
        assert a.dtype == torch.float64 and a.nnz == a_sp.nnz
        out = (a @ torch.from_numpy(b).to(device)).cpu().numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block_density,entry_density", [(0.05, 1.0), (0.1, 0.5), (0.3, 0.1)])
def test_bsr_matches_scipy_block_structured(device, block_density, entry_density):
    a_dense = block_structured(200, 160, (16, 16), block_density, entry_density, shuffle_rows=True)
    a_sp = sp.csr_matrix(a_dense.numpy())
    b = torch.randn(160, 48)
    expected = a_sp @ b.numpy()
    for block in ((16, 16), (16, 8)):
        a = BlockSparseMatrix.from_scipy(a_sp, block=block).to(device)
        assert a.dtype == torch.float32
        out = (a @ b.to(device)).cpu()
        assert_close_to_oracle(out, a_dense.double() @ b.double(), a_dense @ b)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def real_matrix(name):
    if name not in suitesparse_names():
        pytest.skip(f"SuiteSparse matrix {name} not present")
    return load_suitesparse(name).copy()


@pytest.mark.parametrize("name", REAL)
def test_bsr_real_matrices(device, name):
    a_sp = real_matrix(name)
    b64 = np.random.default_rng(0).standard_normal((a_sp.shape[1], 16))
    expected = a_sp @ b64
    scale = np.abs(expected).max() + 1e-300
    plain = BlockSparseMatrix.from_scipy(a_sp, reorder=False)
    reordered = BlockSparseMatrix.from_scipy(a_sp, reorder=True)
    assert reordered.nblocks <= plain.nblocks and reordered.nnz == plain.nnz == a_sp.count_nonzero()
    for a in (plain, reordered):
        out64 = (a.to(device) @ torch.from_numpy(b64).to(device)).cpu().numpy()
        np.testing.assert_allclose(out64 / scale, expected / scale, rtol=0, atol=1e-13)
    # fp32 under the tolerance rule; plain torch = torch.sparse CSR in fp32.
    a32 = a_sp.astype(np.float32)
    b32 = torch.from_numpy(b64).float()
    a_torch = torch.sparse_csr_tensor(torch.from_numpy(a32.indptr).long(), torch.from_numpy(a32.indices).long(),
                                      torch.from_numpy(a32.data), size=a32.shape)
    reference = a_torch @ b32
    oracle = torch.from_numpy(a_sp.astype(np.float32).astype(np.float64) @ b32.double().numpy())
    out32 = BlockSparseMatrix.from_scipy(a32, reorder=True).to(device) @ b32.to(device)
    assert_close_to_oracle(out32.cpu(), oracle, reference)


# --- BlockSparseMatrix ---------------------------------------------------------------


def test_block_sparse_matrix_api(device):
    a_dense = random_sparse(45, 70, 0.1, torch.bfloat16)
    a = BlockSparseMatrix.from_dense(a_dense.to(device), block=(16, 8))
    assert a.shape == (45, 70) and a.block == (16, 8) and a.device.type == device and a.dtype == torch.bfloat16
    assert a.nnz == int((a_dense != 0).sum())
    assert a.fill == pytest.approx(a.nnz / (a.nblocks * 16 * 8))
    torch.testing.assert_close(a.to_dense().cpu(), a_dense, rtol=0, atol=0)
    moved = a.to("cpu")
    assert moved.device.type == "cpu" and moved.nblocks == a.nblocks
    v = torch.randn(70, dtype=torch.bfloat16, device=device)
    assert (a @ v).shape == (45,)
    with pytest.raises(ValueError, match="b must be"):
        a @ torch.randn(71, 3, dtype=torch.bfloat16, device=device)
    assert "BlockSparseMatrix" in repr(a)


def test_from_csr_matches_from_dense(device):
    a_dense = random_sparse(60, 33, 0.2, torch.float16)
    csr = a_dense.to_sparse_csr()
    csr32 = torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape)
    for source in (csr, csr32):
        a = BlockSparseMatrix.from_csr(source.to(device), block=(16, 16), reorder=True)
        assert a.dtype == torch.float16
        torch.testing.assert_close(a.to_dense().cpu(), a_dense, rtol=0, atol=0)
    with pytest.raises(ValueError, match="sparse_csr"):
        BlockSparseMatrix.from_csr(a_dense)


def test_from_scipy_sums_duplicates_and_keeps_dtype():
    coo = sp.coo_matrix((np.array([1.0, 2.0, 3.0], dtype=np.float32), (np.array([0, 0, 5]), np.array([1, 1, 4]))),
                        shape=(7, 9))
    a = BlockSparseMatrix.from_scipy(coo, block=(4, 4))
    assert a.dtype == torch.float32
    np.testing.assert_array_equal(a.to_dense().numpy(), coo.toarray())


def test_torch_compile_through_matmul(device):
    a_dense = random_sparse(50, 40, 0.2)
    a = BlockSparseMatrix.from_dense(a_dense, reorder=True).to(device)

    @torch.compile(fullgraph=True)
    def scaled_product(b):
        return a.matmul(b) * 2.0

    b = torch.randn(40, 12, device=device)
    torch.testing.assert_close(scaled_product(b).cpu().double(), 2 * a_dense.double() @ b.cpu().double(),
                               rtol=1e-5, atol=1e-5)


# --- SMaT row reordering -------------------------------------------------------------


def blocks_needed(a_dense, perm, block):
    return BlockSparseMatrix.from_dense(a_dense[perm], block=block, reorder=False).nblocks


@pytest.mark.parametrize("block", [(16, 16), (16, 8)])
def test_reordering_recovers_shuffled_blocks(block):
    a_dense = block_structured(512, 512, block, 0.05, 0.6, shuffle_rows=True)
    csr = a_dense.to_sparse_csr()
    perm = ops.bsr_reorder_rows(csr.crow_indices(), csr.col_indices(), 512, *block)
    assert torch.equal(perm.sort().values, torch.arange(512))
    before = blocks_needed(a_dense, torch.arange(512), block)
    after = blocks_needed(a_dense, perm, block)
    assert after * 2 <= before, (before, after)
    a = BlockSparseMatrix.from_dense(a_dense, block=block, reorder=True)
    assert a.nblocks == after and a.fill > BlockSparseMatrix.from_dense(a_dense, block=block, reorder=False).fill


def test_reordering_never_worse_than_original_order():
    # A banded matrix is already in its best order: the heuristic keeps it.
    a_dense = torch.zeros(300, 300)
    for offset in range(-3, 4):
        a_dense += torch.diag(torch.ones(300 - abs(offset)), offset)
    a = BlockSparseMatrix.from_dense(a_dense, reorder=True)
    assert a.nblocks <= BlockSparseMatrix.from_dense(a_dense, reorder=False).nblocks


def test_reorder_and_from_csr_ops_check_inputs():
    crow, col = torch.tensor([0, 1, 2]), torch.tensor([0, 5])
    with pytest.raises(RuntimeError, match=r"bsr_reorder_rows.*'col'\[1\] = 5 is out of range"):
        ops.bsr_reorder_rows(crow, col, 4, 16, 16)
    with pytest.raises(RuntimeError, match=r"bsr_from_csr.*'crow' must end at nnz"):
        ops.bsr_from_csr(torch.tensor([0, 1, 3]), col, torch.ones(2), 8, 16, 16)
    with pytest.raises(RuntimeError, match=r"bsr_from_csr.*'row_perm' must be a permutation"):
        ops.bsr_from_csr(crow, col, torch.ones(2), 8, 16, 16, torch.tensor([0, 0]))
    with pytest.raises(RuntimeError, match=r"bsr_from_csr.*block shape"):
        ops.bsr_from_csr(crow, col, torch.ones(2), 8, 0, 16)


def test_internal_ops_opcheck():
    csr = random_sparse(40, 30, 0.2).to_sparse_csr()
    # Plain copies: torch 2.13's opcheck cannot fake a view into a sparse tensor's index arrays.
    crow, col, values = csr.crow_indices().clone(), csr.col_indices().clone(), csr.values().clone()
    perm = torch.randperm(40)
    torch.library.opcheck(torch.ops.mlx.bsr_reorder_rows, (crow, col, 30, 16, 8))
    torch.library.opcheck(torch.ops.mlx.bsr_from_csr, (crow, col, values, 30, 16, 8, perm))
    torch.library.opcheck(torch.ops.mlx.bsr_from_csr, (crow.int(), col.int(), values.half(), 30, 4, 4))


# --- CUDA against CPU ----------------------------------------------------------------


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block", [(64, 64), (1, 128), (130, 3), (65, 33)])
def test_bsr_spmm_cuda_any_block_shape(dtype, block):
    # Blocks beyond one SIMT slice (64 rows × 32 columns) are taken slice by slice.
    a_dense = random_sparse(300, 260, 0.05).to(dtype)
    a_dense[:2] = torch.randn(2, 260).to(dtype)  # long block rows, split over CTAs for small blocks
    a = BlockSparseMatrix.from_dense(a_dense, block=block, reorder=False)
    b = torch.randn(260, 45, dtype=dtype)
    on_gpu = a.to("cuda")
    assert on_gpu.crow.dtype == on_gpu.col.dtype == torch.int32  # what the kernels read: no cast per product
    out = (on_gpu @ b.cuda()).cpu()
    assert_close_to_oracle(out, oracles.bsr_spmm(a.crow, a.col, a.blocks, b, 300, a.row_perm),
                           reference_same_dtype(a_dense, b))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("block", [(16, 16), (16, 8), (32, 32), (8, 8)])
@pytest.mark.parametrize("n", [1, 32, 77, 128, 512])
def test_bsr_spmm_cuda_matches_cpu(dtype, block, n):
    a_dense = block_structured(700, 900, (16, 16), 0.1, 0.4, shuffle_rows=True).to(dtype)
    a_dense[:16] = torch.randn(16, 900).to(dtype)  # one long (split) block row
    a = BlockSparseMatrix.from_dense(a_dense, block=block, reorder=True)
    b = torch.randn(900, n, dtype=dtype)
    out = (a.to("cuda") @ b.cuda()).cpu()
    assert_close_to_oracle(out, oracles.bsr_spmm(a.crow, a.col, a.blocks, b, 700, a.row_perm),
                           reference_same_dtype(a_dense, b))


# --- autograd ------------------------------------------------------------------------


def _bsr_args(m, k, block, reorder, density=0.3, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    a_dense = torch.randn(m, k, generator=g, dtype=torch.float64) * (torch.rand(m, k, generator=g) < density)
    a = BlockSparseMatrix.from_dense(a_dense.to(dtype), block=block, reorder=reorder).to(device)
    return a, a_dense.to(dtype)


def stored_mask(a: BlockSparseMatrix) -> torch.Tensor:
    """[m, k] bool: the entries of A inside a stored block (A's row order)."""
    return oracles.bsr_to_dense(a.crow, a.col, torch.ones_like(a.blocks, device="cpu"), a.shape[0], a.shape[1],
                                a.row_perm) != 0


@pytest.mark.parametrize("variant", ["bsr_spmm", "bsr_spmm_unchecked"])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("permuted", [False, True])
@pytest.mark.parametrize("m,k,n,block", [(37, 45, 5, (16, 8)), (5, 3, 2, (3, 2)), (20, 21, 3, (4, 4)),
                                         (0, 4, 3, (2, 2)), (4, 0, 3, (2, 2)), (6, 5, 0, (2, 3)), (9, 7, 1, (1, 1))])
def test_bsr_spmm_gradcheck(variant, index_dtype, permuted, m, k, n, block):
    # Ragged m and k (padded blocks), empty m, k and n; with a row_perm (any permutation
    # of the stored rows is a valid matrix) the backward gathers g's rows through it.
    a, _ = _bsr_args(m, k, block, False)
    row_perm = torch.randperm(m) if permuted else None
    blocks = a.blocks.clone().requires_grad_()
    b = torch.randn(k, n, dtype=torch.float64, requires_grad=True)
    op = getattr(ops, variant)
    crow, col = a.crow.to(index_dtype), a.col.to(index_dtype)
    assert torch.autograd.gradcheck(lambda bl, bb: op(crow, col, bl, bb, m, row_perm), (blocks, b))
    # One input at a time (the other saved tensor is then not kept).
    assert torch.autograd.gradcheck(lambda bl: op(crow, col, bl, b.detach(), m, row_perm), (blocks,))
    assert torch.autograd.gradcheck(lambda bb: op(crow, col, blocks.detach(), bb, m, row_perm), (b,))


def test_bsr_spmm_gradcheck_with_row_perm():
    # A shuffled block structure: the reordering finds a permutation, so the backward
    # gathers g's rows through it (d/db) and the SDDMM reads g through it (d/dblocks).
    a_dense = block_structured(40, 36, (4, 4), 0.2, 0.6, shuffle_rows=True).double()
    a = BlockSparseMatrix.from_dense(a_dense, block=(4, 4), reorder=True)
    assert a.row_perm is not None
    blocks = a.blocks.clone().requires_grad_()
    b = torch.randn(36, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda bl, bb: ops.bsr_spmm(a.crow, a.col, bl, bb, 40, a.row_perm),
                                    (blocks, b))


def cut_blocks(a: BlockSparseMatrix, full: torch.Tensor) -> torch.Tensor:
    """A dense [m, k] tensor (A's row order) cut into A's stored blocks [nblocks, br, bc], 0 in
    the padding (bsr_to_dense's inverse)."""
    m, k = a.shape
    br, bc = a.block
    stored = full if a.row_perm is None else full[a.row_perm.cpu()]
    padded = full.new_zeros(-(-m // br) * br, -(-k // bc) * bc)
    padded[:m, :k] = stored
    crow, col = a.crow.cpu().long(), a.col.cpu().long()
    block_row = torch.repeat_interleave(torch.arange(crow.numel() - 1), crow.diff())
    tiles = padded.reshape(-1, br, padded.shape[1] // bc, bc).permute(0, 2, 1, 3)
    return tiles[block_row, col]


def padding_mask(a: BlockSparseMatrix) -> torch.Tensor:
    """[nblocks, br, bc] bool: the padding entries of A's blocks (past row m or column k)."""
    return cut_blocks(a, torch.ones(a.shape, dtype=torch.float64)) == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("block", [(16, 16), (16, 8), (3, 5), (40, 33)])
def test_block_sparse_matrix_backward_matches_oracle(device, dtype, block):
    # CPU and CUDA (emulated) kernels of both backward products against float64, under the
    # tolerance rule: plain torch computing the same gradients (a dense matmul's) in the same dtype.
    a, a_dense = _bsr_args(83, 70, block, True, density=0.15, dtype=dtype)
    a = a.to(device).requires_grad_()
    b = torch.randn(70, 37, dtype=dtype, device=device, requires_grad=True)
    g = torch.randn(83, 37, dtype=dtype)
    (a @ b).backward(g.to(device))
    b_cpu = b.detach().cpu()
    oracle_b = a_dense.double().t() @ g.double()
    oracle_blocks = cut_blocks(a, g.double() @ b_cpu.double().t())
    dense = a_dense.clone().requires_grad_()
    b_ref = b_cpu.clone().requires_grad_()
    (dense @ b_ref).backward(g)
    assert a.blocks.grad.dtype == dtype and b.grad.dtype == dtype
    assert_close_to_oracle(b.grad.cpu(), oracle_b, b_ref.grad, atol=1e-12)
    assert_close_to_oracle(a.blocks.grad.cpu(), oracle_blocks, cut_blocks(a, dense.grad), atol=1e-12)
    assert (a.blocks.grad.cpu()[padding_mask(a)] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("block,n", [((16, 16), 40), ((16, 8), 1), ((3, 5), 70), ((1, 1), 3), ((33, 40), 0)])
def test_bsr_sddmm_matches_oracle(device, dtype, block, n):
    # The op on its own: (x @ yᵀ) at the stored blocks, through a row_perm, NaN in the
    # padding of neither input can exist (x, y are dense), padding entries exactly 0.
    a, _ = _bsr_args(53, 47, block, False, density=0.2)
    row_perm = torch.randperm(53)
    x, y = torch.randn(53, n, dtype=dtype), torch.randn(47, n, dtype=dtype)
    out = ops.bsr_sddmm(a.crow.to(device), a.col.to(device), x.to(device), y.to(device), *block,
                        row_perm.to(device)).cpu()
    assert out.shape == a.blocks.shape and out.dtype == dtype
    permuted = BlockSparseMatrix(a.crow, a.col, a.blocks, a.shape, row_perm)
    oracle = cut_blocks(permuted, x.double() @ y.double().t())
    reference = cut_blocks(permuted, (x @ y.t()).to(dtype)) if dtype != torch.float16 else cut_blocks(
        permuted, (x.float() @ y.float().t()).half())  # fp16 matmul on the CPU: through fp32
    assert_close_to_oracle(out, oracle, reference, atol=1e-12)
    assert (out[padding_mask(permuted)] == 0).all()


def test_bsr_sddmm_int32_noncontiguous_and_empty(device):
    a, _ = _bsr_args(30, 20, (8, 4), False, dtype=torch.float32)
    x = torch.randn(9, 30).t()  # a transposed view
    y = torch.randn(20, 9)
    out = ops.bsr_sddmm(a.crow.int().to(device), a.col.int().to(device), x.to(device), y.to(device), 8, 4).cpu()
    torch.testing.assert_close(out, cut_blocks(a, x.double() @ y.double().t()).float(), rtol=1e-5, atol=1e-5)
    empty = BlockSparseMatrix.from_dense(torch.zeros(30, 20), block=(8, 4))
    out = ops.bsr_sddmm(empty.crow.to(device), empty.col.to(device), x.to(device), y.to(device), 8, 4)
    assert out.shape == (0, 8, 4)


@pytest.mark.parametrize("dtype,block", [(torch.float32, (16, 16)), (torch.bfloat16, (16, 16)),
                                         (torch.float16, (16, 8)), (torch.float64, (3, 5))])
def test_nan_in_padding_never_reaches_gradients(device, dtype, block):
    # The contract's padding rule, backward too: NaN in the padding rows (past m) and
    # columns (past k) of the blocks changes neither product nor gradient; the padding
    # entries' gradient is exactly 0.
    a, a_dense = _bsr_args(20, 21, block, False, density=0.5, dtype=dtype)
    blocks = a.blocks.clone()
    blocks[padding_mask(a)] = float("nan")
    poisoned = BlockSparseMatrix(a.crow, a.col, blocks, a.shape).to(device).requires_grad_()
    b = torch.randn(21, 6, dtype=dtype, device=device, requires_grad=True)
    out = poisoned @ b
    assert out.isfinite().all()
    g = torch.randn(20, 6, dtype=dtype, device=device)
    out.backward(g)
    assert b.grad.isfinite().all() and poisoned.blocks.grad.isfinite().all()
    assert (poisoned.blocks.grad.cpu()[padding_mask(a)] == 0).all()
    clean = a.to(device).requires_grad_()
    b_clean = b.detach().clone().requires_grad_()
    clean_out = clean @ b_clean
    clean_out.backward(g)
    torch.testing.assert_close(out.detach(), clean_out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(b.grad, b_clean.grad, rtol=0, atol=0)
    torch.testing.assert_close(poisoned.blocks.grad, clean.blocks.grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype,block", [(torch.float32, (16, 16)), (torch.bfloat16, (16, 16)),
                                         (torch.float16, (16, 8)), (torch.float64, (3, 5))])
def test_nan_and_inf_propagate_forward_and_backward(device, dtype, block):
    # NaN/Inf in → NaN/Inf out where the math touches them, as a dense matmul would (and
    # only there: entries outside the stored blocks add nothing). Forward: NaN in a stored
    # block of A; Inf in b. Backward: NaN in the output gradient reaches d/db through
    # every stored entry of its row (stored zeros included, 0 · NaN) and d/dblocks across
    # its row; Inf in b reaches d/dblocks in its column.
    m, k, n = 20, 21, 5
    a, a_dense = _bsr_args(m, k, block, False, density=0.4, dtype=dtype, seed=3)
    blocks = a.blocks.clone()
    j = int(a.crow[1]) - 1 if int(a.crow[1]) > 0 else 0  # a block of block row 0
    blocks[j, 0, 0] = float("nan")
    a = BlockSparseMatrix(a.crow, a.col, blocks, a.shape)
    a_dense = a.to_dense()
    stored = stored_mask(a)
    b = torch.randn(k, n, dtype=torch.float64)
    b[2, 1] = float("inf")
    b = b.to(dtype)
    terms = torch.where(stored[:, :, None], a_dense.double()[:, :, None] * b.double()[None], 0.0)
    expected = terms.sum(1)
    assert expected.isnan().any() and not expected.isfinite().all()
    tol = dict(rtol=2e-2, atol=2e-2) if dtype in (torch.float16, torch.bfloat16) else dict(rtol=1e-5, atol=1e-5)
    for trainable in (False, True):  # the packed CPU form, then the differentiable dense path
        on_device = a.to(device).requires_grad_(trainable)
        torch.testing.assert_close((on_device @ b.to(device)).detach().cpu().double(), expected, equal_nan=True,
                                   **tol)
    g = torch.randn(m, n, dtype=torch.float64)
    g[4, 3] = float("nan")
    on_device = a.to(device).requires_grad_()
    b_dev = b.to(device).requires_grad_()
    (on_device @ b_dev).backward(g.to(dtype).to(device))
    grad_terms = torch.where(stored[:, :, None], a_dense.double()[:, :, None] * g.to(dtype).double()[:, None, :], 0.)
    torch.testing.assert_close(b_dev.grad.cpu().double(), grad_terms.sum(0), equal_nan=True, **tol)
    expected_blocks = cut_blocks(a, g.to(dtype).double() @ b.double().t())
    got = on_device.blocks.grad.cpu().double()
    assert torch.equal(got.isnan(), expected_blocks.isnan()) and got.isnan().any()
    assert torch.equal(got.isinf(), expected_blocks.isinf())
    assert (got[padding_mask(a)] == 0).all()


def test_training_loop_through_block_sparse_matrix(device):
    # Fit A's stored blocks to a target A* with the same block structure: the loss falls
    # to near zero. Then, frozen, the CPU's packed form is rebuilt from the trained blocks.
    target, _ = _bsr_args(48, 40, (16, 8), True, density=0.3, dtype=torch.float32)
    a = BlockSparseMatrix(target.crow, target.col, torch.zeros_like(target.blocks), target.shape,
                          target.row_perm).to(device).requires_grad_()
    assert a.requires_grad and a.blocks.is_leaf
    target = target.to(device)
    opt = torch.optim.Adam([a.blocks], lr=0.1)
    losses = []
    for _ in range(60):
        x = torch.randn(40, 16, device=device)
        loss = (a @ x - target @ x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], losses[::10]
    a.requires_grad_(False)
    x = torch.randn(40, 5, device=device)
    torch.testing.assert_close(a @ x, a.to_dense() @ x, rtol=1e-4, atol=1e-4)


def test_gradient_of_b_only_and_of_blocks_only(device):
    a, a_dense = _bsr_args(30, 25, (8, 8), True, dtype=torch.float32)
    a = a.to(device)
    b = torch.randn(25, 4, device=device, requires_grad=True)
    (a @ b).sum().backward()  # frozen A: only b's gradient
    torch.testing.assert_close(b.grad.cpu(), a_dense.t() @ torch.ones(30, 4), rtol=1e-5, atol=1e-5)
    a.requires_grad_()
    v = torch.randn(25, device=device)
    (a @ v).sum().backward()  # a vector b that needs no gradient
    torch.testing.assert_close(a.blocks.grad.cpu(), cut_blocks(a, torch.ones(30, 1) @ v.cpu()[None]),
                               rtol=1e-5, atol=1e-5)


def test_torch_compile_backward_through_matmul(device):
    a, a_dense = _bsr_args(50, 40, (16, 16), True, dtype=torch.float32)
    a = a.to(device).requires_grad_()

    @torch.compile(fullgraph=True)
    def loss_fn(b):
        return (a.matmul(b) * 2.0).sum()

    b = torch.randn(40, 12, device=device, requires_grad=True)
    loss_fn(b).backward()
    torch.testing.assert_close(b.grad.cpu(), 2 * a_dense.t() @ torch.ones(50, 12), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.blocks.grad.cpu(), cut_blocks(a, 2 * torch.ones(50, 12) @ b.detach().cpu().t()),
                               rtol=1e-5, atol=1e-5)


def test_non_differentiable_bsr_ops_say_so():
    a, _ = _bsr_args(20, 18, (4, 4), False, dtype=torch.float32)
    *structure, values = a._packed
    values = values.clone().requires_grad_()
    out = ops.bsr_spmm_packed(*structure, values, torch.randn(18, 3), 20, 4, 4)
    with pytest.raises(RuntimeError, match=r"mlx\.bsr_spmm_packed is not differentiable"):
        out.sum().backward()
    csr = torch.randn(6, 5).to_sparse_csr()
    vals = csr.values().clone().requires_grad_()
    _, _, blocks = ops.bsr_from_csr(csr.crow_indices(), csr.col_indices(), vals, 5, 2, 2)
    with pytest.raises(RuntimeError, match=r"mlx\.bsr_from_csr is not differentiable"):
        blocks.sum().backward()


# --- API edges -----------------------------------------------------------------------


@pytest.mark.parametrize("a_dtype,b_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64),
                                             (torch.float16, torch.bfloat16), (torch.bfloat16, torch.float32),
                                             (torch.float32, torch.int64)], ids=str)
def test_matmul_follows_type_promotion(device, a_dtype, b_dtype):
    a, a_dense = _bsr_args(30, 25, (8, 8), True, dtype=a_dtype)
    a = a.to(device)
    b = torch.randint(-3, 4, (25, 6)).to(b_dtype).to(device)
    out = a @ b
    expected_dtype = torch.result_type(a_dense, b.cpu())
    assert out.dtype == expected_dtype and out.device == b.device
    torch.testing.assert_close(out.cpu().double(), a_dense.double() @ b.cpu().double(), rtol=2e-2, atol=2e-2)
    if b_dtype.is_floating_point:  # and the gradients come back in each input's dtype
        a.requires_grad_()
        b = b.clone().requires_grad_()
        (a @ b).sum().backward()
        assert a.blocks.grad.dtype == a_dtype and b.grad.dtype == b_dtype


def test_user_facing_errors_name_block_sparse_matrix(device):
    a, _ = _bsr_args(30, 25, (8, 8), False, dtype=torch.float32)
    a = a.to(device)
    with pytest.raises(TypeError, match=r"BlockSparseMatrix @ b: .*complex64.*not one of"):
        a @ torch.randn(25, 3, dtype=torch.complex64, device=device)
    with pytest.raises(ValueError, match=r"BlockSparseMatrix @ b: A is \(30, 25\), so b must be \[25, n\]"):
        a @ torch.randn(3, 25, device=device)
    with pytest.raises(TypeError, match=r"BlockSparseMatrix @ b: b must be a torch.Tensor"):
        a.matmul([[1.0]])
    if device != "cpu":
        with pytest.raises(ValueError, match=r"BlockSparseMatrix @ b: A is on cuda.*b on cpu"):
            a @ torch.randn(25, 3)
    with pytest.raises(RuntimeError, match=r"BlockSparseMatrix\(crow, col, blocks.*'col'\[\d+\] = \d+ is out of range"):
        BlockSparseMatrix(a.crow, a.col + 5, a.blocks, a.shape)
    for b in (torch.randn(25, 3, dtype=torch.float64), torch.randn(25, 3, dtype=torch.float16)):
        try:
            a @ b.to(device)
        except Exception as e:  # never the internal op or an argument the user did not pass
            assert "bsr_spmm_packed" not in str(e) and "'values'" not in str(e), str(e)
