"""The "Container contract" table (docs/user/containers.md) and the code agree: nothing read is undocumented,
nothing unread documented."""

from __future__ import annotations

import re
from pathlib import Path

from kubetune.api import contract
from kubetune.api.sources import ENV_ALIASES, RESERVED_ENV

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "user" / "containers.md"
# The variable name in environ.get("X"), environ["X"], environ.setdefault("X"), getenv("X"), "X" in environ,
# env.setdefault("X") (the launcher's copy of the environment), and constants named *_ENV = "X".
ACCESS = [
    re.compile(r"""(?:environ|env)(?:\.get|\.setdefault)?\(?\[?\s*["']([A-Z][A-Z0-9_]+)["']"""),
    re.compile(r"""getenv\(\s*["']([A-Z][A-Z0-9_]+)["']"""),
    re.compile(r"""["']([A-Z][A-Z0-9_]+)["']\s+(?:not\s+)?in\s+(?:os\.)?environ"""),
    re.compile(r"""^[A-Z_]+_ENV\s*=\s*["']([A-Z][A-Z0-9_]+)["']"""),
    re.compile(r"""\(environ,\s*["']([A-Z][A-Z0-9_]+)["']"""),  # launch._int(environ, "X", ...)
]


def read_by_code() -> set[str]:
    # The contract's names: code reads them through kubetune.api.contract (tests/api/test_contract_single_source.py).
    names: set[str] = set(ENV_ALIASES) | set(RESERVED_ENV)
    names |= {v for k, v in vars(contract).items() if k.startswith("ENV_") and k != "ENV_PREFIX"}
    for package in ("api", "trainer"):
        for path in (ROOT / package / "kubetune").rglob("*.py"):
            for line in path.read_text().splitlines():
                for pattern in ACCESS:
                    names |= set(pattern.findall(line))
    shell = (ROOT / "docker" / "entrypoint.sh").read_text()
    names |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", shell)) | set(re.findall(r"export ([A-Z][A-Z0-9_]+)", shell))
    return names


def documented() -> set[str]:
    section = PAGE.read_text().split("## Container contract", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names = set()
    for row in rows:
        first_cell = row.split("|")[1]
        names |= {n for n in re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell)}
    return names


def test_table_lists_exactly_what_the_code_reads():
    code, docs = read_by_code(), documented()
    assert code - docs == set(), f"read by the code but missing from the contract table: {sorted(code - docs)}"
    assert docs - code == set(), f"documented but read by nothing: {sorted(docs - code)}"


def test_the_config_pattern_row_is_documented():
    section = PAGE.read_text().split("## Container contract", 1)[1]
    assert "`KUBETUNE_<SECTION>__<KEY>`" in section
