"""The docs renderer and the quality table: fake JSON results in, exact tables out; no training."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import render_docs as rd

HEADER = {"wsss_blocks": "0.1.0", "torch": "9.9.9", "python": "3.11.7", "device": "cpu", "device_name": "FakeCPU",
          "threads": 2, "cpu_count": 4, "date": "2030-01-02T03:04:05+00:00"}
GPU_HEADER = dict(HEADER, device="cuda", device_name="NVIDIA H100", threads=16, cpu_count=16,
                  date="2030-02-03T00:00:00+00:00")


def _write(folder, name, rows, config=HEADER, **extra):
    payload = {"rows": rows, **extra}
    if config is not None:
        payload["config"] = config
    (folder / name).write_text(json.dumps(payload))


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    d.mkdir()
    _write(d, "speed_cpu.json", [
        {"family": "core", "name": "miou", "params": "1449 maps", "median_ms": 812.25, "peak_mem_mb": 3.0,
         "target": "< 2 s", "passed": True},
        {"family": "crf", "name": "crf_speed", "params": "64x64", "median_ms": 150.0, "baseline_ms": 100.0,
         "peak_mem_mb": 12.5, "baseline_mem_mb": 10.0, "target": "torch/pydensecrf <= 2", "passed": False,
         "samples_ms": [1.0, 2.0]},
        {"family": "crf", "name": "agreement", "median_ms": float("nan"), "agreement_pct": 99.8,
         "target": "agreement >= 99.5 %", "passed": None},
    ], quick=False)
    # a family's own full file: no "family" key in its rows (taken from the file name), speedup only
    _write(d, "bench_refine_cpu.json", [
        {"name": "PAR", "params": "B=2", "median_ms": 20.0, "baseline_median_ms": 80.0, "speedup": 4.0,
         "peak_mem_mb": 5.0, "baseline_peak_mem_mb": 50.0, "clock": "cpu"}])
    # superseded by the runner's full file for crf
    _write(d, "bench_crf_quick_cpu.json", [{"name": "crf_speed", "median_ms": 1.0}], quick=True)
    (d / "broken.json").write_text("{not json")
    _write(d, "empty_cpu.json", [])
    return d


def test_page_tables_hardware_and_pass_fail(results, tmp_path):
    page, img = rd.render(results, tmp_path / "docs" / "benchmarks.md", families=["core", "crf", "ppl", "refine"])
    text = page.read_text()
    assert text.startswith("# Benchmarks\n")
    # one table per family, in order, with the file's hardware line
    assert text.index("### core") < text.index("### crf") < text.index("### refine")
    hw = ("Measured on `FakeCPU` (cpu), 2 torch threads of 4 CPU cores, torch 9.9.9, wsss_blocks 0.1.0, "
          "python 3.11.7; 2030-01-02T03:04:05+00:00; full sizes. Source: `speed_cpu.json`.")
    assert text.count(hw) == 2  # core and crf tables both come from speed_cpu.json
    assert "Source: `bench_refine_cpu.json`." in text
    # exact rows: ratio from the row's times, memory columns, verdicts, leftover figures
    # (six columns: parameters next to the name, ours / baseline in one cell, target and verdict in one)
    assert "| crf_speed (64x64) | 150 / 100 | 1.5 | 12.5 / 10.0 | torch/pydensecrf <= 2: **FAIL** |  |" in text
    assert "| miou (1449 maps) | 812 | – | 3 | < 2 s: **PASS** |  |" in text
    assert "| agreement | – | – | – | agreement >= 99.5 %: not checked | agreement_pct 99.8 |" in text
    assert "| PAR (B=2) | 20.0 / 80.0 | 0.25 | 5 / 50.0 |  | clock cpu, speedup 4 |" in text
    # target summary lines with source and date
    assert ("- **PASS** [cpu/core] miou: < 2 s (`speed_cpu.json`, 2030-01-02T03:04:05+00:00)" in text)
    assert ("- **FAIL** [cpu/crf] crf_speed: torch/pydensecrf <= 2 (`speed_cpu.json`, "
            "2030-01-02T03:04:05+00:00)" in text)
    assert text.count("**PASS**") == 2
    assert text.count("**FAIL**") == 2
    assert "Not measured on CPU: ppl." in text
    # no GPU file: the GPU section says so
    assert "GPU (CUDA): not measured (no GPU in this session)." in text
    # bookkeeping: superseded and broken files are listed, not silently dropped
    assert "- `bench_crf_quick_cpu.json`: not shown" in text
    assert "- skipped `broken.json`: not readable JSON" in text
    assert "- skipped `empty_cpu.json`: no rows" in text
    assert "Not measured yet (run `python -m benchmarks.quality`)." in text
    # chart: a real PNG, linked relative to the page
    assert img == tmp_path / "docs" / "img" / "benchmarks_overhead.png"
    assert img.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![time ratio of each block to its baseline](img/benchmarks_overhead.png)" in text


def test_rendering_is_deterministic(results, tmp_path):
    p1, i1 = rd.render(results, tmp_path / "a" / "benchmarks.md")
    p2, i2 = rd.render(results, tmp_path / "b" / "benchmarks.md")
    assert p1.read_text() == p2.read_text()
    assert i1.read_bytes() == i2.read_bytes()
    assert str(tmp_path) not in p1.read_text()  # no absolute paths in the page


def test_gpu_results_and_quick_fallback(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    _write(d, "speed_cuda.json", [{"family": "crf", "name": "crf_gpu", "median_ms": 2.0, "baseline_ms": 60.0,
                                   "ratio": 1 / 30, "target": ">= 20x faster", "passed": True}], config=GPU_HEADER)
    _write(d, "speed_cpu_quick.json", [{"family": "core", "name": "miou", "median_ms": 5.0}], quick=True)
    text = rd.render_page(*rd.load_sources(d), img_rel="img/x.png", families=["core", "crf"])
    assert "no GPU in this session" not in text
    gpu = text[text.index("## GPU (CUDA)"):]
    assert "Measured on `NVIDIA H100` (cuda), 16 torch threads of 16 CPU cores" in gpu
    assert "| crf_gpu | 2 / 60.0 | 0.0333 | – | >= 20x faster: **PASS** |  |" in gpu
    assert "Not measured on GPU (CUDA): core." in gpu
    cpu = text[text.index("## CPU"):text.index("## GPU (CUDA)")]
    assert "quick mode (smoke-test sizes, not the targets' working sizes). Source: `speed_cpu_quick.json`." in cpu
    assert "- **PASS** [cuda/crf] crf_gpu: >= 20x faster" in text


def test_missing_folder_still_renders(tmp_path):
    page, img = rd.render(tmp_path / "nope", tmp_path / "out.md", img=tmp_path / "chart.png", families=["core"])
    text = page.read_text()
    assert "CPU: not measured (no result file)." in text
    assert "GPU (CUDA): not measured (no GPU in this session)." in text
    assert "](chart.png)" in text
    assert img.read_bytes()[:4] == b"\x89PNG"


def test_tier_selection_prefers_runner_full(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    _write(d, "speed_cpu.json", [{"family": "l2g", "name": "from_runner", "median_ms": 1.0}], quick=False)
    _write(d, "bench_l2g_cpu.json", [{"name": "from_family", "median_ms": 1.0}])
    _write(d, "bench_pmm_cpu_quick.json", [{"name": "pmm_quick", "median_ms": 1.0}])  # quick from the name
    sel = rd.select(rd.load_sources(d)[0])
    assert [s.file for s, _ in sel["cpu"]["l2g"]] == ["speed_cpu.json"]
    assert sel["cpu"]["pmm"][0][0].quick is True


def test_runner_file_under_device_name_and_quick_quality_superseded(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    _write(d, "cuda.json", [{"family": "core", "name": "miou", "median_ms": 1.0}], config=GPU_HEADER)
    _write(d, "bench_core_cuda.json", [{"name": "other", "median_ms": 1.0}], config=GPU_HEADER)
    row = {"method": "baseline", "cam_miou_pct": 1.0}
    _write(d, "quality_synthetic.json", [row])
    _write(d, "quality_synthetic_quick.json", [row], quick=True)
    sources, _ = rd.load_sources(d)
    assert {s.file: s.kind for s in sources}["cuda.json"] == "speed"
    text = rd.render_page(sources, [], img_rel="x.png", families=["core"])
    assert "Source: `cuda.json`." in text
    assert "- `bench_core_cuda.json`: not shown" in text
    assert "### quality_synthetic\n" in text
    assert "### quality_synthetic_quick" not in text
    assert "- `quality_synthetic_quick.json`: not shown" in text
    assert "the presets' full budget. Source: `quality_synthetic.json`." in text


def test_config_less_file_and_number_formatting(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    _write(d, "bench_x_cuda.json", [{"name": "a", "median_ms": 1.0}], config=None)
    src = rd.load_sources(d)[0][0]
    assert src.device == "cuda"
    assert src.config == {}
    assert rd.hardware_line(src) == ("Source `bench_x_cuda.json`: hardware and date unknown "
                                     "(the file has no config header).")
    assert [rd.fmt_num(v) for v in (0, 0.5, 12.345, 123.6, 2.5e6, 1e-4, float("nan"), None, True)] == [
        "0", "0.5", "12.3", "124", "2.50e+06", "1.00e-04", "–", "–", "true"]
    assert rd.row_ratio({"ratio": 0.5, "median_ms": 9.0, "baseline_ms": 1.0}) == 0.5  # the family's own ratio
    assert rd.row_ratio({"min_ms": 3.0, "baseline_ms": 6.0}) == 0.5
    assert rd.row_ratio({"speedup": 8.0}) == 0.125
    assert rd.row_ratio({"median_ms": 1.0}) is None
    assert rd.verdict({"passed": None}) == ""
    assert rd.verdict({"target": "x"}) == "not checked"


def test_chart_entries_disambiguate_repeated_rows(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    _write(d, "speed_cpu.json", [
        {"family": "pmm", "name": "crf", "params": "present=1", "median_ms": 2.0, "baseline_ms": 1.0},
        {"family": "pmm", "name": "crf", "params": "present=3", "median_ms": 1.0, "baseline_ms": 4.0,
         "passed": True},
        {"family": "pmm", "name": "nan", "median_ms": float("nan"), "baseline_ms": 1.0},
        {"family": "pmm", "name": "alone", "median_ms": 3.0, "baseline_ms": 1.0, "passed": False}], quick=False)
    entries = rd.chart_entries(rd.select(rd.load_sources(d)[0]))
    assert entries == [("pmm: crf [cpu] present=1", 2.0, None), ("pmm: crf [cpu] present=3", 0.25, True),
                       ("pmm: alone [cpu]", 3.0, False)]


def test_quality_json_rendering(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    row = {"cam_miou_pct": 40.0, "pseudo_miou_pct": 41.25, "seg_miou_pct": 30.0, "bg_score": 0.3,
           "bg_rule": "sweep", "cam_eval_split": "train", "data": "synthetic 200 train", "cam_steps": 120,
           "seg_steps": 100, "seconds": 61.4, "paper_cam_miou_pct": 48.8}
    _write(d, "quality_synthetic.json", [dict(row, method="l2g"), dict(row, method="baseline"),
                                         {"method": "pmm", "error": "RuntimeError: boom"},
                                         {"method": "tscd", "cam_miou_pct": 9.0, "seg_source": "method",
                                          "seg_steps": None, "cam_steps": 200, "data": "d"}], wall_s=130.0)
    _write(d, "quality_voc.json", [dict(row, method="baseline")])
    text = rd.render_page(*rd.load_sources(d), img_rel="img/x.png", families=[])
    syn = text[text.index("### quality_synthetic"):text.index("### quality_voc")]
    assert syn.index("| baseline |") < syn.index("| l2g |") < syn.index("| pmm |")  # baseline first
    assert ("| baseline | 40.0 | 0.30 (swept on train) | 41.2 | 30.0 | synthetic 200 train | 120 | 100 | 61.4 |"
            in syn)
    assert "paper CAM" not in syn
    assert "not comparable" in syn
    assert "| tscd | 9.0 | – | – | – | d | 200 | own head | – |" in syn
    assert "| pmm | failed: RuntimeError: boom |" in syn
    assert "Total wall time of the runs: 123 s." in syn
    voc = text[text.index("### quality_voc"):]
    assert "| paper CAM |" in voc
    assert "| 30.0 | 48.8 | – | – |" in voc


def test_main_cli(results, tmp_path, capsys):
    out = tmp_path / "site" / "page.md"
    assert rd.main(["--results", str(results), "--out", str(out), "--img", str(tmp_path / "pics" / "c.png")]) == 0
    assert "](../pics/c.png)" in out.read_text()
    assert "wrote" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- quality.py

quality = pytest.importorskip("benchmarks.quality")


def _fake_result(method, cam=0.4, pseudo=0.45, val=0.3):
    return {"method": method, "preset": f"{method}_synthetic", "out": "x", "device": "cpu",
            "ours": {"cam_miou": cam, "pseudo_miou": pseudo, "val_miou": val},
            "paper": {"cam_miou": 48.8, "pseudo_miou": None, "val_miou": None}, "paper_source": "paper",
            "info": {"cam_eval_split": "train", "bg_score": 0.35, "cam_best_miou": cam, "cam_best_threshold": 0.35,
                     "val_split": "val", "crf": False, "cam_eval_images": 200, "val_images": 50},
            "stage_seconds": {"cam": 1.0, "pseudo": 1.0, "seg": 1.0}, "seconds": 3.0}


def test_parse_methods_order_and_validation():
    assert quality.parse_methods("l2g,baseline,l2g") == ["baseline", "l2g"]  # table order, deduplicated
    defaults = quality.parse_methods(None)
    assert defaults[0] == "baseline"
    assert set(defaults) <= set(quality.METHOD_ORDER) | set(defaults)
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['nope'\]"):
        quality.parse_methods("baseline,nope")
    with pytest.raises(ValueError, match="at least one method"):
        quality.parse_methods(" , ")


@pytest.mark.parametrize(("argv", "msg"), [
    (["--set", "cam.steps"], "--set expects KEY=VALUE"),
    (["--dataset", "coco"], "--dataset needs --data-root"),
    (["--data-root", "/definitely/not/here"], "is not a folder"),
    (["--resume"], "--resume needs --out"),
    (["--methods", "bogus"], "unknown method"),
])
def test_cli_argument_validation(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        quality.parse_args(argv)
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_run_quality_passes_same_overrides_to_every_method(tmp_path):
    calls = []

    def fake(method, data_root, **kw):
        calls.append((method, data_root, kw))
        if method == "l2g":
            raise RuntimeError("boom")
        return _fake_result(method)

    rows = quality.run_quality(["baseline", "l2g"], out=tmp_path, overrides=["cam.steps=5"], seed=3,
                               device="cpu", reproduce_fn=fake)
    assert [c[0] for c in calls] == ["baseline", "l2g"]
    for _, root, kw in calls:
        assert root is None
        assert kw["quick"] is False
        assert kw["resume"] is False
        assert kw["verbose"] is False
        assert kw["overrides"] == ["runtime.progress=false", "runtime.plots=false", "runtime.seed=3",
                                   "runtime.device=cpu", "cam.steps=5"]
    assert calls[0][2]["out"] == tmp_path / "baseline_synthetic"
    base, l2g = rows
    assert base["cam_miou_pct"] == pytest.approx(40.0)
    assert base["seg_miou_pct"] == pytest.approx(30.0)
    assert base["paper_cam_miou_pct"] == 48.8
    assert base["paper_pseudo_miou_pct"] is None
    assert base["cam_steps"] == 5
    assert base["seed"] == 3
    assert base["bg_rule"] == "sweep"
    assert l2g["error"] == "RuntimeError: boom"
    assert "cam_miou_pct" not in l2g


def test_format_table_baseline_first():
    rows = [{"method": "l2g", "cam_miou_pct": 50.0, "bg_score": 0.2, "bg_rule": "0.2", "pseudo_miou_pct": None,
             "seg_miou_pct": 33.333, "cam_steps": 120, "seg_steps": 100, "seconds": 59.6},
            {"method": "baseline", "cam_miou_pct": 41.04, "bg_score": 0.35, "bg_rule": "sweep",
             "pseudo_miou_pct": 42.0, "seg_miou_pct": 30.0, "cam_steps": 160, "seg_steps": 120, "seconds": 100.0,
             "paper_cam_miou_pct": 48.8},
            {"method": "pmm", "error": "ValueError: x"},
            {"method": "tscd", "cam_miou_pct": 10.0, "bg_score": 0.45, "bg_rule": "0.45", "seg_source": "method",
             "seg_steps": None, "cam_steps": 200, "seconds": 3.0}]
    lines = quality.format_table(rows).splitlines()
    assert lines[0] == ("| method | CAM mIoU | bg score | pseudo-mask mIoU | seg. mIoU | CAM steps | seg. steps "
                        "| wall s |")
    assert lines[2] == "| baseline | 41.0 | 0.35 (swept) | 42.0 | 30.0 | 160 | 120 | 100 |"
    assert lines[3] == "| l2g | 50.0 | 0.20 | – | 33.3 | 120 | 100 | 60 |"
    assert lines[4].startswith("| pmm | failed: ValueError: x |")
    assert lines[5] == "| tscd | 10.0 | 0.45 | – | – | 200 | own head | 3 |"
    with_paper = quality.format_table(rows, with_paper=True).splitlines()
    assert "paper CAM" in with_paper[0]
    assert "| 30.0 | 48.8 | – | – | 160 |" in with_paper[2]


def test_main_writes_json_with_monkeypatched_reproduce(monkeypatch, tmp_path, capsys):
    seen = []
    voc = tmp_path / "VOC2012"
    voc.mkdir()

    def fake(method, data_root, **kw):
        seen.append((method, data_root))
        return _fake_result(method, cam=0.5 if method == "baseline" else 0.6)

    monkeypatch.setattr(quality, "reproduce", fake)
    rc = quality.main(["--methods", "l2g,baseline", "--data-root", str(voc), "--out", str(tmp_path / "runs"),
                       "--results", str(tmp_path / "res")])
    out = capsys.readouterr().out
    assert rc == 0
    assert seen == [("baseline", str(voc)), ("l2g", str(voc))]
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert table[1].startswith("| baseline | 50.0 |")
    assert table[2].startswith("| l2g | 60.0 |")
    data = json.loads((tmp_path / "res" / "quality_voc.json").read_text())
    assert data["unit"] == "percent"
    assert data["seed"] == 0
    assert data["quick"] is False
    assert [r["method"] for r in data["rows"]] == ["baseline", "l2g"]
    assert math.isclose(data["rows"][0]["pseudo_miou_pct"], 45.0)
    assert set(data["config"]) >= {"torch", "device_name", "threads", "date"}

    def failing(method, data_root, **kw):
        raise RuntimeError("no")

    monkeypatch.setattr(quality, "reproduce", failing)
    assert quality.main(["--methods", "baseline", "--data-root", str(voc), "--out", str(tmp_path / "r2"),
                         "--no-json"]) == 1


def test_merge_keeps_other_methods_and_refuses_other_hardware(monkeypatch, tmp_path, capsys):
    voc = tmp_path / "VOC2012"
    voc.mkdir()
    common = ["--data-root", str(voc)]
    monkeypatch.setattr(quality, "reproduce", lambda method, data_root, **kw: _fake_result(method))
    res = tmp_path / "res"
    assert quality.main(["--methods", "baseline,l2g", "--out", str(tmp_path / "a"), "--results", str(res),
                         *common]) == 0
    monkeypatch.setattr(quality, "reproduce", lambda method, data_root, **kw: _fake_result(method, cam=0.9))
    assert quality.main(["--methods", "l2g", "--out", str(tmp_path / "b"), "--results", str(res), "--merge",
                         *common]) == 0
    rows = json.loads((res / "quality_voc.json").read_text())["rows"]
    assert [(r["method"], r["cam_miou_pct"]) for r in rows] == [("baseline", 40.0), ("l2g", 90.0)]
    assert all(r["date"] for r in rows)
    # a table measured elsewhere (or with other settings) is not merged into
    data = json.loads((res / "quality_voc.json").read_text())
    data["config"]["device_name"] = "another machine"
    (res / "quality_voc.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert quality.main(["--methods", "l2g", "--out", str(tmp_path / "c"), "--results", str(res), "--merge",
                         *common]) == 2
    err = capsys.readouterr().err
    assert "--merge:" in err
    assert "different device_name" in err
    assert quality.main(["--methods", "l2g", "--seed", "1", "--out", str(tmp_path / "d"), "--results",
                         str(tmp_path / "fresh"), "--merge", *common]) == 0  # nothing to merge with: plain write


def test_quality_page_lists_the_cyclic_rounds(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    rounds = [{"round": 0, "best_val": 0.198, "best_step": 300, "last_val": 0.19, "last_step": 400},
              {"round": 1, "best_val": 0.124, "best_step": 400, "last_val": 0.124, "last_step": 400}]
    _write(d, "quality_synthetic.json", [{"method": "pmm", "seg_miou_pct": 12.4, "seg_rounds": rounds},
                                         {"method": "baseline", "seg_miou_pct": 32.6, "seg_rounds": rounds[:1]}])
    sources, _ = rd.load_sources(d)
    text = rd.render_page(sources, [], img_rel="x.png", families=["core"])
    assert ("pmm: segmentation val mIoU per cyclic round: round 0 19.8 best (step 300), 19.0 last; "
            "round 1 12.4 best (step 400), 12.4 last.") in text
    assert "baseline: segmentation val mIoU per cyclic round" not in text  # one round: nothing to list


def _grid_file(d):
    protocol = {"data": "synthetic 200 train / 50 val images of 64 px", "cam_images": 4000,
                "cam_backbones": {"baseline": {"backbone": "tiny", "backbone_kwargs": {"widths": [16, 32, 64]}},
                                  "l2g": {"backbone": "tiny", "backbone_kwargs": {"widths": [16, 32, 64]}},
                                  "baseline@mit_tiny": {"backbone": "mit_tiny", "backbone_kwargs": {}},
                                  "tscd": {"backbone": "mit_tiny", "backbone_kwargs": {}}},
                "seg_stage": "deeplabv2 on tiny", "bg_score": "swept on train", "val_choices": "none",
                "mechanisms": "pseudo masks", "claims": {"l2g": ["body_recall"], "tscd": ["boundary_f", "bg_fp"]},
                "rows": ["baseline", "l2g", "baseline@mit_tiny", "tscd"], "seeds": [0, 1],
                "inits": ["pretrained", "random"]}
    recs = []
    for init, shift in (("pretrained", 10.0), ("random", 0.0)):
        for seed in (0, 1):
            recs += [
                {"method": "baseline", "init": init, "seed": seed, "cam_miou": 30.0 + shift + 2 * seed,
                 "body_recall": 40.0 + seed, "seconds": 30.0},
                {"method": "l2g", "init": init, "seed": seed, "cam_miou": 31.0 + shift, "body_recall": 45.0 + seed,
                 "seconds": 90.0},
                {"method": "baseline@mit_tiny", "init": init, "seed": seed, "cam_miou": 12.0, "boundary_f": 20.0,
                 "bg_fp": 10.0, "seconds": 40.0},
                {"method": "tscd", "init": init, "seed": seed, "cam_miou": 15.0, "seg_own_miou": 9.0 + seed,
                 "boundary_f": 30.0, "bg_fp": 20.0, "seconds": 100.0,
                 **({"error": "RuntimeError: boom"} if init == "random" and seed == 1 else {})}]
    _write(d, "quality_synthetic.json", recs, config=dict(HEADER, threads=1, jobs=2), protocol=protocol,
           pretrained_backbones=[{"backbone": "tiny", "eval_exact_match_pct": 86.5, "seconds": 36.0}],
           wall_s=3000.0, setup_s=120.0, load_average_1min={"min": 1.0, "mean": 2.5, "max": 4.0, "samples": 9},
           command="python -m benchmarks.quality --jobs 2", quick=False)


def test_claim_verdict_counts_only_differences_beyond_the_seed_noise():
    assert rd.claim_verdict(45.5, 0.7, 40.5, 0.7) == "better"
    assert rd.claim_verdict(34.1, 3.2, 33.6, 4.0) == "within noise"  # +0.5 against stds of 3-4 points
    assert rd.claim_verdict(30.0, 1.0, 36.0, 1.0) == "worse"
    assert rd.claim_verdict(2.2, 0.6, 14.1, 0.5, lower_is_better=True) == "better"
    assert rd.claim_verdict(20.0, 0.0, 10.0, 0.0, lower_is_better=True) == "worse"
    assert rd.claim_verdict(11.0, None, 10.0, None) == "better"  # one seed: the sign decides
    assert rd.claim_verdict(10.0, None, 10.0, None) == "within noise"


def test_quality_grid_rendering(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    _grid_file(d)
    text = rd.render_page(*rd.load_sources(d), img_rel="x.png", families=[])
    sec = text[text.index("### quality_synthetic"):]
    assert sec.index("**Pretrained initialisation** (the presets' default)") < sec.index("**Random initialisation**")
    pre = sec[:sec.index("**Random initialisation**")]
    # mean ± sample std over the seeds, "–" where a row has no value
    assert "| baseline | 41.0 ± 1.4 | – | – | – | – | 40.5 ± 0.7 | – | – | – | 2 | 30.0 |" in pre
    assert "| tscd | 15.0 ± 0.0 | – | – | 9.5 ± 0.7 |" in pre
    rnd = sec[sec.index("**Random initialisation**"):]
    assert "| tscd | 15.0 | – | – | 9.0 |" in rnd
    assert "| 1 (1 failed) |" in rnd
    # the claims table compares with the baseline on the same network; lower is better for bg FP
    assert ("| l2g | body recall (completeness) | pretrained | 45.5 ± 0.7 | baseline 40.5 ± 0.7 | +5.0 (better) |"
            in sec)
    assert ("| tscd | background false positives (lower is better) | pretrained | 20.0 ± 0.0 | baseline@mit_tiny "
            "10.0 ± 0.0 | +10.0 (worse) |") in sec
    assert "- failed: tscd (random, seed 1): RuntimeError: boom" in sec
    assert "`tiny` 86.5 % exact-match on held-out images (36.0 s)" in sec
    assert ("Wall time of the whole grid: 3000 s (50.0 min; of which data and pretraining 120 s), 2 run(s) at a "
            "time") in sec
    assert "load average during the run 1–4 (mean 2.5; the grid's own runs included) on 4 cores" in sec
    assert "Command: `python -m benchmarks.quality --jobs 2`." in sec
    assert "`mit_tiny` for baseline@mit_tiny, tscd" in sec
    assert "1 torch thread of 4 CPU cores" in sec
    assert rd.mean_std([1.0, 3.0]) == "2.0 ± 1.4"
    assert rd.mean_std([2.0]) == "2.0"
    assert rd.mean_std([None]) == "–"
