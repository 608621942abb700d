"""The contract between the trainer and whatever runs it: a shell, a container, the operator.

Every fact both sides rely on lives here once: exit codes, the environment
variables and mount paths of the container contract, and the events the
trainer writes (progress lines on stdout and in metrics.jsonl, the summary or
error in the termination log). The trainer builds events from these models
and the operator parses them with the same models, so a renamed field breaks
a test instead of silently blanking a FinetuneJob's status.
"""

from __future__ import annotations

import json
import math
from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator


class ExitCode(IntEnum):
    """The trainer's exit codes (docs/user/exit-codes.md)."""

    OK = 0
    UNEXPECTED = 1  # a bug or an environment failure: the traceback is printed
    CONFIG = 2  # bad config, flag, environment variable or usage
    DATA = 3  # bad data file or record
    MODEL = 4  # a model or adapter that cannot be loaded, merged or verified
    DIVERGED = 5  # the loss became NaN/inf: retrying the same run would diverge again
    INSUFFICIENT_MEMORY = 6  # the plan's peak memory is above what the process can have (docs/plan.md)
    SOURCE_MISSING = 10  # a remote source or push target does not exist: repo, revision, bucket, object, URL
    SOURCE_DENIED = 11  # credentials missing or refused (401/403, wrong keys, gated repo)
    TRANSFER = 12  # a download or upload failed midway or the store is unreachable; retrying resumes
    OUTPUT_BUSY = 13  # another kubetune process holds the output directory's lock: retry once it has finished
    PREEMPTED = 75  # SIGTERM after a complete checkpoint: run the same command again (EX_TEMPFAIL)


# Exit codes that mean "the same command will fail the same way": a Job must not retry them.
PERMANENT_EXIT_CODES = frozenset(
    {
        ExitCode.CONFIG,
        ExitCode.DATA,
        ExitCode.MODEL,
        ExitCode.DIVERGED,
        ExitCode.INSUFFICIENT_MEMORY,
        ExitCode.SOURCE_MISSING,
        ExitCode.SOURCE_DENIED,
    }
)

# --- Environment of the container contract (docs/user/containers.md) -------------------------
ENV_PREFIX = "KUBETUNE_"
ENV_CONFIG = "KUBETUNE_CONFIG"  # a YAML config file
ENV_CACHE_DIR = "KUBETUNE_CACHE_DIR"  # where the builtin model's export and downloads are cached
ENV_PROGRESS = "KUBETUNE_PROGRESS"  # json | bar | auto
ENV_LOG_LEVEL = "KUBETUNE_LOG_LEVEL"
ENV_CONTAINER = "KUBETUNE_CONTAINER"  # "1" in the images: turns on the mount defaults
ENV_MOUNT_ROOT = "KUBETUNE_MOUNT_ROOT"  # where the mounts are looked for (tests stand temp dirs in)
ENV_TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"
ENV_NPROC_PER_NODE = "KUBETUNE_NPROC_PER_NODE"  # processes in this pod/container (`auto`: per NUMA node)
ENV_NNODES = "KUBETUNE_NNODES"  # pods/machines in the job
ENV_NODE_RANK = "KUBETUNE_NODE_RANK"  # this node's index
ENV_JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"  # set by an Indexed Job: the node rank when the above is unset
ENV_MASTER_ADDR = "MASTER_ADDR"  # node 0's address (static rendezvous)
ENV_MASTER_PORT = "MASTER_PORT"
ENV_HF_TOKEN_FILE = "HF_TOKEN_FILE"  # a mounted secret holding a Hugging Face token
ENV_HTTP_TOKEN_FILE = "KUBETUNE_HTTP_TOKEN_FILE"  # a mounted secret: the token for private https sources
ENV_SOURCES_LOCK = "KUBETUNE_SOURCES_LOCK"  # names the lock `kubetune fetch` wrote; workers then read offline

# KUBETUNE_* variables that configure the process, not the run: never read as config keys.
PROCESS_ENV = frozenset(
    {
        ENV_CONFIG,
        ENV_CACHE_DIR,
        ENV_PROGRESS,
        ENV_LOG_LEVEL,
        ENV_CONTAINER,
        ENV_MOUNT_ROOT,
        ENV_TERMINATION_LOG,
        ENV_NPROC_PER_NODE,
        ENV_NNODES,
        ENV_NODE_RANK,
        ENV_HTTP_TOKEN_FILE,
        ENV_SOURCES_LOCK,
    }
)

# --- Mounts of the container contract -------------------------------------------------------------
MOUNT_MODEL = "/model"
MOUNT_DATA = "/data"
MOUNT_OUTPUT = "/output"
MOUNT_CONFIG = "/config"
CONFIG_FILE_NAME = "config.yaml"  # the operator's ConfigMap key, mounted at MOUNT_CONFIG
CONFIG_FILE = f"{MOUNT_CONFIG}/{CONFIG_FILE_NAME}"
TERMINATION_LOG = "/dev/termination-log"
IMAGE_UID = 10001  # the images' user and group (docker/Dockerfile.*: USER 10001:10001); pods run as it
TERMINATION_LOG_LIMIT = 4000  # Kubernetes keeps at most 4096 bytes per container
WRITABLE_DIR = "/tmp"  # the pod's scratch emptyDir: with the root filesystem read-only, the one place caches can go
# Libraries write their caches under HOME by default (~/.cache: Hugging Face, torch hub, kubetune's builtin
# export; ~/.triton; ~/.nv/ComputeCache; ~/.config: matplotlib), and HOME is on the read-only root in a pod:
# every pod the operator renders points them under WRITABLE_DIR, whatever image it runs (spec.image included).
CACHE_ENV: dict[str, str] = {
    "HOME": WRITABLE_DIR,  # itself: a tool writing ~/file without creating ~ first finds it there
    "XDG_CACHE_HOME": f"{WRITABLE_DIR}/.cache",
    "XDG_CONFIG_HOME": f"{WRITABLE_DIR}/.config",
    "HF_HOME": f"{WRITABLE_DIR}/hf",  # the images' own value (docker/Dockerfile.*)
    "MPLCONFIGDIR": f"{WRITABLE_DIR}/matplotlib",  # the images' own value
    "TRITON_HOME": f"{WRITABLE_DIR}/triton",  # Triton's ~/.triton (its cache, dumps, overrides)
    "TRITON_CACHE_DIR": f"{WRITABLE_DIR}/triton/cache",
    "TORCHINDUCTOR_CACHE_DIR": f"{WRITABLE_DIR}/torchinductor",  # its default names the user: no passwd entry needed
    "CUDA_CACHE_PATH": f"{WRITABLE_DIR}/nv/ComputeCache",  # the CUDA driver's JIT cache
}


# --- Events -------------------------------------------------------------------------------------
def _finite(value: Any) -> Any:
    """JSON has no NaN: a non-finite float is written as null (a diverged step has no loss)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class _Event(BaseModel):
    # Readers ignore fields they do not know, so a newer trainer never breaks an older operator.
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _no_nan(cls, data: Any) -> Any:
        return {k: _finite(v) for k, v in data.items()} if isinstance(data, dict) else data

    def line(self) -> str:
        """One JSON line, as written to stdout, metrics.jsonl and the termination log."""
        return json.dumps(self.model_dump(mode="json"))


class ProgressEvent(_Event):
    """One per logging step on stdout: what `status.progress` shows."""

    event: Literal["progress"] = "progress"
    step: int
    total_steps: int
    loss: float | None = None
    epoch: float = 0.0
    tokens_per_second: float = 0.0
    eta_seconds: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens: int = 0


class EvalEvent(_Event):
    """One per evaluation, in metrics.jsonl (metric names as transformers logs them)."""

    event: Literal["eval"] = "eval"
    step: int
    epoch: float = 0.0
    eval_loss: float | None = None
    eval_exact_match: float | None = None  # with training.eval_metric: exact_match


class SummaryEvent(_Event):
    """The end of a successful run: run.json's `metrics` and the termination message."""

    event: Literal["summary"] = "summary"
    status: Literal["succeeded"] = "succeeded"
    adapter_path: str | None = None
    steps: int | None = None
    epochs: float | None = None
    train_loss: float | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    eval_loss: float | None = None
    eval_metric: str = "loss"  # what chose the adapter: the step with the best value of this metric
    best_step: int | None = None
    best_value: float | None = None
    tokens: int = 0
    tokens_per_second: float | None = None
    train_seconds: float | None = None
    load_seconds: float | None = None
    total_seconds: float | None = None
    pushed_to: str | None = None  # output.push_to, once the result is there


class ErrorEvent(_Event):
    """A failed run's one-line error, as the CLI printed it, with its exit code."""

    event: Literal["error"] = "error"
    exit_code: int
    message: str


class FetchedEvent(_Event):
    """The end of a successful `kubetune fetch`: the initializer pod's termination message."""

    event: Literal["fetched"] = "fetched"
    sources: list[str] = Field(default_factory=list)  # the remote locations now in the cache


class MergedEvent(_Event):
    """The end of a successful `kubetune merge`: the merge pod's termination message."""

    event: Literal["merged"] = "merged"
    merged_path: str
    max_logit_diff: float | None = None  # merged model vs base+adapter on a probe prompt
    changed_tensors: int = 0
    dtype: str | None = None
    pushed_to: str | None = None  # output.push_to, once the merged model is there too


class PlanEvent(_Event):
    """`kubetune plan --json` and the plan `kubetune train` logs first: what a run will need (docs/plan.md).

    Memory is per training process, in bytes: the operator sizes a worker pod from `peak_bytes` times
    the processes it runs. Times are CPU estimates from a matmul rate probed where the plan ran.
    """

    event: Literal["plan"] = "plan"
    peak_bytes: int
    memory: dict[str, int] = Field(default_factory=dict)  # the terms: process, weights, activations...
    device: str = "cpu"
    precision: str = "fp32"
    gradient_checkpointing: bool = False
    batch_size: int
    largest_batch: dict[str, int] = Field(default_factory=dict)  # rows, width, head_positions
    trainable_parameters: int = 0
    frozen_parameters: int = 0
    records: int = 0
    tokens_per_epoch: int = 0
    steps_per_epoch: int = 0
    steps: int = 0
    seconds_per_epoch: float | None = None
    seconds: float | None = None  # the whole run (epochs or max_steps)
    matmul_rate: float | None = None  # FLOP/s of the dense-matmul probe the time estimate starts from (cpu)
    memory_limit_bytes: int | None = None  # the limit asked about (--memory) or seen (cgroup, free RAM)
    fits: bool | None = None
    max_batch_size: int | None = None  # the largest training.batch_size within memory_limit_bytes
    # Peak of `kubetune merge` afterwards (one process), at its check 2: the process term, the merged model in the
    # saved dtype, what it wrote reloaded in fp32 and, for a 4/8-bit run merged as trained, the quantized base it
    # loaded (docs/plan.md). None: not planned (a trainer older than the merge plan).
    merge_peak_bytes: int | None = None


AnyEvent = ProgressEvent | EvalEvent | SummaryEvent | ErrorEvent | FetchedEvent | MergedEvent | PlanEvent
Event = Annotated[AnyEvent, Field(discriminator="event")]
_EVENT = TypeAdapter(Event)


def parse_event(text: str | None) -> AnyEvent | None:
    """One trainer event from a line of JSON; None for anything else (log noise, a foreign message)."""
    if not text:
        return None
    try:
        return _EVENT.validate_json(text.strip())
    except (ValidationError, ValueError):
        return None
