"""Fake (meta) implementations of every op and thin typed Python wrappers.

The schemas live in ``csrc/ops.cpp``; the fakes here let ``torch.compile`` and
``torch.library.opcheck`` reason about output shapes without running a kernel.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._build_config import OPS_NAMESPACE

ops = getattr(torch.ops, OPS_NAMESPACE)


def _name(op: str) -> str:
    return f"{OPS_NAMESPACE}::{op}"


def _rows(x: Tensor) -> int:
    """Number of rows of ``x`` viewed as [rows, x.shape[-1]]."""
    rows = 1
    for size in x.shape[:-1]:
        rows *= size
    return rows


def _words(k: int) -> int:
    """int32 words per packed bit-plane row of length k."""
    return (k + 31) // 32


# --- int8 mixed-precision GEMM (LLM.int8) ------------------------------------


@torch.library.register_fake(_name("int8_mm"))
def _int8_mm_fake(a_i8, b_i8):
    torch._check(a_i8.dim() == 2 and b_i8.dim() == 2, lambda: "int8_mm: a_i8 and b_i8 must be 2-D")
    torch._check(a_i8.shape[1] == b_i8.shape[1], lambda: "int8_mm: K mismatch")
    return a_i8.new_empty((a_i8.shape[0], b_i8.shape[0]), dtype=torch.int32)


def int8_mm(a_i8: Tensor, b_i8: Tensor) -> Tensor:
    """Exact int32 ``a_i8 [M, K] @ b_i8 [N, K].T`` -> int32 [M, N].

    a_i8, b_i8: int8, 2-D, on one device (CPU, or CUDA in a CUDA build); any strides.
    K < 2^31 / 128² so that the int32 sum cannot overflow. Not differentiable (integers).
    """
    return ops.int8_mm(a_i8, b_i8)


@torch.library.register_fake(_name("int8_vectorwise_quant"))
def _int8_vectorwise_quant_fake(x, threshold=0.0):
    outliers = 0 if threshold <= 0 else torch.library.get_ctx().new_dynamic_size()
    return (
        x.new_empty(x.shape, dtype=torch.int8),
        x.new_empty((_rows(x),), dtype=torch.float32),
        x.new_empty((outliers,), dtype=torch.int64),
    )


def int8_vectorwise_quant(x: Tensor, threshold: float = 0.0) -> Tuple[Tensor, Tensor, Tensor]:
    """LLM.int8 per-row absmax quantization of x [..., K] (fp16/bf16/fp32, CPU or CUDA).

    Returns ``(x_i8, row_absmax, outlier_cols)``: x_i8 int8 with x's shape,
    round_half_even(x · 127 / absmax) per row; row_absmax fp32 [rows] (rows = x.numel() / K)
    over the row's non-outlier columns; outlier_cols int64 sorted column indices.
    threshold > 0: a column is an outlier when any |x| in it exceeds threshold (±Inf
    does, NaN does not: it compares false); its x_i8 entries are 0 and it is left out of
    every absmax. threshold = 0: no outliers (outlier_cols empty). A row whose absmax is 0
    quantizes to zeros.

    NaN/Inf: a row holding a NaN or ±Inf outside the outlier columns (with threshold > 0,
    ±Inf always is in one) gets row_absmax NaN (NaN present) or +Inf, and x_i8 all 0, so
    dequantizing it (x_i8 · row_absmax / 127) gives NaN across the row: the non-finite
    value is flagged by row_absmax, never quantized into plausible finite levels. A NaN
    or ±Inf inside an outlier column is left to the caller's 16-bit product (as
    ``int8_gemm`` does), like every outlier value.

    Not differentiable (it rounds); use ``int8_gemm`` for a straight-through gradient.
    """
    return ops.int8_vectorwise_quant(x, threshold)


@torch.library.register_fake(_name("int8_gemm"))
def _int8_gemm_fake(x, w_i8, w_absmax, bias=None, threshold=6.0):
    return x.new_empty((*x.shape[:-1], w_i8.shape[0]))


def int8_gemm(
    x: Tensor, w_i8: Tensor, w_absmax: Tensor, bias: Optional[Tensor] = None, threshold: float = 6.0
) -> Tensor:
    """LLM.int8 ``x @ W_deq.T + bias`` with W_deq = w_i8 · w_absmax[:, None] / 127.

    x [..., K] fp16/bf16/fp32; w_i8 int8 [N, K] and w_absmax fp32 [N] (from
    ``int8_vectorwise_quant(w)``); bias [N] fp16/bf16/fp32 or None; all on one device
    (CPU, or CUDA in a CUDA build). Returns [..., N] in x's dtype. x is quantized per
    row to int8 (fp32 dequantization fused into the GEMM's epilogue); with threshold > 0
    the outlier columns of x (any |x| > threshold) go instead through a 16-bit product
    with W_deq's columns rounded to x's dtype; threshold = 0 is pure vector-wise int8.

    NaN/Inf (never a finite result where x @ W_deq.T + bias is not): a row of x holding a
    NaN — or an ±Inf with threshold = 0 — gives NaN across its output row (its row
    absmax is NaN/Inf). With threshold > 0 an ±Inf makes its column an outlier, so it
    reaches the output through the 16-bit product as in torch.matmul (±Inf, or NaN for
    Inf·0 or Inf − Inf) and the other rows stay finite. A NaN/±Inf w_absmax[n]
    or bias[n] makes output column n non-finite (NaN where it meets a zero product).

    Autograd: d/dx = grad @ W_deq (straight through x's rounding, as bitsandbytes'
    Linear8bitLt), d/dbias = Σ grad, d/dw_absmax exact. w_i8 is frozen (integer).
    """
    return ops.int8_gemm(x, w_i8, w_absmax, bias, threshold)


# --- bipolar-INT arbitrary-precision GEMM ------------------------------------


@torch.library.register_fake(_name("bipolar_pack"))
def _bipolar_pack_fake(values, bits):
    return values.new_empty((bits, values.shape[0], _words(values.shape[1])), dtype=torch.int32)


def bipolar_pack(values: Tensor, bits: int) -> Tensor:
    """Odd integers values [R, K] (int8/16/32/64, each odd and within ±(2^bits − 1),
    bits in 1..8; anything else is an error) -> bit-planes int32 [bits, R, ceil(K/32)]
    on values' device: bit b of u = (v + 2^bits − 1)/2 is bit k % 32 of word k // 32 of
    plane b; padding bits 0. Not differentiable (integers)."""
    return ops.bipolar_pack(values, bits)


@torch.library.register_fake(_name("bipolar_unpack"))
def _bipolar_unpack_fake(planes, K):
    return planes.new_empty((planes.shape[1], K), dtype=torch.int32)


def bipolar_unpack(planes: Tensor, K: int) -> Tensor:
    """Bit-planes int32 [bits, R, ceil(K/32)] -> odd integers int32 [R, K] on planes'
    device: the inverse of ``bipolar_pack`` (padding bits ignored). Not differentiable."""
    return ops.bipolar_unpack(planes, K)


@torch.library.register_fake(_name("bipolar_gemm"))
def _bipolar_gemm_fake(a_planes, w_planes, K):
    return a_planes.new_empty((a_planes.shape[1], w_planes.shape[1]), dtype=torch.int32)


def bipolar_gemm(a_planes: Tensor, w_planes: Tensor, K: int) -> Tensor:
    """Exact int32 ``unpack(a_planes, K) @ unpack(w_planes, K).T`` -> int32 [M, N].

    a_planes int32 [p, M, ceil(K/32)], w_planes int32 [q, N, ceil(K/32)], p and q in
    1..8, on one device; K·(2^p − 1)·(2^q − 1) < 2^31. Padding bits may hold anything.
    Not differentiable (integers).
    """
    return ops.bipolar_gemm(a_planes, w_planes, K)


@torch.library.register_fake(_name("bipolar_quantize"))
def _bipolar_quantize_fake(x, bits):
    rows, k = x.shape[0], x.shape[1]
    return (
        x.new_empty((bits, rows, _words(k)), dtype=torch.int32),
        x.new_empty((rows,), dtype=torch.float32),
    )


def bipolar_quantize(x: Tensor, bits: int) -> Tuple[Tensor, Tensor]:
    """Per-row quantization of x [R, K] (fp16/bf16/fp32/fp64, CPU or CUDA) to bits-bit
    bipolar-INT (bits in 1..8).

    Returns ``(planes, scale)``: planes int32 [bits, R, ceil(K/32)] (``bipolar_pack``'s
    format) of the odd level nearest to x / scale (ties up, clamped to ±(2^bits − 1)),
    scale fp32 [R] = row absmax / (2^bits − 1), so x ≈ scale[:, None] · unpack(planes).
    A row of zeros gets scale 0 (levels +1).

    NaN/Inf: a row holding a NaN or ±Inf (in fp32, so also a float64 value beyond
    fp32's range) gets scale NaN and levels +1: it dequantizes to NaN, never to
    finite, plausible values. Not differentiable (it rounds); use ``bipolar_linear``.
    """
    return ops.bipolar_quantize(x, bits)


@torch.library.register_fake(_name("bipolar_linear"))
def _bipolar_linear_fake(x, w_planes, w_scale, x_bits, bias=None):
    return x.new_empty((*x.shape[:-1], w_planes.shape[1]))


def bipolar_linear(
    x: Tensor, w_planes: Tensor, w_scale: Tensor, x_bits: int, bias: Optional[Tensor] = None
) -> Tensor:
    """``x @ W_deq.T + bias`` with x quantized per row to x_bits-bit bipolar-INT and
    W_deq = w_scale[:, None] · unpack(w_planes).

    x [..., K] fp16/bf16/fp32; w_planes int32 [q, N, ceil(K/32)] (q in 1..8, e.g. from
    ``bipolar_quantize(w, q)``); w_scale fp32 [N]; x_bits in 1..8; bias [N] in x's dtype
    or None; all on one device (CPU, or CUDA in a CUDA build). Returns [..., N] in x's
    dtype: x_scale[m] · w_scale[n] · (levels_x @ levels_w.T)[m, n] + bias[n] from the
    exact integer GEMM. An x whose K does not fit w_planes' word count is an error
    naming 'x' (the planes fix K only to within 32).

    NaN/Inf (never a finite result where x @ W_deq.T + bias is not): a row of x holding
    a NaN or ±Inf gives NaN across its output row (its scale is NaN, see
    ``bipolar_quantize``); a NaN/±Inf w_scale[n] or bias[n] makes output column n
    non-finite (NaN where it meets a zero product).

    Autograd: d/dx = grad @ W_deq (straight-through estimator for x's quantization),
    d/dbias = Σ grad, d/dw_scale exact. The bit-planes are frozen (integer).
    """
    return ops.bipolar_linear(x, w_planes, w_scale, x_bits, bias)


@torch.library.register_fake(_name("bipolar_mma_peak"))
def _bipolar_mma_peak_fake(like, kind, blocks, iterations):
    return like.new_empty((blocks,), dtype=torch.int32)


def bipolar_mma_peak(like: Tensor, kind: str, blocks: int, iterations: int) -> Tensor:
    """Internal microbenchmark (CUDA only; not differentiable): ``blocks`` CTAs issuing back-to-back tensor-core MMAs of ``kind``
    on like's GPU: mma.sync per warp ("b1_and": m16n8k256 AND-popc, "s4": m16n8k64, "s8":
    m16n8k32) or, on cc 9.0 with a 9.0a build, wgmma per warpgroup from shared memory
    ("wgmma_b1_and": m64n128k256 AND-popc, "wgmma_s8": m64n128k32, "wgmma_f16": m64n128k16)."""
    return ops.bipolar_mma_peak(like, kind, blocks, iterations)


# --- Tensor-Core block-sparse SpMM (SMaT) ------------------------------------


@torch.library.register_fake(_name("bsr_spmm"))
@torch.library.register_fake(_name("bsr_spmm_unchecked"))
def _bsr_spmm_fake(crow, col, blocks, b, m, row_perm=None):
    return b.new_empty((m, b.shape[1]))


def bsr_spmm(
    crow: Tensor, col: Tensor, blocks: Tensor, b: Tensor, m: int, row_perm: Optional[Tensor] = None
) -> Tensor:
    """C = A @ b for a sparse A [m, k] in BCSR (torch's ``sparse_bsr`` conventions).

    Args:
        crow: [ceil(m / br) + 1] int32 or int64 block-row offsets (block row rb holds blocks
            crow[rb] .. crow[rb+1]-1).
        col: [nblocks] block-column indices, crow's index dtype.
        blocks: [nblocks, br, bc] fp16, bf16, fp32 or fp64 (b's dtype). When m or k is not a
            multiple of br or bc the last blocks are padded; whatever the padding holds (NaN
            included) never reaches C or any gradient.
        b: [k, n] dense, on the same device (CPU or CUDA).
        m: rows of A.
        row_perm: optional int64 [m]: stored row r is A's row row_perm[r]; C comes back in A's
            original row order.

    Returns:
        C [m, n] in b's dtype (fp32 accumulation; fp64 for fp32/fp64 inputs). NaN and Inf in
        b or in a stored block reach C as in ``torch.matmul`` (a stored zero times Inf is NaN).

    Differentiable w.r.t. ``blocks`` (``bsr_sddmm``: (grad · bᵀ) at the stored blocks, 0 in the
    padding) and ``b`` (Aᵀ · grad, a transposed block-sparse product on the same kernels)."""
    return ops.bsr_spmm(crow, col, blocks, b, m, row_perm)


def bsr_spmm_unchecked(
    crow: Tensor, col: Tensor, blocks: Tensor, b: Tensor, m: int, row_perm: Optional[Tensor] = None
) -> Tensor:
    """bsr_spmm without its index-value checks on CUDA (they cost a device sync): for indices
    checked before, as BlockSparseMatrix does once. A bad index then gives a wrong result,
    never an access out of bounds. On the CPU it is bsr_spmm, checks included."""
    return ops.bsr_spmm_unchecked(crow, col, blocks, b, m, row_perm)


@torch.library.register_fake(_name("bsr_spmm_packed"))
def _bsr_spmm_packed_fake(crow, col, row_words, row_values, word_blocks, word_cols, values, b, m, block_rows,
                          block_cols, row_perm=None):
    return b.new_empty((m, b.shape[1]))


def bsr_spmm_packed(
    crow: Tensor, col: Tensor, row_words: Tensor, row_values: Tensor, word_blocks: Tensor, word_cols: Tensor,
    values: Tensor, b: Tensor, m: int, block_rows: int, block_cols: int, row_perm: Optional[Tensor] = None,
) -> Tensor:
    """bsr_spmm on blocks packed row by row (CPU, int64 indices): stored row s has words
    row_words[s] .. row_words[s+1]-1, one per block of its block row with a non-zero in
    that row, in block order; word w names its block (word_blocks[w]) and marks the row's
    non-zero columns in that block (bit c of word_cols[w]); the row's non-zeros are
    values[row_values[s] .. row_values[s+1]), word by word, column by column."""
    return ops.bsr_spmm_packed(crow, col, row_words, row_values, word_blocks, word_cols, values, b, m, block_rows,
                               block_cols, row_perm)


@torch.library.register_fake(_name("bsr_sddmm"))
@torch.library.register_fake(_name("bsr_sddmm_unchecked"))
def _bsr_sddmm_fake(crow, col, a, b, br, bc, row_perm=None):
    return a.new_empty((col.shape[0], br, bc))


def bsr_sddmm(
    crow: Tensor, col: Tensor, a: Tensor, b: Tensor, br: int, bc: int, row_perm: Optional[Tensor] = None
) -> Tensor:
    """(a @ b.T) sampled at the stored blocks of a BCSR structure (SDDMM).

    Args:
        crow, col: the BCSR structure of an [m, k] matrix with br × bc blocks, as in ``bsr_spmm``
            (int32 or int64, one dtype).
        a: [m, n] fp16, bf16, fp32 or fp64; b: [k, n], a's dtype and device (CPU or CUDA).
        row_perm: optional int64 [m]: stored row r is a's row row_perm[r] (as in ``bsr_spmm``).

    Returns:
        blocks [nblocks, br, bc] in a's dtype: blocks[j][r][c] = Σ_t a[row_perm[rb·br + r], t] ·
        b[col[j]·bc + c, t] for block j of block row rb (fp32 accumulation; fp64 for fp32/fp64),
        0 in the padding (rows at or past m, columns at or past k). NaN/Inf propagate as in a
        dense matmul. ``bsr_sddmm(crow, col, grad_c, b, br, bc, row_perm)`` is the gradient of
        ``bsr_spmm`` w.r.t. its blocks."""
    return ops.bsr_sddmm(crow, col, a, b, br, bc, row_perm)


def bsr_sddmm_unchecked(
    crow: Tensor, col: Tensor, a: Tensor, b: Tensor, br: int, bc: int, row_perm: Optional[Tensor] = None
) -> Tensor:
    """bsr_sddmm without its index-value checks on CUDA (no device sync), for indices checked
    before (bsr_spmm's backward). A bad index gives a wrong result, never an access out of
    bounds. On the CPU it is bsr_sddmm, checks included."""
    return ops.bsr_sddmm_unchecked(crow, col, a, b, br, bc, row_perm)


@torch.library.register_fake(_name("bsr_reorder_rows"))
def _bsr_reorder_rows_fake(crow, col, k, block_rows, block_cols):
    return crow.new_empty((crow.shape[0] - 1,), dtype=torch.int64)


def bsr_reorder_rows(crow: Tensor, col: Tensor, k: int, block_rows: int, block_cols: int) -> Tensor:
    """SMaT row reordering of a CSR pattern [m, k] (CPU; crow [m + 1], col [nnz], int32 or int64,
    one dtype): groups rows with similar column patterns so that block_rows × block_cols blocks
    get denser. Returns perm, int64 [m], a permutation: stored row r = A's row perm[r] (the
    ``row_perm`` of bsr_from_csr / bsr_spmm). Not differentiable (integers)."""
    return ops.bsr_reorder_rows(crow, col, k, block_rows, block_cols)


@torch.library.register_fake(_name("bsr_from_csr"))
def _bsr_from_csr_fake(crow, col, values, k, block_rows, block_cols, row_perm=None):
    nblocks = torch.library.get_ctx().new_dynamic_size()
    m = crow.shape[0] - 1
    return (
        crow.new_empty(((m + block_rows - 1) // block_rows + 1,)),
        col.new_empty((nblocks,)),
        values.new_empty((nblocks, block_rows, block_cols)),
    )


def bsr_from_csr(
    crow: Tensor, col: Tensor, values: Tensor, k: int, block_rows: int, block_cols: int,
    row_perm: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """CSR [m, k] -> BCSR (CPU): crow [m + 1], col [nnz] (int32 or int64, one dtype), values
    [nnz] fp16/bf16/fp32/fp64; optional int64 row_perm [m] (stored row r = A's row row_perm[r]).
    Returns (bcrow [ceil(m / block_rows) + 1], bcol [nblocks], crow's index dtype; blocks
    [nblocks, block_rows, block_cols], values' dtype, zero-padded), block columns ascending in
    each block row. Not differentiable: train BlockSparseMatrix.blocks instead."""
    return ops.bsr_from_csr(crow, col, values, k, block_rows, block_cols, row_perm)


# --- Atomic row-wise SpGEMM (SMASH) ------------------------------------------


@torch.library.register_fake(_name("spgemm_csr"))
def _spgemm_csr_fake(a_crow, a_col, a_val, b_crow, b_col, b_val, n):
    nnz = torch.library.get_ctx().new_dynamic_size()
    return (
        a_crow.new_empty(a_crow.shape),
        a_col.new_empty((nnz,)),
        a_val.new_empty((nnz,)),
    )


def spgemm_csr(
    a_crow: Tensor, a_col: Tensor, a_val: Tensor, b_crow: Tensor, b_col: Tensor, b_val: Tensor, n: int
) -> Tuple[Tensor, Tensor, Tensor]:
    """C = A @ B for CSR matrices A [m, k] and B [k, n]; returns C's CSR arrays ``(crow, col, val)``.

    Args:
        a_crow: int32 or int64 [m + 1], A's row pointer (a_crow[0] == 0, non-decreasing,
            a_crow[m] == nnz(A)); its dtype is the index dtype, which every index
            tensor must share.
        a_col: [nnz(A)] column indices in [0, k) (any order within a row; duplicates add up).
        a_val: float32 or float64 [nnz(A)]; b_val must have the same dtype.
        b_crow, b_col, b_val: B's CSR arrays, likewise (k = b_crow.numel() - 1, b_col in [0, n)).
        n: B's number of columns (>= 0; < 2^31 with int32 indices).
        Index/value tensors may be non-contiguous; all on one device (CPU, or CUDA in a
        CUDA build).

    Returns:
        ``(c_crow [m + 1], c_col [nnz(C)], c_val [nnz(C)])`` on the inputs' device, indices in
        A's index dtype, values in A's value dtype (summed in that dtype; the CUDA kernel's
        atomics add in no fixed order), columns strictly increasing within each row.

    The structure is symbolic (as in cuSPARSE and torch): (i, j) is stored whenever some
    A[i, k]·B[k, j] product exists, even if the products sum to 0 or an input value is an
    explicit 0; ``mlx_kernels.spgemm(..., drop_zeros=True)`` gives scipy's structure. NaN/Inf
    reach exactly the entries whose products touch them. Raises (naming the op and the
    argument) on a malformed CSR, out-of-range indices, mixed dtypes or devices, and when
    nnz(C) would overflow int32 indices. Not differentiable (a gradient asked through it
    raises). Under torch.compile it traces into the graph with a data-dependent nnz
    (``torch._dynamo.config.capture_dynamic_output_shape_ops = True`` for ``fullgraph``).
    """
    return ops.spgemm_csr(a_crow, a_col, a_val, b_crow, b_col, b_val, n)


# --- FFT-as-matmul convolution (FlashFFTConv) --------------------------------


def fft_size_for(seqlen: int) -> int:
    """FFT size of fft_conv for sequence length L: the smallest power of two >= max(16, 2L)."""
    n = 16
    while n < 2 * seqlen:
        n *= 2
    return n


@torch.library.register_fake(_name("fft_conv"))
def _fft_conv_fake(u, k, pregate=None, postgate=None):
    torch._check(u.dim() == 3, lambda: "fft_conv: u must be 3-D [B, H, L]")
    torch._check(k.dim() == 2 and k.shape[0] == u.shape[1], lambda: "fft_conv: k must be [H, Lk]")
    return torch.empty_like(u, memory_format=torch.contiguous_format)


def fft_conv(
    u: Tensor, k: Tensor, pregate: Optional[Tensor] = None, postgate: Optional[Tensor] = None
) -> Tensor:
    """Causal long convolution ``y[b, h, t] = Σ_{s ≤ min(t, Lk-1)} k[h, s]·v[b, h, t-s]``,
    ``v = u·pregate``, then ``y·postgate`` (FlashFFTConv: FFTs as Monarch matmuls).

    u [B, H, L] float16/bfloat16/float32 (float64 on the CPU), any L ≥ 1; k [H, Lk] float32
    (float64 with float64 u), 1 ≤ Lk ≤ L; pregate/postgate None or u's shape and dtype.
    CPU and CUDA (all tensors on one device). Returns y [B, H, L] in u's dtype, computed in
    float32 (float64 for float64 u). Differentiable in u, k and both gates. A NaN or Inf in
    a (b, h) row of u·pregate, or in k[h], makes that output row NaN (an FFT spreads it over
    the row, as torch.fft's convolution does) and no other row; a non-finite postgate entry
    only its own output."""
    return ops.fft_conv(u, k, pregate, postgate)


@torch.library.register_fake(_name("fft_conv_spectrum"))
def _fft_conv_spectrum_fake(k, seqlen, keep_blocks):
    torch._check(k.dim() == 2, lambda: "fft_conv_spectrum: k must be [H, Lk]")
    return k.new_empty((k.shape[0], 2, fft_size_for(seqlen)))


def fft_conv_spectrum(k: Tensor, seqlen: int, keep_blocks: int = 8) -> Tensor:
    """Internal: k's spectrum [H, 2, N] (N = fft_size_for(seqlen); real and imaginary parts in
    Monarch order, scaled by 1/N, zero outside the kept frequency blocks), float32 (float64 for
    float64 k). Not differentiable (FFTConv differentiates k through it); a non-finite k[h]
    gives a NaN spectrum for head h only."""
    return ops.fft_conv_spectrum(k, seqlen, keep_blocks)


@torch.library.register_fake(_name("fft_conv_spectral"))
def _fft_conv_spectral_fake(u, k_f, keep_blocks, pregate=None, postgate=None):
    torch._check(u.dim() == 3, lambda: "fft_conv_spectral: u must be 3-D [B, H, L]")
    return torch.empty_like(u, memory_format=torch.contiguous_format)


def fft_conv_spectral(
    u: Tensor, k_f: Tensor, keep_blocks: int = 8, pregate: Optional[Tensor] = None,
    postgate: Optional[Tensor] = None,
) -> Tensor:
    """Internal: fft_conv with a precomputed spectrum from :func:`fft_conv_spectrum` (the same
    keep_blocks). Differentiable in u and the gates, not in k_f (use FFTConv for k)."""
    return ops.fft_conv_spectral(u, k_f, keep_blocks, pregate, postgate)


# --- Shared-prefix attention (Hydragen) --------------------------------------


@torch.library.register_fake(_name("attention_with_lse"))
def _attention_with_lse_fake(q, k, v, causal=False, scale=None):
    batch, seq_q, heads_q, _ = q.shape
    return (
        q.new_empty((batch, seq_q, heads_q, v.shape[-1])),
        q.new_empty((batch, heads_q, seq_q), dtype=torch.float32),
    )


def attention_with_lse(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: Optional[float] = None
) -> Tuple[Tensor, Tensor]:
    """Softmax attention that also returns its log-sum-exp.

    q [B, Sq, Hq, D], k and v [B, Sk, Hkv, D] (Hq a multiple of Hkv: GQA), float16/bfloat16/
    float32, one device (CPU or CUDA). causal: query i sees keys j ≤ Sk − Sq + i (the last
    query aligned with the last key, as in FlashAttention). scale defaults to 1/√D.
    Returns out [B, Sq, Hq, D] in q's dtype and lse float32 [B, Hq, Sq] (natural log); a
    query that sees no key gets out 0 and lse −inf. Differentiable in q, k, v, through out
    and lse (recomputing backward in float32)."""
    return ops.attention_with_lse(q, k, v, causal, scale)


@torch.library.register_fake(_name("attention_with_lse_ragged"))
def _attention_with_lse_ragged_fake(q, k, v, key_lens, causal=False, scale=None):
    return _attention_with_lse_fake(q, k, v, causal, scale)


def attention_with_lse_ragged(
    q: Tensor, k: Tensor, v: Tensor, key_lens: Tensor, causal: bool = False, scale: Optional[float] = None
) -> Tuple[Tensor, Tensor]:
    """Internal: attention_with_lse where sequence b sees only its first key_lens[b] keys
    (key_lens int32 [B] in [0, Sk]; causal aligns the last query with key key_lens[b] − 1).
    Keys past the length are never read into any result. Differentiable in q, k, v."""
    return ops.attention_with_lse_ragged(q, k, v, key_lens, causal, scale)


@torch.library.register_fake(_name("merge_attention_states"))
def _merge_attention_states_fake(out_a, lse_a, out_b, lse_b):
    return out_a.new_empty(out_a.shape), lse_a.new_empty(lse_a.shape)


def merge_attention_states(
    out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor
) -> Tuple[Tensor, Tensor]:
    """Exact softmax merge of two attentions over disjoint key sets.

    out_a, out_b [B, S, H, D] (one dtype: float16/bfloat16/float32), lse_a, lse_b float32
    [B, H, S] as returned by attention_with_lse. Returns (out, lse) of the attention over
    both key sets: out in out_a's dtype, lse float32. A side with lse −inf contributes
    nothing; both −inf gives out 0 and lse −inf. Differentiable in all four (closed form;
    both-empty rows get zero gradients)."""
    return ops.merge_attention_states(out_a, lse_a, out_b, lse_b)


@torch.library.register_fake(_name("shared_prefix_attention"))
def _shared_prefix_attention_fake(
    q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens=None, scale=None
):
    return q.new_empty((*q.shape[:-1], prefix_v.shape[-1]))


def shared_prefix_attention(
    q: Tensor,
    prefix_k: Tensor,
    prefix_v: Tensor,
    suffix_k: Tensor,
    suffix_v: Tensor,
    suffix_lens: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tensor:
    """Attention of every sequence over one shared prefix plus its own suffix (Hydragen).

    q [B, Sq, Hq, D]; prefix_k/prefix_v [P, Hkv, D], stored once and attended by all B·Sq
    queries as one batched matmul; suffix_k/suffix_v [B, S, Hkv, D]; suffix_lens int32 [B]
    in [0, S] (None: S): keys past a sequence's length are never read into its result (a
    KV cache may hold anything there). Query i of Sq sees the whole prefix and suffix keys
    j ≤ len − Sq + i (causal, the last query aligned with the last key). float16/bfloat16/
    float32, one device; Hq a multiple of Hkv (GQA); scale defaults to 1/√D. Returns
    [B, Sq, Hq, D] in q's dtype; a query that sees no key at all gets 0. Differentiable in
    q and the four key/value tensors (recomputing backward in float32, the prefix again
    batched across sequences)."""
    return ops.shared_prefix_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_lens, scale)
