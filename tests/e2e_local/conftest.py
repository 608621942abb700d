"""Say, in the test output, whether the local node ran pods as containers or as host processes."""

from __future__ import annotations

import pytest
from localnode import mode_line


@pytest.fixture(scope="session", autouse=True)
def local_node_mode(request: pytest.FixtureRequest) -> str:
    line = mode_line()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\n{line}")
    return line
