"""Errors the CLI turns into one clear line and a documented exit code (no traceback)."""

from __future__ import annotations

from kubetune.api.contract import ExitCode

# The exit codes are the contract's (README "Exit codes"); these names are what the trainer raises with.
EXIT_OK = ExitCode.OK
EXIT_UNEXPECTED = ExitCode.UNEXPECTED
EXIT_CONFIG = ExitCode.CONFIG
EXIT_DATA = ExitCode.DATA
EXIT_MODEL = ExitCode.MODEL
EXIT_DIVERGED = ExitCode.DIVERGED
EXIT_SOURCE_MISSING = ExitCode.SOURCE_MISSING
EXIT_SOURCE_DENIED = ExitCode.SOURCE_DENIED
EXIT_TRANSFER = ExitCode.TRANSFER
EXIT_PREEMPTED = ExitCode.PREEMPTED


class KubetuneError(Exception):
    """An error with a message meant for the user and an exit code."""

    exit_code = EXIT_UNEXPECTED


class DataError(KubetuneError):
    exit_code = EXIT_DATA


class ModelError(KubetuneError):
    exit_code = EXIT_MODEL


class UsageError(KubetuneError):
    exit_code = EXIT_CONFIG


class Diverged(KubetuneError):
    """The loss became NaN or infinite: every later step would be wasted, so the run stops at once."""

    exit_code = EXIT_DIVERGED


class Preempted(KubetuneError):
    """SIGTERM arrived; a complete checkpoint was written. Re-running resumes from it."""

    exit_code = EXIT_PREEMPTED


class SourceMissing(KubetuneError):
    exit_code = EXIT_SOURCE_MISSING


class SourceDenied(KubetuneError):
    exit_code = EXIT_SOURCE_DENIED


class TransferFailed(KubetuneError):
    exit_code = EXIT_TRANSFER
