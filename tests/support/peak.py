"""Peak memory of one real `kubetune` process, measured by the process itself.

getrusage/wait4's ru_maxrss will not do for a child of a big process: Linux keeps the pre-exec high-water
mark (the forking parent's, copied at fork) in the child's maxrss, so a test run after others have loaded
models reports the parent's peak, not the child's. VmHWM in /proc/self/status belongs to the memory map exec
gave the child, so the wrapper below prints it at exit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

MARK = "kubetune-peak-kib "
WRAPPER = f"""
import atexit, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write({MARK!r} + line.split()[1] + "\\n")
atexit.register(_peak)
sys.argv = ["kubetune", *sys.argv[1:]]
from kubetune.trainer.cli import main
main()
"""


def command(args: list[str], prefix: tuple[str, ...] = ()) -> list[str]:
    """`kubetune ARGS` run through the wrapper (after `prefix`, e.g. nice), with this interpreter."""
    return [*prefix, sys.executable, "-c", WRAPPER, *args]


def peak_bytes(stderr: str) -> int | None:
    peaks = [int(line[len(MARK) :]) for line in stderr.splitlines() if line.startswith(MARK)]
    return peaks[-1] * 1024 if peaks else None


def run(args: list[str], env: dict[str, str], stdout: Any = subprocess.DEVNULL, cwd: Path | None = None):
    """(completed process, peak RSS in bytes or None) of `kubetune ARGS`."""
    proc = subprocess.run(command(args), stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=cwd, timeout=1800)
    stderr = proc.stderr.decode()
    return proc, stderr, peak_bytes(stderr)
