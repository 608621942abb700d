"""Batched greedy generation: each prompt gets the answer it gets alone, whatever its neighbours' lengths."""

from __future__ import annotations

from kubetune.trainer.generate import generate_ids, padded


def test_padded_puts_the_padding_on_the_side_asked_and_masks_it():
    ids, mask = padded([[5, 6, 7], [8]], 0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = padded([[5, 6, 7], [8]], 0, left=False)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_a_batch_answers_every_prompt_as_it_is_answered_alone(tokenizer):
    from tinymodel import tiny_llama

    model = tiny_llama(len(tokenizer), hidden=32, layers=2).eval()
    prompts = [tokenizer.encode(text) for text in ("When was it?", "A much longer question about a date, please", "Hi")]
    alone = [generate_ids(model, tokenizer, [p], 6, 1)[0] for p in prompts]
    assert generate_ids(model, tokenizer, prompts, 6, 3) == alone
    assert any(alone)  # the random model says something: an empty answer everywhere would compare equal
