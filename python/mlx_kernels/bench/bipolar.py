"""bipolar-INT family benchmarks.

bipolar_gemm: WxAy bit-plane GEMM against fp16/bf16 matmul (cuBLAS), our int8_mm and
torch._int_mm, at square and Llama-7B shapes including decode (M = 1..16).
bipolar_linear: the model-facing op (activation quantize + GEMM + dequant + bias)
against bf16/fp16 F.linear, where decode-sized M is what low-bit weights are for.
bipolar_mma_peak: raw 1-bit tensor-core throughput (mma.sync b1 AND-popc) next to
int8 and int4 mma.sync and, on Hopper, wgmma b1 AND-popc next to wgmma s8 and f16:
the numbers that decide between mma.sync and wgmma for the bit-plane GEMM.
TOPS are counted as 2·M·N·K per second for every bit width (the GEMM's useful work).
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from .. import ops
from .core import Case, Measure, NoCases, runs_sm90a_kernels

# (w_bits, a_bits): W1A1 ... W8A8.
_BITS = [(1, 1), (1, 2), (2, 2), (2, 4), (3, 3), (4, 4), (2, 8), (4, 8), (8, 8)]
_BITS_QUICK = [(2, 2), (4, 4)]

# (M, N, K): squares, Llama-7B projections (4096x4096 q/k/v/o, 11008 MLP) at
# decode (M = 1, 4, 16), prefill-sized batches and full 4096-token prefill.
_GPU_SHAPES = [
    (8192, 8192, 8192), (4096, 4096, 4096),
    (1, 4096, 4096), (4, 4096, 4096), (16, 4096, 4096), (16, 11008, 4096), (16, 4096, 11008),
    (1024, 4096, 4096), (4096, 11008, 4096), (4096, 4096, 11008),
]
_GPU_QUICK = [(16, 4096, 4096), (4096, 4096, 4096)]
_CPU_SHAPES = [(256, 256, 1024), (16, 4096, 4096), (128, 1024, 1024)]
_CPU_QUICK = [(16, 128, 256)]


def _random_planes(bits: int, rows: int, k: int, device: str) -> torch.Tensor:
    # Random words are valid planes once the padding bits are cleared (every bit pattern is a value).
    words = (k + 31) // 32
    planes = torch.randint(-(2**31), 2**31 - 1, (bits, rows, words), dtype=torch.int32, device=device)
    if k % 32:
        planes[..., -1] &= (1 << (k % 32)) - 1
    return planes


def _shapes_and_bits(device: str, quick: bool):
    if device == "cuda":
        shapes = _GPU_QUICK if quick else _GPU_SHAPES
    else:
        shapes = _CPU_QUICK if quick else _CPU_SHAPES
    return shapes, (_BITS_QUICK if quick else _BITS)


def _matmul_baselines(m: int, n: int, k: int, device: str) -> dict:
    baselines = {}
    a8 = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=device)
    b8 = torch.randint(-127, 128, (n, k), dtype=torch.int8, device=device)
    baselines["mlx int8_mm"] = lambda: ops.int8_mm(a8, b8)
    # torch._int_mm wants M > 16 and K, N multiples of 8 on CUDA.
    if device == "cpu" or (m > 16 and k % 8 == 0 and n % 8 == 0):
        b8t = b8.t()
        baselines["torch._int_mm"] = lambda: torch._int_mm(a8, b8t)
    dtypes = [(torch.float16, "fp16"), (torch.bfloat16, "bf16")] if device == "cuda" else [(torch.float32, "fp32")]
    for dtype, name in dtypes:
        a16 = torch.randn(m, k, dtype=dtype, device=device)
        b16 = torch.randn(k, n, dtype=dtype, device=device)
        baselines[f"{name} matmul"] = lambda a16=a16, b16=b16: a16 @ b16
    return baselines


def bipolar_gemm_cases(device: str, quick: bool) -> List[Case]:
    shapes, bits = _shapes_and_bits(device, quick)
    cases = []
    for m, n, k in shapes:
        for w_bits, a_bits in bits:

            def make(m=m, n=n, k=k, w_bits=w_bits, a_bits=a_bits):
                a_planes = _random_planes(a_bits, m, k, device)
                w_planes = _random_planes(w_bits, n, k, device)
                return (lambda: ops.bipolar_gemm(a_planes, w_planes, k)), _matmul_baselines(m, n, k, device)

            cases.append(Case(label=f"W{w_bits}A{a_bits} {m}x{n}x{k}",
                              params={"M": m, "N": n, "K": k, "w_bits": w_bits, "a_bits": a_bits},
                              measure=Measure(2.0 * m * n * k, "FLOP", peak="int8", integer=True), make=make))
    return cases


def bipolar_linear_cases(device: str, quick: bool) -> List[Case]:
    if device == "cuda":
        shapes = [(16, 4096, 4096)] if quick else [(1, 4096, 4096), (16, 4096, 4096), (16, 11008, 4096),
                                                   (16, 4096, 11008), (1024, 4096, 4096)]
        dtype = torch.bfloat16
    else:
        shapes = [(4, 128, 256)] if quick else [(1, 4096, 4096), (16, 4096, 4096)]
        dtype = torch.float32
    bits = [(2, 8), (4, 8)] if quick else [(1, 8), (2, 8), (4, 8), (2, 4), (4, 4)]
    shapes_bits = [(shape, b) for shape in shapes for b in bits]
    if device == "cpu" and not quick:
        # Issue 26's target: W2A2 at least as fast as fp32 F.linear for M >= 64, K = N = 4096
        # (with W1A1 and W4A4 beside it at M = 64).
        shapes_bits += [((64, 4096, 4096), b) for b in [(1, 1), (2, 2), (4, 4)]]
        shapes_bits += [((256, 4096, 4096), (2, 2))]
    cases = []
    for (m, n, k), (w_bits, x_bits) in shapes_bits:

        def make(m=m, n=n, k=k, w_bits=w_bits, x_bits=x_bits):
            x = torch.randn(m, k, dtype=dtype, device=device)
            weight = torch.randn(n, k, dtype=dtype, device=device)
            bias = torch.randn(n, dtype=dtype, device=device)
            w_planes, w_scale = ops.bipolar_quantize(weight, w_bits)
            baselines = {f"{str(dtype).split('.')[-1]} F.linear": lambda: F.linear(x, weight, bias)}
            return (lambda: ops.bipolar_linear(x, w_planes, w_scale, x_bits, bias)), baselines

        cases.append(Case(label=f"W{w_bits}A{x_bits} {m}x{n}x{k}",
                          params={"M": m, "N": n, "K": k, "w_bits": w_bits, "x_bits": x_bits},
                          measure=Measure(2.0 * m * n * k, "FLOP", peak="int8", integer=True), make=make))
    return cases


# The raw tensor-core microbenchmark (csrc/bipolar/mma_peak.cu, mma_peak_sm90a.cu):
# (kind, label, MMAs one CTA issues per iteration, 2·M·N·K of one MMA).
_MMA_KINDS = [("b1_and", "mma.sync b1 AND-popc m16n8k256", 8 * 4, 2 * 16 * 8 * 256),  # kChains × warps
              ("s4", "mma.sync s4 m16n8k64", 8 * 4, 2 * 16 * 8 * 64),
              ("s8", "mma.sync s8 m16n8k32", 8 * 4, 2 * 16 * 8 * 32)]
_WGMMA_KINDS = [("wgmma_b1_and", "wgmma b1 AND-popc m64n128k256", 4, 2 * 64 * 128 * 256),  # kWgmmasPerRound
                ("wgmma_s8", "wgmma s8 m64n128k32", 4, 2 * 64 * 128 * 32),
                ("wgmma_f16", "wgmma f16 m64n128k16", 4, 2 * 64 * 128 * 16)]


def bipolar_mma_peak_cases(device: str, quick: bool) -> List[Case]:
    if device != "cuda":
        raise NoCases("GPU-only: it measures the tensor cores' raw mma.sync/wgmma throughput (no CPU kernel)")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    kinds = [(kind, label, per_iteration, mma_ops, sms * 8) for kind, label, per_iteration, mma_ops in _MMA_KINDS]
    if runs_sm90a_kernels(device):
        kinds += [(kind, label, per_iteration, mma_ops, sms * 4)
                  for kind, label, per_iteration, mma_ops in _WGMMA_KINDS]
    iterations = 64 if quick else 256
    cases = []
    for kind, label, per_iteration, mma_ops, blocks in kinds:

        def make(kind=kind, blocks=blocks):
            like = torch.empty(0, device=device)
            return (lambda: ops.bipolar_mma_peak(like, kind, blocks, iterations)), {}

        ops_per_call = float(mma_ops) * per_iteration * blocks * iterations
        peak = "fp16" if kind == "wgmma_f16" else "int8"
        cases.append(Case(label=label, params={"kind": kind, "blocks": blocks, "iterations": iterations},
                          measure=Measure(ops_per_call, "FLOP", peak=peak, integer=peak == "int8"), make=make))
    return cases


BENCHMARKS = {
    "bipolar_gemm": bipolar_gemm_cases,
    "bipolar_linear": bipolar_linear_cases,
    "bipolar_mma_peak": bipolar_mma_peak_cases,
}

# What "ours" is in the tables and plots.
OURS = {
    "bipolar_gemm": lambda device: "torch.ops.mlx.bipolar_gemm on packed bit-planes (" + (
        "mma.sync m16n8k256 b1 AND-popc" if device == "cuda" else "64-bit AND-popcount, VPOPCNTDQ when present") + ")",
    "bipolar_linear": "torch.ops.mlx.bipolar_linear: fused activation quantize, bit-plane GEMM, dequantize + bias",
    "bipolar_mma_peak": "our microbenchmark kernel per MMA kind (raw tensor-core throughput, no memory traffic)",
}
