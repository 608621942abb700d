"""Checkpoints that survive preemption: complete or absent, never half-written.

A checkpoint is staged in `checkpoints/.incomplete/checkpoint-N`, gets a
`COMPLETE` marker (which records what the run was: model, LoRA shape, data
hash, data order) and is then renamed into `checkpoints/checkpoint-N`, an atomic step.
A kill at any moment leaves either the previous checkpoint set or the new one.
A directory without the marker is never loaded and is removed at the next start.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from kubetune.trainer.errors import UsageError

MARKER = "COMPLETE"
STAGING = ".incomplete"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def step_of(path: Path) -> int | None:
    match = _STEP.match(path.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: step_of(p) or 0)


def clean_incomplete(root: Path) -> list[Path]:
    """Remove staging leftovers and checkpoint dirs without a marker; returns what was removed."""
    removed = []
    if not root.is_dir():
        return removed
    for p in root.iterdir():
        if p.name == STAGING or (p.is_dir() and step_of(p) is not None and not (p / MARKER).is_file()):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def rotate(root: Path, keep: int) -> None:
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def identity(
    cfg: Any, data_hashes: dict[str, str], model_fingerprint: str, world_size: int, precision: str
) -> dict[str, Any]:
    """What must not change between a checkpoint and the run resuming from it.

    `order` is what decides which records each step sees: a resume skips the steps already
    trained, so with another seed, global batch or record shaping it would skip the wrong records.
    `precision` is the one the run resolved (`auto` is decided by a timing probe): a resume in another
    precision would silently continue a different computation.
    """
    return {
        "model": cfg.model.path,
        "model_fingerprint": model_fingerprint,
        "quantization": cfg.model.quantization,
        "precision": precision,
        "lora": {k: getattr(cfg.lora, k) for k in ("r", "alpha", "target_modules", "bias", "modules_to_save")},
        "data": data_hashes,
        "order": {
            "seed": cfg.training.seed,
            "global_batch": cfg.training.global_batch(world_size),
            "group_by_length": cfg.data.length_grouped,
            "packing": cfg.data.packing,
            "max_length": cfg.data.max_length,
            "eval_split": cfg.data.eval_split,
        },
    }


# Recorded since a later version: a checkpoint written before it did not say, so it is not held against it.
ADDED_LATER = frozenset({"precision"})


def mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return [key for key in current if saved.get(key) != current[key] and (key in saved or key not in ADDED_LATER)]


def _readable(checkpoint: Path) -> dict[str, Any]:
    """The identity a checkpoint was written with; a damaged checkpoint is named, not loaded into a traceback."""
    for name in (MARKER, "trainer_state.json"):
        try:
            value = json.loads((checkpoint / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(
                f"training.resume: {checkpoint / name} is damaged ({getattr(exc, 'msg', None) or exc}); "
                "delete that checkpoint or set training.resume=never"
            ) from None
        if not isinstance(value, dict):
            raise UsageError(f"training.resume: {checkpoint / name} is damaged (not a JSON object)")
        if name == MARKER:
            identity = value.get("identity", {})
    return identity


def select_resume(root: Path, resume: str, current: dict[str, Any], force: bool) -> Path | None:
    """The checkpoint to resume from, refusing one that would make resuming wrong."""
    if resume == "never":
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        if not found:
            return None
        chosen = found[-1]
    else:
        chosen = Path(resume)
        if not (chosen / MARKER).is_file():
            raise UsageError(f"training.resume: {chosen} is not a complete kubetune checkpoint (no {MARKER} marker)")
    saved = _readable(chosen)
    changed = mismatches(saved, current)
    if changed and not force:
        raise UsageError(
            f"training.resume: {chosen} was written by a different run ({', '.join(changed)} changed); "
            "use another output_dir, set training.resume=never to start over, or training.force_resume=true"
        )
    return chosen
