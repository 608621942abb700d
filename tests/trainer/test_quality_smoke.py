"""One short real run with the new defaults: lr auto recorded with its reason, exact match evaluated
during training, the best eval's weights saved as the adapter. The suite's full runs live in
`make quality`, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kubetune.api import load_config
from kubetune.trainer.lr import auto_lr

pytestmark = pytest.mark.slow
TASK = Path(__file__).resolve().parents[2] / "examples" / "data" / "tasks" / "style"


def subset(src: Path, dest: Path, n: int) -> str:
    dest.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return str(dest)


def test_auto_lr_and_exact_match_selection(tmp_path):
    from kubetune.trainer.train import run

    cfg = load_config(
        None,
        sets=[
            f"data.path={subset(TASK / 'train.jsonl', tmp_path / 'train.jsonl', 16)}",
            f"data.eval_path={subset(TASK / 'test.jsonl', tmp_path / 'eval.jsonl', 4)}",
            f"output_dir={tmp_path / 'out'}",
            "training.max_steps=4",
            "training.batch_size=2",
            "training.eval_steps=2",
            "training.eval_metric=exact_match",
            "training.save_steps=2",
            "training.save_total_limit=3",
        ],
    )
    summary = run(cfg, progress="none")
    out = tmp_path / "out"
    resolved = json.loads((out / "run.json").read_text())["resolved"]
    assert resolved["lr"] == auto_lr(576, "llama", 32).lr and resolved["lr_reason"].startswith("auto:")

    evals = [e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [2, 4]
    assert all(0.0 <= e["eval_exact_match"] <= 1.0 for e in evals)
    best = max(evals, key=lambda e: (e["eval_exact_match"], e["step"]))  # ties go to the later eval
    assert (summary["eval_metric"], summary["best_step"]) == ("exact_match", best["step"])
    assert summary["best_value"] == best["eval_exact_match"]

    # The adapter holds the best eval's weights: those of the checkpoint written at that step. Here the best is
    # usually the last step; test_selection.py's run whose eval gets worse proves that an earlier best is kept.
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    at_best = load_file(out / "checkpoints" / f"checkpoint-{best['step']}" / "adapter_model.safetensors")
    assert adapter.keys() == at_best.keys() and all(torch.equal(adapter[k], at_best[k]) for k in adapter)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
