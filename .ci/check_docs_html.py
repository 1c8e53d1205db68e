r"""Check a built documentation site for what a reader would see broken. Builds nothing itself.

Run it on the output of ``mkdocs build``::

    python3 .ci/check_docs_html.py SITE_DIR [--allow-sphinx-roles] [--allow-internal-docs] [--verbose]

Every ``*.html`` file under SITE_DIR is parsed (standard library only) and these are errors:

``math``
    ``\\(``, ``\\[`` or ``$$`` in the text outside a formula element: pymdownx.arithmatex wraps every formula
    it recognises in ``<span class="arithmatex">`` / ``<div class="arithmatex">``, so a delimiter outside one
    is a formula the reader sees as raw LaTeX. Code, ``<pre>``, ``<script>`` and ``<style>`` are not text.
``math-js``
    a page with formula elements that does not load the bundled KaTeX (``katex.min.js``) and the script
    that renders them (``katex.js``): its formulas would stay raw LaTeX.
``sphinx-role``
    a Sphinx role such as ``:func:`name``` (``:class:``, ``:mod:``, ``:meth:``, ``:attr:``, ``:data:``,
    ...): mkdocstrings does not resolve them, the reader sees the literal role.
``bullet``
    a paragraph whose text starts with ``- `` / ``* `` or has a line starting with one: a Markdown list
    that collapsed into running text (typically bullets after an indented continuation paragraph).
``internal-doc``
    a mention of a document readers cannot open (``spec_*.md``, ``protocol_and_sota``, ``DESIGN.md``,
    ``shared/specs``, "spec §..."), in the text or in a link.
``external``
    a script, stylesheet or image loaded from another site, or mkdocs-material's repository widget (it fetches
    the repository's facts from api.github.com): the documentation must work offline.

``--allow-sphinx-roles`` and ``--allow-internal-docs`` report those two kinds as a count per page without
failing. Exit status: 0 clean (or only allowed findings), 1 errors found, 2 bad usage (no site there).
"""

from __future__ import annotations

import argparse
import bisect
import re
import sys
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

KINDS = ("math", "math-js", "sphinx-role", "bullet", "internal-doc", "external")

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_NOT_TEXT = {"script", "style"}
_CODE = {"code", "pre", "kbd", "samp"}
_MATH_DELIMS = re.compile(r"\\\(|\\\[|\$\$")
_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const|ref|term|doc|any):`(?=[^`\s])")
_INTERNAL = re.compile(r"spec_[A-Za-z0-9_*]*\.md|protocol_and_sota|DESIGN\.md|shared/specs|\bspecs?(?:'s)?\s*§")
_BULLET_START = re.compile(r"^\s*[-*] \S")
_BULLET_LINE = re.compile(r"\n\s*[-*] \S")
_EXTERNAL_URL = re.compile(r"^(?:https?:)?//", re.IGNORECASE)


@dataclass(frozen=True)
class Finding:
    """One problem: the file (relative to the site), its line in the HTML, the kind and what was found."""

    path: str
    line: int
    kind: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}: {self.excerpt}"


def _excerpt(text: str, start: int, end: int, width: int = 50) -> str:
    s = text[max(0, start - width):end + width]
    return " ".join(s.split())


class _PageParser(HTMLParser):
    """Collects the text streams the checks need, with the HTML line of every piece."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # (tag, is an arithmatex element)
        self.math_depth = 0
        self.code_depth = 0
        self.hidden_depth = 0
        # prose: text outside formulas, code and scripts (math delimiters are looked for here)
        self.prose: list[tuple[int, str]] = []
        # flat: every visible text with a backtick where inline code opens/closes (Sphinx roles, internal docs)
        self.flat_parts: list[str] = []
        self.flat_starts: list[int] = []
        self.flat_lines: list[int] = []
        self.flat_len = 0
        self.paragraphs: list[tuple[int, str]] = []
        self._para: list[str] | None = None
        self._para_line = 0
        self.has_math = False
        self.scripts: list[str] = []
        self.attr_urls: list[tuple[int, str, str]] = []  # (line, attribute, value)
        self.external: list[tuple[int, str]] = []

    # -- helpers
    def _flat(self, text: str) -> None:
        self.flat_starts.append(self.flat_len)
        self.flat_lines.append(self.getpos()[0])
        self.flat_parts.append(text)
        self.flat_len += len(text)

    def flat_line(self, offset: int) -> int:
        return self.flat_lines[max(0, bisect.bisect_right(self.flat_starts, offset) - 1)]

    # -- HTMLParser callbacks
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        line = self.getpos()[0]
        for key in ("href", "src"):
            if a.get(key):
                self.attr_urls.append((line, key, a[key]))
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])
            if _EXTERNAL_URL.match(a["src"]):
                self.external.append((line, f"<script src={a['src']}>"))
        if tag == "link" and "stylesheet" in a.get("rel", "").split() and _EXTERNAL_URL.match(a.get("href", "")):
            self.external.append((line, f"<link rel=stylesheet href={a['href']}>"))
        if tag == "img" and _EXTERNAL_URL.match(a.get("src", "")):
            self.external.append((line, f"<img src={a['src']}>"))
        if a.get("data-md-component") == "source":  # mkdocs-material then fetches the repository's facts
            self.external.append((line, "the repository facts (data-md-component=\"source\": api.github.com)"))
        if tag in _VOID:
            return
        is_math = "arithmatex" in a.get("class", "").split()
        if is_math:
            self.has_math = True
            self.math_depth += 1
        if tag in _CODE:
            if self.code_depth == 0 and not self.hidden_depth:
                if tag == "code":
                    self._flat("`")
                if self._para is not None:
                    self._para.append("`…`")  # a dash inside code (a formula, a signature) is no bullet
            self.code_depth += 1
        if tag in _NOT_TEXT:
            self.hidden_depth += 1
        if tag == "p" and self._para is None:
            self._para, self._para_line = [], line
        self.stack.append((tag, is_math))

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID or all(t != tag for t, _ in self.stack):
            return  # a stray end tag: ignore rather than unbalance the stack
        while self.stack:
            t, is_math = self.stack.pop()
            if is_math:
                self.math_depth -= 1
            if t in _CODE:
                self.code_depth -= 1
                if t == "code" and self.code_depth == 0 and not self.hidden_depth:
                    self._flat("`")
            if t in _NOT_TEXT:
                self.hidden_depth -= 1
            if t == "p" and self._para is not None and not any(x == "p" for x, _ in self.stack):
                self.paragraphs.append((self._para_line, "".join(self._para)))
                self._para = None
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.hidden_depth:
            return
        self._flat(data)
        if self._para is not None and not self.math_depth and not self.code_depth:
            self._para.append(data)
        if not self.math_depth and not self.code_depth:
            self.prose.append((self.getpos()[0], data))


def check_page(html: str, rel: str) -> list[Finding]:
    """All findings of one HTML page (``rel`` is its path as reported)."""
    p = _PageParser()
    p.feed(html)
    p.close()
    out: list[Finding] = []
    for line, text in p.prose:
        for m in _MATH_DELIMS.finditer(text):
            out.append(Finding(rel, line + text.count("\n", 0, m.start()), "math",
                               f"raw formula delimiter {m.group()!r} outside a formula element: "
                               f"{_excerpt(text, m.start(), m.end())!r}"))
    if p.has_math:
        names = [s.rsplit("/", 1)[-1].split("?", 1)[0] for s in p.scripts]
        missing = [n for n in ("katex.min.js", "katex.js") if n not in names]
        if missing:
            out.append(Finding(rel, 1, "math-js", f"the page has formulas but does not load {', '.join(missing)}"))
    flat = "".join(p.flat_parts)
    for m in _ROLE.finditer(flat):
        out.append(Finding(rel, p.flat_line(m.start()), "sphinx-role",
                           f"{_excerpt(flat, m.start(), m.end(), 30)!r}"))
    for m in _INTERNAL.finditer(flat):
        out.append(Finding(rel, p.flat_line(m.start()), "internal-doc",
                           f"{_excerpt(flat, m.start(), m.end(), 40)!r}"))
    for line, key, value in p.attr_urls:
        if _INTERNAL.search(value):
            out.append(Finding(rel, line, "internal-doc", f"{key}={value!r}"))
    for line, text in p.paragraphs:
        m = _BULLET_START.search(text) or _BULLET_LINE.search(text)
        if m:
            at = line + text.count("\n", 0, m.start() + 1)
            out.append(Finding(rel, at, "bullet", f"a list collapsed into a paragraph: "
                                                  f"{_excerpt(text, m.start(), m.end(), 40)!r}"))
    for line, what in p.external:
        out.append(Finding(rel, line, "external", f"loads {what} from another site"))
    return sorted(out, key=lambda f: (f.line, f.kind))


def check_site(site: Path) -> list[Finding]:
    """Findings of every ``*.html`` under ``site``, in path order."""
    out: list[Finding] = []
    for path in sorted(site.rglob("*.html")):
        out.extend(check_page(path.read_text(encoding="utf-8"), path.relative_to(site).as_posix()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("site", type=Path, help="the folder mkdocs built (holds index.html)")
    ap.add_argument("--allow-sphinx-roles", action="store_true",
                    help="report Sphinx roles as counts per page without failing")
    ap.add_argument("--allow-internal-docs", action="store_true",
                    help="report mentions of internal documents as counts per page without failing")
    ap.add_argument("--verbose", action="store_true", help="list the allowed findings one by one too")
    args = ap.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"error: {args.site} holds no index.html; build the site first (mkdocs build --site-dir ...)",
              file=sys.stderr)
        return 2
    allowed = {k for k, flag in (("sphinx-role", args.allow_sphinx_roles),
                                 ("internal-doc", args.allow_internal_docs)) if flag}
    findings = check_site(args.site)
    errors = [f for f in findings if f.kind not in allowed]
    tolerated = [f for f in findings if f.kind in allowed]
    for f in errors:
        print(f)
    if tolerated:
        per_page = Counter((f.kind, f.path) for f in tolerated)
        print(f"allowed for now ({', '.join(sorted(allowed))}): {len(tolerated)} finding(s)")
        for (kind, path), n in sorted(per_page.items()):
            print(f"  {kind}: {n} in {path}")
        if args.verbose:
            for f in tolerated:
                print(f"  {f}")
    pages = len(list(args.site.rglob("*.html")))
    by_kind = Counter(f.kind for f in errors)
    summary = ", ".join(f"{by_kind[k]} {k}" for k in KINDS if by_kind[k]) or "no errors"
    print(f"checked {pages} page(s) in {args.site}: {summary}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
