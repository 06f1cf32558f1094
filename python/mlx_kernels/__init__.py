"""mlx-kernels: hand-tuned CUDA/CUTLASS kernels as torch custom ops.

``import mlx_kernels`` loads the compiled library, which registers every op under
``torch.ops.<namespace>`` (``torch.ops.mlx`` unless the package was built with
another ``MLX_NAMESPACE``) with CPU kernels always and CUDA kernels when built
with CUDA. The names below are thin typed wrappers and the nn.Modules built on them.
"""

import torch  # noqa: F401  (loads libtorch, whose symbols the extension resolves against)

from . import _C  # noqa: F401  (registers the ops)
from ._build_config import OPS_NAMESPACE, WITH_CUDA
from .ops import int8_mm
from .ops import spgemm_csr
from .spgemm import spgemm

__version__ = "0.1.0"

__all__ = [
    "OPS_NAMESPACE",
    "WITH_CUDA",
    "int8_mm",
    "spgemm",
    "spgemm_csr",
]
