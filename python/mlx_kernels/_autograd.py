"""Autograd helpers shared by the op families.

Every op in the namespace either has a backward registered with
``torch.library.register_autograd`` (next to its family's Python module) or is
declared non-differentiable here, so that asking for a gradient through it raises
an error naming the op instead of leaving ``.grad`` silently ``None``.
"""

from typing import Tuple

import torch
from torch import Tensor

from . import ops as _ops


def needs_grad(ctx, count: int) -> Tuple[bool, ...]:
    """ctx.needs_input_grad padded to the op's arity (defaulted arguments are not listed)."""
    needs = tuple(ctx.needs_input_grad)
    return needs + (False,) * (count - len(needs))


def register_non_differentiable(op: str, why: str) -> None:
    """Make a gradient through ``op`` an error that names it and says why."""
    qualname = _ops._name(op)
    shown = qualname.replace("::", ".")  # as every other error names the op

    def backward(ctx, *grads):
        raise RuntimeError(f"{shown} is not differentiable: {why}")

    def setup_context(ctx, inputs, output):
        pass

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)


# Elements of a dequantized weight materialised at once by the int8 and bipolar
# backward of x (64 MiB of fp32): it is built a block of rows at a time.
DEQUANT_BLOCK_ELEMENTS = 1 << 24


def grad_through_dequantized_weight(grad2d: Tensor, k: int, dtype: torch.dtype, dequantized_rows) -> Tensor:
    """grad2d [M, N] @ W_deq [N, K] in ``dtype``, W_deq built ``dequantized_rows(n0, n1)``
    ([n1 - n0, K] in dtype) a bounded block of rows at a time."""
    m, n = grad2d.shape
    grad2d = grad2d.to(dtype)
    block = max(1, DEQUANT_BLOCK_ELEMENTS // max(k, 1))
    if n <= block:
        return grad2d @ dequantized_rows(0, n)
    out = grad2d.new_zeros((m, k))
    for n0 in range(0, n, block):
        n1 = min(n, n0 + block)
        out.addmm_(grad2d[:, n0:n1], dequantized_rows(n0, n1))
    return out
