"""Outputs you can trust (issue 22 item 5): `merge --dest` replaces only a merge result, and a merged/ belongs to
the adapter it was merged from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tinymodel import save_tiny_llama
from typer.testing import CliRunner

from kubetune.api import load_config
from kubetune.api.contract import ExitCode
from kubetune.trainer.cli import app

pytestmark = pytest.mark.slow
DATES = Path(__file__).resolve().parents[2] / "examples" / "data" / "dates"


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def train(tmp: Path, base: Path, seed: int) -> Path:
    from kubetune.trainer.train import run

    data = tmp / "train.jsonl"
    data.write_text("".join((DATES / "train.jsonl").read_text().splitlines(keepends=True)[:8]))
    cfg = load_config(
        None,
        sets=[
            f"model.path={base}",
            f"data.path={data}",
            f"output_dir={tmp / 'out'}",
            "training.max_steps=2",
            "training.batch_size=4",
            "training.lr=1e-2",
            "training.warmup_ratio=0",
            f"training.seed={seed}",
            "training.resume=never",
            "lora.r=2",
        ],
    )
    run(cfg, progress="none")
    return Path(cfg.output_dir)


@pytest.fixture
def trained(tmp_path, builtin_path):
    base = save_tiny_llama(tmp_path / "base", builtin_path)
    return base, train(tmp_path, base, seed=1)


def test_merge_refuses_a_non_empty_dest_that_is_not_a_merge_result(trained, tmp_path):
    _, out = trained
    home = tmp_path / "models"
    (home / "llama").mkdir(parents=True)
    (home / "llama" / "model.safetensors").write_bytes(b"someone's model")
    (home / "notes.txt").write_text("keep me")
    before = snapshot(home)
    result = CliRunner().invoke(app, ["merge", "--output-dir", str(out), "--dest", str(home)])
    assert result.exit_code == ExitCode.CONFIG, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(home) in errors[0] and "not a kubetune merge result" in errors[0]
    assert snapshot(home) == before and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_merge_replaces_an_earlier_merge_result(trained, tmp_path):
    from kubetune.trainer.merge import merge

    _, out = trained
    merge(out, dest=tmp_path / "merged")
    first = snapshot(tmp_path / "merged")
    result = CliRunner().invoke(app, ["merge", "--output-dir", str(out), "--dest", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged" / "kubetune-merge.json").is_file() and set(snapshot(tmp_path / "merged")) == set(first)


def test_a_new_adapter_drops_the_merged_model_of_the_old_one(trained, tmp_path):
    from kubetune.trainer.merge import adapter_identity, merge
    from kubetune.trainer.push import files_to_push

    base, out = trained
    merge(out)
    record = json.loads((out / "merged" / "kubetune-merge.json").read_text())
    assert any(k.startswith("merged/") for k in files_to_push(out))
    (out / "gguf").mkdir(exist_ok=True)  # what `kubetune export` makes from merged/
    (out / "gguf" / "model-f16.gguf").write_bytes(b"GGUF")
    train(tmp_path, base, seed=2)  # a re-run in the same output directory writes another adapter
    assert not (out / "merged").exists() and not (out / "gguf").exists()
    assert not any(k.startswith("merged/") for k in files_to_push(out))  # nothing stale goes out with the new adapter
    assert record["adapter_sha256"] != adapter_identity(out / "adapter")
    result = CliRunner().invoke(app, ["generate", "--output-dir", str(out), "-p", "hi", "--model", "merged"])
    assert result.exit_code == ExitCode.CONFIG and "run `kubetune merge` first" in result.output
