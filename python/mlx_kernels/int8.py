"""LLM.int8() linear layers: ``Int8Linear`` and ``quantize_model_int8``, and the
autograd of the int8 ops.

Weights are stored as int8 with one absmax per output row (vector-wise
quantization); activations are quantized per row on the fly, and activation
columns with any |x| > ``threshold`` (the "emergent outlier features" of large
models) are multiplied in 16-bit against the dequantized weight columns
(Dettmers et al., 2022). All of it runs in ``int8_gemm``.

Autograd (``torch.library.register_autograd``, so ``torch.compile`` and opcheck
see it):

- ``int8_gemm(x, w_i8, w_absmax, bias, threshold)``, out ≈ x @ W_deq.T + bias with
  W_deq = w_i8 · w_absmax[:, None] / 127:
  d/dx = g @ W_deq (straight through x's int8 rounding, as bitsandbytes'
  ``Linear8bitLt`` does), W_deq built in x's dtype a bounded block of rows at a
  time; d/dbias = Σ g over the rows. d/dw_absmax is exact (the output is linear in
  it): Σ_m g[m, n] · P[m, n] / 127 with P = int8_gemm(x in fp32, w_i8, 127)
  (the same quantized product with w_absmax = 127, i.e. W_deq = w_i8). The int8
  weight ``w_i8`` is frozen: an integer tensor cannot require grad.
- ``int8_mm``, ``int8_vectorwise_quant``: not differentiable (integer in or out);
  asking for a gradient through them raises an error naming the op.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from . import ops
from ._autograd import grad_through_dequantized_weight, needs_grad, register_non_differentiable

__all__ = ["Int8Linear", "quantize_model_int8"]

def _int8_gemm_setup_context(ctx, inputs, output):
    x, w_i8, w_absmax, bias, threshold = inputs
    ctx.threshold = threshold
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.save_for_backward(x, w_i8, w_absmax)


def _int8_gemm_backward(ctx, grad):
    x, w_i8, w_absmax = ctx.saved_tensors
    need_x, _, need_absmax, need_bias, _ = needs_grad(ctx, 5)  # w_i8: int8, never requires grad
    n, k = w_i8.shape
    grad2d = grad.reshape(ops._rows(x), n)
    grad_x = grad_absmax = grad_bias = None
    if need_x:
        def dequantized_rows(n0, n1):
            # bitsandbytes' W_deq: w_i8 in x's dtype times absmax / 127, rounded once.
            return w_i8[n0:n1].to(x.dtype).mul_((w_absmax[n0:n1] / 127.0)[:, None])
        grad_x = grad_through_dequantized_weight(grad2d, k, x.dtype, dequantized_rows).reshape(x.shape)
    if need_absmax:
        # out[m, n] = P[m, n] · w_absmax[n] / 127 (+ bias): P is int8_gemm with w_absmax = 127.
        product = ops.int8_gemm(x.to(torch.float32), w_i8, torch.full_like(w_absmax, 127.0), None, ctx.threshold)
        grad_absmax = (grad2d.to(torch.float32) * product.reshape(grad2d.shape)).sum(0) / 127.0
    if need_bias:
        grad_bias = grad2d.sum(0, dtype=torch.float32).to(ctx.bias_dtype)
    return (grad_x, None, grad_absmax, grad_bias, None)[:len(ctx.needs_input_grad)]


torch.library.register_autograd(ops._name("int8_gemm"), _int8_gemm_backward, setup_context=_int8_gemm_setup_context)
register_non_differentiable("int8_mm", "it is an exact integer product of int8 tensors")
register_non_differentiable(
    "int8_vectorwise_quant",
    "it rounds x to int8 (row_absmax is not differentiated either); for a straight-through gradient "
    "use int8_gemm / Int8Linear, whose backward w.r.t. x is grad @ W_deq")


class Int8Linear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` with LLM.int8 weights (``int8_gemm``).

    State (all in ``state_dict``): buffers ``weight`` int8 [out, in] and
    ``weight_absmax`` fp32 [out] (the row absmax: the layer multiplies by
    W_deq = weight * weight_absmax[:, None] / 127), and ``bias``, an
    ``nn.Parameter`` [out] (any float dtype) or None.

    ``forward(x)``: x [..., in] fp16/bf16/fp32 on the layer's device (CPU, or CUDA
    in a CUDA build) -> [..., out] in x's dtype. ``threshold`` = 0 disables the
    outlier decomposition (pure int8).

    Training: the int8 weight is frozen (it is a buffer and an integer tensor).
    Gradients flow to x (grad @ W_deq, straight through x's quantization, as
    bitsandbytes' ``Linear8bitLt``), to ``bias``, and to ``weight_absmax`` if you
    make it require grad (exact: the output is linear in it) — enough to train
    LoRA adapters around a frozen layer, or its bias. NaN/Inf: see ``int8_gemm``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        threshold: float = 6.0,
        device: Optional[torch.device] = None,
        bias_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if threshold < 0:
            raise ValueError(f"Int8Linear: threshold must be >= 0, got {threshold}")
        self.in_features = in_features
        self.out_features = out_features
        self.threshold = float(threshold)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_absmax", torch.zeros(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.register_parameter("bias", None)

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear: nn.Linear, threshold: float = 6.0) -> "Int8Linear":
        """Quantizes ``linear``'s weight per output row (absmax, round to nearest, with
        ``int8_vectorwise_quant``); copies its bias. A weight row holding a NaN or ±Inf
        gets weight_absmax NaN/+Inf, so that output feature is NaN (never finite)."""
        weight = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                     threshold=threshold, device=weight.device,
                     bias_dtype=linear.bias.dtype if linear.bias is not None else torch.float32)
        w_i8, w_absmax, _ = ops.int8_vectorwise_quant(weight, 0.0)
        module.weight.copy_(w_i8)
        module.weight_absmax.copy_(w_absmax)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    def dequantized_weight(self) -> Tensor:
        """fp32 [out, in]: the weight the int8 values stand for."""
        return self.weight.float() * (self.weight_absmax[:, None] / 127.0)

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in_features] -> [..., out_features] in x's dtype (``int8_gemm``)."""
        return ops.int8_gemm(x, self.weight, self.weight_absmax, self.bias, self.threshold)

    def _apply(self, fn, recurse=True):
        # .half() / .to(dtype) cast every floating buffer; the scales must stay
        # fp32 (int8_gemm requires it, and fp16 would lose precision), so they
        # only follow the device moves, which the int8 weight reflects.
        absmax = self.weight_absmax
        super()._apply(fn, recurse)
        self.weight_absmax = absmax.to(device=self.weight.device, dtype=torch.float32)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, bits=8, threshold={self.threshold}")


def _skipped(name: str, skip: Iterable[str]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(leaf, pattern) for pattern in skip)


@torch.no_grad()
def quantize_model_int8(model: nn.Module, threshold: float = 6.0, skip: Iterable[str] = ("lm_head",)) -> nn.Module:
    """Replaces every ``nn.Linear`` of ``model`` in place by ``Int8Linear.from_float``.

    ``skip``: fnmatch patterns matched against each Linear's dotted name and its
    last component (e.g. ``"lm_head"``, ``"*.attention.*"``); those stay as they are.
    Returns ``model``.
    """
    skip = tuple(skip)
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and not _skipped(name, skip)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear.from_float(linear, threshold=threshold))
    return model
