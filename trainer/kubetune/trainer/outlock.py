"""One kubetune process at a time per output directory.

Two runs pointed at one directory would delete each other's checkpoint staging
(`checkpoints.clean_incomplete`), rotate each other's checkpoints and swap
adapters under each other. The second one therefore fails at once, naming the
holder. The lock is an advisory `flock` on `OUTPUT_DIR/.kubetune.lock`: the
kernel drops it when its process dies, so a killed run never leaves the
directory locked. The file is removed on release, so a finished run leaves
the directory as it found it apart from its outputs.

The holder may enter again (`merge` then `export` then the push, all under the
CLI's one hold): a nested hold in the same process is a no-op, so the lock is
never dropped between the steps that write the directory and the push that
reads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from kubetune.trainer.errors import OutputBusy, UsageError

LOCK_FILE = ".kubetune.lock"
_held: dict[Path, int] = {}  # lock file (resolved) -> nesting depth, this process's holds only


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return "unknown"


def _acquire(path: Path, what: str) -> int:
    """An fd holding the lock on `path`; the same inode must still be at `path` once locked (a releaser unlinks it)."""
    while True:
        try:  # never through a link: a planted .kubetune.lock -> elsewhere would be truncated, then unlinked
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if not path.is_symlink():
                raise
            raise UsageError(
                f"output_dir: {path} is a symbolic link, not kubetune's lock file; remove it to use {path.parent}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(
                f"output_dir: {path.parent} is in use by another kubetune process ({_holder(path)}); "
                f"wait for it to finish or give this {what} another output directory"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file between our open and our lock: take the new one


@contextlib.contextmanager
def hold(out: Path, what: str = "run") -> Iterator[None]:
    """Hold the output directory's lock for the duration (creating the directory); fail fast if it is held."""
    out.mkdir(parents=True, exist_ok=True)
    path = out.resolve() / LOCK_FILE  # the directory resolved, not the file: a link there is refused, not followed
    if path in _held:  # this process holds it already (an outer step): keep holding, release with the outer one
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    fd = _acquire(path, what)
    _held[path] = 1
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}, kubetune {what}\n".encode())
        yield
    finally:
        del _held[path]
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
