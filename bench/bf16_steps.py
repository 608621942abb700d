#!/usr/bin/env python3
"""Per-step wall time of LoRA training on SmolLM2-135M: fp32 against bf16, varying against fixed lengths.

    python bench/bf16_steps.py [--steps 12]

The two precisions step interleaved (one fp32 step, one bf16 step), so load from other
processes hits both alike. Varying lengths (24-71 tokens) show what new shapes cost (oneDNN
builds kernels per shape, which is the first-steps slowdown of bf16 on CPU); fixed lengths
(48) are what bucketing lengths would buy at best.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from kubetune.trainer.device import usable_cores
from kubetune.trainer.models import resolve_path


def make(path: str, dtype: torch.dtype):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def step(model, opt, length: int) -> float:
    ids = torch.randint(100, 40000, (4, length))
    start = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(usable_cores())
    path = resolve_path("builtin:smollm2-135m-instruct")
    models = {"fp32": make(path, torch.float32), "bf16": make(path, torch.bfloat16)}
    rng = random.Random(0)
    plans = {"varying": [rng.randrange(24, 72) for _ in range(args.steps)], "fixed": [48] * args.steps}
    times: dict[str, list[float]] = {}
    for mode, lengths in plans.items():
        for length in lengths:
            for name, (model, opt) in models.items():
                times.setdefault(f"{name} {mode}", []).append(step(model, opt, length))
    half = args.steps // 2
    print(f"{'':<14} {'first 3 steps s':>16} {'median of 2nd half s':>21}")
    for key, values in times.items():
        print(f"{key:<14} {statistics.mean(values[:3]):>16.2f} {statistics.median(values[half:]):>21.2f}")
    print(json.dumps({k: [round(v, 3) for v in vs] for k, vs in times.items()}))


if __name__ == "__main__":
    main()
