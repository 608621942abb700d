"""Bad records stop the run before training (all listed), or are skipped and counted."""

import json

import pytest

from kubetune.api.config import DataSection
from kubetune.trainer.data.pipeline import prepare
from kubetune.trainer.errors import DataError


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)]


def test_bad_records_stop_with_every_location(tmp_path, tokenizer):
    f = write(tmp_path / "d.jsonl", [GOOD[0], '{"prompt": "x"', {"prompt": "y"}, GOOD[1]])
    with pytest.raises(DataError) as err:
        prepare(DataSection(path=[f]), tokenizer, seed=0)
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{f}:2: malformed JSON")
    assert lines[1] == f"{f}:3: missing field 'completion'"
    assert lines[2].startswith("2 bad record(s)") and "skip_bad_records" in lines[2]


def test_skip_bad_records_counts_them(tmp_path, tokenizer):
    f = write(tmp_path / "d.jsonl", [GOOD[0], '{"prompt": "x"', {"prompt": "y"}, GOOD[1]])
    data = prepare(DataSection(path=[f], skip_bad_records=True), tokenizer, seed=0)
    assert len(data.train) == 2 and len(data.skipped) == 2


def test_eval_split_is_deterministic_and_disjoint(tmp_path, tokenizer):
    f = write(tmp_path / "d.jsonl", GOOD)
    a = prepare(DataSection(path=[f], eval_split=0.2), tokenizer, seed=3)
    b = prepare(DataSection(path=[f], eval_split=0.2), tokenizer, seed=3)
    assert len(a.eval) == 4 and len(a.train) == 16
    assert [r["where"] for r in a.eval] == [r["where"] for r in b.eval]
    assert not {r["where"] for r in a.eval} & {r["where"] for r in a.train}


def test_eval_file(tmp_path, tokenizer):
    f = write(tmp_path / "t.jsonl", GOOD)
    e = write(tmp_path / "e.jsonl", GOOD[:3])
    data = prepare(DataSection(path=[f], eval_path=[e]), tokenizer, seed=0)
    assert (len(data.train), len(data.eval)) == (20, 3)


def test_all_records_truncated_away_is_an_error(tmp_path, tokenizer):
    f = write(tmp_path / "d.jsonl", [{"prompt": "word " * 50, "completion": "x"}])
    with pytest.raises(DataError, match="without a target after truncation"):
        prepare(DataSection(path=[f], max_length=16), tokenizer, seed=0)
