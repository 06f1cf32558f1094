"""bipolar-INT arbitrary-precision linear layers (W{w_bits}A{x_bits}) on 1-bit tensor cores.

Weights are quantized once (per output row, to the nearest odd level, bit-planes
stored); activations are quantized per row on the fly inside ``bipolar_linear``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import ops


class BipolarLinear(nn.Module):
    """``y ≈ x @ w.T + bias`` with w in ``w_bits``-bit and x in ``x_bits``-bit bipolar-INT.

    Buffers: ``w_planes`` int32 [w_bits, out_features, ceil(in_features/32)],
    ``w_scale`` fp32 [out_features], ``bias`` (None or [out_features] in the layer's dtype).
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
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, w_bits: int, x_bits: int) -> "BipolarLinear":
        """Quantizes ``linear``'s weight per output row (scale = absmax / (2^w_bits − 1))."""
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
        bias: Optional[Tensor] = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        # module.to(dtype) casts every floating buffer; the kernel wants fp32 scales (no copy when they are).
        return ops.bipolar_linear(x, self.w_planes, self.w_scale.float(), self.x_bits, bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, W{self.w_bits}A{self.x_bits}")
