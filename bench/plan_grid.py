"""Benchmark (not a test): `kubetune plan` against real trainings' measured peak memory and time.

Each point of the grid is one real `kubetune train` process (2 optimizer steps) under `nice -n 10`.
The plan is the one that very process printed before loading its model (the PlanEvent line on
stdout); the measured peak is the process's peak RSS from wait4(2); the measured time is the
summary's train_seconds. Models: the builtin SmolLM2-135M and random-init Llama shapes built from
a config (the builtin's tokenizer, so the data is templated the same way).

Memory figures do not depend on what else runs on the machine; time figures do: on a shared
machine a contended run is slower than the plan's probe predicts (the probe itself runs contended
too, which is the only correction there is).

    .venv/bin/python bench/plan_grid.py [--quick] [--out docs/plan-grid-latest.json]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import peak

ROOT = Path(__file__).resolve().parents[1]
KUBETUNE = str(Path(sys.executable).parent / "kubetune")
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "seven",
    "table",
    "light",
    "north",
    "quiet",
    "paper",
    "metal",
    "window",
    "orange",
    "music",
    "forest",
]

# (name, model, batch, length, lora r, quantization, precision, checkpointing, packing)
GRID = [
    ("d512-L4 r16 fp32 b8 len512", "d512-L4", 8, 512, 16, "none", "fp32", "off", False),
    ("smollm2 r16 fp32 b4 len256", "builtin:smollm2-135m-instruct", 4, 256, 16, "none", "fp32", "off", False),
    ("d512-L4 r16 bf16 b8 len512", "d512-L4", 8, 512, 16, "none", "bf16", "off", False),
    ("d512-L2 r16 4bit bf16 b4 len256", "d512-L2", 4, 256, 16, "4bit", "bf16", "auto", False),
    ("d512-L4 r16 fp32 b8 len256 packed", "d512-L4", 8, 256, 16, "none", "fp32", "off", True),
    ("d512-L4 r16 fp32 b8 len512 ckpt", "d512-L4", 8, 512, 16, "none", "fp32", "on", False),
    ("d1024-L2 r64 fp32 b4 len1024", "d1024-L2", 4, 1024, 64, "none", "fp32", "off", False),
    ("d512-L2 r16 8bit fp32 b4 len256", "d512-L2", 4, 256, 16, "8bit", "fp32", "auto", False),
    ("d512-L2 r8 fp32 b1 len128", "d512-L2", 1, 128, 8, "none", "fp32", "off", False),
    ("smollm2 r16 bf16 b2 len128", "builtin:smollm2-135m-instruct", 2, 128, 16, "none", "bf16", "off", False),
]
QUICK = [GRID[0], GRID[3], GRID[4]]


def random_llama(dest: Path, hidden: int, layers: int, tokenizer_dir: str) -> str:
    """A random-init Llama of this width and depth with the builtin's tokenizer, saved as fp32 safetensors."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (dest / "config.json").exists():
        return str(dest)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return str(dest)


def records(path: Path, n: int, length: int) -> str:
    """n prompt/completion records of about `length` tokens each (one word is about one token)."""
    rng = random.Random(length)
    with path.open("w") as f:
        for _ in range(n):
            words = max(8, length - 40)
            prompt = " ".join(rng.choice(WORDS) for _ in range(words * 4 // 5))
            completion = " ".join(rng.choice(WORDS) for _ in range(words // 5))
            f.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")
    return str(path)


def run_point(point: tuple, models: dict[str, str], work: Path) -> dict:
    name, model, batch, length, r, quant, precision, ckpt, packing = point
    data = records(work / f"data-{length}.jsonl", 4 * batch, length)
    out = work / f"out-{abs(hash(name))}"
    argv = peak.command(["train", "--model", models.get(model, model), "--data", data], prefix=("nice", "-n", "10"))
    argv += ["--output-dir", str(out), "--max-steps", "2", "--batch-size", str(batch), "--precision", precision]
    argv += ["--quantization", quant, "--progress", "json", "--ignore-plan"]
    for key, value in {"lora.r": r, "training.gradient_checkpointing": ckpt, "data.packing": packing}.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML: "off" stays a string
    argv += ["--set", "training.save_steps=1000", "--set", "data.max_length=2048"]
    started = time.time()
    with (work / "stdout").open("w+") as out_f, (work / "stderr").open("w+") as err_f:
        proc = subprocess.Popen(argv, stdout=out_f, stderr=err_f, text=True)
        proc.wait()
        out_f.seek(0), err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
    # The child's own VmHWM (tests/support/peak.py): wait4's ru_maxrss includes the parent's pre-fork peak.
    row = measure(name, proc.returncode, stdout, stderr, peak.peak_bytes(stderr) or 0, time.time() - started)
    run = out / "run.json"
    if "error" not in row and run.exists():  # the summary (with train_seconds) is run.json's metrics
        seconds = json.loads(run.read_text())["metrics"].get("train_seconds")
        error = round(row["plan_seconds"] / seconds - 1, 3) if seconds and row["plan_seconds"] else None
        row.update(train_seconds=seconds, time_error=error)
    return row


def measure(name: str, rc: int, stdout: str, stderr: str, peak: int, wall: float) -> dict:
    """The plan the run printed next to what it used."""
    from kubetune.api.contract import PlanEvent, SummaryEvent, parse_event

    events = [parse_event(line) for line in stdout.splitlines()]
    # The plan is logged on stderr ("plan event: {...}"), before the model loads.
    logged = [parse_event(line[line.index("{") :]) for line in stderr.splitlines() if '{"event": "plan"' in line]
    plan = next((e for e in events + logged if isinstance(e, PlanEvent)), None)
    summary = next((e for e in events if isinstance(e, SummaryEvent)), None)
    row = {"name": name, "rc": rc, "peak_rss": peak, "wall_seconds": round(wall, 1)}
    if rc != 0 or plan is None:
        return {**row, "error": stderr.strip().splitlines()[-3:] or ["no plan logged"]}
    train_seconds = summary.train_seconds if summary else None
    return {
        **row,
        "plan_peak": plan.peak_bytes,
        "memory_error": round(plan.peak_bytes / peak - 1, 3),
        "plan_terms": plan.memory,
        "largest_batch": plan.largest_batch,
        "plan_seconds": plan.seconds,
        "train_seconds": train_seconds,
        "time_error": round(plan.seconds / train_seconds - 1, 3) if plan.seconds and train_seconds else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three points only")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "plan-grid-latest.json")
    args = parser.parse_args()
    from kubetune.trainer.models import resolve_path

    with tempfile.TemporaryDirectory(prefix="plan-grid-") as tmp:
        work = Path(tmp)
        smol = resolve_path("builtin:smollm2-135m-instruct")
        shapes = {"d512-L2": (512, 2), "d512-L4": (512, 4), "d1024-L2": (1024, 2)}
        models = {k: random_llama(work / k, h, n, smol) for k, (h, n) in shapes.items()}
        rows = []
        for point in QUICK if args.quick else GRID:
            row = run_point(point, models, work)
            rows.append(row)
            print(json.dumps(row), flush=True)
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            args.out.write_text(json.dumps({"when": when, "rows": rows}, indent=1) + "\n")  # after every point
    print(table(rows))


def _percent(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.0f} %"


def table(rows: list[dict]) -> str:
    """The grid as a markdown table, worst errors last."""
    lines = [
        "| point | plan GiB | measured GiB | memory error | plan s | measured s | time error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][0][:80]} | | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {r['plan_peak'] / 2**30:.2f} | {r['peak_rss'] / 2**30:.2f} | "
            f"{100 * r['memory_error']:+.1f} % | {r['plan_seconds']} | {r['train_seconds']} | "
            f"{_percent(r['time_error'])} |"
        )
    ok = [r for r in rows if "error" not in r]
    if ok:
        worst_m = max(ok, key=lambda r: abs(r["memory_error"]))
        timed = [r for r in ok if r["time_error"] is not None]
        lines.append(f"\nworst memory error: {100 * worst_m['memory_error']:+.1f} % ({worst_m['name']})")
        if timed:
            worst_t = max(timed, key=lambda r: abs(r["time_error"]))
            lines.append(f"worst time error: {100 * worst_t['time_error']:+.0f} % ({worst_t['name']})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
