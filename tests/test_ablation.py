"""The ablation grid (``python -m benchmarks.quality --grid``): a tiny real run through the quality CLI, and the
table, heat map and docs block from a fixed result.
"""

from __future__ import annotations

import json

from benchmarks import ablation, quality


def _fake() -> dict:
    cells = [{"method": "pmm", "refine": r, "rule": u, "released": (r, u) == ("none", "ppmg"),
              "miou_pct": None if r == "attn_aff" else 10.0 + i, "seconds": 1.0}
             for i, (r, u) in enumerate((r, u) for r in ("none", "varm", "attn_aff") for u in ("argmax", "ppmg"))]
    return {"config": {"date": "2026-01-02T00:00:00", "device_name": "x86_64", "cpu_count": 2, "wsss_blocks": "0.1",
                       "torch": "2.x"}, "threads": 1, "seed": 0, "refiners": ["none", "varm", "attn_aff"],
            "rules": ["argmax", "ppmg"], "wall_s": 90.0,
            "rows": [{"method": "pmm", "cam_miou_pct": 31.25, "images": 200, "cells": cells}]}


def test_table_marks_the_released_chain_and_refused_cells():
    text = ablation.markdown_table(_fake())
    assert text.splitlines() == [
        "| method (CAM mIoU) | refiner | argmax | ppmg |",
        "|---|---|---:|---:|",
        "| pmm (31.2) | none | 10.0 | **11.0** |",
        "|  | varm | 12.0 | 13.0 |",
        "|  | attn_aff | — | — |",
    ]


def test_figure_is_a_small_png_and_docs_block_is_replaced(tmp_path):
    png = ablation.render_figure(_fake(), tmp_path / "grid.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 200_000
    page = tmp_path / "page.md"
    page.write_text(f"before\n{ablation.MARK_START}\nstale table\n{ablation.MARK_END}\nafter\n")
    assert ablation.update_docs(_fake(), page)
    text = page.read_text()
    assert "stale table" not in text
    assert text.startswith("before\n<!-- ablation-grid:start -->\nMeasured 2026-01-02 on x86_64 (2 cores, 1 thread(s))")
    assert "| pmm (31.2) | none | 10.0 | **11.0** |" in text
    assert text.endswith(f"{ablation.MARK_END}\nafter\n")
    assert not ablation.update_docs(_fake(), tmp_path / "missing.md")


def test_grid_through_the_quality_cli_on_a_tiny_run(trainer_tiny, tmp_path):
    ov = [a for x in trainer_tiny for a in ("--set", x)]
    rc = quality.main(["--grid", "--methods", "baseline", "--refiners", "none,varm,attn_aff", "--rules",
                       "argmax,reliable", "--results", str(tmp_path), "--no-docs", "--out", str(tmp_path / "runs"),
                       *ov])
    assert rc == 0
    data = json.loads((tmp_path / "ablation_synthetic.json").read_text())
    (row,) = data["rows"]
    cells = {(c["refine"], c["rule"]): c for c in row["cells"]}
    assert len(cells) == 6
    released = [k for k, c in cells.items() if c["released"]]
    assert released == [("none", "argmax")]
    # the released chain with the swept background is the CAM mIoU at that background
    assert cells[("none", "argmax")]["miou_pct"] == row["cam_miou_pct"]
    assert row["bg_rule"] == "sweep"
    # a refiner that needs the network's attention is refused for the baseline, and shown as such
    assert cells[("attn_aff", "argmax")]["miou_pct"] is None
    assert "has none" in cells[("attn_aff", "argmax")]["refused"]
    assert all(0.0 <= cells[k]["miou_pct"] <= 100.0 for k in cells if k[0] != "attn_aff")
