"""Shared-prefix attention (Hydragen): attention_with_lse, merge_attention_states,
shared_prefix_attention and the hierarchical helper, against float64 oracles
(tolerance rule: at most 2x plain torch's error in the same dtype) and SDPA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import mlx_kernels
import oracles
from conftest import assert_close_to_oracle, requires_cuda

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (query heads, KV heads): GQA ratios 1, 4 and 8.
HEADS = [(2, 2), (8, 2), (8, 1)]


def rand(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, dtype=dtype, device=device)


def make_inputs(batch, seq_q, heads, prefix, suffix, head_dim=64, dtype=torch.float32, device="cpu"):
    heads_q, heads_kv = heads
    q = rand(batch, seq_q, heads_q, head_dim, dtype=dtype, device=device)
    prefix_k, prefix_v = (rand(prefix, heads_kv, head_dim, dtype=dtype, device=device) for _ in range(2))
    suffix_k, suffix_v = (rand(batch, suffix, heads_kv, head_dim, dtype=dtype, device=device) for _ in range(2))
    return q, prefix_k, prefix_v, suffix_k, suffix_v


def check_shared_prefix(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens=None, scale=None):
    out = mlx_kernels.shared_prefix_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale)
    assert out.dtype == q.dtype and out.shape == q.shape and out.device == q.device
    args = (q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale)
    assert_close_to_oracle(out.cpu(), oracles.shared_prefix_attention(*args),
                           oracles.shared_prefix_attention(*args, dtype=q.dtype), atol=1e-6)
    return out


# --- shared_prefix_attention ---------------------------------------------------


# The full grid (GQA ratio × Sq × P) in fp32; the 16-bit dtypes on its 4:1 slice.
SHARED_PREFIX_GRID = [
    (dtype, heads, seq_q, prefix)
    for dtype in DTYPES
    for heads in (HEADS if dtype == torch.float32 else [(8, 2)])
    for seq_q in [1, 7, 64]
    for prefix in ([0, 1, 100, 1024] if dtype == torch.float32 else [0, 100, 1024])
]


@pytest.mark.parametrize("dtype,heads,seq_q,prefix", SHARED_PREFIX_GRID,
                         ids=[f"{str(d)[6:]}-{h[0]}q{h[1]}kv-Sq{s}-P{p}" for d, h, s, p in SHARED_PREFIX_GRID])
def test_shared_prefix_matches_oracle(device, dtype, heads, seq_q, prefix):
    batch, suffix = 3, 20
    inputs = make_inputs(batch, seq_q, heads, prefix, suffix, dtype=dtype, device=device)
    # Ragged: one empty suffix, one shorter than Sq (its first queries see only the prefix), one full.
    lens = torch.tensor([0, 5, suffix], dtype=torch.int32, device=device)
    out = check_shared_prefix(*inputs, suffix_lens=lens)
    if prefix == 0:  # sequence 0 sees no key at all: zeros, not NaN
        assert (out[0] == 0).all()


@pytest.mark.parametrize("head_dim", [128, 40, 1])
def test_shared_prefix_head_dims(device, head_dim):
    inputs = make_inputs(2, 3, (4, 2), 37, 11, head_dim=head_dim, dtype=torch.bfloat16, device=device)
    check_shared_prefix(*inputs, suffix_lens=torch.tensor([11, 2], dtype=torch.int32, device=device), scale=0.7)


def test_shared_prefix_default_lens_and_empty(device):
    inputs = make_inputs(2, 4, (4, 4), 9, 6, device=device)
    check_shared_prefix(*inputs)  # suffix_lens=None: every sequence uses all S suffix keys
    check_shared_prefix(*make_inputs(2, 4, (4, 4), 9, 0, device=device))  # S = 0: prefix only
    for empty in (make_inputs(0, 4, (4, 2), 9, 6, device=device), make_inputs(2, 0, (4, 2), 9, 6, device=device)):
        out = mlx_kernels.shared_prefix_attention(*empty)
        assert out.shape == empty[0].shape


def test_shared_prefix_non_contiguous(device):
    q, prefix_k, prefix_v, suffix_k, suffix_v = make_inputs(3, 5, (4, 2), 33, 12, device=device)
    q = q.transpose(0, 1).contiguous().transpose(0, 1)  # [B, Sq] strides swapped
    prefix_k = torch.cat([prefix_k, prefix_k], dim=-1)[..., ::2]  # strided head_dim
    suffix_v = suffix_v.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    assert not (q.is_contiguous() or prefix_k.is_contiguous() or suffix_v.is_contiguous())
    check_shared_prefix(q, prefix_k, prefix_v, suffix_k, suffix_v,
                        torch.tensor([12, 0, 7], dtype=torch.int32, device=device))


@pytest.mark.parametrize("threads", [1, 8])
def test_shared_prefix_split_along_prefix(threads):
    """With more CPU threads than (row tile, KV head) tasks, the prefix pass splits the prefix
    into key ranges (1 to 7 here, the last one shorter) merged by LSE: same result."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = make_inputs(2, 3, (8, 1), 2000, 5)
        check_shared_prefix(*inputs, suffix_lens=torch.tensor([5, 0], dtype=torch.int32))
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}q{h[1]}kv")
def test_shared_prefix_matches_sdpa_on_copied_prefix(device, heads):
    """The no-sharing baseline: SDPA over [prefix; suffix] with the prefix copied per sequence."""
    batch, seq_q, prefix, suffix = 3, 7, 50, 20
    q, prefix_k, prefix_v, suffix_k, suffix_v = make_inputs(batch, seq_q, heads, prefix, suffix, device=device)
    lens = torch.tensor([20, 3, 0], dtype=torch.int32, device=device)
    out = mlx_kernels.shared_prefix_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, lens)

    keys = torch.cat([prefix_k.expand(batch, -1, -1, -1), suffix_k], dim=1).transpose(1, 2)
    values = torch.cat([prefix_v.expand(batch, -1, -1, -1), suffix_v], dim=1).transpose(1, 2)
    j = torch.arange(suffix, device=device)
    i = torch.arange(seq_q, device=device)
    suffix_mask = (j[None, None, :] < lens[:, None, None]) & (j[None, None, :] <= lens[:, None, None] - seq_q + i[None, :, None])
    mask = torch.cat([torch.ones(batch, seq_q, prefix, dtype=torch.bool, device=device), suffix_mask], dim=2)
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask[:, None],
                                              enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 4), seq_q=st.integers(1, 9), group=st.sampled_from([1, 2, 4]),
       heads_kv=st.integers(1, 2), prefix=st.integers(0, 150), suffix=st.integers(0, 20),
       head_dim=st.sampled_from([8, 64, 72]), data=st.data())
def test_shared_prefix_property_cpu(batch, seq_q, group, heads_kv, prefix, suffix, head_dim, data):
    lens = torch.tensor(data.draw(st.lists(st.integers(0, suffix), min_size=batch, max_size=batch)), dtype=torch.int32)
    inputs = make_inputs(batch, seq_q, (group * heads_kv, heads_kv), prefix, suffix, head_dim=head_dim)
    check_shared_prefix(*inputs, suffix_lens=lens)


# --- attention_with_lse -----------------------------------------------------------


def check_attention(q, k, v, causal=False, scale=None):
    out, lse = mlx_kernels.attention_with_lse(q, k, v, causal, scale)
    assert out.dtype == q.dtype and lse.dtype == torch.float32
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    expected_out, expected_lse = oracles.attention_with_lse(q, k, v, causal, scale)
    reference_out, _ = oracles.attention_with_lse(q, k, v, causal, scale, dtype=q.dtype)
    assert_close_to_oracle(out.cpu(), expected_out, reference_out, atol=1e-6)
    lse = lse.cpu().double()
    assert torch.equal(torch.isneginf(lse), torch.isneginf(expected_lse)), "empty rows must have lse -inf"
    finite = torch.isfinite(expected_lse)
    torch.testing.assert_close(lse[finite], expected_lse[finite], rtol=0, atol=1e-4)
    return out, lse


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads", HEADS, ids=lambda h: f"{h[0]}q{h[1]}kv")
@pytest.mark.parametrize("seq_q,seq_k", [(1, 1), (7, 70), (64, 64), (70, 7), (5, 0), (1, 1030)])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_lse_matches_oracle(device, dtype, heads, seq_q, seq_k, causal):
    q = rand(2, seq_q, heads[0], 64, dtype=dtype, device=device)
    k, v = (rand(2, seq_k, heads[1], 64, dtype=dtype, device=device) for _ in range(2))
    out, lse = check_attention(q, k, v, causal)
    if causal and seq_q > seq_k:  # the first Sq - Sk queries see no key: out 0, lse -inf
        assert (out[:, : seq_q - seq_k] == 0).all() and torch.isneginf(lse[..., : seq_q - seq_k]).all()
    if seq_k == 0:
        assert (out == 0).all()


@pytest.mark.parametrize("head_dim", [128, 40, 1])
def test_attention_with_lse_head_dims_and_scale(device, head_dim):
    q = rand(2, 9, 4, head_dim, dtype=torch.float16, device=device)
    k, v = (rand(2, 33, 2, head_dim, dtype=torch.float16, device=device) for _ in range(2))
    check_attention(q, k, v, causal=True, scale=0.3)


def test_attention_with_lse_matches_sdpa(device):
    q = rand(3, 20, 8, 64, device=device)
    k, v = (rand(3, 50, 2, 64, device=device) for _ in range(2))
    out, lse = mlx_kernels.attention_with_lse(q, k, v, causal=True)
    # SDPA's is_causal aligns top-left; bottom-right alignment as an explicit mask.
    mask = torch.ones(20, 50, dtype=torch.bool, device=device).tril(diagonal=50 - 20)
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_mask=mask, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_attention_with_lse_ragged(device):
    q = rand(3, 4, 4, 64, device=device)
    k, v = (rand(3, 10, 2, 64, device=device) for _ in range(2))
    lens = torch.tensor([10, 0, 3], dtype=torch.int32, device=device)
    out, lse = mlx_kernels.ops.attention_with_lse_ragged(q, k, v, lens, causal=True)
    expected_out, expected_lse = oracles.attention_with_lse(q, k, v, True, key_lens=lens)
    torch.testing.assert_close(out.cpu().double(), expected_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse.cpu().double(), expected_lse, rtol=0, atol=1e-5)


# --- merge_attention_states -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_merge_of_two_key_halves_is_full_attention(device, dtype):
    q = rand(2, 5, 4, 64, dtype=dtype, device=device)
    k, v = (rand(2, 40, 2, 64, dtype=dtype, device=device) for _ in range(2))
    out_a, lse_a = mlx_kernels.attention_with_lse(q, k[:, :13], v[:, :13])
    out_b, lse_b = mlx_kernels.attention_with_lse(q, k[:, 13:], v[:, 13:])
    out, lse = mlx_kernels.merge_attention_states(out_a, lse_a, out_b, lse_b)
    expected_out, expected_lse = oracles.attention_with_lse(q, k, v)
    reference_out, _ = oracles.attention_with_lse(q, k, v, dtype=dtype)
    assert_close_to_oracle(out.cpu(), expected_out, reference_out)
    torch.testing.assert_close(lse.cpu().double(), expected_lse, rtol=0, atol=1e-5)
    merged = oracles.merge_attention_states(out_a, lse_a, out_b, lse_b)[0]
    assert_close_to_oracle(out.cpu(), merged, merged.to(dtype), factor=1.0, atol=1e-6)


@pytest.mark.parametrize("head_dim", [0, 1, 8, 33, 200])  # lanes walk D in steps of 32; D = 0 merges the LSEs alone
def test_merge_empty_sides(device, head_dim):
    out_a, out_b = rand(2, 3, 4, head_dim, device=device), rand(2, 3, 4, head_dim, device=device)
    lse_a, lse_b = rand(2, 4, 3, device=device), rand(2, 4, 3, device=device)
    lse_a[0] = float("-inf")  # side a empty for batch 0: the result is side b
    lse_b[1, :2] = float("-inf")  # side b empty for batch 1, heads 0-1: the result is side a
    lse_a[1, 3], lse_b[1, 3] = float("-inf"), float("-inf")  # both empty: out 0, lse -inf
    lse_a[1, 2, 0] = float("inf")  # +inf is read as empty too (vLLM's convention)
    out, lse = mlx_kernels.merge_attention_states(out_a, lse_a, out_b, lse_b)
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out[0], out_b[0])
    torch.testing.assert_close(lse[0], lse_b[0])
    torch.testing.assert_close(out[1, :, :2], out_a[1, :, :2])
    assert (out[1, :, 3] == 0).all() and torch.isneginf(lse[1, 3]).all()
    torch.testing.assert_close(out[1, 0, 2], out_b[1, 0, 2])
    expected, _ = oracles.merge_attention_states(out_a, lse_a.masked_fill(lse_a == float("inf"), float("-inf")),
                                                 out_b, lse_b)
    torch.testing.assert_close(out.cpu().double(), expected, rtol=0, atol=1e-6)


def test_nan_query_row_gives_nan(device):
    # softmax(QKᵀ)V by its definition: a NaN score makes its row NaN (an online
    # softmax whose max skips NaN would report the row as empty: 0, lse −inf).
    q = rand(1, 3, 2, 16, device=device)
    k, v = (rand(1, 7, 2, 16, device=device) for _ in range(2))
    q[0, 1, 0, 5] = float("nan")  # every score of query 1, head 0 is NaN
    out, lse = mlx_kernels.attention_with_lse(q, k, v)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / 4.0
    expected = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.double())
    assert torch.isnan(expected[0, 1, 0]).all() and torch.isnan(out[0, 1, 0]).all() and torch.isnan(lse[0, 0, 1])
    finite = ~torch.isnan(expected)
    torch.testing.assert_close(out[finite].double(), expected[finite], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), scores.logsumexp(-1), rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_minus_inf_first_score_gets_zero_weight(device, dtype):
    # Key 0 scores −inf for every query (q[..., 0] > 0, k[:, 0, :, 0] = −inf): it must
    # simply drop out, also when it is the first key an online softmax sees.
    q = rand(2, 3, 2, 64, dtype=dtype, device=device)
    q[..., 0] = 1.0
    k, v = (rand(2, 9, 2, 64, dtype=dtype, device=device) for _ in range(2))
    k[:, 0, :, 0] = float("-inf")
    out, lse = mlx_kernels.attention_with_lse(q, k, v)
    expected, expected_lse = mlx_kernels.attention_with_lse(q, k[:, 1:].contiguous(), v[:, 1:].contiguous())
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-2)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-6, atol=1e-5)


def test_merge_empty_tensors(device):
    out, lse = mlx_kernels.merge_attention_states(rand(0, 3, 4, 8, device=device), rand(0, 4, 3, device=device),
                                                  rand(0, 3, 4, 8, device=device), rand(0, 4, 3, device=device))
    assert out.shape == (0, 3, 4, 8) and lse.shape == (0, 4, 3)


def test_merge_large_lse_gap_is_stable(device):
    out_a, out_b = rand(1, 2, 1, 8, device=device), rand(1, 2, 1, 8, device=device)
    lse_a = torch.tensor([[[1000.0, -1000.0]]], device=device)
    lse_b = torch.tensor([[[-1000.0, 1000.0]]], device=device)
    out, lse = mlx_kernels.merge_attention_states(out_a, lse_a, out_b, lse_b)
    torch.testing.assert_close(out[0, 0], out_a[0, 0])
    torch.testing.assert_close(out[0, 1], out_b[0, 1])
    torch.testing.assert_close(lse, torch.full_like(lse, 1000.0))


# --- hierarchical helper ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_hierarchical_shared_prefix(device, dtype):
    """A prompt shared by all 5 sequences, then one of 2 documents per sub-group, then own suffixes."""
    batch, seq_q, heads, head_dim = 5, 3, (4, 2), 64
    q = rand(batch, seq_q, heads[0], head_dim, dtype=dtype, device=device)
    prompt_k, prompt_v = (rand(17, heads[1], head_dim, dtype=dtype, device=device) for _ in range(2))
    doc_k, doc_v = (rand(2, 40, heads[1], head_dim, dtype=dtype, device=device) for _ in range(2))
    doc_of = torch.tensor([1, 0, 1, 1, 0], device=device)
    suffix_k, suffix_v = (rand(batch, 6, heads[1], head_dim, dtype=dtype, device=device) for _ in range(2))
    lens = torch.tensor([6, 0, 2, 5, 1], dtype=torch.int32, device=device)
    out = mlx_kernels.hierarchical_shared_prefix_attention(
        q, [(prompt_k, prompt_v, None), (doc_k, doc_v, doc_of)], suffix_k, suffix_v, lens)
    assert out.dtype == dtype and out.shape == q.shape

    def oracle(compute_dtype):
        # Each sequence's keys flattened: [prompt; its document; its suffix], the prefixes copied.
        outs = []
        for b in range(batch):
            prefix_k = torch.cat([prompt_k, doc_k[doc_of[b]]])
            prefix_v = torch.cat([prompt_v, doc_v[doc_of[b]]])
            outs.append(oracles.shared_prefix_attention(q[b:b + 1], prefix_k, prefix_v, suffix_k[b:b + 1],
                                                        suffix_v[b:b + 1], lens[b:b + 1], dtype=compute_dtype))
        return torch.cat(outs)

    assert_close_to_oracle(out.cpu(), oracle(torch.float64), oracle(dtype), atol=1e-6)
    # One level shared by all equals shared_prefix_attention.
    single = mlx_kernels.hierarchical_shared_prefix_attention(q, [(prompt_k, prompt_v, None)], suffix_k, suffix_v, lens)
    reference = mlx_kernels.shared_prefix_attention(q, prompt_k, prompt_v, suffix_k, suffix_v, lens)
    torch.testing.assert_close(single, reference, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-2)


def test_hierarchical_empty_queries_and_group_ids_checked(device):
    heads, head_dim = (4, 2), 8
    doc_k, doc_v = (rand(2, 5, heads[1], head_dim, device=device) for _ in range(2))
    suffix_k, suffix_v = (rand(3, 4, heads[1], head_dim, device=device) for _ in range(2))
    doc_of = torch.tensor([1, 0, 1], device=device)
    empty_q = rand(3, 0, heads[0], head_dim, device=device)
    out = mlx_kernels.hierarchical_shared_prefix_attention(empty_q, [(doc_k, doc_v, doc_of)], suffix_k, suffix_v)
    assert out.shape == empty_q.shape
    q = rand(3, 2, heads[0], head_dim, device=device)
    for bad in (torch.tensor([0, 2, 1], device=device), torch.tensor([0, -1, 1], device=device)):
        with pytest.raises(ValueError, match=r"hierarchical_shared_prefix_attention: group_ids must lie in \[0, 2\)"):
            mlx_kernels.hierarchical_shared_prefix_attention(q, [(doc_k, doc_v, bad)], suffix_k, suffix_v)
    with pytest.raises(ValueError, match="group_ids must be int32 or int64"):
        mlx_kernels.hierarchical_shared_prefix_attention(q, [(doc_k, doc_v, doc_of.float())], suffix_k, suffix_v)


# --- torch.compile, devices -------------------------------------------------------


def test_shared_prefix_torch_compile(device):
    inputs = make_inputs(2, 3, (4, 2), 20, 5, device=device)
    lens = torch.tensor([5, 1], dtype=torch.int32, device=device)

    @torch.compile(fullgraph=True)
    def layer(q, prefix_k, prefix_v, suffix_k, suffix_v, lens):
        out = mlx_kernels.shared_prefix_attention(q * 2.0, prefix_k, prefix_v, suffix_k, suffix_v, lens)
        full, full_lse = mlx_kernels.attention_with_lse(q, suffix_k, suffix_v, causal=True)
        merged, _ = mlx_kernels.merge_attention_states(out, full_lse, full, full_lse)
        return out + 1.0, merged

    out, merged = layer(*inputs, lens)
    torch.testing.assert_close(out, mlx_kernels.shared_prefix_attention(inputs[0] * 2.0, *inputs[1:], lens) + 1.0)
    assert merged.shape == inputs[0].shape


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("heads", [(32, 8), (8, 1)], ids=["4to1", "8to1"])
def test_shared_prefix_cuda_tensor_cores_match_oracle(dtype, head_dim, heads):
    """The mma.sync path at decode and chunked-prefill shapes with a long prefix."""
    for batch, seq_q, prefix, suffix in [(16, 1, 2048, 128), (3, 65, 1000, 130)]:
        inputs = make_inputs(batch, seq_q, heads, prefix, suffix, head_dim=head_dim, dtype=dtype, device="cuda")
        lens = torch.randint(0, suffix + 1, (batch,), dtype=torch.int32, device="cuda")
        lens[0] = 0
        check_shared_prefix(*inputs, suffix_lens=lens)


@requires_cuda
def test_cuda_matches_cpu():
    inputs = make_inputs(4, 9, (8, 2), 300, 40, dtype=torch.bfloat16)
    lens = torch.tensor([40, 0, 3, 17], dtype=torch.int32)
    cpu = mlx_kernels.shared_prefix_attention(*inputs, lens)
    cuda = mlx_kernels.shared_prefix_attention(*(t.cuda() for t in inputs), lens.cuda())
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=2e-2)


@requires_cuda
def test_mixed_devices_rejected():
    q, prefix_k, prefix_v, suffix_k, suffix_v = make_inputs(2, 1, (4, 2), 8, 4, device="cuda")
    with pytest.raises(RuntimeError, match="shared_prefix_attention.*one device"):
        mlx_kernels.shared_prefix_attention(q, prefix_k.cpu(), prefix_v, suffix_k, suffix_v)
    with pytest.raises(RuntimeError, match="shared_prefix_attention.*one device"):
        mlx_kernels.shared_prefix_attention(q, prefix_k, prefix_v, suffix_k, suffix_v,
                                            torch.zeros(2, dtype=torch.int32))
    # q on the CPU, the rest on CUDA: the CUDA kernels are picked, and still name the mismatch.
    with pytest.raises(RuntimeError, match="shared_prefix_attention.*one device"):
        mlx_kernels.shared_prefix_attention(q.cpu(), prefix_k, prefix_v, suffix_k, suffix_v)
    with pytest.raises(RuntimeError, match="attention_with_lse.*one device"):
        mlx_kernels.attention_with_lse(q.cpu(), suffix_k, suffix_v)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_cuda_batch_beyond_one_launch(dtype):
    # 70000 decode sequences: more than one grid's worth (65535) of batch entries.
    batch = 70000
    inputs = make_inputs(batch, 1, (2, 1), 16, 3, dtype=dtype, device="cuda")
    lens = torch.randint(0, 4, (batch,), dtype=torch.int32, device="cuda")
    out = mlx_kernels.shared_prefix_attention(*inputs, lens)
    tail = slice(batch - 5, batch)  # sequences of the second launch
    cpu_inputs = [inputs[0][tail], inputs[1], inputs[2], inputs[3][tail], inputs[4][tail]]
    expected = mlx_kernels.shared_prefix_attention(*(t.cpu() for t in cpu_inputs), lens[tail].cpu())
    torch.testing.assert_close(out[tail].cpu(), expected, rtol=0, atol=2e-2 if dtype == torch.bfloat16 else 1e-5)


def test_scale_default_is_inverse_sqrt_head_dim(device):
    q = rand(1, 2, 2, 64, device=device)
    k, v = (rand(1, 5, 2, 64, device=device) for _ in range(2))
    default, _ = mlx_kernels.attention_with_lse(q, k, v)
    explicit, _ = mlx_kernels.attention_with_lse(q, k, v, scale=1 / math.sqrt(64))
    torch.testing.assert_close(default, explicit, rtol=0, atol=0)


def test_key_length_leaves_room_for_a_kernel_tile(device):
    # The kernels add a tile to key and row indices in int32, so the key length
    # is capped below INT32_MAX. Head dim 0 and key_lens = 0 keep the tensors
    # empty and, should the cap be missing, the pass instant.
    q = torch.zeros(1, 1, 1, 0, device=device)
    k = torch.zeros(1, 2**31 - 1 - 100, 1, 0, device=device)
    lens = torch.zeros(1, dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match=r"attention_with_lse_ragged.*key length \+ 256 \(a kernel tile\) = "
                                           r"2147483803 does not fit in int32"):
        mlx_kernels.ops.attention_with_lse_ragged(q, k, k, lens)
    # The query rows per KV head share the check, but reaching it takes an lse of
    # that many fp32 values (8 GiB), so only the key length is tested here.


# --- autograd ------------------------------------------------------------------------
# Gradients against float64 autograd through the oracles (the tolerance rule's
# reference: the same autograd in the inputs' dtype). Losses weigh every output
# (the LSE's finite entries too) with fixed random weights.


def _weighted_loss(outputs, weights):
    total = 0.0
    for out, weight in zip(outputs, weights):
        out = out.double().cpu()
        total = total + (torch.where(torch.isfinite(out), out, 0.0) * weight).sum()
    return total


def check_grads(ours, oracle, inputs, rtol=4e-6):
    """Gradients of ours(*inputs) against oracle(*inputs, dtype) in float64 and in inputs' dtype.

    The backward is itself plain torch in fp32, so the 2x rule gets a slack of rtol × the
    gradient's largest entry (~32 fp32 ulps): an fp32 score's rounding, which exp()
    amplifies, depends on which GEMM kernel MKL picks for the shape (5e-6 for one
    64-long dot product of N(0, 1) vectors, 1.5e-6 for another reduction order), not on
    the backward's algorithm. A wrong term in the backward is off by far more."""
    leaves = [t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs]
    outputs = ours(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    weights = [torch.randn(out.shape, dtype=torch.float64) for out in outputs]
    grads = torch.autograd.grad(_weighted_loss(outputs, weights), [t for t in leaves if t.requires_grad])

    def oracle_grads(dtype):
        # Tensors in the inputs' dtype take the reference's; the rest (an LSE: fp32) keep theirs.
        cpu = [t.detach().cpu().to(dtype if dtype == torch.float64 or t.dtype == inputs[0].dtype else t.dtype)
               .requires_grad_() if t.is_floating_point() else t.cpu() for t in inputs]
        result = oracle(*cpu, dtype)
        result = result if isinstance(result, tuple) else (result,)
        return torch.autograd.grad(_weighted_loss(result, weights), [t for t in cpu if t.requires_grad])

    expected, reference = oracle_grads(torch.float64), oracle_grads(inputs[0].dtype)
    for grad, leaf, exp, ref in zip(grads, [t for t in leaves if t.requires_grad], expected, reference):
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape and grad.device == leaf.device
        assert_close_to_oracle(grad.cpu(), exp, ref, atol=rtol * max(1.0, exp.abs().max().item() if exp.numel() else 0))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seq_q,seq_k", [(1, 9), (5, 9), (9, 5), (3, 0)])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_lse_backward(device, dtype, seq_q, seq_k, causal):
    q = rand(2, seq_q, 4, 64, dtype=dtype, device=device)
    k, v = (rand(2, seq_k, 2, 64, dtype=dtype, device=device) for _ in range(2))
    check_grads(lambda q, k, v: mlx_kernels.attention_with_lse(q, k, v, causal, 0.2),
                lambda q, k, v, dt: oracles.attention_with_lse(q, k, v, causal, 0.2, dtype=dt), (q, k, v))


def test_attention_with_lse_ragged_backward(device):
    q = rand(3, 5, 4, 64, device=device)
    k, v = (rand(3, 9, 2, 64, device=device) for _ in range(2))
    lens = torch.tensor([3, 0, 9], dtype=torch.int32, device=device)
    for causal in (False, True):
        check_grads(lambda q, k, v: mlx_kernels.ops.attention_with_lse_ragged(q, k, v, lens, causal),
                    lambda q, k, v, dt: oracles.attention_with_lse(q, k, v, causal, key_lens=lens, dtype=dt),
                    (q, k, v))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_merge_attention_states_backward(device, dtype):
    out_a, out_b = (rand(2, 3, 4, 64, dtype=dtype, device=device) for _ in range(2))
    lse_a, lse_b = (rand(2, 4, 3, device=device) for _ in range(2))
    lse_a[0, 0, 0] = float("-inf")          # one side empty
    lse_a[1, 1, 1] = lse_b[1, 1, 1] = float("-inf")  # both empty: out 0, every gradient 0

    def oracle(out_a, lse_a, out_b, lse_b, dtype):
        # The oracle differentiated; logaddexp(-inf, -inf) has NaN slopes, 0 here by the
        # contract, so both-empty rows take a finite stand-in inside the oracle.
        empty = torch.isneginf(lse_a) & torch.isneginf(lse_b)
        lse_a, lse_b = torch.where(empty, 0.0, lse_a), torch.where(empty, 0.0, lse_b)
        lse = torch.logaddexp(lse_a, lse_b)
        w_a = torch.where(empty, 0.0, torch.exp(lse_a - lse)).transpose(1, 2)[..., None]
        w_b = torch.where(empty, 0.0, torch.exp(lse_b - lse)).transpose(1, 2)[..., None]
        return (w_a * out_a + w_b * out_b).to(dtype), torch.where(empty, -torch.inf, lse)

    check_grads(mlx_kernels.merge_attention_states, oracle, (out_a, lse_a, out_b, lse_b))
    leaves = [t.detach().requires_grad_() for t in (out_a, lse_a, out_b, lse_b)]
    out, lse = mlx_kernels.merge_attention_states(*leaves)
    (out.sum() + torch.where(torch.isfinite(lse), lse, 0.0).sum()).backward()
    for leaf in leaves:
        assert torch.isfinite(leaf.grad).all()
    assert leaves[1].grad[1, 1, 1] == 0 and leaves[3].grad[1, 1, 1] == 0
    assert (leaves[0].grad[1, 1, 1] == 0).all() and (leaves[2].grad[1, 1, 1] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prefix", [0, 5, 300])
def test_shared_prefix_attention_backward(device, dtype, prefix):
    inputs = make_inputs(3, 2, (8, 2), prefix, 6, dtype=dtype, device=device)
    lens = torch.tensor([6, 0, 2], dtype=torch.int32, device=device)
    check_grads(lambda *t: mlx_kernels.shared_prefix_attention(*t, lens, 0.3),
                lambda *t: oracles.shared_prefix_attention(*t[:-1], lens, 0.3, dtype=t[-1]), inputs)


def test_attention_backward_chunks_queries(monkeypatch):
    """Queries split into several score chunks give the same gradients as one."""
    from mlx_kernels import attention

    q = rand(2, 37, 4, 16)
    k, v = (rand(2, 23, 2, 16) for _ in range(2))
    grads = []
    for chunk in (1 << 24, 2 * 4 * 23 * 5):  # everything at once; 5 queries per chunk
        monkeypatch.setattr(attention, "_SCORE_CHUNK", chunk)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out, lse = mlx_kernels.attention_with_lse(*leaves, causal=True)
        grads.append(torch.autograd.grad(out.square().sum() + lse.sum(), leaves))
    for one, chunked in zip(*grads):
        torch.testing.assert_close(one, chunked)


def test_nan_flows_into_gradients(device):
    q, prefix_k, prefix_v, suffix_k, suffix_v = make_inputs(2, 1, (4, 2), 8, 4, device=device)
    prefix_v[3, 1, 5] = float("nan")
    leaves = [t.requires_grad_() for t in (q, prefix_k, prefix_v, suffix_k, suffix_v)]
    mlx_kernels.shared_prefix_attention(*leaves).sum().backward()
    # d out/d v is the probabilities (finite); the NaN reaches q and k through dP = dO·vᵀ.
    assert torch.isnan(leaves[0].grad[:, :, 2:4]).all() and torch.isfinite(leaves[0].grad[:, :, :2]).all()
    assert torch.isnan(leaves[1].grad[:, 1]).all() and torch.isfinite(leaves[1].grad[:, 0]).all()


def test_shared_prefix_backward_under_torch_compile(device):
    inputs = [t.requires_grad_() for t in make_inputs(2, 3, (4, 2), 20, 5, device=device)]
    lens = torch.tensor([5, 1], dtype=torch.int32, device=device)

    def loss(*t):
        out = mlx_kernels.shared_prefix_attention(*t, lens)
        merged, _ = mlx_kernels.merge_attention_states(out, torch.zeros(2, 4, 3, device=device), out,
                                                       torch.zeros(2, 4, 3, device=device))
        return merged.square().sum()

    eager = torch.autograd.grad(loss(*inputs), inputs)
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(*inputs), inputs)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


def test_training_through_shared_prefix_attention_reduces_loss():
    """A query projection trained through Hydragen attention to hit a target output."""
    torch.manual_seed(0)
    q_in, prefix_k, prefix_v, suffix_k, suffix_v = make_inputs(4, 2, (4, 2), 16, 4, head_dim=16)
    target = rand(4, 2, 4, 16)
    proj = torch.nn.Linear(16, 16)
    optim = torch.optim.Adam(proj.parameters(), lr=3e-2)
    losses = []
    for _ in range(40):
        out = mlx_kernels.shared_prefix_attention(proj(q_in), prefix_k, prefix_v, suffix_k, suffix_v)
        loss = (out - target).square().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nonfinite_keys_and_values_reach_the_outputs_they_touch(device, dtype):
    """NaN/Inf reaches the outputs softmax(QKᵀ)V takes it to, as in torch: a NaN score
    makes the query's row NaN, a +Inf one too (∞ − ∞), a −Inf one drops the key, a NaN
    value one output dimension. Keys past suffix_lens (KV-cache garbage) never reach
    anything. (A non-finite value of a key inside the length that a query causally does
    not see may reach it on CUDA, 0·NaN in the tensor-core P·V as in FlashAttention; not
    on the CPU, which skips the key. Not tested: torch's own answer there depends on BLAS.)"""
    q, prefix_k, prefix_v, suffix_k, suffix_v = make_inputs(3, 3, (4, 2), 5, 6, head_dim=16, dtype=dtype,
                                                            device=device)
    q[2, 2, :, 5] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # the Inf key below scores +∞ for head 0, −∞ for head 1
    lens = torch.tensor([6, 2, 4], dtype=torch.int32, device=device)
    suffix_v[0, 2, 1, 3] = float("nan")   # seen by every query of sequence 0
    suffix_k[2, 3, 0, 5] = float("inf")   # seen by sequence 2's query 2 (and, +∞ or −∞, by 0 and 1 causally not)
    prefix_v[2, 0, 7] = float("inf")      # every query of KV head 0, dimension 7
    garbage = [(1, 3, 1, 0, float("nan")), (1, 5, 0, 0, float("inf")), (0, 5, 1, 2, float("nan"))]
    lens[0] = 5  # so (0, 5) is past sequence 0's length too
    for b, j, h, d, value in garbage:
        suffix_k[b, j, h, d] = value
        suffix_v[b, j, h, d] = value
    out = mlx_kernels.shared_prefix_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, lens).float().cpu()
    past_length = torch.arange(6, device=device)[None, :] >= lens[:, None]
    expected = oracles.shared_prefix_attention(q, prefix_k, prefix_v, suffix_k.masked_fill(past_length[..., None, None], 0),
                                               suffix_v.masked_fill(past_length[..., None, None], 0), lens)
    differ = (~torch.isfinite(out) != ~torch.isfinite(expected)).nonzero().tolist()
    assert not differ, f"non-finite at other places than torch's (ours/oracle): {differ}"
    assert torch.isnan(out[2, 2, 0]).all() and torch.isfinite(out[2, 2, 1, :7]).all()
    assert torch.isfinite(out[1, :, :, :7]).all()  # sequence 1 sees no non-finite key or value but the prefix's
    torch.testing.assert_close(out[torch.isfinite(expected)], expected[torch.isfinite(expected)].float(),
                               rtol=0, atol=0.05 if dtype == torch.bfloat16 else 1e-5)


def test_hierarchical_shared_prefix_gradients(device):
    """The hierarchical helper is built of differentiable ops: with one level shared by all
    it is shared_prefix_attention, gradients included; with groups, every input gets one."""
    inputs = make_inputs(4, 2, (4, 2), 7, 3, head_dim=16, device=device)
    lens = torch.tensor([3, 0, 2, 1], dtype=torch.int32, device=device)
    grads = []
    for hierarchical in (False, True):
        q, prefix_k, prefix_v, suffix_k, suffix_v = leaves = [t.clone().requires_grad_() for t in inputs]
        if hierarchical:
            out = mlx_kernels.hierarchical_shared_prefix_attention(q, [(prefix_k, prefix_v, None)], suffix_k, suffix_v,
                                                                   lens)
        else:
            out = mlx_kernels.shared_prefix_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, lens)
        grads.append(torch.autograd.grad(out.square().sum(), leaves))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    q, doc_k, doc_v, suffix_k, suffix_v = [t.clone().requires_grad_() for t in
                                           (inputs[0], rand(2, 5, 2, 16, device=device), rand(2, 5, 2, 16, device=device),
                                            inputs[3], inputs[4])]
    groups = torch.tensor([0, 1, 1, 0], device=device)
    out = mlx_kernels.hierarchical_shared_prefix_attention(q, [(doc_k, doc_v, groups)], suffix_k, suffix_v, lens)
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, doc_k, doc_v, suffix_k, suffix_v))
