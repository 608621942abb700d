"""`kubetune-operator`: `kopf run` of our handlers, with the watch scope from the environment.

KUBETUNE_WATCH_NAMESPACES (comma-separated, set by the chart's namespaced mode) limits the watch;
without it the operator watches all namespaces. Any other kopf flag passes through, e.g.
`kubetune-operator --standalone --liveness=http://0.0.0.0:8080/healthz --log-format=json`.
"""

from __future__ import annotations

import os
import sys

import kopf.cli


def command(argv: list[str], env: dict[str, str]) -> list[str]:
    args = ["run", "--module", "kubetune.operator.handlers"]
    scoped = any(a in ("-n", "-A", "--all-namespaces") or a.startswith("--namespace") for a in argv)
    if not scoped:
        namespaces = [n.strip() for n in env.get("KUBETUNE_WATCH_NAMESPACES", "").split(",") if n.strip()]
        args += [f"--namespace={n}" for n in namespaces] or ["--all-namespaces"]
    return args + argv


def main() -> None:
    kopf.cli.main(args=command(sys.argv[1:], dict(os.environ)), prog_name="kubetune-operator")


if __name__ == "__main__":
    main()
