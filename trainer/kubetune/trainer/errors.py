"""Errors the CLI turns into one clear line and a documented exit code (no traceback)."""

from __future__ import annotations

from kubetune.api.contract import ExitCode


class KubetuneError(Exception):
    """An error with a message meant for the user and an exit code."""

    exit_code = ExitCode.UNEXPECTED


class DataError(KubetuneError):
    exit_code = ExitCode.DATA


class ModelError(KubetuneError):
    exit_code = ExitCode.MODEL


class UsageError(KubetuneError):
    exit_code = ExitCode.CONFIG


class Diverged(KubetuneError):
    """The loss became NaN or infinite: every later step would be wasted, so the run stops at once."""

    exit_code = ExitCode.DIVERGED


class Preempted(KubetuneError):
    """SIGTERM arrived; a complete checkpoint was written. Re-running resumes from it."""

    exit_code = ExitCode.PREEMPTED


class SourceMissing(KubetuneError):
    exit_code = ExitCode.SOURCE_MISSING


class SourceDenied(KubetuneError):
    exit_code = ExitCode.SOURCE_DENIED


class TransferFailed(KubetuneError):
    exit_code = ExitCode.TRANSFER


class OutputBusy(KubetuneError):
    """The output directory is locked by another process: transient (a pod that is still terminating holds it)."""

    exit_code = ExitCode.OUTPUT_BUSY
