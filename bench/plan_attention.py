"""Benchmark (not a test): the CPU attention kernel's rate as a fraction of the plan's matmul probe.

`kubetune plan` times attention at these fractions (trainer/kubetune/trainer/plan.py, ATTENTION_EFFICIENCY):
scaled_dot_product_attention's forward and backward on the two paths training takes (loss.py): a right-padded
batch runs causal without a mask (8 query and 2 key/value heads of 64, as the grid's d512 models have), a packed
one under its block-diagonal mask (the sequences 247 tokens long). The FLOPs are the plan's own count (QK and
AV, half of them masked, in the forward and twice that in the backward), so the printed fraction is what the
plan needs (bf16 on an AMX CPU prints the `bf16-amx` rows). Run it on a quiet machine; each width takes the
best of about 1.2 s.

    .venv/bin/python bench/plan_attention.py
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from kubetune.trainer.plan import cpu_has_amx, matmul_rate

HEADS, KV_HEADS, HEAD_DIM, SEQUENCE = 8, 2, 64, 247
SHAPES = {
    "causal": [(8, 128), (4, 256), (8, 512), (4, 1024), (1, 2048)],
    "masked": [(4, 128), (4, 256), (1, 512), (1, 1024), (1, 2048)],
}


def step_seconds(dtype: torch.dtype, rows: int, width: int, masked: bool, budget: float = 1.2) -> float:
    """The best time of one forward and backward at this shape."""
    q = torch.randn(rows, HEADS, width, HEAD_DIM, dtype=dtype, requires_grad=True)
    kv_heads = HEADS if masked else KV_HEADS  # transformers repeats the key/value heads when it passes a mask
    k, v = (torch.randn(rows, kv_heads, width, HEAD_DIM, dtype=dtype, requires_grad=True) for _ in range(2))
    ids = torch.arange(width) // SEQUENCE
    mask = (torch.ones(width, width, dtype=torch.bool).tril() & (ids[:, None] == ids[None, :]))[None, None]

    def step() -> None:
        if masked:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out.sum().backward()

    step()
    best, runs, began = float("inf"), 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - began < budget:
        start = time.perf_counter()
        step()
        best, runs = min(best, time.perf_counter() - start), runs + 1
    return best


def main() -> None:
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rate = matmul_rate(precision, threads, budget=1.0)
        print(f"{precision}: matmul {rate / 1e9:.0f} GFLOP/s on {threads} threads")
        for path, shapes in SHAPES.items():
            fractions = {}
            for rows, width in shapes:
                flops = 6 * HEADS * HEAD_DIM * width * width * rows
                fractions[width] = round(flops / step_seconds(dtype, rows, width, path == "masked") / rate, 3)
            kind = f"{precision}-amx" if precision != "fp32" and cpu_has_amx() else precision
            print(f'    ("{kind}", "{path}"): {fractions},')


if __name__ == "__main__":
    main()
