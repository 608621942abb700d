"""Each fact of the contract is spelled once: package code imports it from kubetune.api.contract.

This reads the packages' syntax trees (not their text): a string constant equal to a contract
env name or mount path, or the literal preempted exit code in a comparison or keyword, outside
contract.py fails. Docstrings, help texts and messages that merely mention a name are fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

from kubetune.api import contract

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "api" / "kubetune", ROOT / "trainer" / "kubetune", ROOT / "operator" / "kubetune"]
CONTRACT_FILE = ROOT / "api" / "kubetune" / "api" / "contract.py"

FACTS = {
    value
    for name, value in vars(contract).items()
    if isinstance(value, str)
    and (name.startswith("ENV_") or name.startswith("MOUNT_") or name == "TERMINATION_LOG")
    and name != "ENV_PREFIX"
}


EXIT_CODES = {int(c) for c in contract.ExitCode} - {0, 1}  # 0 and 1 mean "ok" and "error" everywhere


def _offences(path: Path, text: str | None = None) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8") if text is None else text)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FACTS:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
        if isinstance(node, ast.Constant) and node.value == contract.ExitCode.PREEMPTED.value:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: exit code {node.value}")
        if isinstance(node, ast.Dict):  # a table keyed by exit codes (e.g. why a fetch failed) spells them
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and type(k.value) is int]
            if keys and set(keys) <= EXIT_CODES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: exit codes {sorted(keys)} as dict keys")
    return found


def test_contract_facts_are_defined_once():
    offences = [
        line
        for package in PACKAGES
        for path in sorted(package.rglob("*.py"))
        if path != CONTRACT_FILE
        for line in _offences(path)
    ]
    assert not offences, "import these from kubetune.api.contract:\n" + "\n".join(offences)


def test_the_check_sees_a_table_of_literal_exit_codes():
    module = ROOT / "operator" / "kubetune" / "operator" / "probe.py"
    text = 'REASONS = {10: "SourceNotFound", 11: "SourceAccessDenied"}\n'
    assert _offences(module, text) == ["operator/kubetune/operator/probe.py:1: exit codes [10, 11] as dict keys"]


def test_the_check_sees_a_literal():
    # The guard above must be able to fail: a module spelling a contract name is caught.
    assert contract.ENV_NNODES in FACTS and contract.MOUNT_OUTPUT in FACTS
