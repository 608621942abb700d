"""QLoRA results answer like the model that was trained (issue 30).

A 4-bit and an 8-bit run on a tiny random Llama whose weights are large enough
(initializer_range 0.5) that quantizing them changes its greedy answers: the
merged model and `kubetune generate` must answer like the training-time model
(the quantized base + adapter, computing as in training), and the merge check
must refuse a merge into the unquantized base. Training precision is pinned to
fp32: the subject is quantization, and fp32 keeps every comparison exact enough
to compare answers token for token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tinymodel import tiny_llama

from kubetune.api import load_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DATES = ROOT / "examples" / "data" / "dates"
PROMPTS = ["Write March 5, 2021 as YYYY-MM-DD.", "Convert 12/01/1999 to ISO format.", "What is 2+2?"]


def noisy_tiny_llama(dest: Path, tokenizer_path: str) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    model = tiny_llama(
        len(tokenizer),
        hidden=64,
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def subset(src: Path, dest: Path, n: int) -> str:
    dest.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return str(dest)


def train(tmp: Path, base: Path, quantization: str, out: str = "out") -> Path:
    from kubetune.trainer.train import run

    cfg = load_config(
        None,
        sets=[
            f"model.path={base}",
            f"model.quantization={quantization}",
            f"data.path={subset(DATES / 'train.jsonl', tmp / 'train.jsonl', 16)}",
            f"output_dir={tmp / out}",
            "training.max_steps=3",
            "training.batch_size=4",
            "training.lr=1e-2",
            "training.warmup_ratio=0",
            "training.precision=fp32",
            "lora.r=4",
        ],
    )
    run(cfg, progress="none")
    return Path(cfg.output_dir)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, builtin_path):
    return noisy_tiny_llama(tmp_path_factory.mktemp("noisy") / "base", builtin_path)


@pytest.fixture(scope="module", params=["4bit", "8bit"])
def quantized_run(request, tmp_path_factory, base_dir):
    tmp = tmp_path_factory.mktemp(f"run{request.param}")
    return request.param, train(tmp, base_dir, request.param)


def training_time_model(base: Path, adapter: Path, quantization: str):
    """Built here from the libraries, not from kubetune: the quantized base + adapter in training mode (no dropout)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qcfg = (
        BitsAndBytesConfig(load_in_8bit=True)
        if quantization == "8bit"
        else BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    )
    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=torch.float32, quantization_config=qcfg, device_map={"": "cpu"}
    )
    return PeftModel.from_pretrained(model, adapter).train()  # lora.dropout is 0: training mode is deterministic


def unquantized_model(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()


def answers(model, out: Path) -> list[str]:
    """Greedy answers to PROMPTS, rendered with the run's template (as `kubetune generate` renders them)."""
    from kubetune.api.config import DataSection
    from kubetune.trainer.data.render import encode_prompt
    from kubetune.trainer.generate import generate_ids
    from kubetune.trainer.models import adapter_tokenizer

    run = json.loads((out / "run.json").read_text())
    tokenizer = adapter_tokenizer(out / "adapter")
    template, system = run["resolved"]["template"], DataSection().system_prompt
    encoded = [encode_prompt((("user", p),), template, tokenizer, system) for p in PROMPTS]
    return generate_ids(model, tokenizer, encoded, 12, 4)


def probe_logits(model, out: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(out / "adapter")(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits.float()


def test_merged_model_and_generate_answer_like_the_training_time_model(quantized_run, base_dir):
    from transformers import AutoModelForCausalLM

    from kubetune.trainer.generate import compare
    from kubetune.trainer.merge import merge

    quantization, out = quantized_run
    trained = training_time_model(base_dir, out / "adapter", quantization)
    expected = answers(trained, out)
    # The test can fail: on this model the unquantized base + adapter answers otherwise (what kubetune used to do).
    assert answers(unquantized_model(base_dir, out / "adapter"), out) != expected

    result = merge(out)
    assert result["base"] == "as_trained" and result["quantization"] == quantization
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    want = probe_logits(trained, out)
    assert (probe_logits(merged, out) - want).abs().max().item() <= 1e-4 * want.abs().max().item()
    assert answers(merged, out) == expected
    record = json.loads((out / "merged" / "kubetune-merge.json").read_text())
    assert record["base"] == "as_trained" and record["max_logit_diff"] <= record["tolerance"]

    report = compare(out, PROMPTS, None, max_new_tokens=12)
    assert report["finetuned_model"] == "as_trained"
    assert [r["finetuned"] for r in report["records"]] == expected
    merged_report = compare(out, PROMPTS, None, max_new_tokens=12, model_choice="merged")
    assert merged_report["finetuned_model"] == "merged"


def test_merge_check_refuses_an_unquantized_base_for_a_quantized_run(quantized_run, base_dir):
    from kubetune.trainer.errors import ModelError
    from kubetune.trainer.merge import REFERENCE_TOLERANCE, _reference, check_against
    from kubetune.trainer.models import adapter_tokenizer

    quantization, out = quantized_run
    adapter = out / "adapter"
    reference = _reference(training_time_model(base_dir, adapter, quantization), adapter_tokenizer(adapter))
    fp32 = REFERENCE_TOLERANCE[torch.float32]  # the run trained in fp32
    into_unquantized = unquantized_model(base_dir, adapter).merge_and_unload()
    with pytest.raises(ModelError, match="merge verification failed: merged logits differ"):
        check_against(into_unquantized, reference, fp32, "the quantized base + adapter")


def test_merge_base_original_is_recorded(quantized_run, tmp_path):
    from kubetune.trainer.merge import merge

    _, out = quantized_run
    result = merge(out, dest=tmp_path / "original", base_mode="original")
    record = json.loads((tmp_path / "original" / "kubetune-merge.json").read_text())
    assert result["base"] == record["base"] == "original"
    assert record["checked_against"] == "the unquantized base + adapter"


def test_merge_base_is_the_flag_else_the_run_s_and_nothing_else():
    from kubetune.trainer.errors import UsageError
    from kubetune.trainer.merge import merge_base

    recorded = {"config": {"merge": {"base": "original"}}}
    assert merge_base({}, None) == "as_trained"
    assert merge_base(recorded, None) == "original"
    assert merge_base(recorded, "as_trained") == "as_trained"
    with pytest.raises(UsageError, match=r"merge\.base: .*as_trained \| original"):
        merge_base({}, "dequantized")
