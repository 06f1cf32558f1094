"""python -m mlx_kernels.bench [--ops OP ...] [--device cpu|cuda] [--quick] [--plot] [--out DIR] [--overwrite]

Times our kernels against their baselines, prints a table per op and writes
<out>/<device>-<op>.json and .csv (.png with --plot).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import math
import pkgutil
import sys
import textwrap
from typing import Callable, Dict, List

import torch
from tqdm import tqdm

import mlx_kernels

from . import core

_FRAMEWORK_MODULES = {"core", "__main__"}

_EPILOG = """\
results:
  <out>/<device>-<op>.json (strict JSON: a figure that could not be measured is null),
  .csv and, with --plot, .png (median bars with interquartile error bars, the device
  named in full, higher is better). A run never replaces earlier results silently: when
  any file it would write exists, it stops before timing anything unless --overwrite is
  given (or pick another --out).

sparse matrices (spgemm_csr, bsr_spmm):
  the SuiteSparse Matrix Collection matrices (Matrix Market .mtx files) are read from
  $MLX_MATRIX_DIR, else from <checkout>/../shared/data/matrices. Without them, those ops
  say so and run on generated matrices of the same classes instead (gen-mesh: 2-D FEM
  mesh, 9-point stencil; gen-powerlaw: Chung-Lu power-law graph; gen-circuit: circuit-like,
  banded with a few dense rail rows/columns). The real ones come from
  https://sparse.tamu.edu (download https://sparse.tamu.edu/MM/<group>/<name>.tar.gz,
  unpack, put <name>.mtx in the folder):
%s

GPU-only benchmarks (bipolar_mma_peak) print one line saying so on a CPU.
"""


def _modules():
    for info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        if info.name in _FRAMEWORK_MODULES or info.name.startswith("_"):
            continue
        yield importlib.import_module(f"{__package__}.{info.name}")


def discover() -> Dict[str, Callable]:
    """op name -> cases_fn, from every module of this package that defines BENCHMARKS."""
    found: Dict[str, Callable] = {}
    for module in _modules():
        found.update(getattr(module, "BENCHMARKS", {}))
    return found


def variant(op: str, device: str) -> str:
    """What "ours" is for ``op`` on ``device``: the module's OURS entry (a string or a
    function of the device), else the op itself."""
    for module in _modules():
        described = getattr(module, "OURS", {}).get(op)
        if described:
            return described(device) if callable(described) else described
    return f"torch.ops.mlx.{op} ({device} kernel)"


def run_case(case: core.Case, device: str, quick: bool) -> dict:
    ours, baselines = case.make()
    ours()  # our kernel failing is a bug: let it raise (a baseline's failure is reported below)
    spread_ms = core.time_fns_spread({"ours": ours, **baselines}, case.label, device, quick)
    baselines_ms = {name: stats["median"] for name, stats in spread_ms.items()}
    ours_ms = baselines_ms.pop("ours")
    del ours, baselines
    measure = case.measure
    ours_tp = core.throughput(measure, ours_ms)
    peak = core.device_peaks(device).get(measure.peak) if measure.peak else None
    pct = 100.0 * ours_tp / peak if peak else float("nan")
    return {
        "label": case.label,
        "params": case.params,
        "ours_ms": ours_ms,
        "baselines_ms": baselines_ms,
        "speedup": {k: (v / ours_ms if ours_ms and not math.isnan(v) else float("nan")) for k, v in baselines_ms.items()},
        "ours_throughput": ours_tp,
        "throughput_unit": core.throughput_unit(measure),
        "ours_pct_peak": pct,
        "work": {"amount": measure.amount, "unit": measure.unit, "peak": measure.peak},
        "rates": {
            f"{who}_{item}_per_s": count / (ms * 1e-3)
            for item, count in case.per_call.items()
            for who, ms in [("ours", ours_ms), *baselines_ms.items()]
            if ms and not math.isnan(ms)
        },
        "spread_ms": spread_ms,
        "extra": case.extra,
    }


def main(argv: List[str] | None = None) -> int:
    from .datasets import suitesparse_sources

    parser = argparse.ArgumentParser(prog="python -m mlx_kernels.bench", description=__doc__,
                                     epilog=_EPILOG % textwrap.fill(suitesparse_sources() + ".", 88, initial_indent="  ",
                                                                   subsequent_indent="  "),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="*", help="ops to run (default: all registered)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when available and built, else cpu")
    parser.add_argument("--quick", action="store_true", help="a small set of shapes that runs in seconds")
    parser.add_argument("--plot", action="store_true", help="write PNG charts next to the results")
    parser.add_argument("--out", default="bench/results", help="results folder (default: bench/results)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing result files of the same device and op (default: refuse, "
                             "before anything runs)")
    parser.add_argument("--list", action="store_true", help="list the registered benchmarks and exit")
    args = parser.parse_args(argv)

    benchmarks = discover()
    if args.list:
        print("\n".join(sorted(benchmarks)))
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() and mlx_kernels.WITH_CUDA else "cpu")
    if device == "cuda" and not (torch.cuda.is_available() and mlx_kernels.WITH_CUDA):
        parser.error("--device cuda needs a GPU and a CUDA build of mlx_kernels")
    ops = args.ops or sorted(benchmarks)
    unknown = [op for op in ops if op not in benchmarks]
    if unknown:
        parser.error(f"unknown ops {unknown}; registered: {sorted(benchmarks)}")

    if not args.overwrite:
        existing = core.existing_results(args.out, device, ops, args.plot)
        if existing:
            print("error: these results exist and would be replaced: " + ", ".join(existing) +
                  "\npass --overwrite to replace them, or --out DIR to write elsewhere", file=sys.stderr)
            return 2

    env = core.environment(device)
    print(f"device: {env['device_full']} | torch {env['torch']} | CUDA {env['cuda']} | commit {env['commit']}")
    plan: Dict[str, List[core.Case]] = {}
    for op in ops:
        try:
            cases = benchmarks[op](device, args.quick)
        except core.NoCases as reason:
            print(f"{op}: skipped on {device}: {reason}")
            continue
        if not cases:
            print(f"{op}: no cases to run on {device}")
            continue
        plan[op] = cases

    def report(op: str, rows: List[dict]) -> None:
        print()
        print(core.format_table(op, rows))
        ours = variant(op, device)
        print(f"ours = {ours}")
        paths = core.write_results(args.out, device, op, rows, ours)
        if args.plot:
            png = core.plot_results(args.out, device, op, rows, ours)
            if png:
                paths.append(png)
        print("wrote " + ", ".join(paths))

    # Each op's results are written as soon as its cases are done, so a run
    # stopped early (Ctrl-C, or SIGINT from a time-boxed GPU session) keeps
    # every finished op and the finished cases of the current one.
    progress = tqdm(total=sum(map(len, plan.values())), desc="benchmarks", unit="case", file=sys.stderr,
                    dynamic_ncols=True)
    rows: List[dict] = []
    op = ""
    try:
        for op, cases in plan.items():
            rows = []
            for case in cases:
                rows.append(run_case(case, device, args.quick))
                progress.update()
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
            if rows:
                report(op, rows)
    except KeyboardInterrupt:
        progress.close()
        print(f"\ninterrupted: {op} has {len(rows)} of {len(plan[op])} cases", file=sys.stderr)
        if rows:
            report(op, rows)
        return 130
    progress.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
