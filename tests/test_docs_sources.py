"""The docstrings and docs sources use mkdocstrings syntax, not Sphinx's: checked on the source, no site build.

mkdocstrings renders a Sphinx role such as ``:func:`name``` as literal text, ignores ``#:`` comments (an
attribute is documented by a string right after it) and shows an rst literal marker ``::`` as two colons. The
built-site check (.ci/check_docs_html.py) finds the roles too, but only after a docs build; this catches them
in a plain pytest run. Cross-references are written ``[`name`][]`` (a name of the docstring's scope) or
``[`name`][wsss_blocks.module.name]``.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Python sources users read (the package's are rendered by the docs); Markdown pages of the site
PY_DIRS = ("wsss_blocks", "examples", "benchmarks", "docs")
RENDERED = "wsss_blocks"
MD_DIRS = ("docs",)


def _role_pattern() -> re.Pattern[str]:
    """The built-site checker's pattern, so that both checks agree on what a Sphinx role is."""
    spec = importlib.util.spec_from_file_location("check_docs_html", ROOT / ".ci" / "check_docs_html.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_docs_html"] = mod
    spec.loader.exec_module(mod)
    return mod._ROLE


ROLE = _role_pattern()
RST_LITERAL = re.compile(r"[^:\s]::\s*$")


def _docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers covered by string statements (module, class, function and attribute docstrings)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            end = node.end_lineno or node.lineno
            lines.update(range(node.lineno, end + 1))
    return lines


def scan_python(path: Path, rendered: bool = True) -> list[str]:
    """Sphinx-isms in one Python file: roles anywhere; where the docs render it, ``#:`` and a trailing ``::``."""
    text = path.read_text(encoding="utf-8")
    found = []
    lines = text.split("\n")
    doc_lines = _docstring_lines(ast.parse(text, filename=str(path)))
    for i, line in enumerate(lines, 1):
        for m in ROLE.finditer(line):
            found.append(f"{path}:{i}: Sphinx role {line[m.start():m.start() + 40]!r}: write [`name`][] or "
                         f"[`name`][wsss_blocks.module.name] (or plain backticks where nothing is documented)")
        if rendered and line.lstrip().startswith("#:"):
            found.append(f"{path}:{i}: '#:' comment: document the attribute with a string right after it")
        if rendered and i in doc_lines and RST_LITERAL.search(line):
            found.append(f"{path}:{i}: docstring line ends with the rst literal marker '::'; use ':'")
    return found


def scan_markdown(path: Path) -> list[str]:
    return [f"{path}:{i}: Sphinx role {line[m.start():m.start() + 40]!r}"
            for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1) for m in ROLE.finditer(line)]


def _sources(dirs: tuple[str, ...], pattern: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob(pattern) if "__pycache__" not in p.parts)


def test_no_sphinx_syntax_in_python_sources():
    files = _sources(PY_DIRS, "*.py")
    assert len(files) > 80  # the scan looks where the sources are
    found = [f for p in files for f in scan_python(p, rendered=p.relative_to(ROOT).parts[0] == RENDERED)]
    assert found == [], "\n".join(found)


def test_no_sphinx_roles_in_docs_pages():
    files = [*_sources(MD_DIRS, "*.md"), ROOT / "README.md", ROOT / "CHANGELOG.md"]
    found = [f for p in files for f in scan_markdown(p)]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(("source", "kinds"), [
    ('"""See :func:`multiscale_cams`."""\n', ["Sphinx role"]),
    ('def f():\n    """Uses :class:`~wsss_blocks.crf.DenseCRF` and :py:meth:`x.y`."""\n', ["Sphinx role"] * 2),
    ("# a comment with :mod:`wsss_blocks.cam`\nx = 1\n", ["Sphinx role"]),
    ("#: the default\nX = 1\n", ["'#:' comment"]),
    ('"""Layout::\n\n    root/\n"""\n', ["rst literal marker"]),
    ('"""See [`multiscale_cams`][] and [`DenseCRF`][wsss_blocks.crf.dense_crf.DenseCRF]."""\nX = 1\n"""A value."""\n',
     []),
    ('x = {"a": 1}  # a dict literal\ns = "std::vector"\n"""Scope: ``a::b`` in code."""\n', []),
])
def test_scanner_finds_each_sphinx_ism(tmp_path, source, kinds):
    path = tmp_path / "m.py"
    path.write_text(source, encoding="utf-8")
    found = scan_python(path)
    assert len(found) == len(kinds), found
    for message, kind in zip(found, kinds):
        assert kind in message
