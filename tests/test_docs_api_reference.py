"""The generated API reference (docs/hooks/api_reference.py): one page per public module, all in the nav.

Fast: reads the package source and the CLI parser, builds no site (CI's docs step and the browser test build it).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import pkgutil
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import wsss_blocks
from wsss_blocks.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "docs" / "hooks" / "api_reference.py"


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("api_reference_hook", HOOK)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["api_reference_hook"] = mod  # dataclasses look the module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pages(hook):
    return hook.public_modules(ROOT)


def _importable_public_modules() -> set[str]:
    """Every module the package holds, found by importing it (independent of the hook's file walk)."""
    names = {wsss_blocks.__name__}
    for info in pkgutil.walk_packages(wsss_blocks.__path__, prefix="wsss_blocks."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.add(info.name)
    return names


def _nav_paths(items: list[Any]) -> list[str]:
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        else:
            (value,) = item.values()
            out.extend(_nav_paths(value) if isinstance(value, list) else [value])
    return out


def test_every_public_module_has_exactly_one_page(pages):
    modules = [p.module for p in pages]
    assert sorted(modules) == sorted(_importable_public_modules())
    assert len(set(modules)) == len(modules)
    assert len({p.path for p in pages}) == len(pages)
    assert "wsss_blocks._checks" not in modules  # private: its names are on the package root's page
    by_module = {p.module: p.path for p in pages}
    assert by_module["wsss_blocks"] == "api/index.md"
    assert by_module["wsss_blocks.cam"] == "api/cam.md"
    assert by_module["wsss_blocks.train"] == "api/train/index.md"
    assert by_module["wsss_blocks.train.methods.baseline"] == "api/train/methods/baseline.md"
    assert by_module["wsss_blocks.crf.dense_crf"] == "api/crf/dense_crf.md"


def test_nav_lists_every_page_once_packages_as_sections(hook, pages):
    nav = hook.api_nav(pages)
    paths = _nav_paths(nav)
    assert sorted(paths) == sorted(p.path for p in pages)
    assert len(set(paths)) == len(paths)
    assert nav[0] == "api/index.md"  # the overview is the section's own page
    train = next(item["train"] for item in nav if isinstance(item, dict) and "train" in item)
    assert train[0] == "api/train/index.md"
    methods = next(item["methods"] for item in train if isinstance(item, dict) and "methods" in item)
    assert methods[0] == "api/train/methods/index.md"
    assert {"baseline": "api/train/methods/baseline.md"} in methods
    assert {"cli": "api/cli.md"} in nav


def test_package_pages_document_own_names_and_link_the_re_exported_ones(hook, pages):
    by_module = {p.module: p for p in pages}

    def members(module):
        return hook.package_members(by_module[module].source, module)

    own, re_exported = members("wsss_blocks.train.methods")
    assert own == ["register_method", "get_method", "available_methods", "KNOWN_METHODS"]
    assert re_exported == {n: "wsss_blocks.train.methods.base" for n in ("CAMMethod", "NoConfig", "PhaseContext")}
    own, re_exported = members("wsss_blocks")
    assert own == ["set_checks", "checks_enabled", "checks"]  # from the private _checks module
    assert re_exported["multiscale_cams"] == "wsss_blocks.cam"
    assert re_exported["DenseCRF"] == "wsss_blocks.crf"  # documented in crf.dense_crf, an alias resolves it
    assert "__version__" not in own + list(re_exported)
    own, re_exported = members("wsss_blocks.data")  # absolute imports (from wsss_blocks.data.voc import ...)
    assert own == []
    assert re_exported["VOCSegmentation"] == "wsss_blocks.data.voc"
    # a function named like its module links to the function, not to the module
    _, re_exported = members("wsss_blocks.crf")
    assert re_exported["dense_crf"] == "wsss_blocks.crf.dense_crf"
    assert "[`dense_crf`][wsss_blocks.crf.dense_crf.dense_crf]" in hook.page_markdown(by_module["wsss_blocks.crf"],
                                                                                     pages)
    _, re_exported = members("wsss_blocks.train")
    assert re_exported["reproduce"] == "wsss_blocks.train.reproduce"

    md = hook.page_markdown(by_module["wsss_blocks.train.methods"], pages)
    assert md.startswith("# `wsss_blocks.train.methods`\n\n::: wsss_blocks.train.methods\n")
    assert "members: [register_method, get_method, available_methods, KNOWN_METHODS]" in md
    assert "[`CAMMethod`][wsss_blocks.train.methods.base.CAMMethod]" in md
    assert "| [`wsss_blocks.train.methods.baseline`](baseline.md) |" in md
    md = hook.page_markdown(by_module["wsss_blocks.crf"], pages)
    assert "members: false" in md  # crf's __init__ defines nothing of its own
    md = hook.page_markdown(by_module["wsss_blocks"], pages)
    assert md.startswith("# API reference\n")
    assert "| [`wsss_blocks.train.methods.base`](train/methods/base.md) |" in md
    assert "members: [set_checks, checks_enabled, checks]" in md
    md = hook.page_markdown(by_module["wsss_blocks.cam"], pages)
    assert md == ("# `wsss_blocks.cam`\n\n::: wsss_blocks.cam\n    options:\n      show_root_heading: false\n"
                  "      heading_level: 2\n")


def test_module_summaries_are_the_first_docstring_line_without_cross_references(hook, tmp_path):
    src = tmp_path / "m.py"
    src.write_text('"""Refine with [`PixelAdaptiveRefine`][] or [`x`][wsss_blocks.refine.x] | fast.\n\nMore."""\n')
    assert hook.summary(src) == "Refine with `PixelAdaptiveRefine` or `x` | fast."
    assert hook._cell(hook.summary(src)).endswith("\\| fast.")
    (tmp_path / "n.py").write_text("x = 1\n")
    assert hook.summary(tmp_path / "n.py") == ""


def _walk(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from _walk(sub)


def test_cli_page_holds_the_help_of_every_subcommand(hook, pages):
    sections = hook.cli_help_sections(width=100)
    progs = [prog for prog, _ in sections]
    expected = [p.prog for p in _walk(build_parser())]
    assert sorted(progs) == sorted(expected)
    assert {"wsss-blocks", "wsss-blocks train-cam", "wsss-blocks weights fetch", "wsss-blocks data prepare voc",
            "wsss-blocks reproduce"} <= set(progs)
    for prog, text in sections:  # exactly what `PROG --help` prints in a 100-column terminal
        parser = next(p for p in _walk(build_parser()) if p.prog == prog)
        parser.formatter_class = functools.partial(argparse.HelpFormatter, width=100)  # type: ignore[assignment]
        assert text == parser.format_help().rstrip() + "\n"
        assert text.startswith(f"usage: {prog}")
        assert max(len(line) for line in text.splitlines()) <= 100
    md = hook.page_markdown(next(p for p in pages if p.module == "wsss_blocks.cli"), pages)
    assert "::: wsss_blocks.cli" in md
    assert "### `wsss-blocks weights fetch`" in md
    assert "--no-progress" in md
    assert md.count("```text\n") == len(sections)


def test_topic_pages_link_the_reference_instead_of_embedding_it(pages):
    paths = {p.path for p in pages}
    for md in sorted((ROOT / "docs").glob("*.md")):
        text = md.read_text(encoding="utf-8")
        assert not re.search(r"^:::", text, re.MULTILINE), f"{md.name} embeds API docs; link the API reference"
        assert not re.search(r"^## API$", text, re.MULTILINE), f"{md.name}: the heading is 'API reference'"
        for target in re.findall(r"\]\((api/[^)#]+)", text):
            assert target in paths, f"{md.name} links {target}, which is no generated page"
    assert not list((ROOT / "docs" / "api").glob("**/*.md"))  # every page under api/ is generated


def test_hook_fills_the_nav_entry_and_refuses_a_config_without_it(hook):
    mkdocs_exceptions = pytest.importorskip("mkdocs.exceptions")
    config = SimpleNamespace(nav=[{"Home": "index.md"}, {"API reference": "api/index.md"}, {"Changelog": "c.md"}])
    hook.on_config(config)
    assert config.nav[0] == {"Home": "index.md"}
    assert config.nav[2] == {"Changelog": "c.md"}
    section = config.nav[1]["API reference"]
    assert section[0] == "api/index.md"
    assert {"cam": "api/cam.md"} in section
    with pytest.raises(mkdocs_exceptions.PluginError, match="no nav entry 'API reference'"):
        hook.on_config(SimpleNamespace(nav=[{"Home": "index.md"}]))


def test_hook_adds_one_generated_file_per_page_and_refuses_a_hand_written_one(pages, tmp_path):
    pytest.importorskip("mkdocs")
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File, Files

    config = MkDocsConfig()
    (tmp_path / "docs").mkdir()
    config.load_dict({"site_name": "t", "docs_dir": str(tmp_path / "docs"), "site_dir": str(tmp_path / "site"),
                      "hooks": [str(HOOK)]})
    errors, _ = config.validate()
    assert errors == []
    files = config.plugins.on_files(Files([]), config=config)  # as mkdocs runs it (names the generator)
    assert sorted(f.src_uri for f in files) == sorted(p.path for p in pages)
    cam = files.get_file_from_path("api/cam.md")
    assert cam.generated_by is not None
    assert cam.content_string.startswith("# `wsss_blocks.cam`\n\n::: wsss_blocks.cam")
    (tmp_path / "docs" / "api").mkdir()
    (tmp_path / "docs" / "api" / "cam.md").write_text("# hand-written\n")
    hand = Files([File("api/cam.md", str(tmp_path / "docs"), str(tmp_path / "site"), use_directory_urls=True)])
    with pytest.raises(PluginError, match=r"api/cam\.md exists"):
        config.plugins.on_files(hand, config=config)


def test_documented_modules_import(pages):
    """A page documents a module users can import (mkdocstrings reads source; this catches a broken module)."""
    for page in pages:
        importlib.import_module(page.module)
