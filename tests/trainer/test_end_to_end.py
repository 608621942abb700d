"""Real runs on the embedded SmolLM2-135M: train, merge, generate, QLoRA, and the CLI contract.

Kept short (a few steps on a few dozen records) so the suite stays in minutes on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import precision_modes
import pytest
import torch

from kubetune.api import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DATES = ROOT / "examples" / "data" / "dates"


def subset(src: Path, dest: Path, n: int) -> str:
    dest.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return str(dest)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from kubetune.trainer.train import run

    tmp = tmp_path_factory.mktemp("run")
    cfg = load_config(
        None,
        sets=[
            f"data.path={subset(DATES / 'train.jsonl', tmp / 'train.jsonl', 64)}",
            f"data.eval_path={subset(DATES / 'test.jsonl', tmp / 'eval.jsonl', 8)}",
            f"output_dir={tmp / 'out'}",
            "training.max_steps=8",
            "training.batch_size=4",
            "training.lr=1e-3",
            "training.logging_steps=1",
            "training.save_steps=4",
            "training.warmup_ratio=0",
            *precision_modes.sets(),
        ],
    )
    summary = run(cfg, progress="json")
    return cfg, summary, Path(cfg.output_dir)


def test_training_lowers_loss_and_writes_everything(trained):
    cfg, summary, out = trained
    assert summary["steps"] == 8
    assert summary["final_loss"] < summary["first_loss"] * 0.7
    adapter = out / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (adapter / name).is_file(), name
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == cfg.lora.r
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-8"]
    progress = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [p["step"] for p in progress if p["event"] == "progress"] == list(range(1, 9))
    assert any(p["event"] == "eval" for p in progress)


def test_run_json_is_complete(trained):
    cfg, summary, out = trained
    run = json.loads((out / "run.json").read_text())
    assert run["config"] == cfg.model_dump(mode="json")
    assert run["resolved"]["device"] == "cpu" and run["resolved"]["precision"] in {"fp32", "bf16"}
    if precision_modes.forced():
        assert run["resolved"]["precision"] == precision_modes.forced()
    # What the Trainer itself was told, read back from the checkpoint it wrote (not from kubetune's record).
    args = torch.load(out / "checkpoints" / "checkpoint-8" / "training_args.bin", weights_only=False)
    assert args.bf16 == (run["resolved"]["precision"] == "bf16") and not args.fp16
    assert run["resolved"]["template"] == "chat" and run["resolved"]["global_batch"] == 4
    assert len(run["data"]["hashes"]) == 2 and all(len(h) == 64 for h in run["data"]["hashes"].values())
    assert len(run["model"]["fingerprint"]) == 64
    import peft
    import transformers

    assert run["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert run["versions"]["transformers"] == transformers.__version__
    assert run["versions"]["peft"] == peft.__version__
    m = run["metrics"]
    assert m["tokens"] > 0 and m["tokens_per_second"] > 0 and m["eval_loss"] is not None
    assert m == summary


def test_merge_loads_differs_and_generates(trained, builtin_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer.merge import merge

    _, _, out = trained
    result = merge(out)
    assert result["changed_tensors"] == 30 * 7  # every linear layer of every block
    assert result["max_logit_diff"] < 1e-2 and result["adapter_effect"] > 1e-2
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = AutoModelForCausalLM.from_pretrained(builtin_path)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[key], base.state_dict()[key])
    assert torch.equal(merged.state_dict()["model.norm.weight"], base.state_dict()["model.norm.weight"])
    # Independent of merge()'s own check: peft applies the saved adapter to a freshly loaded base, and the
    # merged model must give the same next-token logits and the same greedy answers on real prompts.
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_path), out / "adapter").eval()
    merged.eval()
    tok = AutoTokenizer.from_pretrained(out / "merged")
    prompts = [json.loads(line)["prompt"] for line in (DATES / "test.jsonl").read_text().splitlines()[:3]]
    for prompt in prompts:
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            want, got = adapted(**ids).logits[0, -1], merged(**ids).logits[0, -1]
            base_logits = base(**ids).logits[0, -1]
        assert (want - got).abs().max() < 1e-2 < (want - base_logits).abs().max()
        answer = merged.generate(**ids, max_new_tokens=12, do_sample=False)
        assert torch.equal(answer, adapted.generate(**ids, max_new_tokens=12, do_sample=False))


def test_merge_failure_keeps_previous_output(trained, tmp_path):
    from kubetune.trainer.errors import ModelError
    from kubetune.trainer.merge import merge

    _, _, out = trained
    with pytest.raises(ModelError, match="no LoRA adapter"):
        merge(out, adapter=tmp_path)


def test_generate_scores_exact_match(trained):
    """The report's plumbing on a short run; that fine-tuning helps is test_demo's (the demo model, 100 records)."""
    from kubetune.trainer.generate import compare

    _, _, out = trained
    report = compare(out, ["Say hi"], DATES / "test.jsonl", limit=6, max_new_tokens=16)
    rows = report["records"]
    assert len(rows) == 7 and "reference" not in rows[0]
    scored = rows[1:]
    assert report["exact_match"]["n"] == 6
    assert report["exact_match"]["finetuned"] == sum(r["finetuned"] == r["reference"] for r in scored) / 6
    assert report["exact_match"]["base"] == sum(r["base"] == r["reference"] for r in scored) / 6
    assert any(r["base"] != r["finetuned"] for r in scored)  # the adapter changes answers
    assert json.loads((out / "eval.json").read_text())["exact_match"] == report["exact_match"]


def test_qlora_4bit_trains_and_merges(tmp_path):
    from kubetune.trainer.merge import merge
    from kubetune.trainer.train import run

    cfg = load_config(
        None,
        sets=[
            f"data.path={subset(DATES / 'train.jsonl', tmp_path / 'train.jsonl', 8)}",
            f"output_dir={tmp_path / 'out'}",
            "model.quantization=4bit",
            "training.max_steps=2",
            "training.batch_size=4",
            "lora.r=4",
            "training.logging_steps=1",
            *precision_modes.sets(),
        ],
    )
    summary = run(cfg, progress="json")
    assert summary["steps"] == 2 and summary["final_loss"] is not None
    run_info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_info["resolved"]["gradient_checkpointing"] is True
    assert merge(tmp_path / "out")["changed_tensors"] == 30 * 7


def kubetune(*args, env=None, cwd=None):
    full_env = precision_modes.child_env(**(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "kubetune.trainer.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=600,
    )


def test_cli_stdout_is_json_progress_lines_only(tmp_path):
    data = subset(DATES / "train.jsonl", tmp_path / "train.jsonl", 8)
    # The seeds' env names work as the container contract's aliases.
    proc = kubetune(
        "train",
        "--max-steps",
        "2",
        "--set",
        "training.logging_steps=1",
        env={"DATA_PATH": data, "OUTPUT_DIR": str(tmp_path / "out"), "KUBETUNE_LORA__R": "4"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["event"] for e in events] == ["progress", "progress"]
    assert set(events[0]) >= {"step", "total_steps", "loss", "epoch", "tokens_per_second", "eta_seconds"}
    assert json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_merge_rejects_an_adapter_that_changes_nothing(tmp_path, builtin_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer.errors import ModelError
    from kubetune.trainer.merge import merge

    # A fresh LoRA adapter has B = 0: merging it would silently produce the base model.
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(builtin_path),
        LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"),
    )
    model.save_pretrained(tmp_path / "adapter")
    AutoTokenizer.from_pretrained(builtin_path).save_pretrained(tmp_path / "adapter")
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "previous").write_text("kept")
    with pytest.raises(ModelError, match="adapted weights equal the base"):
        merge(tmp_path, base=builtin_path)
    assert (tmp_path / "merged" / "previous").read_text() == "kept"  # the old output is untouched
