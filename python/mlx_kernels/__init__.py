"""mlx-kernels: hand-tuned CUDA/CUTLASS kernels as torch custom ops.

``import mlx_kernels`` loads the compiled library, which registers every op under
``torch.ops.<namespace>`` (``torch.ops.mlx`` unless the package was built with
another ``MLX_NAMESPACE``) with CPU kernels always and CUDA kernels when built
with CUDA. The names below are thin typed wrappers and the nn.Modules built on them.
"""

import torch  # noqa: F401  (loads libtorch, whose symbols the extension resolves against)

from ._build_config import OPS_NAMESPACE, WITH_CUDA
from ._build_config import TORCH_VERSION as _BUILT_WITH_TORCH

try:
    from . import _C  # noqa: F401  (registers the ops)
except ImportError as error:
    if _BUILT_WITH_TORCH != torch.__version__:
        raise ImportError(
            f"mlx_kernels was built against torch {_BUILT_WITH_TORCH} and this is torch {torch.__version__}; "
            "a compiled extension runs only with the torch it was built against: rebuild it against this "
            "torch (pip install --no-build-isolation ...)") from error
    raise
from . import _cuda_missing  # noqa: F401  (a CPU-only build's own error for CUDA tensors)
from .attention import (
    attention_with_lse,
    hierarchical_shared_prefix_attention,
    merge_attention_states,
    shared_prefix_attention,
)
from .bipolar import BipolarLinear
from .bsr import BlockSparseMatrix
from .fftconv import FFTConv
from .int8 import Int8Linear, quantize_model_int8
from .nn import HyenaOperator
from .ops import (
    bipolar_gemm,
    bipolar_linear,
    bipolar_pack,
    bipolar_quantize,
    bipolar_unpack,
    bsr_spmm,
    fft_conv,
    fft_size_for,
    int8_gemm,
    int8_mm,
    int8_vectorwise_quant,
    spgemm_csr,
)
from .spgemm import spgemm

__version__ = "0.1.0"


def cpu_isa() -> str:
    """The instruction-set path the CPU kernels take now: ``"avx512"``, ``"avx2"`` or
    ``"scalar"`` (baseline x86-64). It is the best this CPU executes, capped by the
    environment variable ``MLX_CPU_ISA=scalar|avx2|avx512``, which every op call reads;
    a value that is not a path, or a path this CPU cannot execute, raises RuntimeError
    (here and in every CPU op)."""
    return _C.cpu_isa()


__all__ = [
    "OPS_NAMESPACE",
    "WITH_CUDA",
    "cpu_isa",
    "int8_mm",
    "int8_gemm",
    "int8_vectorwise_quant",
    "Int8Linear",
    "quantize_model_int8",
    "BipolarLinear",
    "bipolar_gemm",
    "bipolar_linear",
    "bipolar_pack",
    "bipolar_quantize",
    "bipolar_unpack",
    "BlockSparseMatrix",
    "bsr_spmm",
    "fft_conv",
    "fft_size_for",
    "FFTConv",
    "HyenaOperator",
    "attention_with_lse",
    "merge_attention_states",
    "shared_prefix_attention",
    "hierarchical_shared_prefix_attention",
    "spgemm",
    "spgemm_csr",
]
