"""The benchmark scripts are tested themselves: harness logic, JSON schema, PASS/FAIL on injected timings."""

from __future__ import annotations

import json
import sys
import types

import pytest

from benchmarks import harness, speed


def test_time_fn_uses_median_and_injected_clock():
    ticks = iter([0.0, 0.010, 0.010, 0.030, 0.030, 0.035])  # three runs: 10 ms, 20 ms, 5 ms
    calls = []
    stats = harness.time_fn(lambda: calls.append(1), warmup=2, repeats=3, clock=lambda: next(ticks))
    assert len(calls) == 5  # 2 warm-up + 3 timed
    assert stats["median_ms"] == pytest.approx(10.0)
    assert stats["min_ms"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        harness.time_fn(lambda: None, repeats=0)


def test_check_target_and_pass_fail_line():
    assert harness.check_target(25.0, 20.0)
    assert not harness.check_target(19.9, 20.0)
    assert harness.check_target(0.1, 0.125, higher_is_better=False)
    assert harness.pass_fail_line("speedup", 25, 20, unit="x").startswith("PASS  speedup: 25x (target >= 20x)")
    assert harness.pass_fail_line("mem", 0.2, 0.125, higher_is_better=False).startswith("FAIL")


def test_write_json_schema(tmp_path):
    path = harness.write_json("x", [{"name": "a", "median_ms": 1.5}], "cpu", tmp_path, extra={"quick": True})
    data = json.loads(path.read_text())
    assert set(data["config"]) >= {"wsss_blocks", "torch", "device", "device_name", "threads", "date"}
    assert data["rows"] == [{"name": "a", "median_ms": 1.5}]
    assert data["quick"] is True


def test_runner_summary_and_errors(monkeypatch, tmp_path, capsys):
    good = types.ModuleType("benchmarks.bench_fakegood")
    good.run = lambda device, quick: [  # type: ignore[attr-defined]
        {"name": "fast", "median_ms": 1.0, "target": ">= 20x", "passed": True},
        {"name": "slow", "median_ms": 9.0, "target": "<= 10%", "passed": False},
        {"name": "plain", "median_ms": 2.0}]
    bad = types.ModuleType("benchmarks.bench_fakebad")

    def boom(device, quick):
        raise RuntimeError("broken family")

    bad.run = boom  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "benchmarks.bench_fakegood", good)
    monkeypatch.setitem(sys.modules, "benchmarks.bench_fakebad", bad)
    monkeypatch.setattr(speed, "families", lambda: ["fakebad", "fakegood"])
    rc = speed.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1  # a crashing family fails the smoke run
    assert "PASS  [fakegood] fast: >= 20x" in out
    assert "FAIL  [fakegood] slow: <= 10%" in out
    data = json.loads((tmp_path / "speed_cpu_quick.json").read_text())
    assert data["errors"] == ["fakebad"]
    assert [r["name"] for r in data["rows"]] == ["fast", "slow", "plain"]
    assert speed.main(["--only", "nonexistent", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_core_family_quick_runs():
    from benchmarks import bench_core

    rows = bench_core.run("cpu", quick=True)
    names = [r["name"] for r in rows]
    assert names == ["miou_confusion", "bg_threshold_sweep", "multiscale_cams"]
    assert all(r["median_ms"] > 0 for r in rows)
