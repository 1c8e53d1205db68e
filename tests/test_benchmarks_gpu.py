"""The GPU suite's plumbing on the CPU.

Section processes, incremental results, isolation, timeouts, merging, the CLI, and the docs page with and without
GPU results. (The figures are checked by running it on a GPU.)
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from benchmarks import gpu
from benchmarks import render_docs as rd

FAKE_SECTIONS = textwrap.dedent('''
    """Sections for the suite's tests: fast, failing, hanging, and one that reads the results file."""
    import json
    import os
    import time


    def fast(device, quick):
        yield {"name": "fast row", "median_ms": 1.5, "target": ">= 1x", "passed": True}
        yield {"name": "fast second", "median_ms": 2.5}


    def boom(device, quick):
        yield {"name": "row before the error", "median_ms": 3.0}
        raise RuntimeError("boom in the section")


    def hang(device, quick):
        yield {"name": "row before the hang", "median_ms": 4.0}
        time.sleep(120)
        yield {"name": "never written"}


    def look(device, quick):
        data = json.loads(open(os.environ["FAKE_SUITE_OUT"]).read())
        yield {"name": "what the file held", "statuses": {s["name"]: s["status"] for s in data["sections"]},
               "rows_seen": [r["name"] for r in data["rows"]], "device_seen": device, "quick_seen": quick}
''')


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Fake section specs importable by the section processes (the module is on their PYTHONPATH)."""
    mod_dir = tmp_path / "fakemods"
    mod_dir.mkdir()
    (mod_dir / "fake_gpu_sections.py").write_text(FAKE_SECTIONS)
    monkeypatch.setenv("PYTHONPATH", str(mod_dir) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return {name: (f"fake {name}", f"fake_gpu_sections:{name}") for name in ("fast", "boom", "hang", "look")}


def test_failing_and_hanging_sections_are_recorded_and_the_suite_continues(fake, tmp_path, monkeypatch):
    out = tmp_path / "res" / "gpu_cpu.json"
    monkeypatch.setenv("FAKE_SUITE_OUT", str(out))
    payload, rc = gpu.run_suite("cpu", False, None, out, timeout_s=5.0, specs=fake, argv=["--x"])
    assert rc == 1  # a failed section fails the run
    st = {s["name"]: s for s in payload["sections"]}
    assert [s["name"] for s in payload["sections"]] == ["fast", "boom", "hang", "look"]
    assert st["fast"]["status"] == "ok"
    assert st["fast"]["rows"] == 2
    assert st["boom"]["status"] == "failed"
    assert st["boom"]["error"] == "RuntimeError: boom in the section"
    assert "raise RuntimeError" in st["boom"]["traceback"]
    assert st["hang"]["status"] == "timeout"
    assert "stopped after 5 s" in st["hang"]["error"]
    assert 5.0 <= st["hang"]["seconds"] < 60  # killed at the timeout, not after the section's 120 s sleep
    assert st["look"]["status"] == "ok"
    assert payload["complete"] is False
    names = [r["name"] for r in payload["rows"]]
    # rows written before an error or a timeout are kept (saved row by row by the section process)
    assert names == ["fast row", "fast second", "row before the error", "row before the hang", "what the file held"]
    assert {r["family"] for r in payload["rows"]} == {"gpu/fast", "gpu/boom", "gpu/hang", "gpu/look"}
    # the last section read the file while the suite ran: every earlier section was already saved, itself running
    seen = payload["rows"][-1]
    assert seen["statuses"] == {"fast": "ok", "boom": "failed", "hang": "timeout", "look": "running"}
    assert seen["rows_seen"] == names[:-1]
    assert seen["device_seen"] == "cpu"
    assert seen["quick_seen"] is False
    on_disk = json.loads(out.read_text())
    assert on_disk["suite"] == "gpu"
    assert on_disk["rows"] == json.loads(json.dumps(payload["rows"]))
    assert on_disk["command"] == "python -m benchmarks.gpu --x"
    assert on_disk["notes"] == list(gpu.NOTES)
    assert not list(out.parent.glob("*.tmp"))


def test_subset_merge_and_docs_refresh(fake, tmp_path):
    out = tmp_path / "gpu_cpu.json"
    page = tmp_path / "docs" / "benchmarks.md"
    payload, rc = gpu.run_suite("cpu", False, ["fast"], out, timeout_s=30, docs=page, specs=fake)
    assert rc == 0
    assert payload["complete"] is True
    assert [s["status"] for s in payload["sections"]] == ["ok", "not run", "not run", "not run"]
    text = page.read_text()  # re-rendered from the results folder after the section
    assert "- `gpu_cpu.json`: " in text
    assert "full sizes" in text
    assert "fast ok (" in text
    # --merge keeps the earlier section of the same machine and versions; without it the file starts afresh
    payload, rc = gpu.run_suite("cpu", False, ["boom"], out, timeout_s=30, specs=fake, merge=True)
    st = {s["name"]: s for s in payload["sections"]}
    assert st["fast"]["status"] == "ok"
    assert st["fast"]["merged_from"] == "gpu_cpu.json"
    assert st["boom"]["status"] == "failed"
    assert rc == 1
    assert [r["name"] for r in payload["rows"]] == ["fast row", "fast second", "row before the error"]
    payload, _ = gpu.run_suite("cpu", False, ["boom"], out, timeout_s=30, specs=fake)
    assert [r["name"] for r in payload["rows"]] == ["row before the error"]
    # a file of another mode (full vs quick) is never merged
    payload, _ = gpu.run_suite("cpu", True, ["fast"], out, timeout_s=30, specs=fake, merge=True)
    assert [s["status"] for s in payload["sections"]] == ["ok", "not run", "not run", "not run"]


def test_quick_run_of_real_sections_writes_results_and_page(tmp_path):
    """The CLI end to end on a fast real section (refine at toy sizes, in its own process)."""
    page = tmp_path / "page.md"
    rc = gpu.main(["--device", "cpu", "--quick", "--sections", "refine", "--out", str(tmp_path) + "/",
                   "--docs", str(page)])
    assert rc == 0
    data = json.loads((tmp_path / "gpu_cpu_quick.json").read_text())
    assert data["quick"] is True
    assert data["config"]["device"] == "cpu"
    assert data["config"]["threads"] == 1
    rows = data["rows"]
    assert [r["name"] for r in rows] == ["PixelAdaptiveRefine (1, 5, 48, 48)", "VariationAwareRefine (1, 5, 48, 48)",
                                         "PixelAdaptiveRefine (2, 5, 64, 64)", "VariationAwareRefine (2, 5, 64, 64)"]
    for r in rows:
        assert r["section"] == "refine"
        assert isinstance(r["passed"], bool)
        assert r["max_abs_diff"] <= 1e-5
        assert r["median_ms"] > 0
        assert r["baseline_ms"] > 0
        assert r["speedup"] == pytest.approx(r["baseline_ms"] / r["median_ms"])
    assert {s["name"]: s["status"] for s in data["sections"]}["refine"] == "ok"
    text = page.read_text()
    assert "GPU figures: **unmeasured**" in text
    assert "refine ok (" in text


def test_cli_rejects_bad_arguments(tmp_path, capsys, monkeypatch):
    assert gpu.main(["--device", "cpu", "--sections", "crf,nope", "--out", str(tmp_path)]) == 2
    assert "unknown sections ['nope']" in capsys.readouterr().err
    assert gpu.main(["--device", "tpu", "--out", str(tmp_path)]) == 2
    assert gpu.main(["--device", "cpu", "--timeout-per-section", "0", "--out", str(tmp_path)]) == 2
    assert gpu.main(["--device", "cpu", "--threads", "0", "--out", str(tmp_path)]) == 2
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out", str(tmp_path)]) == 2  # the default device is cuda
    assert "no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_output_paths_keep_quick_runs_apart_from_full_ones(tmp_path):
    assert gpu.default_out("cuda", False).name == "gpu_cuda.json"
    assert gpu.default_out("cuda", True).name == "gpu_cuda_quick.json"
    assert gpu.default_out("cpu", True) == gpu.RESULTS_DIR / "gpu_cpu_quick.json"
    assert gpu.resolve_out(None, "cuda:0", False) == gpu.RESULTS_DIR / "gpu_cuda.json"
    assert gpu.resolve_out(str(tmp_path), "cpu", True) == tmp_path / "gpu_cpu_quick.json"
    assert gpu.resolve_out(str(tmp_path / "new") + "/", "cpu", False) == tmp_path / "new" / "gpu_cpu.json"
    assert gpu.resolve_out(str(tmp_path / "x.json"), "cpu", True) == tmp_path / "x.json"
    assert list(gpu.section_specs()) == ["tests", "crf", "refine", "cams", "pseudo", "train"]


# --------------------------------------------------------------------------------------------- the docs page
HEADER = {"wsss_blocks": "0.1.0", "torch": "9.9.9", "python": "3.11.7", "device": "cuda",
          "device_name": "NVIDIA H200", "threads": 16, "cpu_count": 16, "date": "2030-02-03T00:00:00+00:00"}


def _gpu_file(folder, name, quick, device="cuda", sections=None, rows=None, **extra):
    sections = sections if sections is not None else [
        {"name": "tests", "title": "pytest -m cuda", "status": "ok", "seconds": 40.0, "rows": 1},
        {"name": "crf", "title": "Dense CRF", "status": "ok", "seconds": 50.0, "rows": 2},
        {"name": "pseudo", "title": "Pseudo masks", "status": "failed", "seconds": 9.0, "rows": 1,
         "error": "RuntimeError: CUDA out of memory\ndetails"},
        {"name": "train", "title": "Training steps", "status": "not run"}]
    rows = rows if rows is not None else [
        {"section": "tests", "family": "gpu/tests", "name": "pytest -m cuda", "median_ms": 4e4, "tests_passed": 46,
         "tests_failed": 0, "tests_skipped": 0, "failed_tests": [], "target": "no failed test", "passed": True},
        {"section": "crf", "family": "gpu/crf", "name": "crf[afa] cuda batch 8 vs pydensecrf", "params": "375x500",
         "median_ms": 40.0, "baseline_ms": 1600.0, "speedup": 40.0, "target": ">= 30x", "passed": True},
        {"section": "crf", "family": "gpu/crf", "name": "agreement[afa]", "agreement_pct": 99.1,
         "target": "argmax agreement >= 99.5 %", "passed": False},
        {"section": "pseudo", "family": "gpu/pseudo", "name": "ppl_voc pseudo masks", "median_ms": 50.0,
         "projected_train_aug_min": 8.8, "images_per_s": 20.0, "target": "< 15 min", "passed": True,
         "todo": "PPL's IRN random walk is not in the library yet: not timed"}]
    payload = {"config": dict(HEADER, device=device), "suite": "gpu", "quick": quick, "complete": False,
               "sections": sections, "rows": rows, "wall_s": 123.4, "notes": ["Random weights."], **extra}
    (folder / name).write_text(json.dumps(payload))


def test_page_without_gpu_results_says_unmeasured(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    _gpu_file(res, "gpu_cpu_quick.json", True, device="cpu")
    text = rd.render(res, tmp_path / "p.md", families=[])[0].read_text()
    assert "GPU figures: **unmeasured** (no GPU run yet" in text
    for sec, goal in rd.GPU_GOALS:
        assert f"| {sec} | {goal} | unmeasured |" in text
        assert f"- **unmeasured** [gpu suite/{sec}] {goal} (no GPU run yet)" in text
    assert "**How to run on a rented GPU.**" in text
    assert "`python -m benchmarks.gpu`" in text
    # the dry run is a status line, not goal evidence
    assert ("- `gpu_cpu_quick.json`: `NVIDIA H200` (cpu), 16 torch threads, quick sizes, 2030-02-03T00:00:00+00:00: "
            "tests ok (40.0 s; 46 passed, 0 failed, 0 skipped), crf ok (50.0 s), pseudo failed (9 s; "
            "RuntimeError: CUDA out of memory); 123 s in all.") in text
    assert "**PASS** [gpu suite" not in text
    assert "### Goals" not in text
    # a quick CUDA run is a dry run too
    _gpu_file(res, "gpu_cuda_quick.json", True)
    assert "GPU figures: **unmeasured**" in rd.render(res, tmp_path / "p.md", families=[])[0].read_text()


def test_page_with_gpu_results_renders_goals_and_tables(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    _gpu_file(res, "gpu_cuda.json", False)
    _gpu_file(res, "gpu_cpu_quick.json", True, device="cpu")
    text = rd.render(res, tmp_path / "p.md", families=[])[0].read_text()
    assert "unmeasured" not in text
    assert ("Measured on `NVIDIA H200` (cuda), 16 torch threads of 16 CPU cores, torch 9.9.9, wsss_blocks 0.1.0, "
            "python 3.11.7; 2030-02-03T00:00:00+00:00; full sizes. Source: `gpu_cuda.json`.") in text
    assert ("Sections: tests ok (40.0 s; 46 passed, 0 failed, 0 skipped), crf ok (50.0 s), pseudo failed (9 s; "
            "RuntimeError: CUDA out of memory); **incomplete**, 123 s in all.") in text
    assert "| tests | pytest -m cuda | 46 passed, 0 failed, 0 skipped | no failed test | **PASS** |" in text
    assert "| crf | crf[afa] cuda batch 8 vs pydensecrf | 40.0x | >= 30x | **PASS** |" in text
    assert "| crf | agreement[afa] | agreement 99.1 % | argmax agreement >= 99.5 % | **FAIL** |" in text
    assert "| pseudo | ppl_voc pseudo masks | train_aug 8.8 min, 20.0 images/s | < 15 min | **PASS** |" in text
    # targets list at the top of the page
    assert ("- **FAIL** [gpu suite/crf] agreement[afa]: argmax agreement >= 99.5 % (`gpu_cuda.json`, "
            "2030-02-03T00:00:00+00:00)") in text
    # one table per section that ran, with its status; ratio = our time / baseline time as on the whole page
    assert "### Dense CRF\n\nSection `crf`: ok in 50.0 s.\n" in text
    assert "| crf[afa] cuda batch 8 vs pydensecrf (375x500) | 40.0 / 1600 | 0.025 | – | >= 30x: **PASS** |" in text
    assert "Section `pseudo`: failed in 9 s; RuntimeError: CUDA out of memory." in text
    assert "- ppl_voc pseudo masks: TODO: PPL's IRN random walk is not in the library yet: not timed" in text
    assert "### Training steps" not in text  # not run, no rows
    assert "- Random weights." in text
    assert "- `gpu_cpu_quick.json`: " in text  # the dry run is still listed
    # GPU-suite files never feed the per-family tables or the "other result files" list
    assert "## Other result files" not in text
    assert "### gpu/crf" not in text


def test_gpu_file_without_rows_is_shown_not_skipped(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    sections = [{"name": "tests", "title": "pytest -m cuda", "status": "timeout", "seconds": 300.0, "rows": 0,
                 "error": "stopped after 300 s (--timeout-per-section); 0 rows kept"}]
    _gpu_file(res, "gpu_cuda.json", False, sections=sections, rows=[])
    text = rd.render(res, tmp_path / "p.md", families=[])[0].read_text()
    assert "Sections: tests timeout (300 s; stopped after 300 s (--timeout-per-section); 0 rows kept)" in text
    assert "No goal row was measured" in text
    assert "skipped `gpu_cuda.json`" not in text


def test_per_method_isolates_a_failing_method():
    from benchmarks.gpu_sections import per_method

    def run(m):
        if m == "b":
            raise MemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore text")
        return [{"name": f"{m} row"}]

    rows: list[dict] = []
    with pytest.raises(RuntimeError, match=r"^1 of 3 methods failed: b: MemoryError: CUDA out of memory\. Tried"):
        rows.extend(per_method(("a", "b", "c"), run))
    assert rows == [{"name": "a row"}, {"name": "b_voc", "error": "MemoryError: CUDA out of memory. Tried to "
                                                                  "allocate 2 GiB"}, {"name": "c row"}]


def test_voc_like_samples_are_deterministic_voc_sized_and_labelled():
    import torch

    from benchmarks.gpu_sections import VOC_SIZES, voc_like_samples

    a, b = voc_like_samples(6, False, saliency=True), voc_like_samples(6, False, saliency=True)
    for s, t in zip(a, b):
        assert torch.equal(s["image"], t["image"])
        assert torch.equal(s["labels"], t["labels"])
        assert tuple(s["image"].shape[1:]) in VOC_SIZES
        assert s["image"].shape[0] == 3
        assert float(s["image"].min()) >= 0.0
        assert float(s["image"].max()) <= 1.0
        assert 1 <= int(s["labels"].sum()) <= 3
        assert s["labels"].shape == (20,)
        assert s["saliency"].shape == (1, *s["image"].shape[1:])
    assert len({tuple(s["image"].shape) for s in a}) > 1
    assert len({s["name"] for s in a}) == 6
