"""training.eval_metric: splitting eval rows into prompt and answer, ranking evals, keeping the best weights."""

from types import SimpleNamespace

import pytest
import torch

from kubetune.trainer.data.render import IGNORE
from kubetune.trainer.selection import BestAdapter, check, extra_metrics, is_better, prompt_and_reference


def test_prompt_and_reference_split_at_the_first_trained_span():
    ids = [1, 2, 3, 4, 5, 6, 7]
    labels = [IGNORE, IGNORE, IGNORE, 4, 5, IGNORE, 7]
    assert prompt_and_reference(ids, labels) == ([1, 2, 3], [4, 5])
    assert prompt_and_reference([1, 2], [IGNORE, IGNORE]) == ([1, 2], [])


def test_loss_lower_wins_exact_match_higher_and_ties_go_to_the_later():
    assert is_better("loss", 0.5, None) and is_better("loss", 0.4, 0.5) and not is_better("loss", 0.5, 0.5)
    assert is_better("exact_match", 0.9, 0.8) and is_better("exact_match", 0.9, 0.9)
    assert not is_better("exact_match", 0.7, 0.8)


def test_combinations_that_cannot_work_are_named():
    assert "eval_split" in check("exact_match", False, "prompt_completion")
    assert "plain text" in check("exact_match", True, "text")
    assert check("loss", False, "text") is None and check("exact_match", True, "messages") is None


def test_loss_needs_no_extra_metric():
    assert extra_metrics("loss", None, [])(None) == {}


def _evaluate(keeper, model, step, value, metric):
    keeper.on_evaluate(None, SimpleNamespace(global_step=step), None, model=model, metrics={f"eval_{metric}": value})


@pytest.mark.parametrize(
    ("metric", "values", "best_step"), [("loss", [0.9, 0.5, 0.7], 2), ("exact_match", [0.2, 0.8, 0.8, 0.6], 3)]
)
def test_best_weights_are_restored(metric, values, best_step):
    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)  # frozen weights are not copied
    keeper = BestAdapter(metric)
    assert not keeper.restore(model)
    snapshots = {}
    for step, value in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(step)
        snapshots[step] = model.weight.detach().clone()
        _evaluate(keeper, model, step, value, metric)
    with torch.no_grad():
        model.weight.fill_(-1)
    assert keeper.restore(model)
    assert torch.equal(model.weight, snapshots[best_step])
    assert keeper.summary() == {"eval_metric": metric, "best_step": best_step, "best_value": values[best_step - 1]}


def test_an_eval_without_the_metric_is_ignored():
    keeper = BestAdapter("exact_match")
    keeper.on_evaluate(
        None, SimpleNamespace(global_step=1), None, model=torch.nn.Linear(1, 1), metrics={"eval_loss": 1}
    )
    assert keeper.best_step is None


class Oracle(torch.nn.Module):
    """Answers each prompt with a fixed continuation: isolates the scoring from a model's skill."""

    def __init__(self, answers: dict[tuple[int, ...], list[int]], eos: int):
        super().__init__()
        self.answers, self.eos = answers, eos
        self.device = torch.device("cpu")

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            prompt = tuple(i for i, m in zip(ids, mask, strict=True) if m)
            rows.append(ids + (self.answers[prompt] + [self.eos] * max_new_tokens)[:max_new_tokens])
        return torch.tensor(rows)


def test_exact_match_score_tokenizes_splits_and_compares(tokenizer):
    from kubetune.trainer.data.formats import Example
    from kubetune.trainer.data.render import tokenize_examples
    from kubetune.trainer.selection import exact_match_score

    pairs = [("Say hi", "hi"), ("Name a colour, a longer prompt", "blue"), ("Count", "one two three")]
    examples = [Example(f"t:{i}", (("user", p), ("assistant", a))) for i, (p, a) in enumerate(pairs)]
    rows, _ = tokenize_examples(examples, tokenizer, "chat", None, "completion", 256)
    prompts = [tuple(prompt_and_reference(r["input_ids"], r["labels"])[0]) for r in rows]
    say = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    right = Oracle({p: say(a) for p, (_, a) in zip(prompts, pairs, strict=True)}, tokenizer.eos_token_id)
    assert exact_match_score(right, tokenizer, rows, batch_size=2) == 1.0
    one_wrong = dict(right.answers)
    one_wrong[prompts[1]] = say("red")
    model = Oracle(one_wrong, tokenizer.eos_token_id)
    model.train()
    assert exact_match_score(model, tokenizer, rows, batch_size=2) == pytest.approx(2 / 3)
    assert model.training  # the train/eval mode is restored
