"""training.eval_metric: splitting eval rows into prompt and answer, ranking evals, keeping the best weights."""

import json
from types import SimpleNamespace

import precision_modes
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


def _records(path, prompts, answer):
    path.write_text("".join(json.dumps({"prompt": p, "completion": answer}) + "\n" for p in prompts))
    return str(path)


def test_a_run_whose_eval_gets_worse_ends_with_the_first_evals_weights(tmp_path, builtin_path):
    """A real run (the tiny random Llama) trained towards one answer and evaluated on another for the same
    prompts: every step lowers the chance of the eval's answer, so the eval loss rises at every eval and the
    adapter written at the end must be step 2's weights, not the last step's. The run itself, not the callback
    alone: train.py has to restore the best weights before it writes the adapter."""
    from safetensors.torch import load_file
    from tinymodel import save_tiny_llama

    from kubetune.api import load_config
    from kubetune.trainer.train import run

    model = save_tiny_llama(tmp_path / "model", builtin_path)
    prompts = [f"Item {i}: which word comes next?" for i in range(8)]
    out = tmp_path / "out"
    cfg = load_config(
        None,
        sets=[
            f"model.path={model}",
            f"data.path={_records(tmp_path / 'train.jsonl', prompts, 'apple apple apple apple apple apple')}",
            f"data.eval_path={_records(tmp_path / 'eval.jsonl', prompts, 'river river river river river river')}",
            f"output_dir={out}",
            "training.max_steps=6",
            "training.batch_size=4",
            "training.lr=1e-2",
            "training.warmup_ratio=0",
            "training.eval_steps=2",
            "training.save_steps=2",
            "training.save_total_limit=3",
            "training.eval_metric=loss",
            *precision_modes.sets(),
        ],
    )
    summary = run(cfg, progress="none")
    evals = [e for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if e["event"] == "eval"]
    losses = [e["eval_loss"] for e in evals]
    assert [e["step"] for e in evals] == [2, 4, 6] and losses[0] < losses[1] < losses[2], losses
    assert (summary["best_step"], summary["best_value"]) == (2, losses[0])

    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    checkpoints = out / "checkpoints"
    at = {step: load_file(checkpoints / f"checkpoint-{step}" / "adapter_model.safetensors") for step in (2, 6)}
    assert adapter.keys() == at[2].keys() and all(torch.equal(adapter[k], at[2][k]) for k in adapter)
    assert any(not torch.equal(adapter[k], at[6][k]) for k in adapter)
