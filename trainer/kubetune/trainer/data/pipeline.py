"""From `data.*` config to tokenized train/eval rows, checked before any training.

Bad records stop the run here, before the model is touched, with every
problem listed as `file:line: what is wrong` (the first few, plus a count), or
are skipped and counted with `skip_bad_records`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.config import DataSection
from kubetune.trainer.data.formats import normalize_all
from kubetune.trainer.data.loaders import BadRecord, read_records
from kubetune.trainer.data.render import RenderStats, resolve_template, tokenize_examples
from kubetune.trainer.errors import DataError

SHOWN_BAD = 10


@dataclass
class PreparedData:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    format: str
    template: str
    stats: RenderStats
    skipped: list[BadRecord] = field(default_factory=list)


def raise_bad_records(bad: list[BadRecord]) -> None:
    lines = [str(b) for b in bad[:SHOWN_BAD]]
    more = f" (and {len(bad) - SHOWN_BAD} more)" if len(bad) > SHOWN_BAD else ""
    hint = "; fix them or set data.skip_bad_records (--skip-bad-records) to skip and count them"
    raise DataError("\n".join(lines) + f"\n{len(bad)} bad record(s){more}{hint}")


def load_examples(paths: list[str], cfg: DataSection, bad: list[BadRecord]) -> tuple[str, list]:
    records = read_records(paths, bad)
    if not records:
        if bad:  # every line was bad: say which and why, not "no records"
            raise_bad_records(bad)
        raise DataError(f"{', '.join(paths)}: no records (empty data file)")
    return normalize_all(records, cfg.format, cfg.text_field, bad)


def prepare(cfg: DataSection, tokenizer: Any, seed: int) -> PreparedData:
    """Read, validate, render and split the data."""
    bad: list[BadRecord] = []
    fmt, examples = load_examples(cfg.path, cfg, bad)
    eval_examples: list = []
    if cfg.eval_path:
        _, eval_examples = load_examples(cfg.eval_path, cfg.model_copy(update={"format": fmt}), bad)
    if bad and not cfg.skip_bad_records:
        raise_bad_records(bad)
    if not examples:
        raise DataError(f"{', '.join(cfg.path)}: no usable training records ({len(bad)} bad record(s) skipped)")
    template = resolve_template(cfg.template, tokenizer)
    if cfg.eval_split and not eval_examples:
        shuffled = examples[:]
        random.Random(seed).shuffle(shuffled)
        n_eval = max(1, round(len(shuffled) * cfg.eval_split))
        eval_examples, examples = shuffled[:n_eval], shuffled[n_eval:]
    args = (tokenizer, template, cfg.system_prompt, cfg.train_on, cfg.max_length)
    train_rows, stats = tokenize_examples(examples, *args)
    eval_rows = tokenize_examples(eval_examples, *args)[0] if eval_examples else []
    if not train_rows:
        raise DataError(
            f"all {stats.records} training records were left without a target after truncation to "
            f"data.max_length={cfg.max_length}"
        )
    return PreparedData(train_rows, eval_rows, fmt, template, stats, bad)
