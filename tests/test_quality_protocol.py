"""The synthetic benchmark protocol (benchmarks/quality.py): rows, the protocol check, a tiny real grid, merging.

The tiny grid trains for real (a few seconds per run on CPU) through the same `reproduce` path as the full table.
"""

from __future__ import annotations

import json
import math

import pytest

quality = pytest.importorskip("benchmarks.quality")
from benchmarks import render_docs as rd  # noqa: E402

TINY = ["data.synthetic.num_train=16", "data.synthetic.num_val=4", "data.synthetic.image_size=32",
        "data.synthetic.num_classes=5",
        "cam.backbone_kwargs={widths: [8, 8, 16], output_stride: 4}", "cam.batch_size=4", "cam.steps=3",
        "cam.resize_long=[28, 36]", "cam.crop_size=32", "pseudo.scales=[1.0]", "pseudo.batch_size=8",
        "seg.backbone_kwargs={widths: [8, 8, 16], output_stride: 8}", "seg.batch_size=4", "seg.steps=3",
        "seg.crop_size=32", "seg.msc_train=[0.5]", "seg.eval_scales=[1.0]",
        "runtime.checkpoint_every=2", "runtime.log_every=1", "runtime.min_free_mb=1",
        "data.synthetic.pretrain.num_images=16", "data.synthetic.pretrain.num_eval=4",
        "data.synthetic.pretrain.steps=2", "data.synthetic.pretrain.batch_size=4"]


def _configs(rows, extra=()):
    return {r.name: quality.row_config(r, False, list(extra)) for r in rows}


def test_rows_put_a_baseline_on_each_own_architecture():
    rows = quality.protocol_rows(quality.default_methods(None))
    names = [r.name for r in rows]
    # SMAF's head takes any backbone: it shares the tiny CNN; TSCD's SegFormer needs its MiT
    assert names == ["baseline", "l2g", "ppl", "pmm", "smaf", "baseline@mit_tiny", "tscd"]
    cfgs = _configs(rows)
    assert quality.architecture(cfgs["baseline@mit_tiny"]) == quality.architecture(cfgs["tscd"])
    assert quality.architecture(cfgs["smaf"]) == quality.architecture(cfgs["baseline"])
    # the baseline on TSCD's network trains with TSCD's CAM optimiser and schedule, for as many images
    b, t = cfgs["baseline@mit_tiny"], cfgs["tscd"]
    assert (b.method, b.cam.optimizer, b.cam.lr, b.cam.warmup_steps, b.cam.scale_range) == (
        "baseline", t.cam.optimizer, t.cam.lr, t.cam.warmup_steps, t.cam.scale_range)
    assert {n: quality.cam_images(c) for n, c in cfgs.items()} == dict.fromkeys(names, 4000)
    quality.check_protocol(cfgs, quality.reference_config())  # the packaged presets follow the protocol
    # selecting a method brings the baseline on its network
    assert [r.name for r in quality.select_rows(rows, ["tscd", "ppl"])] == ["ppl", "baseline@mit_tiny", "tscd"]
    assert [r.name for r in quality.select_rows(rows, ["baseline@mit_tiny"])] == ["baseline@mit_tiny"]


def test_quick_presets_follow_the_protocol_too(tmp_path):
    rows = quality.protocol_rows(quality.default_methods(None), quick=True)
    tasks, configs, ref = quality.build_tasks(rows, [0, 1], ["pretrained", "random"], tmp_path, True, [], None, "auto")
    quality.check_protocol(configs, ref)
    assert {quality.cam_images(c) for c in configs.values()} == {1600}
    assert len(tasks) == 2 * 2 * len(rows)
    rnd = [t for t in tasks if t["init"] == "random"]
    assert all("cam.pretrained=null" in t["overrides"] and "seg.pretrained=null" in t["overrides"] for t in rnd)
    tscd = next(t for t in tasks if t["row"] == "tscd")
    assert "seg.source=deeplab" in tscd["seg_overrides"]
    assert "seg.steps=100" in tscd["seg_overrides"]


@pytest.mark.parametrize(("row", "overrides", "match"), [
    ("l2g", ["cam.steps=100"], "l2g: the CAM stage sees 1600 images, the baseline preset 4000"),
    ("smaf", ["method_args.eps_steps=100"], "smaf: the CAM stage sees 3600 images"),
    ("pmm", ["seg.cyclic_select=best", "seg.eval_every=50"], "cyclic_select 'best' picks a model by val"),
    ("ppl", ["seg.eval_every=50"], "seg.eval_every evaluates val"),
    ("ppl", ["data.synthetic.body_evidence=0.0"], "ppl: data.synthetic"),
    ("ppl", ["cam.backbone_kwargs={widths: [16, 32, 48, 64], output_stride: 4}"], "no baseline@tiny row"),
    ("l2g", ["seg.steps=100"], r"segmentation stage differs .* seg.steps \(100 vs 400\)"),
    ("l2g", ["cam.pretrained=null"], "cam.pretrained None differs"),
    ("ppl", ["data.cam_eval_split=val"], "swept on data.cam_eval_split = the validation split"),
])
def test_protocol_check_names_each_breach(row, overrides, match):
    rows = quality.protocol_rows(quality.default_methods(None))
    cfgs = {r.name: quality.row_config(r, False, overrides if r.name == row else []) for r in rows}
    with pytest.raises(ValueError, match=match):
        quality.check_protocol(cfgs, quality.reference_config())


def test_pmm_seg_stage_keeps_its_method_keys():
    rows = quality.select_rows(quality.protocol_rows(["baseline", "pmm"]), ["baseline", "pmm"])
    cfgs = _configs(rows)
    assert cfgs["pmm"].seg.loss == "puf"
    assert cfgs["pmm"].seg.cyclic_rounds == 1
    quality.check_protocol(cfgs)  # PUF and the cyclic round are PMM's, not a different segmentation stage


def test_mean_std_and_grid_format():
    assert quality.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert quality.mean_std([5.0, None, float("nan")]) == (5.0, None, 1)
    assert quality.format_mean_std([30.0, 31.0]) == "30.5 ± 0.7"
    assert quality.format_mean_std([]) == "–"
    recs = [{"method": "baseline", "init": "random", "seed": s, "cam_miou": 30.0 + s, "seconds": 10.0}
            for s in range(3)] + [{"method": "l2g", "init": "random", "seed": 0, "error": "RuntimeError: x"}]
    lines = quality.format_grid(recs, ["baseline", "l2g"], "random").splitlines()
    assert lines[2].startswith("| baseline | 31.0 ± 1.0 | – |")
    assert lines[2].endswith("| 3 | 10 |")
    assert lines[3].endswith("| 0 (1 failed) | – |")


@pytest.mark.slow
def test_tiny_protocol_grid_end_to_end(tmp_path, capsys):
    """Two methods x two seeds, random init, two processes: real training, records, mechanisms, the docs table."""
    res = tmp_path / "res"
    args = ["--methods", "baseline,ppl", "--seeds", "0,1", "--init", "random", "--jobs", "2", "--out",
            str(tmp_path / "runs"), "--results", str(res), "--set", f"data.synthetic.cache_dir={tmp_path / 'c'}"]
    for o in TINY:
        args += ["--set", o]
    assert quality.main(args) == 0
    out = capsys.readouterr().out
    assert "4 runs: 2 rows (baseline, ppl) x inits ['random'] x seeds [0, 1]; 2 at a time" in out
    data = json.loads((res / "quality_synthetic.json").read_text())
    recs = data["rows"]
    assert [(r["method"], r["init"], r["seed"]) for r in recs] == [
        ("baseline", "random", 0), ("baseline", "random", 1), ("ppl", "random", 0), ("ppl", "random", 1)]
    for r in recs:
        assert "error" not in r, r.get("error")
        for k in ("cam_miou", "pseudo_miou", "seg_miou", "head_recall", "body_recall", "bg_fp", "boundary_f",
                  "trimap_miou"):
            assert 0.0 <= r[k] <= 100.0, (k, r[k])
        assert r["seg_own_miou"] is None
        assert r["cam_images"] == 12
        assert r["arch"] == "tiny"
    # the seed changes the run (same data, another initialisation and sample order)
    assert recs[0]["cam_miou"] != recs[1]["cam_miou"] or recs[0]["seg_miou"] != recs[1]["seg_miou"]
    pr = data["protocol"]
    assert pr["cam_images"] == 12
    assert pr["seeds"] == [0, 1]
    assert pr["inits"] == ["random"]
    assert pr["synthetic"]["body_evidence"] == 0.5
    assert data["pretrained_backbones"] == []
    assert data["config"]["jobs"] == 2
    assert data["config"]["threads"] == 1
    assert set(data["load_average_1min"]) == {"min", "mean", "max", "samples"}
    assert data["command"].startswith("python -m benchmarks.quality --methods baseline,ppl")
    text = rd.render_page(*rd.load_sources(res), img_rel="x.png", families=[])
    assert "**Random initialisation**" in text
    assert "**Pretrained initialisation**" not in text
    base = next(ln for ln in text.splitlines() if ln.startswith("| baseline |"))
    assert " ± " in base
    assert base.endswith("| 2 | " + base.rsplit("| ", 2)[-1])
    assert "| ppl | body recall (completeness) | random |" in text


@pytest.mark.slow
def test_tiny_pretrained_run_records_the_backbone(tmp_path):
    res = tmp_path / "res"
    args = ["--methods", "baseline", "--seeds", "0", "--init", "pretrained", "--out", str(tmp_path / "runs"),
            "--results", str(res), "--set", f"data.synthetic.cache_dir={tmp_path / 'c'}"]
    for o in TINY:
        args += ["--set", o]
    assert quality.main(args) == 0
    data = json.loads((res / "quality_synthetic.json").read_text())
    (pre,) = data["pretrained_backbones"]  # one tiny CNN serves the CAM network and the DeepLab
    assert pre["backbone"] == "tiny"
    assert pre["backbone_kwargs"] == {"widths": [8, 8, 16], "output_stride": 8}
    assert 0 <= pre["eval_exact_match_pct"] <= 100
    assert data["setup_s"] >= 0
    (rec,) = data["rows"]
    assert rec["init"] == "pretrained"
    assert math.isfinite(rec["seg_miou"])


def _fake_task(task):
    return {"method": task["row"], "trainer_method": task["method"], "arch": task["arch"], "init": task["init"],
            "seed": task["seed"], "cam_miou": 40.0 + task["seed"], "seconds": 1.0}


def test_grid_merge_replaces_only_the_runs_made_now(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(quality, "run_task", _fake_task)
    res = tmp_path / "res"
    common = ["--init", "random", "--results", str(res), "--out", str(tmp_path / "o")]
    assert quality.main(["--methods", "baseline,ppl", "--seeds", "0,1", *common]) == 0

    def better(task):
        return dict(_fake_task(task), cam_miou=90.0)

    monkeypatch.setattr(quality, "run_task", better)
    assert quality.main(["--methods", "ppl", "--seeds", "1,2", "--merge", *common]) == 0
    data = json.loads((res / "quality_synthetic.json").read_text())
    got = sorted((r["method"], r["seed"], r["cam_miou"]) for r in data["rows"])
    assert got == [("baseline", 0, 40.0), ("baseline", 1, 41.0), ("ppl", 0, 40.0), ("ppl", 1, 90.0),
                   ("ppl", 2, 90.0)]
    assert data["protocol"]["rows"] == ["baseline", "ppl"]
    assert data["protocol"]["seeds"] == [0, 1, 2]
    # another protocol (here: other data) is refused before any run
    capsys.readouterr()
    assert quality.main(["--methods", "ppl", "--merge", "--set", "data.synthetic.body_evidence=0.0", *common]) == 2
    assert "--merge:" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "msg"), [
    (["--seeds", "a"], "--seeds expects comma-separated integers"),
    (["--init", "imagenet"], "--init expects pretrained and/or random"),
    (["--jobs", "0"], "--jobs must be >= 1"),
    (["--methods", "baseline@nope"], "unknown method(s) or row(s)"),
])
def test_grid_argument_validation(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        quality.parse_args(argv)
    assert e.value.code == 2
    assert msg in capsys.readouterr().err


def test_a_protocol_breach_stops_before_any_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(quality, "run_task", lambda t: pytest.fail("no run may start"))
    rc = quality.main(["--methods", "baseline,l2g", "--init", "random", "--set", "seg.eval_every=10", "--no-json",
                       "--out", str(tmp_path)])
    assert rc == 2
    assert "seg.eval_every evaluates val" in capsys.readouterr().err
