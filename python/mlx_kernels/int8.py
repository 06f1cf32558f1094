"""LLM.int8() linear layers: ``Int8Linear`` and ``quantize_model_int8``.

Weights are stored as int8 with one absmax per output row (vector-wise
quantization); activations are quantized per row on the fly, and activation
columns with any |x| > ``threshold`` (the "emergent outlier features" of large
models) are multiplied in 16-bit against the dequantized weight columns
(Dettmers et al., 2022). All of it runs in ``int8_gemm``.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from . import ops

__all__ = ["Int8Linear", "quantize_model_int8"]


class Int8Linear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` with LLM.int8 weights.

    Buffers (all in ``state_dict``): ``weight`` int8 [out, in], ``weight_absmax``
    fp32 [out] (the row absmax: weight ≈ weight * weight_absmax[:, None] / 127),
    and ``bias`` [out] or None. The output has the input's dtype.
    ``threshold`` = 0 disables the outlier decomposition (pure int8).
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
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.register_buffer("bias", None)

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear: nn.Linear, threshold: float = 6.0) -> "Int8Linear":
        """Quantizes ``linear``'s weight per output row (absmax, round to nearest)."""
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
