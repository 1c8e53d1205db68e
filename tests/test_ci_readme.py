"""CI runs the README's set-up commands verbatim: the extraction finds exactly those two and fails loudly otherwise."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_extraction_finds_the_two_readme_commands():
    mod = _module()
    cmds = mod.setup_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert cmds == [
        'python3 -m venv .venv && .venv/bin/pip install -e ".[train]" && .venv/bin/python examples/reproduce_voc.py',
        'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/python -m pytest',
    ]
    # the script the CI calls prints the same two lines
    proc = subprocess.run([sys.executable, str(ROOT / ".ci" / "readme_commands.py"), str(ROOT / "README.md")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == cmds
    # and .ci/run runs them (and no longer passes its own --out to the main job)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_commands.py" in ci
    assert 'bash -c "${readme_cmds[0]}"' in ci
    assert "reproduce_voc.py --quick" not in ci


_ONE = "```bash\npython3 -m venv .venv && .venv/bin/python examples/reproduce_voc.py\n```\n"
_TWO = "```bash\npython3 -m venv .venv && .venv/bin/python -m pytest\n```\n"


@pytest.mark.parametrize(("text", "match"), [
    ("# x\n\n## Install\n\n" + _ONE + _TWO, "no '## Set up' heading"),
    ("## Set up\n\n" + _ONE + "\n## Features\n\n" + _TWO, "exactly 2 bash blocks .* found 1"),
    ("## Set up\n\n" + _ONE + _TWO + _TWO, "found 3"),
    ("## Set up\n\n" + _ONE + "```bash\ncd x\npytest\n```\n", "one command on one line, found 2 lines"),
    ("## Set up\n\n" + _ONE + "```bash\npytest \\\n  -q\n```\n", "one command on one line"),
    ("## Set up\n\n" + _ONE + "```sh\npytest\n```\n", "must be bash"),
    ("## Set up\n\n" + _ONE + "```bash\npytest\n", "not closed"),
])
def test_extraction_refuses_anything_but_two_one_line_commands(text, match, tmp_path):
    mod = _module()
    with pytest.raises(mod.ReadmeError, match=match):
        mod.setup_commands(text)
    readme = tmp_path / "README.md"
    readme.write_text(text)
    proc = subprocess.run([sys.executable, str(ROOT / ".ci" / "readme_commands.py"), str(readme)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: README")


def test_extraction_ignores_blocks_outside_the_section():
    mod = _module()
    text = "```bash\nrm -rf /\n```\n## Set up\n\ntext\n\n" + _ONE + "more text\n\n" + _TWO + "## Next\n\n" + _TWO
    assert mod.setup_commands(text) == [_ONE.splitlines()[1], _TWO.splitlines()[1]]
