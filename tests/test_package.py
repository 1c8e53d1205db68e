"""Package-level tests: import hygiene, version, lazy optional dependencies, runnable docstring examples."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wsss_blocks
from wsss_blocks._checks import require

HEAVY = ("torchvision", "timm", "pydensecrf", "scipy", "PIL", "yaml", "matplotlib", "tqdm")


def test_version_comes_from_pyproject():
    """pyproject.toml is the single source of the version; the package reads it from the installed metadata."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"$', text, re.M)
    assert declared is not None
    assert wsss_blocks.__version__ == declared.group(1)
    source = (Path(wsss_blocks.__file__).parent / "__init__.py").read_text()
    assert declared.group(1) not in source


@pytest.mark.slow
def test_import_does_not_pull_optional_dependencies():
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import wsss_blocks, wsss_blocks.models, wsss_blocks.data, wsss_blocks.crf\n"
        "import wsss_blocks as wb\n"
        f"heavy = {HEAVY!r}\n"
        "print(','.join(m for m in heavy if m in sys.modules and m not in before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import wsss_blocks pulled in: {out.stdout.strip()}"


def test_public_api_is_exported():
    for name in wsss_blocks.__all__:
        assert hasattr(wsss_blocks, name), name


def test_require_names_the_extra():
    with pytest.raises(ImportError, match=r'pip install "wsss-blocks\[crf\]"'):
        require("definitely_not_a_module_xyz", "crf", "dense CRF")
    assert require("math", "core").sqrt(4.0) == 2.0


def _modules():
    for info in pkgutil.walk_packages(wsss_blocks.__path__, "wsss_blocks."):
        if info.name.rsplit(".", 1)[-1].startswith("__"):
            continue
        yield info.name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_docstring_examples_run(name):
    """Every docstring example in the package is executed (the docs promise runnable examples)."""
    if name.endswith(("cli", "__main__")):
        pytest.skip("entry point")
    mod = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    torch.manual_seed(0)
    for test in finder.find(mod, name, globs={"torch": torch, **vars(mod)}):
        runner.run(test)
    res = runner.summarize(verbose=False)
    assert res.failed == 0, f"{res.failed} docstring example(s) failed in {name}"
