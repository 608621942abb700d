"""The committed quality suite is exactly what its generator writes; held-out answers are right and unseen."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location("make_tasks", ROOT / "examples" / "make_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = load_generator()


def test_there_are_at_least_four_kinds():
    assert set(GEN.TASKS) >= {"extract", "classify", "normalize", "style"}


@pytest.mark.parametrize("task", sorted(GEN.TASKS))
def test_committed_files_match_generator(task, tmp_path):
    train, test = GEN.generate(task)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        GEN.write_jsonl(tmp_path / name, rows)
        assert (tmp_path / name).read_text() == (ROOT / "examples" / "data" / "tasks" / task / name).read_text()


@pytest.mark.parametrize("task", sorted(GEN.TASKS))
def test_held_out_split_is_unseen(task):
    train, test = GEN.generate(task)
    assert len(train) == GEN.N_TRAIN and len(test) == GEN.N_TEST
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    if task != "classify":  # four labels: there only the prompts are new
        assert not {r["completion"] for r in train} & {r["completion"] for r in test}


def _number(text: str, unit: str) -> float:
    return float(re.search(rf"([\d.]+) {unit}\b", text).group(1))


def test_extraction_converts_units():
    train, _ = GEN.generate("extract")
    for row in train[:100]:
        answer = json.loads(row["completion"])
        note = row["prompt"]
        assert answer["item"] in note
        grams = _number(note, "kg") * 1000 if " kg" in note else _number(note, "g")
        mm = _number(note, "cm") * 10 if " cm" in note else _number(note, "mm")
        assert (answer["weight_g"], answer["length_mm"]) == (round(grams), round(mm))


def test_other_answers_follow_from_the_prompt():
    for row in GEN.generate("normalize")[0][:100]:
        assert re.sub(r"\D", "", row["prompt"]).removeprefix("164").lstrip("1")[-10:] == row["completion"][2:]
    for row in GEN.generate("classify")[0][:100]:
        assert row["completion"] in GEN.QUEUES
    for row in GEN.generate("style")[0][:100]:
        action = row["completion"].removeprefix("Could you please ").removesuffix("?")
        assert action.lower() in row["prompt"].lower()
