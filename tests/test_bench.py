"""Benchmark CLI plumbing: CPU timing and one case run end to end (speed itself is
measured by the CLI, never asserted here)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mlx_kernels.bench import __main__ as cli
from mlx_kernels.bench import core
from mlx_kernels.bench.__main__ import run_case


def test_time_cpu_interleaves_calls_and_reports_a_failing_baseline(capsys):
    calls = []

    def failing():
        raise ValueError("shape not supported")

    fns = {"ours": lambda: calls.append("ours"), "broken": failing, "other": lambda: calls.append("other")}
    ms = core.time_cpu(fns, "case A", budget_s=0.01, min_reps=4, max_reps=4)
    assert set(ms) == {"ours", "broken", "other"}
    assert math.isnan(ms["broken"]) and ms["ours"] >= 0 and ms["other"] >= 0
    # One warm-up each, then rounds that call every working fn once, in turn.
    assert calls == ["ours", "other"] * 5
    assert "broken failed on case A: ValueError: shape not supported" in capsys.readouterr().out


def test_run_case_reports_ratios_and_lets_our_failure_raise():
    case = core.Case(label="tiny", params={"n": 1}, measure=core.Measure(2.0e6),
                     make=lambda: (lambda: sum(range(100)), {"slower": lambda: sum(range(10000))}))
    row = run_case(case, "cpu", quick=True)
    assert row["label"] == "tiny" and row["ours_ms"] > 0
    assert row["speedup"]["slower"] == pytest.approx(row["baselines_ms"]["slower"] / row["ours_ms"])

    def broken():
        raise RuntimeError("kernel bug")

    with pytest.raises(RuntimeError, match="kernel bug"):
        run_case(core.Case(label="bad", params={}, measure=core.Measure(1.0), make=lambda: (broken, {})),
                 "cpu", quick=True)


def test_interrupted_run_keeps_finished_ops_and_cases(monkeypatch, tmp_path):
    # A time-boxed GPU session stops the CLI with SIGINT: what finished must be on disk.
    def case(label, interrupt=False):
        def make():
            if interrupt:
                raise KeyboardInterrupt
            return (lambda: None), {}
        return core.Case(label=label, params={}, measure=core.Measure(1.0), make=make)

    plan = {"first": lambda device, quick: [case("a"), case("b")],
            "second": lambda device, quick: [case("c"), case("stop", interrupt=True), case("never")]}
    monkeypatch.setattr(cli, "discover", lambda: plan)
    monkeypatch.setenv("MLX_COMMIT", "abc123")
    assert cli.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--ops", "first", "second"]) == 130
    written = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    labels = {name.split("-")[-1]: [r["label"] for r in d["results"]] for name, d in written.items()}
    assert labels == {"first.json": ["a", "b"], "second.json": ["c"]}
    assert all(d["environment"]["commit"] == "abc123" for d in written.values())


# --- issue 24: data fallback, GPU-only ops, strict JSON, plots, no silent overwrite ----------


def _fake_plan(monkeypatch, plan):
    monkeypatch.setattr(cli, "discover", lambda: plan)
    monkeypatch.setenv("MLX_COMMIT", "abc123")


def _tiny_case(label="tiny", baselines=None):
    return core.Case(label=label, params={"n": 1}, measure=core.Measure(2.0e6),
                     make=lambda: ((lambda: sum(range(200))), dict(baselines or {})))


def test_missing_matrices_fall_back_to_generated_ones_and_say_why(monkeypatch, tmp_path, capsys):
    import numpy as np
    import scipy.sparse as sp

    from mlx_kernels.bench import bsr as bsr_bench
    from mlx_kernels.bench import datasets
    from mlx_kernels.bench import spgemm as spgemm_bench

    empty = tmp_path / "no-matrices"
    empty.mkdir()
    monkeypatch.setenv("MLX_MATRIX_DIR", str(empty))
    monkeypatch.setattr(datasets, "_announced", False)
    cases = spgemm_bench.spgemm_cases("cpu", quick=True)
    bsr_cases = bsr_bench.bsr_spmm_cases("cpu", quick=True)
    out = capsys.readouterr().out
    assert out.count("SuiteSparse matrices not found") == 1  # said once, for every op that needs them
    assert str(empty) in out and "generated matrices of the same classes" in out and "MLX_MATRIX_DIR" in out
    assert [c.params["matrix"] for c in cases] == ["gen-mesh-40x40", "gen-powerlaw-2000", "gen-circuit-2000"]
    assert all(c.params["source"] == "generated" for c in cases)
    assert {c.params["matrix"] for c in bsr_cases} >= {"gen-mesh-40x40", "gen-powerlaw-2000", "gen-circuit-2000"}
    # One generated case runs end to end and ours agrees with scipy.
    ours, baselines = cases[0].make()
    crow, col, val = ours()
    a = datasets.load_generated("gen-mesh-40x40").astype(np.float32)
    ref = (a @ a).toarray()
    got = sp.csr_matrix((val.numpy(), col.numpy(), crow.numpy()), shape=a.shape).toarray()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert cases[0].extra["nnz_c"] == crow[-1]


def test_generated_matrices_have_their_class_structure():
    import numpy as np

    from mlx_kernels.bench.datasets import generated_names, load_generated

    for quick in (True, False):
        assert [n.split("-")[1] for n in generated_names(quick)] == ["mesh", "powerlaw", "circuit"]
    mesh = load_generated("gen-mesh-40x40")
    degrees = np.diff(mesh.indptr)
    assert mesh.shape == (1600, 1600) and degrees.max() == 9 and degrees.min() == 4  # 9-point stencil
    assert abs(mesh - mesh.T).max() == 0
    graph = load_generated("gen-powerlaw-2000")
    degrees = np.diff(graph.indptr)
    assert abs(graph - graph.T).max() == 0 and graph.diagonal().sum() == 0
    assert degrees.max() > 20 * np.median(degrees)  # hubs
    circuit = load_generated("gen-circuit-2000")
    degrees = np.diff(circuit.indptr)
    assert np.median(degrees) <= 5 and (degrees > 50).sum() >= 4  # sparse rows and a few dense rail rows
    assert (circuit.diagonal() > np.asarray(abs(circuit).sum(axis=1)).ravel() - circuit.diagonal()).all()


def test_help_documents_matrix_dir_and_flags(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for needle in ("MLX_MATRIX_DIR", "https://sparse.tamu.edu", "Hamm/add32", "--overwrite", "generated matrices",
                   "null", "higher is better", "bipolar_mma_peak"):
        assert needle in text


def test_gpu_only_benchmark_says_so_in_one_line_on_cpu(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLX_COMMIT", "abc123")
    assert cli.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--ops", "bipolar_mma_peak"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "bipolar_mma_peak" in line]
    assert len(lines) == 1 and "skipped on cpu: GPU-only" in lines[0]
    assert not list(tmp_path.iterdir())


def test_an_op_without_cases_is_reported_not_silent(monkeypatch, tmp_path, capsys):
    _fake_plan(monkeypatch, {"nothing": lambda device, quick: []})
    assert cli.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--ops", "nothing"]) == 0
    assert "nothing: no cases to run on cpu" in capsys.readouterr().out


def _raise_on_constant(name):
    raise ValueError(f"invalid JSON constant {name}")


def test_results_json_is_strict_with_null_for_missing_figures(monkeypatch, tmp_path):
    def failing():
        raise RuntimeError("baseline cannot run this shape")

    _fake_plan(monkeypatch, {"op": lambda device, quick: [_tiny_case(baselines={"broken": failing})]})
    assert cli.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--ops", "op"]) == 0
    text = (tmp_path / f"{core.device_slug('cpu')}-op.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text, parse_constant=_raise_on_constant)
    row = doc["results"][0]
    assert row["baselines_ms"]["broken"] is None and row["speedup"]["broken"] is None
    assert row["ours_pct_peak"] is None and row["ours_ms"] > 0
    assert doc["ours"] == "torch.ops.mlx.op (cpu kernel)"
    assert doc["environment"]["device_full"] == core.device_description("cpu")
    csv_text = (tmp_path / f"{core.device_slug('cpu')}-op.csv").read_text()
    assert "nan" not in csv_text.lower()
    assert core.json_safe({"a": [float("nan"), float("inf"), 1.5], "b": (float("-inf"),)}) == {
        "a": [None, None, 1.5], "b": [None]}


def test_rows_record_the_spread_of_the_timed_calls():
    row = run_case(_tiny_case(baselines={"slower": lambda: sum(range(5000))}), "cpu", quick=True)
    for who in ("ours", "slower"):
        stats = row["spread_ms"][who]
        assert stats["reps"] >= 2
        assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]
    assert row["ours_ms"] == row["spread_ms"]["ours"]["median"]
    assert core.spread([3.0, 1.0, 2.0, 4.0]) == {"median": 2.5, "q1": 1.75, "q3": 3.25, "min": 1.0, "max": 4.0,
                                                 "reps": 4}


def test_device_is_named_in_full():
    text = core.device_description("cpu")
    assert core.cpu_model() in text and f"{torch.get_num_threads()} threads" in text and "ISA" in text
    assert torch.backends.cpu.get_cpu_capability() in core.cpu_isa()


def test_plot_names_device_variant_spread_and_direction():
    matplotlib = pytest.importorskip("matplotlib")
    rows = [run_case(_tiny_case(label=f"case {i}", baselines={"slower": lambda: sum(range(5000))}), "cpu",
                     quick=True) for i in range(2)]
    fig = core.results_figure("cpu", "op", rows, "our variant X")
    ax = fig.axes[0]
    title = ax.get_title().replace("\n", " ")
    assert core.cpu_model() in title and "ISA" in title and "threads" in title
    assert "ours = our variant X" in title and "interquartile" in title
    assert "higher is better" in ax.get_ylabel()
    bars = [c for c in ax.containers if isinstance(c, matplotlib.container.BarContainer)]
    assert len(bars) == 2 and all(c.errorbar is not None for c in bars)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ours", "slower"]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_runs_refuse_to_overwrite_results_unless_asked(monkeypatch, tmp_path, capsys):
    made = []

    def cases(device, quick):
        made.append(1)
        return [_tiny_case()]

    _fake_plan(monkeypatch, {"op": cases})
    argv = ["--device", "cpu", "--quick", "--out", str(tmp_path), "--ops", "op"]
    assert cli.main(argv) == 0
    path = tmp_path / f"{core.device_slug('cpu')}-op.json"
    first = path.read_text()
    monkeypatch.setenv("MLX_COMMIT", "def456")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "--overwrite" in err
    assert path.read_text() == first and len(made) == 1  # refused before anything ran
    assert cli.main(argv + ["--overwrite"]) == 0
    assert json.loads(path.read_text())["environment"]["commit"] == "def456"
    # Another folder is always fine.
    assert cli.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "other"), "--ops", "op"]) == 0
