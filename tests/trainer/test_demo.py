"""`make demo` and `make demo-export`, run as a user runs them, and checked without the exporter's or generate's code.

The module trains what `make demo` trains (examples/configs/dates.yaml on the builtin SmolLM2-135M), merges it,
compares base and fine-tuned answers with `kubetune generate` and exports f16 and q8_0 (each checked by the
exporter on the first EXPORT_CHECKED held-out records). The test then measures exact match on all 100 held-out
records itself: greedy answers from the merged model in transformers (its tokenizer's chat template,
left-padded batches) and from each GGUF through llama.cpp's chat endpoint (which renders with the template
stored in the file). Fine-tuning must lift exact match from the base's near zero; f16 must answer every record
as transformers does, q8_0 stay within 2 points; eval.json, export.json and run.json must record what the test
measured. The suite's longest module (a full demo training), trained once for all of these.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import precision_modes
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
HELD_OUT = ROOT / "examples" / "data" / "dates" / "test.jsonl"
# Well past the longest reference (an ISO 8601 date is ~7 tokens): an answer cut here is not exact either way.
MAX_TOKENS = 32
Q8_MARGIN = 0.02  # issue 27: q8_0's exact match within 2 points of transformers'
# Records the exporter's own check and `kubetune generate` answer here (`make demo-export` checks 100): the test's
# measurement covers all 100, and the tools' figures are compared with its figures on their first records.
EXPORT_CHECKED = 25
GENERATED = 20


def kubetune(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kubetune.trainer.cli", *args],
        capture_output=True,
        text=True,
        env=precision_modes.child_env(),
        cwd=ROOT,
        timeout=3600,
    )
    assert done.returncode == 0, f"kubetune {args[0]} exited {done.returncode}:\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make demo` (train, merge, generate) then `make demo-export`'s export, into a fresh output directory."""
    pytest.importorskip("xllamacpp", reason="the export extra is not installed: pip install 'kubetune-trainer[export]'")
    out = tmp_path_factory.mktemp("demo") / "run"
    kubetune("train", "--config", "examples/configs/dates.yaml", "--output-dir", str(out))
    kubetune("merge", "--output-dir", str(out))
    kubetune("generate", "--output-dir", str(out), "--data", str(HELD_OUT), "--limit", str(GENERATED))
    kubetune(
        "export",
        "--output-dir",
        str(out),
        "-t",
        "f16",
        "-t",
        "q8_0",
        "--data",
        str(HELD_OUT),
        "--limit",
        str(EXPORT_CHECKED),
    )
    return out


def held_out() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in HELD_OUT.read_text().splitlines() if line.strip()]
    return [(r["prompt"], r["completion"]) for r in rows]


def transformers_answers(merged: Path, prompts: list[str], batch: int = 25) -> list[str]:
    """Greedy answers in plain transformers, left-padded batches (a record alone took ~1.1 s, a batch of 25 ~6 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    answers = []
    for start in range(0, len(prompts), batch):
        texts = [
            tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts[start : start + batch]
        ]
        ids = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
        answers += [a.strip() for a in tok.batch_decode(gen[:, ids["input_ids"].shape[1] :], skip_special_tokens=True)]
    return answers


def llamacpp_answers(path: Path, prompts: list[str]) -> list[str]:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = 512
    params.warmup = False
    params.verbosity = -1
    server = xllamacpp.Server(params)
    try:
        replies = [
            server.handle_chat_completions(
                {"messages": [{"role": "user", "content": p}], "max_tokens": MAX_TOKENS, "temperature": 0}
            )
            for p in prompts
        ]
    finally:
        del server
    return [r["choices"][0]["message"]["content"].strip() for r in replies]


def first(answers: list[str], n: int = EXPORT_CHECKED) -> tuple[list[str], list[str]]:
    """The first n answers and their references (what the exporter checked)."""
    return answers[:n], [ref for _, ref in held_out()[:n]]


def share_exact(answers: list[str], references: list[str]) -> float:
    return sum(a == r.strip() for a, r in zip(answers, references, strict=True)) / len(references)


@pytest.fixture(scope="module")
def measured(demo: Path) -> dict[str, tuple[list[str], float]]:
    """Answers and exact match per engine, computed here: {"transformers": ..., "f16": ..., "q8_0": ...}."""
    prompts, refs = zip(*held_out(), strict=True)
    hf = transformers_answers(demo / "merged", list(prompts))
    result = {"transformers": (hf, share_exact(hf, list(refs)))}
    for kind in ("f16", "q8_0"):
        got = llamacpp_answers(demo / "gguf" / f"model-{kind}.gguf", list(prompts))
        result[kind] = (got, share_exact(got, list(refs)))
    print("exact match on the 100 held-out records:", {k: v[1] for k, v in result.items()})
    return result


def test_the_demo_model_learned_the_task(measured):
    # Else the comparison below is between two engines that both fail the task (the untuned model: 0.01).
    assert measured["transformers"][1] >= 0.8, measured["transformers"][1]


def test_generate_shows_fine_tuning_lifting_exact_match_from_the_bases(demo, measured):
    """eval.json from `kubetune generate`: its figures are recounted here from its rows and the file's references,
    and its fine-tuned column must be the merged model's answers the test computed itself (the adapter on the
    base, as trained, is the merged model up to rounding), its base column mostly something else."""
    report = json.loads((demo / "eval.json").read_text())
    refs = [ref for _, ref in held_out()[:GENERATED]]
    rows = report["records"]
    assert [r["reference"].strip() for r in rows] == [ref.strip() for ref in refs]
    base, tuned = [r["base"].strip() for r in rows], [r["finetuned"].strip() for r in rows]
    assert report["exact_match"] == {
        "n": GENERATED,
        "base": share_exact(base, refs),
        "finetuned": share_exact(tuned, refs),
    }
    mine = measured["transformers"][0][:GENERATED]
    assert sum(a == b for a, b in zip(tuned, mine, strict=True)) >= GENERATED - 1, list(zip(tuned, mine, strict=True))
    assert share_exact(base, refs) <= 0.2 and share_exact(tuned, refs) >= share_exact(base, refs) + 0.6, report[
        "exact_match"
    ]


def test_f16_answers_every_held_out_record_like_transformers(measured):
    hf, _ = measured["transformers"]
    f16, em = measured["f16"]
    differing = [(i, a, b) for i, (a, b) in enumerate(zip(hf, f16, strict=True)) if a != b]
    assert differing == [], differing[:5]
    assert em == measured["transformers"][1]


def test_q8_0_exact_match_is_within_two_points_of_transformers(measured):
    assert measured["q8_0"][1] >= measured["transformers"][1] - Q8_MARGIN - 1e-9, measured["q8_0"][1]


def test_the_export_report_records_the_measured_figures(demo, measured):
    report = json.loads((demo / "gguf" / "export.json").read_text())
    run = json.loads((demo / "run.json").read_text())["export"]["files"]
    for kind in ("f16", "q8_0"):
        entry = report["files"][kind]
        assert entry["verified"] is True and entry["records"] == entry["with_reference"] == EXPORT_CHECKED
        assert entry["exact_match_transformers"] == pytest.approx(share_exact(*first(measured["transformers"][0])))
        assert entry["exact_match_llamacpp"] == pytest.approx(share_exact(*first(measured[kind][0])))
        assert run[kind]["exact_match_llamacpp"] == entry["exact_match_llamacpp"] and run[kind]["verified"] is True
        assert (demo / "gguf" / f"model-{kind}.Modelfile").is_file()
    assert report["files"]["f16"]["answers_equal"] == EXPORT_CHECKED
