"""Writing generated files, or checking that they are current: shared by gen_chart.py and gen_docs.py."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(expected: dict[Path, str], target: str, argv: list[str], root: Path) -> int:
    """Write every stale file, or with `--check` only name them and return 1 (the staleness tests and CI)."""
    check = "--check" in argv
    stale = [path for path, text in expected.items() if not (path.exists() and path.read_text() == text)]
    if check:
        if stale:
            names = ", ".join(str(p.relative_to(root)) for p in stale)
            print(f"stale: {names} (run make {target})", file=sys.stderr)
            return 1
        return 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(expected[path])
        print(f"wrote {path.relative_to(root)}")
    return 0
