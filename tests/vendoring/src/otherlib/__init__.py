"""otherlib: a stand-in for a library that vendors mlx-kernels (tests/vendoring).

Its copy lives at ``otherlib._vendor.mlx_kernels`` and registers its ops under
``torch.ops.vendored_mlx``, so it works beside an installed ``mlx_kernels``.
"""

from ._vendor import mlx_kernels as _mlx


def quantized_matmul(x, w):
    """x @ w.T through the vendored copy's LLM.int8 GEMM (what a library would wrap)."""
    w_i8, w_absmax, _ = _mlx.int8_vectorwise_quant(w)
    return _mlx.int8_gemm(x, w_i8, w_absmax, threshold=0.0)
