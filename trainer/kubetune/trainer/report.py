"""The helpers behind what a run leaves: secret scrubbing, versions, hashes, atomic writes, the loss plot.

run.json itself is written by train.py (run_record) and updated by finish.py; this module holds the parts
they and the other commands share.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from kubetune.api import contract

PACKAGES = (
    "kubetune-api",
    "kubetune-trainer",
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "bitsandbytes",
)


SECRET_FILES = (contract.ENV_HF_TOKEN_FILE, contract.ENV_HTTP_TOKEN_FILE)  # mounted Secrets: masked too


def known_secrets() -> list[str]:
    """The secret values this process holds (the environment's and the mounted token files'), to mask them."""
    from kubetune.api.redact import env_secrets

    found = env_secrets(os.environ)
    for name in SECRET_FILES:
        if os.environ.get(name):
            with contextlib.suppress(OSError):
                found.append(Path(os.environ[name]).read_text().strip())
    return found


def scrub(value: Any) -> Any:
    """The one redaction (kubetune.api.redact) with this process's secrets: for every record, log and message."""
    from kubetune.api.redact import redact_value

    return redact_value(value, known_secrets())


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_paths(paths: list[str]) -> dict[str, str]:
    """sha256 of each data file (every file inside a dataset directory)."""
    out: dict[str, str] = {}
    for raw in paths:
        p = Path(raw)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f)] = sha256_file(f)
    return out


def model_fingerprint(location: str, edge: int = 1 << 20) -> str:
    """A fast identity for a model directory: names, sizes, first and last MiB of each file.

    Hashing every byte of a 14 GB model would add minutes to each run; this
    detects a different or re-downloaded model without reading it all.
    """
    p = Path(location)
    if not p.exists():
        return f"hub:{location}"
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(p) if p.is_dir() else f.name}:{size}".encode())
        with f.open("rb") as fh:
            digest.update(fh.read(edge))
            if size > 2 * edge:
                fh.seek(-edge, os.SEEK_END)
                digest.update(fh.read(edge))
    return digest.hexdigest()


def check_output_dir(out: Path) -> None:
    """Fail before any work if `out` cannot become the output directory (nothing is created here)."""
    from kubetune.trainer.errors import UsageError

    if out.exists() and not out.is_dir():
        raise UsageError(f"output_dir: {out} exists and is not a directory")
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"output_dir: {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"output_dir: {out}: {existing} is not writable")


def format_loss(value: float | None) -> str:
    """A loss for people: 4 decimals, or `n/a` when none was logged (or it was not finite)."""
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def summary_line(summary: dict[str, Any]) -> str:
    """The one line `kubetune train` ends with; every figure may be missing."""
    tps = summary.get("tokens_per_second")
    speed = f"{tps:.0f} tokens/s" if isinstance(tps, (int, float)) else "speed n/a"
    return (
        f"done: {summary.get('steps')} steps, loss {format_loss(summary.get('first_loss'))} -> "
        f"{format_loss(summary.get('final_loss'))}, {speed}; adapter in {summary.get('adapter_path')}"
    )


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers never see a half-written file: write a temp file, then rename over. Credentials are masked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = scrub(json.loads(json.dumps(data, default=str)))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir_atomically(dest: Path, write: Any) -> None:
    """Write a directory next to `dest`, then swap it in: a crash never leaves half an adapter."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        write(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(metrics: list[dict[str, Any]], out: Path, best_step: int | None = None) -> bool:
    """Train and eval loss (and eval exact match, if measured) against step, the kept step marked.

    Returns False when there is nothing to plot.
    """
    train = [(m["step"], m["loss"]) for m in metrics if m.get("event") == "progress" and m.get("loss") is not None]
    evals = [(m["step"], m["eval_loss"]) for m in metrics if m.get("event") == "eval"]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    if best_step is not None:
        ax.axvline(best_step, color="gray", linestyle="--", label=f"adapter (step {best_step})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    matches = [(m["step"], m["eval_exact_match"]) for m in metrics if m.get("eval_exact_match") is not None]
    if matches:
        em = ax.twinx()
        em.plot(*zip(*matches, strict=True), marker="s", color="tab:green", label="eval exact match")
        em.set_ylim(0, 1.05)
        em.set_ylabel("exact match")
        em.legend(loc="upper right")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return True
