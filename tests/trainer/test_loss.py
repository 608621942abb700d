"""The selective loss equals the standard causal-LM loss; packed batches equal padded ones."""

import pytest
import torch
from tinymodel import tiny_llama

from kubetune.trainer.data.collate import pack_rows, pad_rows
from kubetune.trainer.data.render import IGNORE
from kubetune.trainer.loss import right_padded, selective_loss_sum, target_positions


@pytest.fixture(scope="module")
def model():
    return tiny_llama(97, hidden=32, layers=2, tie_word_embeddings=True).eval()


def rows():
    g = torch.Generator().manual_seed(1)
    out = []
    for length, prompt in [(12, 8), (7, 3), (15, 12)]:
        ids = torch.randint(3, 97, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return out


def test_target_positions_union_over_batch():
    labels = torch.tensor([[IGNORE, IGNORE, 5, 6], [IGNORE, 7, IGNORE, IGNORE]])
    assert target_positions(labels).tolist() == [0, 1, 2]
    assert target_positions(torch.full((1, 3), IGNORE)).tolist() == [0]


def test_matches_transformers_loss_on_padded_batch(model):
    batch = pad_rows(rows(), pad_token_id=0)
    with torch.no_grad():
        reference = model(**batch).loss
        total, count = selective_loss_sum(model, batch)
    assert count.item() == sum(sum(1 for x in r["labels"][1:] if x != IGNORE) for r in rows())
    torch.testing.assert_close(total / count, reference, rtol=1e-5, atol=1e-6)


def test_packed_equals_padded(model):
    with torch.no_grad():
        padded_sum, padded_n = selective_loss_sum(model, pad_rows(rows(), 0))
        packed_sum, packed_n = selective_loss_sum(model, pack_rows(rows()))
    assert padded_n == packed_n
    torch.testing.assert_close(packed_sum, padded_sum, rtol=1e-4, atol=1e-4)


def test_gradients_match_full_loss(model):
    batch = pad_rows(rows(), pad_token_id=0)
    model.zero_grad()
    model(**batch).loss.backward()
    ref = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()
    total, count = selective_loss_sum(model, batch)
    (total / count).backward()
    torch.testing.assert_close(model.model.layers[0].self_attn.q_proj.weight.grad, ref, rtol=1e-4, atol=1e-6)
    model.zero_grad()


def test_right_padding_is_recognised():
    assert right_padded(torch.tensor([[1, 1, 0], [1, 1, 1]]))
    assert not right_padded(torch.tensor([[1, 1, 0], [0, 1, 1]]))  # left padding
    assert not right_padded(torch.tensor([[1, 0, 1]]))  # a hole


def test_left_padded_batch_keeps_its_mask(model):
    """Dropping the mask is only right for right padding: a left-padded batch must still be masked."""
    right = pad_rows(rows(), pad_token_id=0)
    width = right["input_ids"].shape[1]
    left = {
        k: torch.stack(
            [torch.roll(row, width - int(m.sum())) for row, m in zip(v, right["attention_mask"], strict=True)]
        )
        for k, v in right.items()
    }
    with torch.no_grad():
        reference = model(**left).loss
        total, count = selective_loss_sum(model, left)
        unmasked = model(input_ids=left["input_ids"], labels=left["labels"]).loss
    torch.testing.assert_close(total / count, reference, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(unmasked, reference, rtol=1e-3)
