"""A build without CUDA kernels names itself when handed CUDA tensors.

Without this, an op of a CPU-only build called on a GPU gets the dispatcher's
"Could not run 'mlx::int8_gemm' with arguments from the 'CUDA' backend", which says
neither why nor what to do. Every op of the namespace gets a CUDA kernel that raises
our own error instead. ``OPS`` lists them (the fake GPU of the test suite treats them
as missing kernels).
"""

import torch

from ._build_config import OPS_NAMESPACE, WITH_CUDA

OPS = frozenset()

_HOW_TO_GET_CUDA = (
    "this build of mlx_kernels has no CUDA kernels (it was built without CUDA). Rebuild with CUDA: "
    "MLX_CUDA=ON bash scripts/setup.sh, or pip install --no-build-isolation -C cmake.define.MLX_CUDA=ON ., "
    "with nvcc and a CUDA-enabled torch present; or move the tensors to the CPU."
)


def _register() -> frozenset:
    names = frozenset(name for name in torch._C._dispatch_get_all_op_names()
                      if name.startswith(f"{OPS_NAMESPACE}::"))
    for qualname in names:
        def refuse(*args, _op=qualname.replace("::", "."), **kwargs):
            raise RuntimeError(f"{_op}: got CUDA tensors, but {_HOW_TO_GET_CUDA}")

        torch.library.impl(qualname, "CUDA", refuse)
    return names


if not WITH_CUDA:
    OPS = _register()
