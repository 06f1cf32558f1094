"""int8 family benchmarks: int8_mm against torch._int_mm and 16-bit/fp32 matmul."""

from __future__ import annotations

from typing import List

import torch

from .. import ops
from .core import Case, Measure

# (M, N, K): square sizes plus Llama-7B projections (q/k/v/o 4096x4096, MLP 11008).
_GPU_SHAPES = [
    (4096, 4096, 4096), (8192, 8192, 8192),
    (16, 4096, 4096), (16, 11008, 4096), (1024, 4096, 4096), (1024, 11008, 4096),
    (4096, 11008, 4096), (4096, 4096, 11008),
]
_GPU_QUICK = [(16, 4096, 4096), (4096, 4096, 4096)]
_CPU_SHAPES = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (16, 4096, 4096), (128, 4096, 1024)]
_CPU_QUICK = [(64, 256, 256), (256, 512, 512)]


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
            # torch._int_mm wants M > 16 and K, N multiples of 8 on CUDA.
            if device == "cpu" or (m > 16 and k % 8 == 0 and n % 8 == 0):
                bt = b.t()
                baselines["torch._int_mm"] = lambda: torch._int_mm(a, bt)
            if device == "cuda":
                for dtype, name in ((torch.float16, "fp16 matmul"), (torch.bfloat16, "bf16 matmul")):
                    a16, b16 = a.to(dtype), b.to(dtype).t()
                    baselines[name] = lambda a16=a16, b16=b16: a16 @ b16
            else:
                a32, b32 = a.float(), b.float().t()
                baselines["fp32 matmul"] = lambda: a32 @ b32
            return (lambda: ops.int8_mm(a, b)), baselines

        cases.append(Case(label=f"{m}x{n}x{k}", params={"M": m, "N": n, "K": k},
                          measure=Measure(2.0 * m * n * k, "FLOP", peak="int8", integer=True), make=make))
    return cases


BENCHMARKS = {"int8_mm": int8_mm_cases}
