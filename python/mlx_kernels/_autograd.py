"""Autograd helpers shared by the op families.

Every op in the namespace either has a backward registered with
``torch.library.register_autograd`` (next to its family's Python module) or is
declared non-differentiable here, so that asking for a gradient through it raises
an error naming the op instead of leaving ``.grad`` silently ``None``.
"""

from typing import Tuple

import torch

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
