"""Print the README's set-up commands, so that CI runs exactly what a new user copies.

The "## Set up" section of README.md must hold exactly two fenced ``bash`` blocks of one command each:
the main job, then the tests. Anything else is an error (exit status 1), so README and CI cannot drift
apart silently. Standard library only: it runs before any virtual environment exists.

Usage: ``python3 .ci/readme_commands.py [README.md]`` prints the commands, one per line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SECTION = "## Set up"
EXPECTED = 2
_FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[ \t]*$")


class ReadmeError(ValueError):
    """The README does not hold the expected set-up commands."""


def setup_commands(text: str) -> list[str]:
    """The commands of the fenced ``bash`` blocks under "## Set up" (exactly two, one line each)."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == SECTION)
    except StopIteration:
        raise ReadmeError(f"README has no {SECTION!r} heading") from None
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^#{1,2} ", lines[i])), len(lines))
    blocks: list[tuple[str, list[str]]] = []
    current: tuple[str, list[str]] | None = None
    for line in lines[start + 1:end]:
        m = _FENCE.match(line.strip()) if line.startswith("```") else None
        if current is None and m:
            current = (m.group(1), [])
        elif current is not None and line.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current[1].append(line)
    if current is not None:
        raise ReadmeError(f"README {SECTION!r}: a fenced block is not closed")
    other = [lang or "(none)" for lang, _ in blocks if lang != "bash"]
    if other:
        raise ReadmeError(f"README {SECTION!r}: fenced blocks must be bash, found {other}")
    if len(blocks) != EXPECTED:
        raise ReadmeError(f"README {SECTION!r} must hold exactly {EXPECTED} bash blocks (main job, tests), "
                          f"found {len(blocks)}")
    commands = []
    for i, (_, body) in enumerate(blocks, 1):
        cmd = [line for line in body if line.strip()]
        if len(cmd) != 1 or cmd[0].rstrip().endswith("\\"):
            raise ReadmeError(f"README {SECTION!r}: bash block {i} must hold one command on one line, "
                              f"found {len(cmd)} lines")
        commands.append(cmd[0].strip())
    return commands


def main(argv: list[str]) -> int:
    """Print the commands of README.md (or ``argv[1]``); exit status 1 with one ``error:`` line otherwise."""
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "README.md"
    try:
        commands = setup_commands(path.read_text(encoding="utf-8"))
    except (OSError, ReadmeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(commands))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
