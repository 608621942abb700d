"""Errors the CLI turns into one clear line and a documented exit code (no traceback)."""

from __future__ import annotations

# Exit codes, documented in README ("Exit codes"). Keep the table there in sync.
EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a bug or an environment failure: the traceback is printed
EXIT_CONFIG = 2  # bad config, flag, env var or usage
EXIT_DATA = 3  # bad data file or record
EXIT_MODEL = 4  # model or adapter cannot be loaded, merged or verified
EXIT_DIVERGED = 5  # training diverged (non-finite loss); stopped early, no adapter or checkpoint written
EXIT_SOURCE_MISSING = 10  # a remote source or push target does not exist: repo, revision, bucket, object, URL
EXIT_SOURCE_DENIED = 11  # credentials missing or refused (401/403, wrong keys, gated repo)
EXIT_TRANSFER = 12  # a download or upload failed midway or the store is unreachable; retrying resumes
EXIT_PREEMPTED = 75  # stopped by SIGTERM (or Ctrl-C) after writing a checkpoint: retry me (EX_TEMPFAIL)


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
