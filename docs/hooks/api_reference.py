"""mkdocs hook: the API reference, one page per public module of ``wsss_blocks``, generated at build time.

mkdocs.yml registers this file under ``hooks:``. While the site builds it

- finds every public module: each ``.py`` file and package under ``wsss_blocks/`` whose dotted name has no
  part starting with ``_`` (``wsss_blocks._checks`` is private; its public names are documented on the
  package root's page, where they are exported);
- adds one Markdown page per module under ``api/`` (``wsss_blocks.crf.dense_crf`` -> ``api/crf/dense_crf.md``,
  a package -> ``api/crf/index.md``, the package root -> ``api/index.md``), holding the mkdocstrings
  directive ``::: wsss_blocks.crf.dense_crf``;
- fills the nav entry ``API reference`` of mkdocs.yml with those pages (one nav section per package).

A package page documents what the package itself defines (or exports from a private module) and links the
names it re-exports to the page of the module that defines them, so every object is rendered exactly once.
The ``wsss_blocks.cli`` page also carries the ``--help`` text of every subcommand, taken from
``wsss_blocks.cli.build_parser()`` while the site builds, so it cannot drift from the code.

Adding a module to the package adds its page; nothing here needs editing. Module summaries and package
members are read from the source with ``ast`` (nothing is imported except ``wsss_blocks.cli`` for the help).
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import posixpath
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "wsss_blocks"
SECTION = "API reference"
ROOT = Path(__file__).resolve().parents[2]
HELP_WIDTH = 100  # columns of the captured --help text (argparse otherwise follows the terminal)


@dataclass(frozen=True)
class ApiPage:
    """One generated page: the module it documents and where it lives in the docs."""

    module: str  # dotted name, e.g. "wsss_blocks.crf.dense_crf"
    path: str  # docs-relative Markdown path, e.g. "api/crf/dense_crf.md"
    source: Path  # the module's file (a package's __init__.py)
    is_package: bool

    @property
    def parent(self) -> str:
        return self.module.rpartition(".")[0]

    @property
    def short_name(self) -> str:
        return self.module.rpartition(".")[2]


def _page_path(module: str, is_package: bool) -> str:
    parts = module.split(".")[1:]
    return "/".join(["api", *parts, "index.md"] if is_package else ["api", *parts[:-1], parts[-1] + ".md"])


def public_modules(root: Path = ROOT) -> list[ApiPage]:
    """Every public module of the package under ``root``: packages first, then their modules, by name."""
    pkg_dir = root / PACKAGE
    pages: list[ApiPage] = []
    for path in sorted(pkg_dir.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        is_package = rel[-1] == "__init__"
        parts = rel[:-1] if is_package else rel
        if any(p.startswith("_") for p in parts):
            continue
        if any(not (root.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue  # a script in a data folder, not an importable module
        module = ".".join(parts)
        pages.append(ApiPage(module, _page_path(module, is_package), path, is_package))

    def key(p: ApiPage) -> tuple[str, int, str]:
        # a package sorts with its modules, right before them: (package, 0, "") then (package, 1, name)
        return (p.module, 0, "") if p.is_package else (p.parent, 1, p.short_name)

    return sorted(pages, key=key)


def _tree(source: Path) -> ast.Module:
    return ast.parse(source.read_text(encoding="utf-8"), filename=str(source))


_XREF = re.compile(r"\[(`[^`\]]+`)\]\[[^\]]*\]")


def summary(source: Path) -> str:
    """The first line of a module's docstring (empty if it has none), cross-references as plain code.

    A docstring's scoped cross-reference (``[`name`][]``) resolves only inside the docstring's own scope,
    not in the module tables this line goes to.
    """
    doc = ast.get_docstring(_tree(source)) or ""
    return _XREF.sub(r"\1", doc.strip().split("\n", 1)[0].strip())


def _dunder_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return [str(v) for v in ast.literal_eval(value)]
    return None


def _import_origins(tree: ast.Module, package: str) -> dict[str, str]:
    """Each name a package's ``__init__.py`` imports from inside the package, mapped to its source module."""
    origins: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level > 0:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.module else base
        elif (node.module or "").startswith(f"{PACKAGE}."):
            module = node.module or ""
        else:
            continue
        for alias in node.names:
            origins[alias.asname or alias.name] = module
    return origins


def package_members(source: Path, package: str) -> tuple[list[str], dict[str, str]]:
    """A package's own public names (``__all__`` order) and its re-exported ones with their source modules.

    Own: defined in the ``__init__.py`` or imported from a private module (documented on the package's page).
    Re-exported: imported from a public module of the package (documented on that module's page); the value is
    that module, so a link goes to the name's definition even where a submodule has the same name
    (``wsss_blocks.crf.dense_crf``, the module, and ``wsss_blocks.crf.dense_crf.dense_crf``, the function).
    """
    tree = _tree(source)
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
    origins = _import_origins(tree, package)
    from_private = {n for n, m in origins.items() if any(part.startswith("_") for part in m.split("."))}
    exported = _dunder_all(tree)
    if exported is None:  # no __all__: every public name the __init__.py defines or imports, in source order
        exported = [n for n in dict.fromkeys([*origins, *sorted(defined)]) if not n.startswith("_")]
    own = [n for n in exported if (n in defined or n in from_private) and not n.startswith("__")]
    re_exported = {n: origins[n] for n in exported if n in origins and n not in own}
    return own, re_exported


def _directive(module: str, members: list[str] | None = None, heading_level: int = 2) -> str:
    lines = [f"::: {module}", "    options:", "      show_root_heading: false", f"      heading_level: {heading_level}"]
    if members is not None:
        lines.append("      members: " + ("[" + ", ".join(members) + "]" if members else "false"))
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _link(page: ApiPage, frm: ApiPage) -> str:
    """A relative Markdown link from ``frm``'s page to ``page``."""
    return posixpath.relpath(page.path, posixpath.dirname(frm.path))


def _module_table(pages: list[ApiPage], frm: ApiPage) -> str:
    rows = ["| module | what it holds |", "|---|---|"]
    rows += [f"| [`{p.module}`]({_link(p, frm)}) | {_cell(summary(p.source))} |" for p in pages]
    return "\n".join(rows) + "\n"


def _walk_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    seen: set[int] = set()
    todo = [parser]
    while todo:
        p = todo.pop(0)
        if id(p) in seen:
            continue
        seen.add(id(p))
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())


def cli_help_sections(width: int = HELP_WIDTH) -> list[tuple[str, str]]:
    """``(command line, --help text)`` of the ``wsss-blocks`` command and every subcommand, in parser order."""
    cli = importlib.import_module(f"{PACKAGE}.cli")
    out = []
    for p in _walk_parsers(cli.build_parser()):
        p.formatter_class = functools.partial(argparse.HelpFormatter, width=width)  # type: ignore[assignment]
        if hasattr(p, "color"):
            p.color = False  # no terminal escapes in the page (Python 3.14's coloured help)
        out.append((p.prog, p.format_help().rstrip() + "\n"))
    return out


def cli_markdown(width: int = HELP_WIDTH) -> str:
    """The "Command-line help" part of the ``wsss_blocks.cli`` page."""
    parts = ["## Command-line help\n",
             "What `wsss-blocks ... --help` prints for the command and each subcommand.\n"]
    for prog, text in cli_help_sections(width):
        parts.append(f"### `{prog}`\n\n```text\n{text}```\n")
    return "\n".join(parts)


def page_markdown(page: ApiPage, pages: list[ApiPage]) -> str:
    """The Markdown of one generated page."""
    if page.module == PACKAGE:
        modules = [p for p in pages if p is not page]
        own, _ = package_members(page.source, page.module)
        return (f"# {SECTION}\n\n"
                f"One page per public module of `{PACKAGE}`, generated from the docstrings. The blocks are also "
                f"importable from the package root (`from {PACKAGE} import multiscale_cams`); the reference "
                f"trainer lives in `{PACKAGE}.train` and the `wsss-blocks` command in `{PACKAGE}.cli`.\n\n"
                f"## Modules\n\n{_module_table(modules, page)}\n"
                f"## Package root: `{PACKAGE}`\n\n{_directive(PACKAGE, own, heading_level=3)}")
    text = f"# `{page.module}`\n\n"
    if page.is_package:
        own, re_exported = package_members(page.source, page.module)
        text += _directive(page.module, own)
        children = [p for p in pages if p.parent == page.module]
        if re_exported:
            links = ", ".join(f"[`{n}`][{module}.{n}]" for n, module in re_exported.items())
            text += (f"\n## Re-exported names\n\nImportable from `{page.module}`, documented with their modules: "
                     f"{links}.\n")
        if children:
            text += f"\n## Modules\n\n{_module_table(children, page)}"
        return text
    text += _directive(page.module)
    if page.module == f"{PACKAGE}.cli":
        text += "\n" + cli_markdown()
    return text


def api_nav(pages: list[ApiPage]) -> list[Any]:
    """The nav of the section: the overview, then each module under its package (packages as sections)."""
    def children(parent: str) -> list[Any]:
        items: list[Any] = []
        for p in pages:
            if p.parent != parent:
                continue
            if p.is_package:
                items.append({p.short_name: [p.path, *children(p.module)]})
            else:
                items.append({p.short_name: p.path})
        return items

    root = next(p for p in pages if p.module == PACKAGE)
    return [root.path, *children(PACKAGE)]


# ---- mkdocs event handlers ------------------------------------------------------------------------------------

def _pages() -> list[ApiPage]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # document (and import the CLI of) this checkout
    return public_modules(ROOT)


def on_config(config: Any) -> Any:
    """Replace the nav entry ``API reference`` with the generated pages."""
    nav = config.nav or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and SECTION in item:
            nav[i] = {SECTION: api_nav(_pages())}
            return config
    from mkdocs.exceptions import PluginError

    raise PluginError(f"mkdocs.yml has no nav entry {SECTION!r} for the generated API reference")


def on_files(files: Any, config: Any) -> Any:
    """Add one generated page per public module (an existing file of the same name is an error)."""
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File

    pages = _pages()
    for page in pages:
        if files.get_file_from_path(page.path) is not None:
            raise PluginError(f"docs/{page.path} exists, but that page is generated by {Path(__file__).name}")
        files.append(File.generated(config, page.path, content=page_markdown(page, pages)))
    return files
