"""bipolar-INT arbitrary-precision linear layers (W{w_bits}A{x_bits}) on 1-bit tensor cores,
and the autograd of the bipolar ops.

Weights are quantized once (per output row, to the nearest odd level, bit-planes
stored); activations are quantized per row on the fly inside ``bipolar_linear``.

Autograd (``torch.library.register_autograd``, so ``torch.compile`` and opcheck
see it):

- ``bipolar_linear(x, w_planes, w_scale, x_bits, bias)``, out ≈ x @ W_deq.T + bias
  with W_deq = w_scale[:, None] · unpack(w_planes): d/dx = g @ W_deq (the
  straight-through estimator: x's quantization to x_bits counts as the identity),
  W_deq built in x's dtype a bounded block of rows at a time; d/dbias = Σ g over
  the rows; d/dw_scale is exact (the output is linear in it): Σ_m g[m, n] · P[m, n]
  with P = bipolar_linear(x in fp32, w_planes, ones). The bit-planes are integers:
  the quantized weight is frozen.
- ``bipolar_pack``, ``bipolar_unpack``, ``bipolar_gemm``, ``bipolar_quantize``,
  ``bipolar_mma_peak``: not differentiable (integer in or out, or rounding);
  asking for a gradient through them raises an error naming the op.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import ops
from ._autograd import grad_through_dequantized_weight, needs_grad, register_non_differentiable


def _bipolar_linear_setup_context(ctx, inputs, output):
    x, w_planes, w_scale, x_bits, bias = inputs
    ctx.x_bits = x_bits
    ctx.save_for_backward(x, w_planes, w_scale)


def _bipolar_linear_backward(ctx, grad):
    x, w_planes, w_scale = ctx.saved_tensors
    need_x, _, need_scale, _, need_bias = needs_grad(ctx, 5)
    n, k = w_planes.shape[1], x.shape[-1]
    grad2d = grad.reshape(ops._rows(x), n)
    grad_x = grad_scale = grad_bias = None
    if need_x:
        def dequantized_rows(n0, n1):
            levels = ops.bipolar_unpack(w_planes[:, n0:n1], k)  # int32 [n1 - n0, K], odd levels
            return levels.to(x.dtype).mul_(w_scale[n0:n1, None])
        grad_x = grad_through_dequantized_weight(grad2d, k, x.dtype, dequantized_rows).reshape(x.shape)
    if need_scale:
        # out[m, n] = P[m, n] · w_scale[n] (+ bias): P is bipolar_linear with w_scale = 1.
        product = ops.bipolar_linear(x.to(torch.float32), w_planes, torch.ones_like(w_scale), ctx.x_bits, None)
        grad_scale = (grad2d.to(torch.float32) * product.reshape(grad2d.shape)).sum(0)
    if need_bias:
        grad_bias = grad2d.sum(0, dtype=torch.float32).to(x.dtype)  # bias has x's dtype
    return (grad_x, None, grad_scale, None, grad_bias)[:len(ctx.needs_input_grad)]


torch.library.register_autograd(
    ops._name("bipolar_linear"), _bipolar_linear_backward, setup_context=_bipolar_linear_setup_context)
register_non_differentiable("bipolar_pack", "it packs integer values into bit-planes")
register_non_differentiable("bipolar_unpack", "it unpacks integer bit-planes")
register_non_differentiable("bipolar_gemm", "it is an exact integer product of bit-planes")
register_non_differentiable(
    "bipolar_quantize",
    "it rounds x to odd levels (scale is not differentiated either); for a straight-through gradient "
    "use bipolar_linear / BipolarLinear, whose backward w.r.t. x is grad @ W_deq")
register_non_differentiable("bipolar_mma_peak", "it is a tensor-core microbenchmark")


class BipolarLinear(nn.Module):
    """``y ≈ x @ w.T + bias`` with w in ``w_bits``-bit and x in ``x_bits``-bit bipolar-INT
    (``bipolar_linear``: W{w_bits}A{x_bits}, bits in 1..8).

    State (all in ``state_dict``): buffers ``w_planes`` int32 [w_bits, out_features,
    ceil(in_features/32)] and ``w_scale`` fp32 [out_features] (the layer multiplies
    by W_deq = w_scale[:, None] · unpack(w_planes)), and ``bias``, an
    ``nn.Parameter`` [out_features] in the layer's dtype, or None.

    ``forward(x)``: x [..., in_features] fp16/bf16/fp32 on the layer's device (CPU,
    or CUDA in a CUDA build) -> [..., out_features] in x's dtype.

    Training: the quantized weight (bit-planes) is frozen. Gradients flow to x
    (straight-through estimator: grad @ W_deq), to ``bias``, and to ``w_scale`` if
    you make it require grad (exact) — enough for LoRA adapters around a frozen
    layer, or bias training. NaN/Inf: see ``bipolar_linear``.
    """

    def __init__(self, in_features: int, out_features: int, w_bits: int, x_bits: int, bias: bool = True,
                 device=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        for name, bits in (("w_bits", w_bits), ("x_bits", x_bits)):
            if not 1 <= bits <= 8:
                raise ValueError(f"BipolarLinear: {name} must be in 1..8, got {bits}")
        self.in_features, self.out_features = in_features, out_features
        self.w_bits, self.x_bits = w_bits, x_bits
        words = (in_features + 31) // 32
        self.register_buffer("w_planes", torch.zeros(w_bits, out_features, words, dtype=torch.int32, device=device))
        self.register_buffer("w_scale", torch.zeros(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear: nn.Linear, w_bits: int, x_bits: int) -> "BipolarLinear":
        """Quantizes ``linear``'s weight per output row with ``bipolar_quantize`` (scale =
        absmax / (2^w_bits − 1), nearest odd level); copies its bias. A weight row
        holding a NaN or ±Inf gets w_scale NaN, so that output feature is NaN."""
        weight = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, w_bits, x_bits, bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
        planes, scale = ops.bipolar_quantize(weight.contiguous(), w_bits)
        layer.w_planes.copy_(planes)
        layer.w_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    def dequantized_weight(self) -> Tensor:
        """The weight this layer multiplies by, in fp32: w_scale[:, None] * unpack(w_planes)."""
        return self.w_scale.float()[:, None] * ops.bipolar_unpack(self.w_planes, self.in_features).float()

    def forward(self, x: Tensor) -> Tensor:
        """x [..., in_features] -> [..., out_features] in x's dtype (``bipolar_linear``)."""
        bias: Optional[Tensor] = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        # module.to(dtype) casts every floating buffer; the kernel wants fp32 scales (no copy when they are).
        return ops.bipolar_linear(x, self.w_planes, self.w_scale.float(), self.x_bits, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, W{self.w_bits}A{self.x_bits}")
