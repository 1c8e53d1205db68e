"""The built-site checker (.ci/check_docs_html.py) on tiny pages: every defect at its line, clean pages pass."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "check_docs_html.py"

HEAD = """<html><head>
<link rel="stylesheet" href="../assets/stylesheets/main.css">
</head><body>
"""
KATEX = '<script src="../vendor/katex/katex.min.js"></script>\n<script src="../javascripts/katex.js"></script>\n'


def _module():
    spec = importlib.util.spec_from_file_location("check_docs_html", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_docs_html"] = mod  # dataclasses look the module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def chk():
    return _module()


def _found(chk, body: str, scripts: str = KATEX) -> list[tuple[int, str]]:
    html = HEAD + body + scripts + "</body></html>\n"
    return [(f.line, f.kind) for f in chk.check_page(html, "p/index.html")]


def test_clean_page_with_formulas_code_and_lists_passes(chk):
    body = """<p>Inline <span class="arithmatex">\\(x^2\\)</span> and display:</p>
<div class="arithmatex">\\[\\sum_i a_i\\]</div>
<p>A regex in code: <code>re.compile(r"\\(")</code>, prices like $5 and $6, a dash - in a sentence.</p>
<pre><code>print("$$ not math $$", r"\\[")
</code></pre>
<ul>
<li>first item</li>
<li><code>:func:</code> is a role name in code, not a role</li>
</ul>
<p><code>a = b
- c</code> (a formula in code may wrap at a minus sign)</p>
"""
    assert _found(chk, body) == []


def test_raw_formula_delimiters_outside_math_elements(chk):
    body = """<p>fine <span class="arithmatex">\\(a\\)</span></p>
<p>raw \\(b\\) here</p>
<p>and display</p>
<p>$$c$$</p>
<table><tr><td>\\[d\\]</td></tr></table>
"""
    found = _found(chk, body)
    # \\( and \\[ are reported once per opening delimiter; $$ twice (opening and closing look alike)
    assert found == [(5, "math"), (7, "math"), (7, "math"), (8, "math")]


def test_page_with_formulas_but_no_katex_is_an_error(chk):
    body = '<p><span class="arithmatex">\\(x\\)</span></p>\n'
    assert _found(chk, body, scripts="") == [(1, "math-js")]
    assert _found(chk, body, scripts='<script src="../vendor/katex/katex.min.js"></script>\n') == [(1, "math-js")]
    assert _found(chk, body) == []
    # a page without formulas needs no KaTeX
    assert _found(chk, "<p>plain</p>\n", scripts="") == []


def test_sphinx_roles_in_text_and_before_inline_code(chk):
    body = """<p>See :func:<code>multiscale_cams</code> and</p>
<p>:class:`LocalPatchSampler` or :py:meth:<code>~torch.nn.Module.forward</code>.</p>
<p>Role names alone (:func:, :class:) are not roles.</p>
"""
    assert _found(chk, body) == [(4, "sphinx-role"), (5, "sphinx-role"), (5, "sphinx-role")]


def test_collapsed_bullets(chk):
    body = """<p>Intro paragraph.</p>
<p>continuation text
- <strong>Next item</strong> swallowed by the paragraph</p>
<p>- starts with a dash</p>
<p>* starts with a star</p>
<p>a range 3 - 4 and a minus -1 stay prose</p>
<div class="arithmatex">\\[a
- b\\]</div>
"""
    assert _found(chk, body) == [(6, "bullet"), (7, "bullet"), (8, "bullet")]


def test_internal_documents_in_text_code_and_links(chk):
    body = """<p>as in spec_pmm.md section 4</p>
<p><code>protocol_and_sota.md</code></p>
<p>see <a href="../../shared/specs/x.md">the spec</a></p>
<p>DESIGN.md and the spec §10.14 and the spec's §3</p>
<p>sources in <code>spec_*.md:line</code></p>
<p>a specification and specs of the model are fine</p>
"""
    assert _found(chk, body) == [(4, "internal-doc"), (5, "internal-doc"), (6, "internal-doc"),
                                 (7, "internal-doc"), (7, "internal-doc"), (7, "internal-doc"),
                                 (8, "internal-doc")]


def test_resources_from_other_sites(chk):
    body = """<script src="https://cdn.jsdelivr.net/npm/katex/dist/katex.min.js"></script>
<link rel="stylesheet" href="//fonts.googleapis.com/css?family=Roboto">
<img src="http://example.org/x.png">
<a href="https://github.com/wsss-blocks/wsss-blocks">a link to another site is fine</a>
<img src="../img/local.png">
<a href="https://github.com/wsss-blocks/wsss-blocks" class="md-source" data-md-component="source">repo</a>
<a href="https://github.com/wsss-blocks/wsss-blocks" class="md-source">repo</a>
"""
    assert _found(chk, body) == [(4, "external"), (5, "external"), (6, "external"), (9, "external")]


def test_line_numbers_follow_multiline_text(chk):
    body = "<p>one\ntwo\nthree \\(x\\)</p>\n"
    assert _found(chk, body) == [(6, "math")]


def _site(tmp_path: Path, pages: dict[str, str]) -> Path:
    site = tmp_path / "site"
    for rel, body in pages.items():
        p = site / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(HEAD + body + "</body></html>\n", encoding="utf-8")
    return site


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_cli_exit_status_and_allow_flags(tmp_path):
    site = _site(tmp_path, {"index.html": "<p>home</p>\n",
                            "l2g/index.html": "<p>:class:<code>LocalPatchSampler</code></p>\n",
                            "crf/index.html": "<p>see spec_crf.md</p>\n"})
    r = _run(str(site))
    assert r.returncode == 1
    assert "l2g/index.html:4: sphinx-role:" in r.stdout
    assert "crf/index.html:4: internal-doc:" in r.stdout
    assert r.stdout.strip().endswith("checked 3 page(s) in " + str(site) + ": 1 sphinx-role, 1 internal-doc")

    r = _run(str(site), "--allow-sphinx-roles")
    assert r.returncode == 1
    assert "sphinx-role: 1 in l2g/index.html" in r.stdout
    assert "l2g/index.html:4" not in r.stdout  # allowed findings are counted, not listed

    r = _run(str(site), "--allow-sphinx-roles", "--allow-internal-docs")
    assert r.returncode == 0, r.stdout
    assert "allowed for now (internal-doc, sphinx-role): 2 finding(s)" in r.stdout
    assert r.stdout.strip().endswith(": no errors")

    r = _run(str(site), "--allow-sphinx-roles", "--allow-internal-docs", "--verbose")
    assert r.returncode == 0
    assert "l2g/index.html:4: sphinx-role:" in r.stdout


def test_cli_refuses_a_folder_without_a_site(tmp_path):
    r = _run(str(tmp_path / "nothing"))
    assert r.returncode == 2
    assert "holds no index.html" in r.stderr


def test_cli_clean_site_passes(tmp_path):
    site = _site(tmp_path, {"index.html": "<p>home</p>\n", "a/index.html": "<ul>\n<li>x</li>\n</ul>\n"})
    r = _run(str(site))
    assert r.returncode == 0
    assert "checked 2 page(s)" in r.stdout
    assert "no errors" in r.stdout
