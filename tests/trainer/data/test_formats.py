"""Format detection and normalization, with errors naming the field."""

import pytest

from kubetune.trainer.data.formats import detect_format, normalize, normalize_all
from kubetune.trainer.data.loaders import Record
from kubetune.trainer.errors import DataError


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"messages"}, "messages"),
        ({"prompt", "completion"}, "prompt_completion"),
        ({"instruction", "input", "output"}, "alpaca"),
        ({"input", "output"}, "input_output"),
        ({"text", "id"}, "text"),
    ],
)
def test_detect(columns, expected):
    assert detect_format(columns, "text") == expected


def test_detect_custom_text_field_and_unknown():
    assert detect_format({"quote", "author"}, "quote") == "text"
    with pytest.raises(DataError, match="cannot tell the data format"):
        detect_format({"a", "b"}, "text")


def rec(**values):
    return Record(values, "f.jsonl:7")


def test_each_format_normalizes_to_turns():
    assert normalize(rec(input="i", output="o"), "input_output", "text").messages == (("user", "i"), ("assistant", "o"))
    assert normalize(rec(instruction="do", input="", output="o"), "alpaca", "text").messages[0] == ("user", "do")
    assert normalize(rec(instruction="do", input="x", output="o"), "alpaca", "text").messages[0] == ("user", "do\n\nx")
    assert normalize(rec(prompt="p", completion="c"), "prompt_completion", "text").messages == (
        ("user", "p"),
        ("assistant", "c"),
    )
    conv = rec(
        prompt=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        completion=[{"role": "assistant", "content": "a"}],
    )
    assert normalize(conv, "prompt_completion", "text").messages == (("system", "s"), ("user", "u"), ("assistant", "a"))
    assert normalize(rec(quote="q"), "text", "quote").text == "q"


@pytest.mark.parametrize(
    ("values", "fmt", "message"),
    [
        ({"input": "i"}, "input_output", "missing field 'output'"),
        ({"input": "i", "output": 3}, "input_output", "field 'output' must be a string, got int"),
        ({"input": "i", "output": "  "}, "input_output", "field 'output' is empty"),
        ({"prompt": "p"}, "prompt_completion", "missing field 'completion'"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages", "messages[0].role must be one of"),
        ({"messages": [{"role": "user", "content": "x"}]}, "messages", "no assistant turn"),
        ({"messages": "hi"}, "messages", "must be a list"),
        ({"text": None}, "text", "missing field 'text'"),
    ],
)
def test_bad_records_name_the_field(values, fmt, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        normalize(rec(**values), fmt, "text")


def test_normalize_all_collects_bad_records_with_location():
    records = [rec(input="a", output="b"), Record({"input": "x"}, "f.jsonl:9")]
    bad = []
    fmt, examples = normalize_all(records, "auto", "text", bad)
    assert fmt == "input_output" and len(examples) == 1
    assert [str(b) for b in bad] == ["f.jsonl:9: missing field 'output'"]
