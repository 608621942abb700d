"""Masking checked token by token for every format, against literal expected renderings.

The expected token ids are built from hand-written template text, tokenized
piece by piece, so a renderer that drifts from the model's real chat format fails.
"""

import pytest

from kubetune.trainer.data.formats import Example, normalize
from kubetune.trainer.data.loaders import Record
from kubetune.trainer.data.render import (
    IGNORE,
    TEMPLATES,
    encode_prompt,
    resolve_template,
    tokenize_examples,
    trained_spans,
)
from kubetune.trainer.errors import DataError

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def expect(tok, pieces):
    """(text, trained) pieces -> expected input_ids and labels (first label always ignored)."""
    input_ids, labels = [], []
    for text, trained in pieces:
        t = ids(tok, text) if isinstance(text, str) else text
        input_ids += t
        labels += t if trained else [IGNORE] * len(t)
    labels[0] = IGNORE
    return input_ids, labels


def render_one(tok, record, fmt, template="chat", train_on="completion", system=None, max_length=512):
    example = normalize(Record(record, "f:1"), fmt, "text")
    rows, stats = tokenize_examples([example], tok, resolve_template(template, tok), system, train_on, max_length)
    return rows, stats


@pytest.mark.parametrize(
    ("record", "fmt", "user"),
    [
        ({"prompt": "What is 2+2?", "completion": "4"}, "prompt_completion", "What is 2+2?"),
        ({"input": "Hi there", "output": "Hello!"}, "input_output", "Hi there"),
        ({"instruction": "Add", "input": "2 and 2", "output": "4"}, "alpaca", "Add\n\n2 and 2"),
    ],
)
def test_single_turn_chat_masks_prompt(tokenizer, record, fmt, user):
    answer = next(v for k, v in record.items() if k in ("completion", "output"))
    rows, _ = render_one(tokenizer, record, fmt)
    want_ids, want_labels = expect(
        tokenizer,
        [
            (SYSTEM + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", False),
            (f"{answer}<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert rows[0]["input_ids"] == want_ids
    assert rows[0]["labels"] == want_labels


def test_multi_turn_messages_train_every_assistant_turn(tokenizer):
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ciao"},
        ]
    }
    rows, _ = render_one(tokenizer, record, "messages")
    want_ids, want_labels = expect(
        tokenizer,
        [
            ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", False),
            ("hello<|im_end|>", True),
            ("\n<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n", False),
            ("ciao<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert (rows[0]["input_ids"], rows[0]["labels"]) == (want_ids, want_labels)


def test_system_prompt_replaces_default(tokenizer):
    rows, _ = render_one(tokenizer, {"prompt": "p", "completion": "c"}, "prompt_completion", system="Dates only.")
    want_ids, want_labels = expect(
        tokenizer,
        [
            (
                "<|im_start|>system\nDates only.<|im_end|>\n<|im_start|>user\np<|im_end|>\n<|im_start|>assistant\n",
                False,
            ),
            ("c<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert (rows[0]["input_ids"], rows[0]["labels"]) == (want_ids, want_labels)


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_a_record_with_its_own_system_turn_keeps_it_under_every_template(tokenizer, template):
    # One rule for all templates: data.system_prompt is added only when the record has no system turn,
    # wherever that turn stands.
    record = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Record's own."},
            {"role": "assistant", "content": "hello"},
        ]
    }
    rows, _ = render_one(tokenizer, record, "messages", template=template, system="From the config.")
    text = tokenizer.decode(rows[0]["input_ids"])
    assert "Record's own." in text
    assert "From the config." not in text


def test_alpaca_template_appends_eos_token(tokenizer):
    rows, _ = render_one(tokenizer, {"instruction": "Say hi", "output": "hi"}, "alpaca", template="alpaca")
    prompt = TEMPLATES["alpaca"].replace("{prompt}", "Say hi")
    want_ids, want_labels = expect(
        tokenizer, [(prompt, False), ([*ids(tokenizer, "hi"), tokenizer.eos_token_id], True)]
    )
    assert (rows[0]["input_ids"], rows[0]["labels"]) == (want_ids, want_labels)


def test_literal_template(tokenizer):
    rows, _ = render_one(tokenizer, {"input": "x", "output": "y"}, "input_output", template="Q: {prompt}\nA: ")
    want_ids, want_labels = expect(
        tokenizer, [("Q: x\nA: ", False), ([*ids(tokenizer, "y"), tokenizer.eos_token_id], True)]
    )
    assert (rows[0]["input_ids"], rows[0]["labels"]) == (want_ids, want_labels)


def test_plain_text_trains_on_everything(tokenizer):
    rows, _ = render_one(tokenizer, {"text": "Be yourself; everyone else is taken."}, "text")
    t = [*ids(tokenizer, "Be yourself; everyone else is taken."), tokenizer.eos_token_id]
    assert rows[0]["input_ids"] == t
    assert rows[0]["labels"] == [IGNORE, *t[1:]]


def test_train_on_all_keeps_prompt_labels(tokenizer):
    rows, _ = render_one(tokenizer, {"prompt": "p", "completion": "c"}, "prompt_completion", train_on="all")
    assert rows[0]["labels"][1:] == rows[0]["input_ids"][1:]


def test_truncation_is_counted_and_targetless_records_dropped(tokenizer):
    long = {"prompt": "word " * 100, "completion": "answer"}
    rows, stats = render_one(tokenizer, long, "prompt_completion", max_length=16)
    assert rows == [] and stats.truncated == 1 and stats.dropped_no_target == 1
    rows, stats = render_one(tokenizer, {"text": "word " * 100}, "text", max_length=16)
    assert len(rows[0]["input_ids"]) == 16 and stats.truncated == 1 and stats.lengths[0] > 16


def test_training_prompt_equals_inference_prompt(tokenizer):
    rows, _ = render_one(tokenizer, {"prompt": "When?", "completion": "Now"}, "prompt_completion")
    prompt = encode_prompt([("user", "When?")], "chat", tokenizer, None)
    assert rows[0]["input_ids"][: len(prompt)] == prompt
    assert rows[0]["labels"][len(prompt)] != IGNORE and rows[0]["labels"][len(prompt) - 1] == IGNORE


def test_trained_spans_mark_exactly_the_answer(tokenizer):
    rows, _ = render_one(tokenizer, {"prompt": "p", "completion": "the answer"}, "prompt_completion")
    spans = trained_spans(tokenizer, rows[0]["input_ids"], rows[0]["labels"])
    assert [s for s in spans if s[1]] == [("the answer<|im_end|>", True)]


def test_template_errors(tokenizer):
    with pytest.raises(DataError, match="neither auto, chat"):
        resolve_template("nonsense", tokenizer)
    multi = Example("f:2", (("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")))
    with pytest.raises(DataError, match=r"f:2: multi-turn conversations need data\.template: chat"):
        tokenize_examples([multi], tokenizer, TEMPLATES["alpaca"], None, "completion", 64)
