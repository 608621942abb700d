"""Batch rows without wasting compute on padding.

Two modes, both pure: `pad` right-pads each batch to its own longest row (never
to a fixed max length, the seeds' costliest habit); `packed` concatenates the
batch into one padding-free row with position ids restarting per record, which
transformers turns into a block-diagonal causal mask, so records never attend
to each other. Both keep batch_size records per micro-batch, so the learning
rate schedule and the global batch mean the same thing either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kubetune.trainer.data.render import IGNORE


@dataclass
class Collator:
    pad_token_id: int
    packed: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pack_rows(rows) if self.packed else pad_rows(rows, self.pad_token_id)


def pad_rows(rows: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"])
        labels[i, :n] = torch.tensor(row["labels"])
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def pack_rows(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    input_ids = torch.tensor([t for r in rows for t in r["input_ids"]], dtype=torch.long)[None]
    labels = torch.tensor([t for r in rows for t in r["labels"]], dtype=torch.long)[None]
    position_ids = torch.cat([torch.arange(len(r["input_ids"])) for r in rows])[None]
    # A record's first token must never be predicted from the previous record's last one.
    labels[position_ids == 0] = IGNORE
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
