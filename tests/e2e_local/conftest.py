"""The local node's claims, and a line in the test output saying whether it ran pods as containers or as host
processes."""

from __future__ import annotations

from pathlib import Path

import engine
import pytest
from localnode import mode_line

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def local_node_mode(request: pytest.FixtureRequest) -> str:
    line = mode_line()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\n{line}")
    return line


@pytest.fixture
def claims(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three PVCs: the embedded model (exported once), a little data, an empty output volume."""
    data = tmp_path / "claims" / "data"
    data.mkdir(parents=True)
    records = (ROOT / "examples" / "data" / "dates" / "train.jsonl").read_text().splitlines()[:64]
    (data / "train.jsonl").write_text("\n".join(records) + "\n")
    bad = [*records[:5], '{"prompt": "Normalize the date: 1 May 2001"}', *records[5:10]]
    (data / "bad.jsonl").write_text("\n".join(bad) + "\n")
    runs = tmp_path / "claims" / "runs"
    runs.mkdir()
    for p in (tmp_path, tmp_path / "claims", data, runs):
        p.chmod(0o755)
    runs.chmod(0o777)
    return {"models": engine.exported_model(tmp_path_factory.getbasetemp()), "data": data, "runs": runs}
