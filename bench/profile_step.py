#!/usr/bin/env python3
"""Where a training step's time goes: `kubetune train` at one of speed.py's shapes under torch.profiler.

    python bench/profile_step.py --shape 1b                 # 80 records, 10 steps of batch 8
    python bench/profile_step.py --shape 1b --set training.precision=fp32

Prints self CPU time per operator (the largest first) as a share of the whole profiled run, with call
counts, and the run's wall time. The profiler itself costs a few per cent; compare profiles with profiles,
and speed with `make bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(speed.SHAPES), default="1b")
    parser.add_argument("--records", type=int, help="Default: the shape's own.")
    parser.add_argument("--set", action="append", default=[], help="Extra config settings (KEY=VALUE).")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--by-shape", action="store_true", help="Split each operator by its input shapes.")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kubetune-speed-models")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from kubetune.api import load_config
    from kubetune.trainer.device import usable_cores
    from kubetune.trainer.train import run

    torch.set_num_threads(usable_cores())
    shape = speed.SHAPES[args.shape]
    path = speed.model_dir(shape, args.cache)
    rows = speed.read_rows(args.records or shape.records)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        sets = [*speed.kubetune_sets(path, rows, out), *args.set]
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as prof:
            summary = run(load_config(None, sets=sets), progress="none")
        wall = time.perf_counter() - start
        resolved = json.loads((out / "run.json").read_text())["resolved"]
    events = prof.key_averages(group_by_input_shape=args.by_shape)
    total = sum(e.self_cpu_time_total for e in events)
    print(
        f"{args.shape}: {summary['tokens']} real tokens, training {summary['train_seconds']:.1f} s, profiled run "
        f"{wall:.1f} s, precision {resolved['precision']}, gradient checkpointing {resolved['gradient_checkpointing']}"
    )
    print(f"{'operator':<48} {'self s':>8} {'share':>7} {'calls':>8}")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]:
        share = 100 * e.self_cpu_time_total / total
        shapes = f" {e.input_shapes}" if args.by_shape else ""
        print(f"{e.key[:48]:<48} {e.self_cpu_time_total / 1e6:>8.2f} {share:>6.1f}% {e.count:>8}{shapes}")


if __name__ == "__main__":
    main()
