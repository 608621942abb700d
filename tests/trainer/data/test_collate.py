"""Dynamic padding and padding-free packing."""

import torch

from kubetune.trainer.data.collate import Collator, pack_rows, pad_rows
from kubetune.trainer.data.render import IGNORE

ROWS = [
    {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
    {"input_ids": [8, 9], "labels": [IGNORE, 9]},
]


def test_pad_to_longest_in_batch_not_max_length():
    b = pad_rows(ROWS, pad_token_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert b["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, 9, IGNORE]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_pack_is_one_row_with_restarting_positions():
    b = pack_rows(ROWS)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert "attention_mask" not in b


def test_pack_never_predicts_a_records_first_token_from_the_previous_record():
    rows = [{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3, 4], "labels": [3, 4]}]
    assert pack_rows(rows)["labels"].tolist() == [[IGNORE, 2, IGNORE, 4]]


def test_collator_dispatch():
    assert set(Collator(0)(ROWS)) == {"input_ids", "labels", "attention_mask"}
    assert set(Collator(0, packed=True)(ROWS)) == {"input_ids", "labels", "position_ids"}
    assert Collator(0, packed=True)(ROWS)["input_ids"].dtype == torch.long
