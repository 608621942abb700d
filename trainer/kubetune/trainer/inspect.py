"""`kubetune data inspect`: see what the model will be trained on before paying for it.

Shows the record count, the token length distribution (a text histogram and a
PNG), how many records the max length truncates, and one rendered record with
the trained-on tokens marked, which is where masking mistakes show.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from kubetune.api.config import TrainConfig
from kubetune.trainer.data.pipeline import prepare
from kubetune.trainer.data.render import trained_spans
from kubetune.trainer.models import load_tokenizer


def histogram(lengths: list[int], bins: int = 10) -> list[tuple[int, int, int]]:
    """(low, high, count) buckets of equal width covering min..max."""
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    step = max(1, -(-(hi - lo + 1) // bins))
    buckets = []
    for b in range(lo, hi + 1, step):
        buckets.append((b, b + step - 1, sum(b <= n < b + step for n in lengths)))
    return buckets


def percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def inspect_data(cfg: TrainConfig, png: Path | None = None) -> dict[str, Any]:
    tokenizer = load_tokenizer(cfg.model.path)
    data = prepare(cfg.data, tokenizer, cfg.training.seed)
    lengths = data.stats.lengths
    example = data.train[0]
    report: dict[str, Any] = {
        "format": data.format,
        "template": data.template,
        "records": data.stats.records,
        "train_records": len(data.train),
        "eval_records": len(data.eval),
        "skipped_bad": [str(b) for b in data.skipped],
        "max_length": cfg.data.max_length,
        "over_max_length": data.stats.truncated,
        "dropped_no_target": data.stats.dropped_no_target,
        "tokens": {
            "total": sum(lengths),
            "min": min(lengths),
            "median": int(statistics.median(lengths)),
            "p95": percentile(lengths, 0.95),
            "max": max(lengths),
        },
        "trained_tokens": sum(sum(1 for x in r["labels"] if x != -100) for r in data.train),
        "histogram": histogram(lengths),
        "example": {
            "where": example["where"],
            "spans": trained_spans(tokenizer, example["input_ids"], example["labels"]),
        },
    }
    if png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        ax.hist(lengths, bins=30)
        ax.axvline(cfg.data.max_length, color="red", linestyle="--", label=f"max_length={cfg.data.max_length}")
        ax.set_xlabel("tokens per record")
        ax.set_ylabel("records")
        ax.legend()
        fig.tight_layout()
        fig.savefig(png)
        plt.close(fig)
        report["png"] = str(png)
    return report


def print_inspection(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console()
    t = report["tokens"]
    console.print(f"format: {report['format']}   template: {'chat' if report['template'] == 'chat' else 'literal'}")
    console.print(
        f"records: {report['records']} (train {report['train_records']}, eval {report['eval_records']}, "
        f"skipped bad {len(report['skipped_bad'])}, no target left {report['dropped_no_target']})"
    )
    console.print(
        f"tokens per record: min {t['min']}  median {t['median']}  p95 {t['p95']}  max {t['max']}  "
        f"(total {t['total']}, trained on {report['trained_tokens']})"
    )
    console.print(f"over max_length={report['max_length']}: {report['over_max_length']} record(s), truncated")
    top = max(c for _, _, c in report["histogram"]) or 1
    for lo, hi, count in report["histogram"]:
        console.print(f"  {lo:>6}-{hi:<6} {'█' * round(40 * count / top):<40} {count}")
    if report.get("png"):
        console.print(f"histogram: {report['png']}")
    console.print(
        f"\nexample ({report['example']['where']}); trained-on tokens are highlighted and ⟦bracketed⟧:", markup=False
    )
    text = Text()
    for span, trained in report["example"]["spans"]:
        text.append(f"⟦{span}⟧" if trained else span, style="bold green" if trained else "dim")
    console.print(text)
