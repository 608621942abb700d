"""`kubetune-operator`: `kopf run` of our handlers, with the watch scope from the environment.

KUBETUNE_WATCH_NAMESPACES (comma-separated, set by the chart's namespaced mode) limits the watch;
without it the operator watches all namespaces. Any other kopf flag passes through, e.g.
`kubetune-operator --standalone --liveness=http://0.0.0.0:8080/healthz --log-format=json`.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys

import kopf.cli

from kubetune.api.contract import ExitCode
from kubetune.operator.settings import SettingsError, watch_namespaces


def priority(identity: str) -> int:
    """A peering priority of its own for each replica (from its pod name, stable for the pod's life).

    kopf pauses every operator that sees a live peer of the same priority, itself included ("If two
    operators run with the same priority, all operators issue a warning and freeze": docs.kopf.dev,
    Peering): replicas sharing the default priority 0 would all stand still. With distinct priorities
    the highest one acts and the others stand by, taking over when its keep-alives stop (kopf's peering
    lifetime, 60 s)."""
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:4], "big") % 1_000_000 + 1


def command(argv: list[str], env: dict[str, str]) -> list[str]:
    args = ["run", "--module", "kubetune.operator.handlers"]
    scoped = any(a in ("-n", "-A", "--all-namespaces") or a.startswith("--namespace") for a in argv)
    if not scoped:
        args += [f"--namespace={n}" for n in watch_namespaces(env)] or ["--all-namespaces"]
    peering = any(a.startswith(("--peering", "-P")) for a in argv) and "--standalone" not in argv
    if peering and not any(a.startswith(("--priority", "-p")) for a in argv):
        identity = env.get("KUBETUNE_POD_NAME") or env.get("HOSTNAME") or socket.gethostname()
        args.append(f"--priority={priority(identity)}")
    return args + argv


def main() -> None:
    try:
        args = command(sys.argv[1:], dict(os.environ))
    except SettingsError as exc:  # before kopf starts: one line and the config exit code, no traceback
        print(f"kubetune-operator: {exc}", file=sys.stderr)
        sys.exit(ExitCode.CONFIG)
    kopf.cli.main(args=args, prog_name="kubetune-operator")


if __name__ == "__main__":
    main()
