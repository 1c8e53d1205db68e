"""The built docs in a real headless browser: every formula becomes KaTeX output, none stays raw LaTeX.

Skipped without a Chromium executable (CI has none) or without the ``docs`` extra. Builds the site once
(about 10 s) and reads each math page's DOM after its scripts ran (``chromium --headless --dump-dom``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
MATH_PAGES = ("l2g", "ppl", "pmm", "smaf", "scd", "irn", "crf")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium (chromium on PATH)")]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
                   cwd=ROOT, env=env, check=True, timeout=300)
    return out


def _dom(page: Path) -> str:
    """The page's DOM after its scripts ran, from a fresh browser profile with no network use."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="chromium_profile_") as profile:
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync", "--no-first-run",
                            f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
                            page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def _checker():
    spec = importlib.util.spec_from_file_location("check_docs_html", ROOT / ".ci" / "check_docs_html.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_docs_html"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", MATH_PAGES)
def test_every_formula_renders(site, name):
    built = (site / name / "index.html").read_text(encoding="utf-8")
    formulas = len(re.findall(r'class="arithmatex"', built))
    assert formulas > 0, f"{name}: no formulas in the built page"
    dom = _dom(site / name / "index.html")
    assert len(re.findall(r'<span class="katex">', dom)) == formulas  # one KaTeX tree per formula
    assert "katex-error" not in dom
    # the rendered DOM holds no raw delimiter outside a formula (the TeX source KaTeX keeps sits inside one)
    math = [f for f in _checker().check_page(dom, f"{name}/index.html") if f.kind in ("math", "math-js")]
    assert math == []
