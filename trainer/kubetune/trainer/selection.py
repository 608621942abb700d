"""`training.eval_metric`: what each eval measures, and the best eval's weights kept as the adapter.

Loss is cheap but only a proxy: on tasks with exact answers a run can keep
lowering the loss while its greedy answers stop improving, or the reverse.
exact_match greedily answers every eval prompt and compares the answers with
the references, the same metric `kubetune generate` reports.

The best weights are kept in memory (LoRA weights are small: a few MB for
SmolLM2-135M at r=16) rather than through transformers' load_best_model_at_end,
which ties evaluation to the checkpoint schedule and would let checkpoint
rotation delete the best one. After a resume, the best is tracked from the
resumption on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from kubetune.trainer.data.render import IGNORE
from kubetune.trainer.generate import exact_match, generate_ids


def metric_key(metric: str) -> str:
    return f"eval_{metric}"


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Loss: lower wins; exact match: higher wins, and a tie goes to the later (longer trained) eval."""
    if best is None:
        return True
    return value < best if metric == "loss" else value >= best


def prompt_and_reference(input_ids: Sequence[int], labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """Split a tokenized eval row at its first trained token: the prompt, then the first trained span."""
    start = next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))
    end = next((i for i in range(start, len(labels)) if labels[i] == IGNORE), len(labels))
    return list(input_ids[:start]), list(input_ids[start:end])


def exact_match_score(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 16) -> float:
    """Fraction of eval rows whose greedy answer equals the reference (whitespace-trimmed)."""
    pairs = [prompt_and_reference(r["input_ids"], r["labels"]) for r in rows]
    pairs = [(p, ref) for p, ref in pairs if p and ref]
    if not pairs:
        return 0.0
    refs = [tokenizer.decode(ref, skip_special_tokens=True) for _, ref in pairs]
    longest = max(len(ref) for _, ref in pairs)
    was_training = model.training
    model.eval()
    try:
        answers = generate_ids(model, tokenizer, [p for p, _ in pairs], longest + 2, batch_size)
    finally:
        model.train(was_training)
    return sum(exact_match(a, r) for a, r in zip(answers, refs, strict=True)) / len(pairs)


class BestAdapter(TrainerCallback):
    """Remembers the trainable weights at the best eval so far; `restore` puts them back."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.best: float | None = None
        self.best_step: int | None = None
        self._weights: dict[str, torch.Tensor] | None = None

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        value = (metrics or {}).get(metric_key(self.metric))
        if value is None or model is None or not is_better(self.metric, value, self.best):
            return
        self.best, self.best_step = float(value), state.global_step
        self._weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def restore(self, model: Any) -> bool:
        """Load the best eval's weights into `model`; False when no eval ran."""
        if self._weights is None:
            return False
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, weight in self._weights.items():
                params[name].copy_(weight)
        return True

    def summary(self) -> dict[str, Any]:
        return {"eval_metric": self.metric, "best_step": self.best_step, "best_value": self.best}


def extra_metrics(metric: str, tokenizer: Any, rows: list[dict[str, Any]]) -> Callable[[Any], dict[str, float]]:
    """What CompletionTrainer adds to each eval beyond the loss."""
    if metric != "exact_match":
        return lambda model: {}
    return lambda model: {"exact_match": _eager(exact_match_score, model, tokenizer, rows)}


def _eager(fn: Callable[..., float], *args: Any) -> float:
    """Generation runs eagerly even when training compiled the layers (training.compile): decoding one token at a
    time with a KV cache would compile graphs of its own, for a few dozen short evals."""
    import torch

    with torch.compiler.set_stance("force_eager"):
        return fn(*args)


def check(metric: str, has_eval: bool, data_format: str) -> str | None:
    """The problem with this combination, or None."""
    if metric == "exact_match" and not has_eval:
        return "training.eval_metric: exact_match needs an eval set: set data.eval_split or data.eval_path"
    if metric == "exact_match" and data_format == "text":
        return "training.eval_metric: exact_match needs prompt/answer records; plain text has no answers"
    return None
