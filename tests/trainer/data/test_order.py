"""Length-grouped batch order: a shuffled permutation whose batches carry little padding."""

import random

from transformers import TrainingArguments

from kubetune.trainer.data.collate import Collator
from kubetune.trainer.data.order import LengthGroupedOrder, length_grouped_order
from kubetune.trainer.hf_trainer import CompletionTrainer
from tests.support.tinymodel import tiny_llama

_rng = random.Random(7)
LENGTHS = [_rng.randint(40, 100) for _ in range(203)]  # 25 full batches of 8 and 3 left over


def padded_tokens(order: list[int], batch: int) -> int:
    batches = [order[k : k + batch] for k in range(0, len(order), batch)]
    return sum(max(LENGTHS[i] for i in b) * len(b) for b in batches)


def test_is_a_permutation_of_every_record():
    assert sorted(length_grouped_order(LENGTHS, 8, seed=0)) == list(range(len(LENGTHS)))


def test_batches_carry_far_less_padding_than_a_random_order():
    real = sum(LENGTHS)
    shuffled = list(range(len(LENGTHS)))
    random.Random(0).shuffle(shuffled)
    random_waste = padded_tokens(shuffled, 8) / real - 1
    grouped_waste = padded_tokens(length_grouped_order(LENGTHS, 8, seed=0), 8) / real - 1
    assert random_waste > 0.15  # the premise: these lengths vary
    assert grouped_waste < random_waste / 4


def test_batches_come_in_random_order_with_the_longest_first():
    order = length_grouped_order(LENGTHS, 8, seed=0)
    longest = [max(LENGTHS[i] for i in order[k : k + 8]) for k in range(0, 200, 8)]
    assert longest[0] == max(LENGTHS)
    ascending, descending = sorted(longest[1:]), sorted(longest[1:], reverse=True)
    assert longest[1:] not in (ascending, descending)  # not a curriculum of lengths


def test_a_partial_last_batch_stays_last():
    # Moving the 3 left-over records into the middle would shift every batch after them.
    for seed in range(5):
        order = length_grouped_order(LENGTHS, 8, seed=seed)
        tail = order[200:]
        assert len(tail) == 3
        assert set(order[:200]).isdisjoint(tail)


def test_the_order_is_a_function_of_seed_and_epoch():
    sampler = LengthGroupedOrder(LENGTHS, 8, seed=42)
    first = list(sampler)
    assert list(sampler) == first  # a resumed run replays the epoch it continues
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    assert second == list(LengthGroupedOrder(LENGTHS, 8, seed=43))
    assert len(sampler) == len(LENGTHS)


def test_tiny_inputs_do_not_break_it():
    assert length_grouped_order([5], 8, seed=0) == [0]
    assert sorted(length_grouped_order([5, 9, 1], 2, seed=0)) == [0, 1, 2]


def test_the_trainer_batches_by_length_only_when_asked(tmp_path):
    rows = [{"input_ids": [3] * n, "labels": [3] * n} for n in LENGTHS[:96]]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True, report_to="none", seed=0
    )

    def waste(grouped: bool) -> float:
        trainer = CompletionTrainer(
            model=tiny_llama(16), args=args, train_dataset=rows, data_collator=Collator(0), group_by_length=grouped
        )
        padded = sum(b["input_ids"].numel() for b in trainer.get_train_dataloader())
        return padded / sum(LENGTHS[:96]) - 1

    assert waste(grouped=True) < waste(grouped=False) / 2
