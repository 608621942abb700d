"""The committed demo data is exactly what the generator writes, and its splits are disjoint."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location("make_dates", ROOT / "examples" / "make_dates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_match_generator(tmp_path):
    gen = load_generator()
    train, test = gen.generate(1234, 600, 100)
    gen.write_jsonl(tmp_path / "train.jsonl", train)
    gen.write_jsonl(tmp_path / "test.jsonl", test)
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_text() == (ROOT / "examples" / "data" / "dates" / name).read_text()


def test_answers_are_correct_and_splits_disjoint():
    gen = load_generator()
    train, test = gen.generate(1234, 600, 100)
    assert not {r["completion"] for r in train} & {r["completion"] for r in test}
    for row in train[:50]:
        y, m, d = map(int, row["completion"].split("-"))
        assert str(y) in row["prompt"] and gen.MONTHS[m - 1][:3] in row["prompt"] and str(d) in row["prompt"]


def test_quotes_example_is_plain_text():
    rows = [json.loads(x) for x in (ROOT / "examples" / "data" / "quotes.jsonl").read_text().splitlines()]
    assert len(rows) >= 20 and all(set(r) == {"quote", "author"} for r in rows)
