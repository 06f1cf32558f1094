"""Timing, device peaks, result tables and files shared by every benchmark."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch


@dataclass
class Measure:
    """How a case's work is counted: ``amount`` units of ``unit`` per call.

    unit is "FLOP" (reported as TFLOP/s or TOPS for integer ops) or "B" (bytes
    moved, reported as GB/s). ``peak`` names the device peak the throughput is
    compared to (a key of :data:`PEAKS`' entries, e.g. "bf16", "int8", "hbm").
    """

    amount: float
    unit: str = "FLOP"
    peak: Optional[str] = None
    integer: bool = False


@dataclass
class Case:
    """One benchmark point: a label, its parameters and how to build the calls.

    ``make()`` allocates the inputs and returns ``(ours, baselines)``: a
    zero-argument callable for our kernel and a dict name -> callable for each
    baseline. Inputs are built lazily so only one case's tensors are alive.
    ``per_call`` counts domain items one call processes (e.g. {"tokens": 256});
    the CLI reports each as a rate per second for ours and every baseline.
    """

    label: str
    params: Dict[str, object]
    measure: Measure
    make: Callable[[], tuple]
    extra: Dict[str, object] = field(default_factory=dict)
    per_call: Dict[str, float] = field(default_factory=dict)


# Dense peaks per device (datasheet, dense, no sparsity): TFLOP/s or TOPS and
# memory bandwidth in GB/s. Matched by substring of the device name.
PEAKS = {
    "H100 SXM": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0, "int8": 1979.0, "hbm": 3350.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0, "int8": 1513.0, "hbm": 2000.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0, "int8": 1979.0, "hbm": 3350.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0, "int8": 1979.0, "hbm": 4800.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5, "int8": 624.0, "hbm": 2039.0},
}


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine() or "cpu"


def device_peaks(device: str) -> Dict[str, float]:
    if device != "cuda":
        return {}
    name = device_name(device)
    for key, peaks in PEAKS.items():
        if key in name:
            return peaks
    return {}


def runs_sm90a_kernels(device: str) -> bool:
    """Whether the ops run their sm_90a (Hopper wgmma) kernels on this device: cc 9.0 exactly."""
    return device == "cuda" and torch.cuda.get_device_capability() == (9, 0)


def device_slug(device: str) -> str:
    name = device_name(device) if device == "cuda" else f"cpu-{os.cpu_count()}cores"
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()


def git_commit() -> str:
    """The source commit: MLX_COMMIT when set (a copy of the tree without .git,
    as on a device machine), else git's HEAD (+ "-dirty")."""
    if os.environ.get("MLX_COMMIT"):
        return os.environ["MLX_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return "unknown"


# --- timing ------------------------------------------------------------------

_l2_flush_buffer: Optional[torch.Tensor] = None


def _flush_l2() -> None:
    """Overwrite a buffer larger than any L2 so each timed call starts cold."""
    global _l2_flush_buffer
    if _l2_flush_buffer is None:
        _l2_flush_buffer = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    _l2_flush_buffer.zero_()


def time_cuda(fn: Callable[[], object], warmup_ms: float = 25.0, rep_ms: float = 100.0,
              max_reps: int = 1000) -> float:
    """Median milliseconds of ``fn`` with CUDA events, L2 flushed before each call."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        _flush_l2()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    reps = max(5, min(max_reps, int(rep_ms / estimate)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        _flush_l2()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def _report_failure(name: str, label: str, exc: Exception) -> None:
    """A baseline that cannot run a shape is reported, not fatal (timed as NaN)."""
    print(f"\n  {name} failed on {label}: {type(exc).__name__}: {exc}")


def time_cpu(fns: Dict[str, Callable[[], object]], label: str, budget_s: float = 1.0, min_reps: int = 3,
             max_reps: int = 50) -> Dict[str, float]:
    """Median wall-clock milliseconds of each fn after one warm-up call, timed in
    rounds that call every fn once: on a shared machine, load that comes and goes
    then slows ours and the baselines alike instead of skewing their ratio. A fn
    that raises is reported (NaN) and left out of the rounds."""
    times: Dict[str, List[float]] = {}
    for name, fn in fns.items():
        try:
            fn()
            times[name] = []
        except Exception as exc:
            _report_failure(name, label, exc)
    deadline = time.perf_counter() + budget_s * max(1, len(times))
    rounds = 0
    while rounds < min_reps or (rounds < max_reps and time.perf_counter() < deadline):
        for name in times:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {name: statistics.median(times[name]) if name in times else float("nan") for name in fns}


def time_fns(fns: Dict[str, Callable[[], object]], label: str, device: str, quick: bool) -> Dict[str, float]:
    """Milliseconds per call of each fn of case `label` (NaN for one that raises)."""
    if device == "cuda":
        out = {}
        for name, fn in fns.items():
            try:
                out[name] = time_cuda(fn, warmup_ms=10 if quick else 25, rep_ms=30 if quick else 100)
            except Exception as exc:
                _report_failure(name, label, exc)
                out[name] = float("nan")
        return out
    return time_cpu(fns, label, budget_s=0.2 if quick else 1.0, min_reps=2 if quick else 3)


# --- reporting ---------------------------------------------------------------


def throughput(measure: Measure, ms: float) -> float:
    """TFLOP/s (TOPS) for FLOP measures, GB/s for byte measures."""
    if not ms or math.isnan(ms):
        return float("nan")
    if measure.unit == "B":
        return measure.amount / (ms * 1e-3) / 1e9
    return measure.amount / (ms * 1e-3) / 1e12


def throughput_unit(measure: Measure) -> str:
    if measure.unit == "B":
        return "GB/s"
    return "TOPS" if measure.integer else "TFLOP/s"


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}g}"


def format_table(op: str, rows: List[dict]) -> str:
    """A fixed-width table: label, ours, each baseline, speed-ups, throughput, % of peak."""
    baselines: List[str] = []
    for row in rows:
        for name in row["baselines_ms"]:
            if name not in baselines:
                baselines.append(name)
    unit = rows[0]["throughput_unit"] if rows else ""
    header = ["case", "ours ms"] + [f"{b} ms" for b in baselines] + [f"x vs {b}" for b in baselines]
    header += [f"ours {unit}", "% peak"]
    table = [header]
    for row in rows:
        line = [row["label"], _fmt(row["ours_ms"])]
        line += [_fmt(row["baselines_ms"].get(b, float("nan"))) for b in baselines]
        line += [_fmt(row["speedup"].get(b, float("nan"))) for b in baselines]
        line += [_fmt(row["ours_throughput"]), _fmt(row["ours_pct_peak"])]
        table.append(line)
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = [f"== {op} =="]
    for i, r in enumerate(table):
        lines.append("  ".join(str(c).rjust(w) if j else str(c).ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def environment(device: str) -> dict:
    return {
        "device": device_name(device),
        "device_type": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
        "commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "peaks": device_peaks(device),
    }


def write_results(out_dir: str, device: str, op: str, rows: List[dict]) -> List[str]:
    """bench/results/<device>-<op>.json and .csv; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{device_slug(device)}-{op}")
    with open(stem + ".json", "w") as f:
        json.dump({"op": op, "environment": environment(device), "results": rows}, f, indent=2, default=str)
    flat = []
    for row in rows:
        item = {"label": row["label"], "ours_ms": row["ours_ms"]}
        item.update({f"param_{k}": v for k, v in row["params"].items()})
        item.update({f"{k}_ms": v for k, v in row["baselines_ms"].items()})
        item.update({f"speedup_vs_{k}": v for k, v in row["speedup"].items()})
        item.update({"ours_throughput": row["ours_throughput"], "throughput_unit": row["throughput_unit"],
                     "ours_pct_peak": row["ours_pct_peak"]})
        item.update(row.get("rates", {}))
        item.update(row.get("extra", {}))
        flat.append(item)
    fields: List[str] = []
    for item in flat:
        fields += [k for k in item if k not in fields]
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat)
    return [stem + ".json", stem + ".csv"]


def plot_results(out_dir: str, device: str, op: str, rows: List[dict]) -> Optional[str]:
    """Grouped bar chart of throughput (ours vs baselines) per case, to PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib)")
        return None
    if not rows:
        return None
    names = ["ours"] + [b for b in rows[0]["baselines_ms"]]
    labels = [r["label"] for r in rows]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) * len(names) / 2), 4.5))
    for i, name in enumerate(names):
        values = []
        for r in rows:
            ms = r["ours_ms"] if name == "ours" else r["baselines_ms"].get(name, float("nan"))
            values.append(r["ours_throughput"] * r["ours_ms"] / ms if ms and not math.isnan(ms) else 0.0)
        ax.bar([x + i * width for x in range(len(rows))], values, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))])
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(rows[0]["throughput_unit"])
    ax.set_title(f"{op} on {device_name(device)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{device_slug(device)}-{op}.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
