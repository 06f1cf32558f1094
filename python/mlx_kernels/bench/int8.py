"""int8 family benchmarks.

int8_mm: against torch._int_mm and 16-bit/fp32 matmul.
On Hopper (cc 9.0), where int8_mm and int8_gemm run wgmma kernels, also against
our own sm80 (mma.sync) kernels, which the other GPUs run (MLX_INT8_SM80=1).
int8_gemm (LLM.int8, the whole op: quantize x, int8 GEMM, dequant, outliers):
  against fp16/bf16 matmul of the unquantized layer, torch._int_mm + a separate
  dequantization (x already quantized: a lower bound for that route), and
  bitsandbytes's int8_vectorwise_quant + int8_mixed_scaled_mm when installed,
  at Llama-7B/13B/70B projection shapes, with and without outlier columns.
int8_vectorwise_quant: GB/s against plain torch and bitsandbytes.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Dict, List

import torch

from .. import ops
from .core import Case, Measure, runs_sm90a_kernels

# (M, N, K): square sizes plus Llama-7B projections (q/k/v/o 4096x4096, MLP 11008).
_GPU_SHAPES = [
    (4096, 4096, 4096), (8192, 8192, 8192),
    (16, 4096, 4096), (16, 11008, 4096), (1024, 4096, 4096), (1024, 11008, 4096),
    (4096, 11008, 4096), (4096, 4096, 11008),
]
_GPU_QUICK = [(16, 4096, 4096), (4096, 4096, 4096)]
_CPU_SHAPES = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (16, 4096, 4096), (128, 4096, 1024)]
_CPU_QUICK = [(64, 256, 256), (256, 512, 512)]


def _int_mm_supported(device: str, m: int, n: int, k: int) -> bool:
    """torch._int_mm wants M > 16 and K, N multiples of 8 on CUDA."""
    return device == "cpu" or (m > 16 and k % 8 == 0 and n % 8 == 0)


def _float_matmul_baselines(a: torch.Tensor, b: torch.Tensor) -> Dict[str, callable]:
    """a @ b.T in fp16 and bf16 (cuBLAS) on CUDA, fp32 on CPU."""
    dtypes = ((torch.float16, "fp16 matmul"), (torch.bfloat16, "bf16 matmul")) if a.is_cuda else (
        (torch.float32, "fp32 matmul"),)
    baselines = {}
    for dtype, name in dtypes:
        a_f, b_f = a.to(dtype), b.to(dtype).t()
        baselines[name] = lambda a_f=a_f, b_f=b_f: a_f @ b_f
    return baselines


def _with_sm80_kernel(baselines: Dict[str, callable], ours: callable, device: str, m: int) -> None:
    """On Hopper, adds ours on the sm80 kernels (not the GEMV: M <= 16 runs it on every GPU)."""
    if not (m > 16 and runs_sm90a_kernels(device)):
        return

    def sm80_kernel():
        previous = os.environ.get("MLX_INT8_SM80")
        os.environ["MLX_INT8_SM80"] = "1"
        try:
            return ours()
        finally:
            if previous is None:
                del os.environ["MLX_INT8_SM80"]
            else:
                os.environ["MLX_INT8_SM80"] = previous

    baselines["ours, sm80 kernel"] = sm80_kernel


def int8_mm_cases(device: str, quick: bool) -> List[Case]:
    if device == "cuda":
        shapes = _GPU_QUICK if quick else _GPU_SHAPES
    else:
        shapes = _CPU_QUICK if quick else _CPU_SHAPES
    cases = []
    for m, n, k in shapes:

        def make(m=m, n=n, k=k):
            a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=device)
            b = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=device)
            baselines = {}
            if _int_mm_supported(device, m, n, k):
                bt = b.t()
                baselines["torch._int_mm"] = lambda: torch._int_mm(a, bt)
            baselines.update(_float_matmul_baselines(a, b))
            ours = lambda: ops.int8_mm(a, b)  # noqa: E731
            _with_sm80_kernel(baselines, ours, device, m)
            return ours, baselines

        cases.append(Case(label=f"{m}x{n}x{k}", params={"M": m, "N": n, "K": k},
                          measure=Measure(2.0 * m * n * k, "FLOP", peak="int8", integer=True), make=make))
    return cases


# --- int8_gemm -------------------------------------------------------------------

# (K, N) of the linear layers: Llama-2 7B (q/k/v/o, gate/up, down), 13B, 70B.
_LLAMA_LAYERS = {
    "7b-qkvo": (4096, 4096), "7b-up": (4096, 11008), "7b-down": (11008, 4096),
    "13b-qkvo": (5120, 5120), "13b-up": (5120, 13824), "13b-down": (13824, 5120),
    "70b-o": (8192, 8192), "70b-up": (8192, 28672), "70b-down": (28672, 8192),
}
_GEMM_GPU_M = [1, 16, 128, 1024, 4096]
_GEMM_GPU_QUICK = [("7b-qkvo", 16), ("7b-up", 4096)]
_GEMM_CPU = [("tiny", 16, 512, 512), ("tiny", 128, 1024, 1024), ("tiny", 1, 4096, 4096)]
_GEMM_CPU_QUICK = [("tiny", 16, 256, 256), ("tiny", 64, 512, 256)]
_OUTLIER_FRACTION = 0.001  # 0.1% of the feature columns, as in LLM.int8's large models
_THRESHOLD = 6.0


def _has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def _activations(m: int, k: int, dtype, device: str, outliers: bool) -> torch.Tensor:
    """Normal activations; with outliers, 0.1% of the columns hold values of 20-60."""
    x = torch.randn(m, k, device=device)
    if outliers:
        cols = torch.randperm(k, device=device)[: max(1, int(k * _OUTLIER_FRACTION))]
        x[:, cols] = torch.empty(m, len(cols), device=device).uniform_(20, 60) * torch.sign(x[:, cols])
    return x.to(dtype)


def _gemm_baselines(x, w, w_i8, w_absmax, threshold) -> Dict[str, callable]:
    (m, k), n = x.shape, w.shape[0]
    baselines = _float_matmul_baselines(x, w)
    if _int_mm_supported(x.device.type, m, n, k):  # x already quantized: the int8 GEMM + dequant alone
        x_i8, x_absmax, _ = ops.int8_vectorwise_quant(x, 0.0)
        w_t, col_scale = w_i8.t(), w_absmax / 127.0**2

        def int_mm_dequant():
            acc = torch._int_mm(x_i8, w_t)
            return (acc.float() * x_absmax[:, None] * col_scale).to(x.dtype)

        baselines["_int_mm+dequant"] = int_mm_dequant
    if _has_bitsandbytes():
        import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)

        bnb = torch.ops.bitsandbytes

        def bnb_llm_int8():
            ca, sca, cols = bnb.int8_vectorwise_quant(x, threshold)
            return bnb.int8_mixed_scaled_mm(x, ca, w_i8, sca, w_absmax, cols, None)[0]

        baselines["bitsandbytes"] = bnb_llm_int8
    return baselines


def int8_gemm_cases(device: str, quick: bool) -> List[Case]:
    if device == "cuda":
        layers = _GEMM_GPU_QUICK if quick else [(name, m) for name in _LLAMA_LAYERS for m in _GEMM_GPU_M]
        shapes = [(name, m, *_LLAMA_LAYERS[name][::-1]) for name, m in layers]
        if not quick:
            shapes.append(("square", 8192, 8192, 8192))
        dtype = torch.float16
    else:
        shapes = _GEMM_CPU_QUICK if quick else _GEMM_CPU
        dtype = torch.float32
    cases = []
    for name, m, n, k in shapes:
        for outliers in (False, True):
            threshold = _THRESHOLD if outliers else 0.0

            def make(m=m, n=n, k=k, outliers=outliers, threshold=threshold):
                x = _activations(m, k, dtype, device, outliers)
                w = torch.randn(n, k, device=device, dtype=dtype) / k**0.5
                w_i8, w_absmax, _ = ops.int8_vectorwise_quant(w, 0.0)
                ours = lambda: ops.int8_gemm(x, w_i8, w_absmax, None, threshold)  # noqa: E731
                baselines = _gemm_baselines(x, w, w_i8, w_absmax, threshold)
                _with_sm80_kernel(baselines, ours, device, m)
                return ours, baselines

            label = f"{name} {m}x{n}x{k}" + (" +outliers" if outliers else "")
            cases.append(Case(label=label, params={"layer": name, "M": m, "N": n, "K": k, "outliers": outliers,
                                                   "threshold": threshold},
                              measure=Measure(2.0 * m * n * k, "FLOP", peak="int8", integer=True), make=make))
    return cases


# --- int8_vectorwise_quant ---------------------------------------------------------

_QUANT_GPU = [(16, 4096), (4096, 4096), (8192, 8192), (4096, 28672)]
_QUANT_GPU_QUICK = [(4096, 4096)]
_QUANT_CPU = [(16, 4096), (512, 4096), (2048, 2048)]
_QUANT_CPU_QUICK = [(64, 1024)]


def int8_vectorwise_quant_cases(device: str, quick: bool) -> List[Case]:
    if device == "cuda":
        shapes, dtype = (_QUANT_GPU_QUICK if quick else _QUANT_GPU), torch.float16
    else:
        shapes, dtype = (_QUANT_CPU_QUICK if quick else _QUANT_CPU), torch.float32
    cases = []
    for rows, k in shapes:
        for outliers in (False, True):
            threshold = _THRESHOLD if outliers else 0.0

            def make(rows=rows, k=k, outliers=outliers, threshold=threshold):
                x = _activations(rows, k, dtype, device, outliers)

                def plain_torch():
                    xf = x.float()
                    mask = (xf.abs() > threshold).any(0) if threshold > 0 else None
                    masked = xf.masked_fill(mask, 0) if mask is not None else xf
                    absmax = masked.abs().amax(1)
                    return torch.round(masked * (127.0 / absmax[:, None])).to(torch.int8), absmax

                baselines = {"plain torch": plain_torch}
                if _has_bitsandbytes():
                    import bitsandbytes  # noqa: F401

                    baselines["bitsandbytes"] = lambda: torch.ops.bitsandbytes.int8_vectorwise_quant(x, threshold)
                return (lambda: ops.int8_vectorwise_quant(x, threshold)), baselines

            # Minimal traffic: read x, write x_i8 and the row absmax.
            x_bytes = torch.finfo(dtype).bits // 8
            moved = rows * k * x_bytes + rows * k + 4 * rows
            cases.append(Case(label=f"{rows}x{k}" + (" +outliers" if outliers else ""),
                              params={"rows": rows, "K": k, "outliers": outliers, "threshold": threshold,
                                      "x_bytes": x_bytes},
                              measure=Measure(moved, "B", peak="hbm"), make=make))
    return cases


BENCHMARKS = {
    "int8_mm": int8_mm_cases,
    "int8_gemm": int8_gemm_cases,
    "int8_vectorwise_quant": int8_vectorwise_quant_cases,
}

# What "ours" is in the tables and plots.
OURS = {
    "int8_mm": lambda device: "torch.ops.mlx.int8_mm (" + (
        "CUTLASS wgmma+TMA int8 GEMM on Hopper, CUTLASS sm80 Stream-K elsewhere" if device == "cuda" else
        "blocked AVX-512-VNNI/AVX2 int8 GEMM") + ")",
    "int8_gemm": "torch.ops.mlx.int8_gemm, the whole LLM.int8 op: quantize x, int8 GEMM, fused dequant, outlier columns",
    "int8_vectorwise_quant": "torch.ops.mlx.int8_vectorwise_quant: fused row absmax, round, outlier columns",
}
