#!/usr/bin/env python3
"""Quality benchmark: exact match after one epoch on every task of the suite, per contender.

    make quality                                   # or: python bench/quality.py --tasks extract style

The suite is examples/data/tasks (examples/make_tasks.py). Every contender
trains one epoch on each task's training split and answers its held-out split
greedily; one scoring function for all (kubetune's exact match). Contenders run
interleaved (task by task), so load from other processes on the machine hits
them alike. No per-task settings: one configuration per contender.

Contenders:
  kubetune      `kubetune train` defaults (training.lr: auto), epochs=1
  kubetune-old  the same with the old defaults training.lr=2e-4, lora.dropout=0.05
  trl-bf16      the same in bf16, as a competent user runs it where bf16 is native (AMX, AVX512-BF16);
                by default only there. The speed line compares kubetune with the faster of trl, trl-bf16.
  kubetune-bf16 / kubetune-fp32   precision forced (--only)
  trl           TRL's SFTTrainer used plainly with the usual LoRA recipe of its docs: lr 2e-4 (its own
                default is 2e-5), LoRA r=16, alpha=32, dropout 0.05, all-linear, batch 8, fp32
  kubetune-4bit `kubetune train` defaults with model.quantization: 4bit (issue 30, --only), scored four ways:
                `kubetune generate` (its default, the model as trained), `kubetune merge` + `generate
                --model merged`, the adapter applied with plain peft to the base loaded in NF4 by
                transformers + bitsandbytes (no kubetune code), and `generate --model original`
                (the unquantized base). Run it next to kubetune-bf16: the targets are within one record
                of the plain-peft NF4 figure, and at least the bf16 LoRA figure minus 0.02.

`--lr` runs kubetune at fixed learning rates instead (the sweep behind lr: auto).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "examples" / "data" / "tasks"
TASKS = ["extract", "classify", "normalize", "style"]
CONTENDERS = ["kubetune", "kubetune-old", "trl", "kubetune-bf16", "kubetune-fp32", "trl-bf16", "kubetune-4bit"]
DEFAULT_CONTENDERS = ["kubetune", "kubetune-old", "trl", "trl-bf16"]


def default_contenders() -> list[str]:
    """trl-bf16 only where the CPU computes bf16 natively: a TRL user elsewhere would not turn it on."""
    from kubetune.trainer.device import cpu_has_native_bf16, detect

    native = cpu_has_native_bf16(detect().cpu_flags)
    return [c for c in DEFAULT_CONTENDERS if c != "trl-bf16" or native]


MODEL = "builtin:smollm2-135m-instruct"


def read_rows(path: Path, n: int | None = None) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()[:n]]


SCORE_BATCH = 32  # prompts per generate() batch, for every contender: a 4-bit forward on a CPU costs a
# dequantization of every weight whatever the batch, so fewer, larger batches keep 4-bit scoring affordable


def score(model, tokenizer, rows: list[dict]) -> float:
    """Greedy answers to the held-out prompts, exact match against the references.

    The caller sets the model's mode: eval, except the quantized layers of a model scored as trained.
    """
    from kubetune.trainer.data.render import encode_prompt
    from kubetune.trainer.generate import exact_match, generate_ids

    prompts = [encode_prompt((("user", r["prompt"]),), "chat", tokenizer, None) for r in rows]
    longest = max(len(tokenizer(r["completion"], add_special_tokens=False).input_ids) for r in rows)
    answers = generate_ids(model, tokenizer, prompts, longest + 4, SCORE_BATCH)
    return sum(exact_match(a, r["completion"]) for a, r in zip(answers, rows, strict=True)) / len(rows)


def train_kubetune(
    task: str, out: Path, sets: list[str], n_train: int | None, started: float, load: bool = True
) -> tuple[object, object, dict]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.api import load_config
    from kubetune.trainer.models import resolve_path
    from kubetune.trainer.train import run

    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in read_rows(TASKS_DIR / task / "train.jsonl", n_train)))
    cfg = load_config(
        None, sets=[f"data.path={data}", f"output_dir={out}", "training.epochs=1", "training.save_steps=100000", *sets]
    )
    summary = run(cfg, progress="none")
    done = time.perf_counter() - started  # the adapter is on disk; reloading it for scoring is not training
    resolved = json.loads((out / "run.json").read_text())["resolved"]
    info = {"train_seconds": summary["train_seconds"], "lr": resolved["lr"], "precision": resolved["precision"]}
    if not load:
        return None, None, {**info, "process_seconds": done}
    tok = AutoTokenizer.from_pretrained(out / "adapter")
    base = AutoModelForCausalLM.from_pretrained(resolve_path(MODEL), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out / "adapter")
    return model, tok, {**info, "process_seconds": done}


def train_trl(
    task: str, out: Path, n_train: int | None, started: float, bf16: bool = False
) -> tuple[object, object, dict]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from kubetune.trainer.models import resolve_path

    path = resolve_path(MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32)
    rows = read_rows(TASKS_DIR / task / "train.jsonl", n_train)
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["completion"]}],
            }
            for r in rows
        ]
    )
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=2e-4,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        seed=42,
        bf16=bf16,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    start = time.perf_counter()
    trainer.train()
    trainer.save_model(str(out / "adapter"))  # the adapter on disk, as kubetune's run ends
    info = {"train_seconds": time.perf_counter() - start, "lr": 2e-4, "precision": "bf16" if bf16 else "fp32"}
    info["process_seconds"] = time.perf_counter() - started
    return trainer.model.float(), tok, info


def peft_on_nf4(out: Path) -> tuple[object, object]:
    """The adapter on the base loaded in NF4 by transformers + bitsandbytes, used plainly with peft (eval mode).

    Only the run's facts come from run.json (its quantization settings and training precision); the
    loading is the standard QLoRA recipe, not kubetune's code.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from kubetune.trainer.models import resolve_path

    run = json.loads((out / "run.json").read_text())
    model_cfg = run["config"]["model"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[run["resolved"]["precision"]]
    compute = model_cfg["compute_dtype"]
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_cfg["quant_type"],
        bnb_4bit_use_double_quant=model_cfg["double_quant"],
        bnb_4bit_compute_dtype=dtype if compute == "auto" else {"fp32": torch.float32, "bf16": torch.bfloat16}[compute],
    )
    base = AutoModelForCausalLM.from_pretrained(
        resolve_path(MODEL), dtype=dtype, quantization_config=bnb, device_map={"": "cpu"}
    )
    # .eval(): bitsandbytes' inference kernels, as a plain user gets them
    return PeftModel.from_pretrained(base, out / "adapter").eval(), AutoTokenizer.from_pretrained(out / "adapter")


def generate_em(out: Path, rows: list[dict], choice: str) -> float:
    """Exact match of the model `kubetune generate --model CHOICE` answers with, loaded by generate's own loaders.

    Only its fine-tuned column: the base column is not part of the measurement and would cost another 4-bit
    generation (minutes on a CPU). The run's template is the chat template score() renders with.
    """
    from transformers import AutoTokenizer

    from kubetune.trainer.generate import _load_for_generation, _load_merged, _merged_dir
    from kubetune.trainer.merge import trained_base

    run = json.loads((out / "run.json").read_text())
    if run["resolved"]["template"] != "chat":
        raise SystemExit(f"the run rendered with template {run['resolved']['template']!r}; score() renders chat")
    adapter = out / "adapter"
    if choice == "merged":
        model = _load_merged(_merged_dir(out, adapter))
    else:
        model = _load_for_generation(trained_base(run, adapter, None), adapter, choice)
    return score(model, AutoTokenizer.from_pretrained(adapter), rows)


def train_kubetune_4bit(task: str, out: Path, n_train: int | None, n_test: int | None, started: float) -> dict:
    """Train with model.quantization: 4bit; score generate (as trained), the merged model, plain peft on NF4."""
    from kubetune.trainer.generate import _placement
    from kubetune.trainer.merge import merge

    # bf16 as in issue 30's table, and as the kubetune-bf16 contender it is compared with (auto picks by a probe)
    sets = ["model.quantization=4bit", "training.precision=bf16"]
    _, _, info = train_kubetune(task, out, sets, n_train, started, load=False)
    rows = read_rows(TASKS_DIR / task / "test.jsonl", n_test)
    timed = time.perf_counter()
    ems = {"exact_match": generate_em(out, rows, "as_trained"), "score_seconds": time.perf_counter() - timed}
    timed = time.perf_counter()
    record = merge(out)
    ems["merge_seconds"] = time.perf_counter() - timed
    ems["merge_max_logit_diff"] = record["max_logit_diff"]
    ems["exact_match_merged"] = generate_em(out, rows, "merged")
    ems["exact_match_original"] = generate_em(out, rows, "original")
    ems["generate_dtype"] = str(_placement().dtype)  # what merged/original ran in: the probe's choice, now
    model, tok = peft_on_nf4(out)
    timed = time.perf_counter()
    ems["exact_match_peft_nf4"] = score(model, tok, rows)
    ems["peft_nf4_score_seconds"] = time.perf_counter() - timed
    return {**ems, **info}


def child(name: str, task: str, n_train: int | None, n_test: int | None, lr: float | None, work: Path | None) -> None:
    started = time.perf_counter()  # before torch is imported: "whole process" includes every import
    import torch

    from kubetune.trainer.device import usable_cores

    torch.set_num_threads(usable_cores())
    if work is not None:  # --work: keep the run (adapter, merged model) for a look afterwards
        tmp = work / f"{name}-{task}"
        tmp.mkdir(parents=True, exist_ok=False)
        context = contextlib.nullcontext(str(tmp))
    else:
        context = tempfile.TemporaryDirectory()
    with context as tmp:
        if name == "kubetune-4bit":
            print("RESULT " + json.dumps(train_kubetune_4bit(task, Path(tmp), n_train, n_test, started)), flush=True)
            return
        if name.startswith("trl"):
            model, tok, info = train_trl(task, Path(tmp), n_train, started, bf16=name == "trl-bf16")
        else:
            sets = {
                "kubetune-old": ["training.lr=2e-4", "lora.dropout=0.05"],
                "kubetune-bf16": ["training.precision=bf16"],
                "kubetune-fp32": ["training.precision=fp32"],
            }.get(name, [])
            sets += [f"training.lr={lr}"] if lr is not None else []
            model, tok, info = train_kubetune(task, Path(tmp), sets, n_train, started)
        model.eval()
        em = score(model, tok, read_rows(TASKS_DIR / task / "test.jsonl", n_test))
    result = {"exact_match": em, **info}
    print("RESULT " + json.dumps(result), flush=True)


def run_child(name: str, task: str, args: argparse.Namespace, lr: float | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--tasks", task]
    cmd += [f"--train-records={args.train_records}", f"--test-records={args.test_records}"]
    cmd += [f"--child-lr={lr}"] if lr is not None else []
    cmd += [f"--work={args.work}"] if args.work is not None else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "KUBETUNE_LOG_LEVEL": "WARNING"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{name} on {task} failed (exit {proc.returncode})")
    return json.loads(line[len("RESULT ") :])


FOUR_BIT_VIEWS = {  # column -> the kubetune-4bit child's figure shown as that column's exact match
    "4bit-generate": "exact_match",
    "4bit-merged": "exact_match_merged",
    "4bit-peft-nf4": "exact_match_peft_nf4",
    "4bit-original": "exact_match_original",
}


def expand_4bit(results: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """kubetune-4bit's one run per task shown as one column per way of scoring it (pure)."""
    if "kubetune-4bit" not in results:
        return results
    out = {k: v for k, v in results.items() if k != "kubetune-4bit"}
    for column, key in FOUR_BIT_VIEWS.items():
        out[column] = {t: {**r, "exact_match": r[key]} for t, r in results["kubetune-4bit"].items()}
    return out


def four_bit_targets(results: dict[str, dict[str, dict]], tasks: list[str], n_test: int) -> list[str]:
    """Issue 30's done-when, per task: generate and merged within one record of plain peft on NF4, and at
    least the bf16 LoRA figure minus 0.02 (pure)."""
    if "kubetune-4bit" not in results:
        return []
    bf16 = results.get("kubetune-bf16")
    lines = []
    for t in tasks:
        r = results["kubetune-4bit"][t]
        for label, key in (("generate", "exact_match"), ("merged", "exact_match_merged")):
            close = abs(r[key] - r["exact_match_peft_nf4"]) * n_test <= 1 + 1e-9
            verdict = f"{t}: 4bit {label} {r[key]:.3f} vs peft NF4 {r['exact_match_peft_nf4']:.3f}: "
            verdict += "within one record" if close else "MISSES (more than one record apart)"
            if bf16 is not None and t in bf16:
                floor = bf16[t]["exact_match"] - 0.02
                ok = "ok" if r[key] >= floor else "MISSES"
                verdict += f"; vs bf16 LoRA {bf16[t]['exact_match']:.3f} - 0.02: {ok}"
            lines.append(verdict)
    return lines


def table(results: dict[str, dict[str, dict]], tasks: list[str]) -> str:
    names = list(results)
    lines = [f"{'task':<10} " + " ".join(f"{n:>14}" for n in names), "-" * (11 + 15 * len(names))]
    for task in tasks:
        lines.append(f"{task:<10} " + " ".join(f"{results[n][task]['exact_match']:>14.2f}" for n in names))
    means = [statistics.mean(results[n][t]["exact_match"] for t in tasks) for n in names]
    mins = [min(results[n][t]["exact_match"] for t in tasks) for n in names]
    lines.append(f"{'mean':<10} " + " ".join(f"{m:>14.3f}" for m in means))
    lines.append(f"{'worst':<10} " + " ".join(f"{m:>14.2f}" for m in mins))
    for key, label in (("train_seconds", "train s"), ("process_seconds", "process s")):
        secs = [sum(results[n][t][key] for t in tasks) for n in names]
        lines.append(f"{label:<10} " + " ".join(f"{s:>14.0f}" for s in secs))
    if "kubetune" in results and {"trl", "trl-bf16"} & set(results):
        for key, what in (("train_seconds", "training loop"), ("process_seconds", "whole process")):
            faster_trl = min(sum(results[n][t][key] for t in tasks) for n in ("trl", "trl-bf16") if n in results)
            ours = sum(results["kubetune"][t][key] for t in tasks)
            lines.append(f"kubetune is {faster_trl / ours:.2f}x the faster TRL setting in {what} wall time")
    lrs = [results[n][tasks[0]]["lr"] for n in names]
    lines.append(f"{'lr':<10} " + " ".join(f"{lr:>14.3g}" for lr in lrs))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=TASKS)
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, help="Default: " + ", ".join(DEFAULT_CONTENDERS))
    parser.add_argument("--lr", type=float, nargs="+", help="Sweep: kubetune at these fixed learning rates.")
    parser.add_argument("--train-records", type=int, default=320)
    parser.add_argument("--test-records", type=int, default=60)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--work", type=Path, help="Keep each run in WORK/CONTENDER-TASK (default: deleted).")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-lr", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tasks[0], args.train_records, args.test_records, args.child_lr, args.work)
        return

    from kubetune.trainer.models import resolve_path

    resolve_path(MODEL)  # export the builtin model once, outside the children
    contenders = args.only or default_contenders()
    runs = [(f"lr={lr:g}", lr) for lr in args.lr] if args.lr else [(n, None) for n in contenders]
    results: dict[str, dict[str, dict]] = {name: {} for name, _ in runs}
    for task in args.tasks:  # interleaved: each task runs every contender before the next task
        for name, lr in runs:
            print(f"{task}: {name} ...", file=sys.stderr, flush=True)
            results[name][task] = run_child("sweep" if lr else name, task, args, lr)
            print(f"  {json.dumps(results[name][task])}", file=sys.stderr, flush=True)
    print(
        f"\nSmolLM2-135M, one epoch on {args.train_records} records per task, exact match on "
        f"{args.test_records} held-out records, {os.cpu_count()} CPUs\n"
    )
    print(table(expand_4bit(results), args.tasks))
    print("\n".join(four_bit_targets(results, args.tasks, args.test_records)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
