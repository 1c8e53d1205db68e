"""docs/make_figures.py: the method figures are regenerable, deterministic, small, and on their pages."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAGES = {"l2g": "l2g.md", "ppl": "ppl.md", "pmm": "pmm.md", "smaf": "smaf.md", "scd": "scd.md"}

pytest.importorskip("matplotlib")
pytest.importorskip("PIL")


def _module():
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "docs" / "make_figures.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_figures"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mf():
    return _module()


def test_committed_figures_are_small_pngs_embedded_with_a_caption():
    for name, page in PAGES.items():
        png = ROOT / "docs" / "img" / f"{name}_figure.png"
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC, png
        assert len(data) < 200_000, (png, len(data))
        text = (ROOT / "docs" / page).read_text(encoding="utf-8")
        assert f"](img/{name}_figure.png)" in text, page
        caption = text[text.index(f"img/{name}_figure.png"):][:2000]
        assert "docs/make_figures.py" in caption, page  # the caption says how the figure was made


def test_quick_run_writes_every_figure_and_repeats_byte_for_byte(mf, tmp_path):
    data = tmp_path / "data"
    res = mf.make_figures(tmp_path / "a", quick=True, data_root=data)
    assert sorted(res["files"]) == sorted(PAGES)
    assert res["picks"] == mf.pick_images(mf.load_data(data, 48, 64)["labels"])
    for name, size in res["files"].items():
        png = (tmp_path / "a" / f"{name}_figure.png").read_bytes()
        assert png[:8] == PNG_MAGIC
        assert len(png) == size < 200_000
    assert not list((tmp_path / "a").glob("*.tmp"))  # written through a temporary file and a rename
    # same seeds, one thread: a second run of a figure gives the same bytes
    mf.make_figures(tmp_path / "b", quick=True, only=("pmm",), data_root=data)
    assert (tmp_path / "b" / "pmm_figure.png").read_bytes() == (tmp_path / "a" / "pmm_figure.png").read_bytes()
    assert not (tmp_path / "b" / "ppl_figure.png").exists()


def test_picks_prefer_images_with_two_classes(mf):
    import torch

    labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.float32)
    assert mf.pick_images(labels) == [0, 1, 3]  # the first two with two classes, then the first with one


def test_cli_rejects_unknown_figure_names(mf, capsys):
    with pytest.raises(SystemExit) as e:
        mf.main(["--only", "l2g,nope"])
    assert e.value.code == 2
    assert "unknown figure(s) ['nope']" in capsys.readouterr().err
