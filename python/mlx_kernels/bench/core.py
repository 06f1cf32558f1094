"""Timing, device peaks, result tables and files shared by every benchmark."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

import mlx_kernels


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


class NoCases(Exception):
    """Raised by a cases function that has nothing to run on this device; the CLI
    prints one line with the reason (e.g. a GPU-only microbenchmark on a CPU)."""


def _cpuinfo() -> Dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty elsewhere)."""
    info: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "cpu"


# CPU features the CPU kernels use (int8 VNNI, VPOPCNTDQ for bipolar), by /proc/cpuinfo flag.
_ISA_FLAGS = ("avx512f", "avx512_vnni", "avx512_vpopcntdq", "avx512_bf16", "avx_vnni", "avx2", "fma", "amx_int8")


def cpu_isa() -> str:
    """torch's CPU capability (DEFAULT/AVX2/AVX512, what its kernels dispatch to) and the
    relevant ISA flags of /proc/cpuinfo, e.g. "AVX512 (avx512f avx512_vnni avx2 fma)"."""
    capability = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: "unknown")()
    flags = set(_cpuinfo().get("flags", "").split())
    present = [f for f in _ISA_FLAGS if f in flags]
    return f"{capability} ({' '.join(present)})" if present else str(capability)


def kernel_isa_path() -> str:
    """The ISA path our CPU kernels take (``mlx_kernels.cpu_isa()``: avx512, avx2 or
    scalar), with " (forced by MLX_CPU_ISA)" when the variable set it."""
    path = mlx_kernels.cpu_isa()
    return f"{path} (forced by MLX_CPU_ISA)" if os.environ.get("MLX_CPU_ISA") else path


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return cpu_model()


def device_description(device: str) -> str:
    """The device in full, for plots and result files: the GPU with its compute
    capability, SMs and memory, or the CPU model with the threads used and its ISA."""
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return (f"{props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
                f"{props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})")
    return (f"{cpu_model()}, {torch.get_num_threads()} threads ({os.cpu_count()} logical CPUs), "
            f"ISA {cpu_isa()}, our kernels' path {kernel_isa_path()}")


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
    """The device in result file names: the GPU's name, or cpu-<N>cores-<ISA path>
    (each path's results side by side when runs force paths with MLX_CPU_ISA)."""
    name = device_name(device) if device == "cuda" else f"cpu-{os.cpu_count()}cores-{mlx_kernels.cpu_isa()}"
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
    return statistics.median(time_cuda_samples(fn, warmup_ms, rep_ms, max_reps))


def time_cuda_samples(fn: Callable[[], object], warmup_ms: float = 25.0, rep_ms: float = 100.0,
                      max_reps: int = 1000) -> List[float]:
    """Milliseconds of each timed call of ``fn`` (CUDA events, L2 flushed before each call)."""
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
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def _report_failure(name: str, label: str, exc: Exception) -> None:
    """A baseline that cannot run a shape is reported, not fatal (timed as NaN)."""
    print(f"\n  {name} failed on {label}: {type(exc).__name__}: {exc}")


def time_cpu(fns: Dict[str, Callable[[], object]], label: str, budget_s: float = 1.0, min_reps: int = 3,
             max_reps: int = 50) -> Dict[str, float]:
    """Median wall-clock milliseconds of each fn after one warm-up call, timed in
    rounds that call every fn once: on a shared machine, load that comes and goes
    then slows ours and the baselines alike instead of skewing their ratio. A fn
    that raises is reported (NaN) and left out of the rounds."""
    samples = time_cpu_samples(fns, label, budget_s, min_reps, max_reps)
    return {name: statistics.median(samples[name]) if samples[name] else float("nan") for name in fns}


def time_cpu_samples(fns: Dict[str, Callable[[], object]], label: str, budget_s: float = 1.0, min_reps: int = 3,
                     max_reps: int = 50) -> Dict[str, List[float]]:
    """time_cpu's timed calls themselves: milliseconds of each call per fn ([] for one that raised)."""
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
    return {name: times.get(name, []) for name in fns}


def spread(samples: List[float]) -> Dict[str, float]:
    """Summary of one fn's timed calls (ms): median, quartiles, min, max and the count."""
    if not samples:
        nan = float("nan")
        return {"median": nan, "q1": nan, "q3": nan, "min": nan, "max": nan, "reps": 0}
    ordered = sorted(samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"median": statistics.median(ordered), "q1": q1, "q3": q3, "min": ordered[0], "max": ordered[-1],
            "reps": len(ordered)}


def time_fns_spread(fns: Dict[str, Callable[[], object]], label: str, device: str,
                    quick: bool) -> Dict[str, Dict[str, float]]:
    """:func:`spread` of each fn of case `label` (all NaN for one that raises)."""
    if device == "cuda":
        out = {}
        for name, fn in fns.items():
            try:
                out[name] = spread(time_cuda_samples(fn, warmup_ms=10 if quick else 25, rep_ms=30 if quick else 100))
            except Exception as exc:
                _report_failure(name, label, exc)
                out[name] = spread([])
        return out
    samples = time_cpu_samples(fns, label, budget_s=0.2 if quick else 1.0, min_reps=2 if quick else 3)
    return {name: spread(times) for name, times in samples.items()}


def time_fns(fns: Dict[str, Callable[[], object]], label: str, device: str, quick: bool) -> Dict[str, float]:
    """Median milliseconds per call of each fn of case `label` (NaN for one that raises)."""
    return {name: stats["median"] for name, stats in time_fns_spread(fns, label, device, quick).items()}


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
    env = {
        "device": device_name(device),
        "device_full": device_description(device),
        "device_type": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device == "cuda" else None,
        "cpu_threads": torch.get_num_threads(),
        "commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "peaks": device_peaks(device),
    }
    if device != "cuda":
        env.update(cpu_model=cpu_model(), cpu_isa=cpu_isa(), logical_cpus=os.cpu_count(),
                   kernel_isa_path=mlx_kernels.cpu_isa(), kernel_isa_forced=bool(os.environ.get("MLX_CPU_ISA")),
                   kernel_isa_available=mlx_kernels._C.cpu_isa_available())
    return env


def json_safe(value):
    """``value`` with every NaN/Inf float replaced by None (JSON has no NaN: it becomes null)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def result_stem(out_dir: str, device: str, op: str) -> str:
    """<out_dir>/<device slug>-<op>: the results' path without its extension."""
    return os.path.join(out_dir, f"{device_slug(device)}-{op}")


def existing_results(out_dir: str, device: str, ops: List[str], plot: bool) -> List[str]:
    """The files a run of ``ops`` would replace (the CLI refuses them without --overwrite)."""
    extensions = (".json", ".csv") + ((".png",) if plot else ())
    return [result_stem(out_dir, device, op) + ext for op in ops for ext in extensions
            if os.path.exists(result_stem(out_dir, device, op) + ext)]


def write_results(out_dir: str, device: str, op: str, rows: List[dict], variant: str = "") -> List[str]:
    """bench/results/<device>-<op>.json and .csv; returns the paths written.

    The JSON is strict (``json.loads`` with no NaN extension reads it): a figure that
    could not be measured (a baseline that failed, no peak known) is ``null``; in the
    CSV it is an empty cell. ``variant`` names what "ours" is for this op."""
    os.makedirs(out_dir, exist_ok=True)
    stem = result_stem(out_dir, device, op)
    document = {"op": op, "ours": variant, "environment": environment(device), "results": rows}
    with open(stem + ".json", "w") as f:
        json.dump(json_safe(document), f, indent=2, default=str, allow_nan=False)
    flat = []
    for row in rows:
        item = {"label": row["label"], "ours_ms": row["ours_ms"]}
        item.update({f"param_{k}": v for k, v in row["params"].items()})
        item.update({f"{k}_ms": v for k, v in row["baselines_ms"].items()})
        item.update({f"speedup_vs_{k}": v for k, v in row["speedup"].items()})
        item.update({"ours_throughput": row["ours_throughput"], "throughput_unit": row["throughput_unit"],
                     "ours_pct_peak": row["ours_pct_peak"]})
        for who, stats in row.get("spread_ms", {}).items():
            item.update({f"{who}_{k}_ms": stats[k] for k in ("q1", "q3", "min", "max")})
            item[f"{who}_reps"] = stats.get("reps")
        item.update(row.get("rates", {}))
        item.update(row.get("extra", {}))
        flat.append({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in item.items()})
    fields: List[str] = []
    for item in flat:
        fields += [k for k in item if k not in fields]
    with open(stem + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat)
    return [stem + ".json", stem + ".csv"]


def _throughput_at(row: dict, ms: float) -> float:
    """The case's throughput (its unit) at ``ms`` per call, from ours' figures."""
    if not ms or math.isnan(ms) or not row["ours_ms"] or math.isnan(row["ours_throughput"]):
        return float("nan")
    return row["ours_throughput"] * row["ours_ms"] / ms


def plot_results(out_dir: str, device: str, op: str, rows: List[dict], variant: str = "") -> Optional[str]:
    """:func:`results_figure` written to <out_dir>/<device>-<op>.png; returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib (pip install matplotlib)")
        return None
    if not rows:
        return None
    fig = results_figure(device, op, rows, variant)
    path = result_stem(out_dir, device, op) + ".png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def results_figure(device: str, op: str, rows: List[dict], variant: str = ""):
    """Grouped bar chart of throughput per case (ours vs each baseline), a matplotlib Figure.

    Bars are the median; error bars span the interquartile range of the timed calls
    (the throughput at the 3rd and 1st quartile of the time). The title names the
    device in full (CPU model, threads, ISA / GPU, SMs, memory) and what "ours" is;
    the y axis says that higher is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["ours"]
    for row in rows:
        names += [b for b in row["baselines_ms"] if b not in names]
    labels = [r["label"] for r in rows]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(rows) * len(names) / 2), 5))
    for i, name in enumerate(names):
        values, low, high = [], [], []
        for r in rows:
            ms = r["ours_ms"] if name == "ours" else r["baselines_ms"].get(name, float("nan"))
            value = _throughput_at(r, ms)
            stats = r.get("spread_ms", {}).get(name)
            top = _throughput_at(r, stats["q1"]) if stats else float("nan")
            bottom = _throughput_at(r, stats["q3"]) if stats else float("nan")
            ok = not math.isnan(value)
            values.append(value if ok else 0.0)
            low.append(max(value - bottom, 0.0) if ok and not math.isnan(bottom) else 0.0)
            high.append(max(top - value, 0.0) if ok and not math.isnan(top) else 0.0)
        ax.bar([x + i * width for x in range(len(rows))], values, width, label=name,
               yerr=[low, high], capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))])
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{rows[0]['throughput_unit']} (higher is better)")
    width_chars = int(fig.get_figwidth() * 14)
    lines = [f"{op} on {device_description(device)}"]
    if variant:
        lines.append(f"ours = {variant}")
    lines.append("bars: median; error bars: interquartile range of the timed calls")
    ax.set_title("\n".join(textwrap.fill(line, width_chars) for line in lines), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
