#!/usr/bin/env python3
"""Training speed at three shapes: kubetune's defaults vs plain TRL, and how close each gets to the matmul limit.

    make bench                                  # or: python bench/speed.py --shapes small 1b

Shapes (the 1B and 3B models are random-init Llamas built from a config with the builtin model's
tokenizer: weights are not needed to time a step, and a random model runs the same matmuls):
  small  SmolLM2-135M-Instruct (the builtin model), one epoch on the extraction task (320 records)
  1b     d=2048, 16 layers, MLP 8192, 32 heads / 8 key-value heads (Llama-3.2-1B's dimensions), 80 records
  3b     d=3072, 28 layers, MLP 8192, 48 / 12 heads of 64 (Llama-3.2-3B's, but k/v 768 wide, not 1024), 40 records
Every contender trains the same records for one epoch at batch 8 with LoRA r=16, alpha=32 on all linear layers,
each in its own process (its peak RSS is its own), side by side in one run:
  kubetune  `kubetune train` defaults (precision auto, lr auto, LoRA dropout 0)
  trl       TRL's SFTTrainer used plainly (prompt/completion records, its defaults), fp32
  trl-bf16  the same with bf16=True, where the CPU has native bf16 (AMX or AVX512-BF16)
Reported per shape: real (non-pad) tokens/s over the training loop, the ratio of kubetune's training time to
the faster TRL setting's, peak RSS, and the fraction of the matmul limit reached: useful FLOPs are 4 x the
decoder's linear parameters per real token (forward 2P, backward to the inputs 2P; the frozen base needs no
weight gradients, LoRA's are negligible), against a probe that times exactly those GEMMs (each layer's
projections at the shape of a mean batch, forward and backward to the input) in the precision the contender
ran, on the same cores, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "examples" / "data" / "tasks" / "extract" / "train.jsonl"
BUILTIN = "builtin:smollm2-135m-instruct"
CONTENDERS = ["kubetune", "trl", "trl-bf16"]


@dataclass(frozen=True)
class Shape:
    name: str
    records: int
    hidden: int = 0  # 0: the builtin model
    layers: int = 0
    intermediate: int = 0


SHAPES = {
    "small": Shape("small", 320),
    "1b": Shape("1b", 80, 2048, 16, 8192),
    "3b": Shape("3b", 40, 3072, 28, 8192),
}


def model_dir(shape: Shape, cache: Path) -> str:
    """The model's directory: the builtin export, or a random Llama of the shape saved once under cache."""
    from kubetune.trainer.models import resolve_path

    builtin = resolve_path(BUILTIN)
    if not shape.hidden:
        return builtin
    sys.path.insert(0, str(ROOT))
    from tests.support.tinymodel import random_llama

    return random_llama(cache / f"llama-{shape.name}", shape.hidden, shape.layers, builtin, shape.intermediate)


def linear_shapes(path: str) -> tuple[list[tuple[int, int]], int]:
    """(in, out) of every decoder linear layer and the layer count, from config.json alone."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    d, ff, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads) * cfg.get("head_dim", d // heads)
    q = heads * cfg.get("head_dim", d // heads)
    return [(d, q), (d, kv), (d, kv), (q, d), (d, ff), (d, ff), (ff, d)], cfg["num_hidden_layers"]


def decoder_linear_params(path: str) -> int:
    shapes, layers = linear_shapes(path)
    return layers * sum(i * o for i, o in shapes)


def gemm_peak_gflops(path: str, tokens: int, dtype: str, repeats: int = 3) -> float:
    """The matmul rate at this model's own GEMMs: one layer's projections on `tokens` rows, forward (x @ W.T)
    and backward to the input (g @ W), best of `repeats` (the peak, not a sample something else disturbed)."""
    import torch

    from kubetune.trainer.device import usable_cores

    torch.set_num_threads(usable_cores())
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    shapes, _ = linear_shapes(path)
    ops = [
        (torch.randn(tokens, i, dtype=dt), torch.randn(o, i, dtype=dt), torch.randn(tokens, o, dtype=dt))
        for i, o in shapes
    ]
    flops = sum(2 * 2 * tokens * w.shape[0] * w.shape[1] for _, w, _ in ops)

    def once() -> None:
        for x, w, g in ops:
            torch.nn.functional.linear(x, w)
            g @ w

    start = time.perf_counter()
    once()  # warm-up, and how many calls make a repeat of at least half a second
    n = max(1, round(0.5 / (time.perf_counter() - start)))
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            once()
        best = max(best, flops * n / (time.perf_counter() - start) / 1e9)
    return best


def read_rows(n: int) -> list[dict]:
    rows = [json.loads(x) for x in TASK.read_text().splitlines()]
    return rows[:n]


def kubetune_sets(path: str, rows: list[dict], out: Path) -> list[str]:
    """The bench's kubetune settings (one epoch, batch 8, LoRA r=16 alpha=32), with `rows` written under out."""
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [
        f"data.path={data}",
        f"output_dir={out}",
        f"model.path={path}",
        f"lora.r={bench_train.LORA['r']}",
        f"lora.alpha={bench_train.LORA['alpha']}",
        f"training.batch_size={bench_train.BATCH}",
        "training.epochs=1",
        "training.save_steps=100000",
    ]


def run_kubetune(path: str, rows: list[dict], out: Path) -> dict:
    from kubetune.api import load_config
    from kubetune.trainer.train import run

    summary = run(load_config(None, sets=kubetune_sets(path, rows, out)), progress="none")
    resolved = json.loads((out / "run.json").read_text())["resolved"]
    return {
        "seconds": summary["train_seconds"],
        "real_tokens": summary["tokens"],
        "precision": resolved["precision"],
        "gradient_checkpointing": resolved["gradient_checkpointing"],
    }


def run_trl(path: str, rows: list[dict], out: Path, bf16: bool) -> dict:
    trainer, timer, real = bench_train.trl_sft(path, rows, out, 42, bf16)
    trainer.train()
    return {
        "seconds": timer.seconds,
        "real_tokens": real,
        "precision": "bf16" if bf16 else "fp32",
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
    }


def child(shape: Shape, name: str, cache: Path) -> None:
    import torch

    from kubetune.trainer.device import usable_cores

    torch.set_num_threads(usable_cores())
    path = model_dir(shape, cache)
    rows = read_rows(shape.records)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if name == "kubetune":
            result = run_kubetune(path, rows, out)
        else:
            result = run_trl(path, rows, out, bf16=name == "trl-bf16")
    result["peak_rss_mb"] = bench_train.peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def run_child(shape: Shape, name: str, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--shapes", shape.name, "--cache", str(cache)]
    return bench_train.child_result(cmd, f"{shape.name}/{name}")


def cpu_flags() -> list[str]:
    from kubetune.trainer.device import detect

    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "amx_int8"}
    return sorted(wanted & set(detect().cpu_flags))


def build(shape: Shape, cache: Path) -> str:
    """The model's directory, built (and saved) once in a child: this process stays small while others train."""
    subprocess.run([sys.executable, __file__, "--build", "--shapes", shape.name, "--cache", str(cache)], check=True)
    return model_dir(shape, cache)


def measure(shape: Shape, contenders: list[str], cache: Path) -> dict:
    path = build(shape, cache)
    runs = {}
    for name in contenders:
        print(f"{shape.name}: running {name} ...", file=sys.stderr, flush=True)
        runs[name] = run_child(shape, name, cache)
    steps = -(-shape.records // bench_train.BATCH)
    mean_batch_tokens = round(statistics.mean(r["real_tokens"] for r in runs.values()) / steps)
    peaks = {p: gemm_peak_gflops(path, mean_batch_tokens, p) for p in sorted({r["precision"] for r in runs.values()})}
    useful = 4 * decoder_linear_params(path)
    for r in runs.values():
        r["tokens_per_second"] = r["real_tokens"] / r["seconds"]
        r["peak_fraction"] = r["tokens_per_second"] * useful / (peaks[r["precision"]] * 1e9)
    trls = [runs[n]["seconds"] for n in ("trl", "trl-bf16") if n in runs]
    ratio = min(trls) / runs["kubetune"]["seconds"] if trls and "kubetune" in runs else None
    return {
        "shape": asdict(shape),
        "decoder_linear_params": decoder_linear_params(path),
        "mean_batch_tokens": mean_batch_tokens,
        "gemm_peak_gflops": peaks,
        "runs": runs,
        "kubetune_vs_faster_trl": ratio,
    }


def print_table(results: list[dict]) -> None:
    header = (
        f"{'shape':<6} {'contender':<9} {'precision':<9} {'ckpt':<5} {'real tok/s':>10} {'train s':>8} "
        f"{'peak RSS MB':>11} {'% matmul limit':>14} {'kubetune vs faster TRL':>22}"
    )
    print(header)
    print("-" * len(header))
    for res in results:
        for name, r in res["runs"].items():
            ratio = res["kubetune_vs_faster_trl"]
            speed = f"{ratio:.2f}x" if name == "kubetune" and ratio else ""
            print(
                f"{res['shape']['name']:<6} {name:<9} {r['precision']:<9} {str(r['gradient_checkpointing'])[:5]:<5} "
                f"{r['tokens_per_second']:>10.1f} {r['seconds']:>8.1f} {r['peak_rss_mb']:>11.0f} "
                f"{100 * r['peak_fraction']:>13.1f}% {speed:>22}"
            )
        limits = ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in res["gemm_peak_gflops"].items())
        print(f"{'':<6} matmul limit at {res['mean_batch_tokens']} tokens/batch: {limits}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, help="Default: all (trl-bf16 where bf16 is native).")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "kubetune-speed-models",
        help="Where the random models are saved (the 3B one is ~12 GB in fp32).",
    )
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        model_dir(SHAPES[args.shapes[0]], args.cache)
        return
    if args.child:
        child(SHAPES[args.shapes[0]], args.child, args.cache)
        return

    from kubetune.trainer.device import cpu_has_native_bf16, detect

    native = cpu_has_native_bf16(detect().cpu_flags)
    contenders = args.only or [c for c in CONTENDERS if c != "trl-bf16" or native]
    flags, results = cpu_flags(), []
    for name in args.shapes:
        results.append(measure(SHAPES[name], contenders, args.cache))
        print_table(results[-1:])  # as each shape ends: a long run shows its first numbers early
        if args.json:  # and keeps them if a later shape is stopped
            record = {"cpu_flags": flags, "cpus": os.cpu_count(), "results": results}
            args.json.write_text(json.dumps(record, indent=2))
    print(f"\nCPU flags: {' '.join(flags)}; {os.cpu_count()} CPUs; batch {bench_train.BATCH}, LoRA r=16 all-linear\n")
    print_table(results)


if __name__ == "__main__":
    main()
