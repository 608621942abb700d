"""The docs hold together: README is short and starts with its two commands, every relative link and anchor
resolves, every page under docs/ is reachable from README, and no user page carries a dated run log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from kubetune.api.contract import ExitCode

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
# Run records (dates, commits, pass counts) belong in the contributors' pages; every other page is a user's.
CONTRIBUTORS = {ROOT / "docs" / "architecture.md", ROOT / "docs" / "benchmarks.md"}
USER_PAGES = [README, *(p for p in PAGES if p not in CONTRIBUTORS and "contributors" not in p.parts)]
MD = MarkdownIt("commonmark").enable("table")


def tokens(path: Path) -> list:
    return MD.parse(path.read_text())


def links(path: Path) -> list[str]:
    """Every link target outside code, in order."""
    found = []
    for token in tokens(path):
        for child in token.children or []:
            if child.type == "link_open":
                found.append(child.attrs["href"])
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    toks = tokens(path)
    return {slug(toks[i + 1].content.replace("`", "")) for i, t in enumerate(toks) if t.type == "heading_open"}


def local_targets(path: Path) -> list[tuple[Path, str]]:
    targets = []
    for href in links(path):
        if re.match(r"^[a-z]+:", href):
            continue  # https:, mailto:
        file, _, anchor = href.partition("#")
        targets.append(((path.parent / file).resolve() if file else path, anchor))
    return targets


def test_readme_is_short_and_starts_with_make_demo_and_make_test():
    text = README.read_text()
    assert len(text.encode()) <= 10 * 1024, f"README.md is {len(text.encode())} bytes (limit 10 KB)"
    first_code = next(t for t in tokens(README) if t.type == "fence")
    commands = [line.split("#")[0].split() for line in first_code.content.splitlines()]
    assert commands == [["make", "demo"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"`make {target}` is not a Makefile target"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path):
    broken = []
    for target, anchor in local_targets(page):
        if not target.exists():
            broken.append(f"{target.relative_to(ROOT)}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{target.relative_to(ROOT)}#{anchor}: no such heading")
    assert not broken, broken


def test_every_docs_page_is_reachable_from_readme():
    seen, todo = {README.resolve()}, [README.resolve()]
    while todo:
        page = todo.pop()
        for target, _ in local_targets(page):
            if target.suffix == ".md" and target.exists() and target not in seen:
                seen.add(target)
                todo.append(target)
    unreachable = [str(p.relative_to(ROOT)) for p in PAGES if p.resolve() not in seen]
    assert not unreachable, unreachable


DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
COMMIT = re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
PASS_COUNT = re.compile(r"\b\d+ passed\b")


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_pages_carry_no_dated_run_logs(page: Path):
    text = page.read_text()
    found = DATE.findall(text) + COMMIT.findall(text) + PASS_COUNT.findall(text)
    assert not found, f"{page.relative_to(ROOT)}: {found} (run records go to docs/contributors/runs.md)"


def test_the_exit_codes_page_lists_exactly_the_contracts_codes():
    page = ROOT / "docs" / "user" / "exit-codes.md"
    rows = re.findall(r"^\| (\d+) \|", page.read_text(), re.M)
    assert sorted(int(code) for code in rows) == sorted(int(code) for code in ExitCode)
