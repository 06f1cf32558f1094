"""Benchmark CLI plumbing: CPU timing and one case run end to end (speed itself is
measured by the CLI, never asserted here)."""

from __future__ import annotations

import json
import math

import pytest

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
