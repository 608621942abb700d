"""Benchmark (not a test): `kubetune plan` against real trainings' measured peak memory and time.

Each point of the grid is one real `kubetune train` process (2 optimizer steps, or about 10 s of them
where 2 take under 5 s) under `nice -n 10`.
The plan is the one that very process logged before loading its model (the PlanEvent line); the
measured peak is the process's own VmHWM (tests/support/peak.py: wait4's ru_maxrss would include the
forking parent's); the measured time is the summary's train_seconds. Models: the builtin SmolLM2-135M
and random-init Llama shapes built from a config, up to a Llama-3.2-1B-like d=2048, 16 layers (the
builtin's tokenizer, so the data is templated the same way). The points marked "held out" were not
used to fit the plan's memory constants (trainer/kubetune/trainer/plan.py); the time constants were fitted on
all 23 (docs/plan.md has the figures).

Memory figures do not depend on what else runs on the machine; time figures do: run it on a quiet
machine. `--container` runs one point in the cpu image under memory limits around its plan instead.

    .venv/bin/python bench/plan_grid.py [--quick | --container [--factors F ...]] [--only TEXT ...] [--repeat N]
        [--out F]  (the whole grid writes docs/plan-grid-latest.json unless --out says otherwise)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))
import engine
import peak
from tinymodel import random_llama

ROOT = Path(__file__).resolve().parents[1]
LATEST = ROOT / "docs" / "plan-grid-latest.json"
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
    ("d2048-L16 r16 fp32 b2 len256", "d2048-L16", 2, 256, 16, "none", "fp32", "off", False),
    ("d2048-L16 r16 4bit bf16 b2 len256", "d2048-L16", 2, 256, 16, "4bit", "bf16", "auto", False),
    ("d1024-L2 r64 fp32 b4 len1024 ckpt", "d1024-L2", 4, 1024, 64, "none", "fp32", "on", False),
    ("smollm2 r16 fp32 b4 len256 ckpt", "builtin:smollm2-135m-instruct", 4, 256, 16, "none", "fp32", "on", False),
    ("d512-L4 r16 bf16 b8 len512 ckpt", "d512-L4", 8, 512, 16, "none", "bf16", "on", False),
    ("d512-L4 r16 fp32 b16 len512 ckpt", "d512-L4", 16, 512, 16, "none", "fp32", "on", False),
    ("d2048-L16 r16 fp32 b4 len512 ckpt", "d2048-L16", 4, 512, 16, "none", "fp32", "on", False),
    ("d2048-L16 r16 4bit bf16 b8 len512", "d2048-L16", 8, 512, 16, "4bit", "bf16", "auto", False),
    # Held out: run after the constants were fitted on the points above, to check them.
    ("held out: d1024-L4 r32 bf16 b4 len512", "d1024-L4", 4, 512, 32, "none", "bf16", "off", False),
    ("held out: d1024-L4 r16 fp32 b8 len256 ckpt", "d1024-L4", 8, 256, 16, "none", "fp32", "on", False),
    (
        "held out: smollm2 r32 fp32 b8 len128 packed",
        "builtin:smollm2-135m-instruct",
        8,
        128,
        32,
        "none",
        "fp32",
        "off",
        True,
    ),
    ("held out: d2048-L16 r8 8bit fp32 b1 len512", "d2048-L16", 1, 512, 8, "8bit", "fp32", "auto", False),
    ("held out: d2048-L16 r16 bf16 b4 len256", "d2048-L16", 4, 256, 16, "none", "bf16", "off", False),
]
QUICK = [GRID[0], GRID[3], GRID[4]]


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


# A run of two steps under this many seconds measures its first step's one-time costs (kernel selection, first
# touch of fresh memory) and the machine's noise more than its steady rate: it runs again, for about TIMED seconds.
SHORT, TIMED = 5.0, 10.0


def timed_point(point: tuple, models: dict[str, str], work: Path) -> dict:
    """The point trained for 2 steps, or again for enough steps to last about TIMED seconds when that was SHORT."""
    row = run_point(point, models, work, steps=2)
    seconds = row.get("train_seconds")
    if "error" in row or not seconds or seconds >= SHORT:
        return row
    return run_point(point, models, work, steps=min(64, math.ceil(2 * TIMED / seconds)))


DISTURBED = 0.7  # a probe under this fraction of the machine's rate (probed_point) read a stalled machine


def reference_rates() -> dict[str, float]:
    """GFLOP/s of the plan's own probe in each precision, probed here for a second before the grid starts."""
    from kubetune.trainer.plan import matmul_rate

    return {p: matmul_rate(p, os.cpu_count() or 1, budget=1.0) / 1e9 for p in ("fp32", "bf16")}


def probed_point(point: tuple, models: dict[str, str], work: Path, done: list[dict], ref: dict[str, float]) -> dict:
    """timed_point, once more when its probe read under DISTURBED x the machine's rate (the larger of the
    reference probe and the median of the earlier points' probes in that precision): this VM's host stalls
    both cores for seconds at a time, now and then, and the time error of a run whose probe fell in a stall
    measures the stall, not the plan. The first attempt is kept in the row."""
    # The kernel's writeback of the models just written (GBs) takes a core for many seconds: a probe or a
    # training that overlaps it measures half a machine.
    os.sync()
    row = timed_point(point, models, work)
    rates = [r["matmul_gflops"] for r in done if r.get("matmul_gflops") and _precision(r) == point[6]]
    machine = max([ref[point[6]], *([statistics.median(rates)] if rates else [])])
    if not row.get("matmul_gflops") or row["matmul_gflops"] >= DISTURBED * machine:
        return row
    first = {k: row.get(k) for k in ("matmul_gflops", "plan_seconds", "train_seconds", "time_error", "memory_error")}
    return {**timed_point(point, models, work), "disturbed_attempt": first}


def _precision(row: dict) -> str:
    return next(p[6] for p in GRID if p[0] == row["name"])


def run_point(point: tuple, models: dict[str, str], work: Path, steps: int = 2) -> dict:
    name, model, batch, length, r, quant, precision, ckpt, packing = point
    data = records(work / f"data-{length}.jsonl", 4 * batch, length)
    out = Path(tempfile.mkdtemp(dir=work, prefix="out-"))  # a fresh output every attempt: nothing to resume from
    argv = peak.command(["train", "--model", models.get(model, model), "--data", data], prefix=("nice", "-n", "10"))
    argv += ["--output-dir", str(out), "--max-steps", str(steps), "--batch-size", str(batch), "--precision", precision]
    argv += ["--quantization", quant, "--progress", "json", "--ignore-plan"]
    for key, value in {"lora.r": r, "training.gradient_checkpointing": ckpt, "data.packing": packing}.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML: "off" stays a string
    argv += ["--set", "training.save_steps=1000", "--set", "data.max_length=2048", "--set", "training.logging_steps=1"]
    started = time.time()
    arrivals: list[float] = []  # when each step's progress line came: the steady step time, apart from the first's
    with (work / "stderr").open("w+") as err_f:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err_f, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith('{"event": "progress"'):
                arrivals.append(time.monotonic())
        proc.wait()
        err_f.seek(0)
        stdout, stderr = "".join(lines), err_f.read()
    # The child's own VmHWM (tests/support/peak.py): wait4's ru_maxrss includes the parent's pre-fork peak.
    row = measure(name, proc.returncode, stdout, stderr, peak.peak_bytes(stderr) or 0, time.time() - started)
    row["steps"] = steps
    run = out / "run.json"
    if "error" not in row and run.exists():  # the summary (with train_seconds) is run.json's metrics
        seconds = json.loads(run.read_text())["metrics"].get("train_seconds")
        error = round(row["plan_seconds"] / seconds - 1, 3) if seconds and row["plan_seconds"] else None
        row.update(train_seconds=seconds, time_error=error)
        if seconds and len(arrivals) >= 2:
            step = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
            row.update(step_seconds=round(step, 4), first_step_extra=round(seconds - steps * step, 3))
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
        "matmul_gflops": round(plan.matmul_rate / 1e9, 1) if plan.matmul_rate else None,
        "train_seconds": train_seconds,
        "time_error": round(plan.seconds / train_seconds - 1, 3) if plan.seconds and train_seconds else None,
    }


CONTAINER_POINT = GRID[0]
IMAGE = "localhost/kubetune/trainer:cpu"


def container_run(point: tuple, model: str, work: Path, limit: int) -> int:
    """Exit code of the point's training in the cpu image under a hard memory limit (no swap), the plan
    ignored so that the kernel, not the plan, decides: 137 is the cgroup's OOM kill."""
    _, _, batch, length, r, quant, precision, ckpt, packing = point
    data = records(work / f"data-{length}.jsonl", 4 * batch, length)
    out = Path(tempfile.mkdtemp(dir=work, prefix="out-"))
    out.chmod(0o777)
    for path in [Path(model), *Path(model).iterdir(), Path(data)]:  # the image runs as UID 10001
        path.chmod(0o755 if path.is_dir() else 0o644)
    mounts = ["-v", f"{model}:/model:ro", "-v", f"{data}:/data/train.jsonl:ro", "-v", f"{out}:/output"]
    argv = engine.run_argv("--rm", f"--memory={limit}", f"--memory-swap={limit}", *mounts, "--entrypoint", "kubetune")
    argv += [IMAGE, "train", "--model", "/model", "--data", "/data/train.jsonl", "--output-dir", "/output"]
    argv += ["--max-steps", "2", "--batch-size", str(batch), "--precision", precision, "--quantization", quant]
    argv += ["--ignore-plan", "--set", f"lora.r={r}", "--set", f"training.gradient_checkpointing={json.dumps(ckpt)}"]
    argv += ["--set", f"data.packing={json.dumps(packing)}", "--set", "data.max_length=2048"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if proc.returncode not in (0, 137):
        print(proc.stderr.strip().splitlines()[-1:], file=sys.stderr)
    return proc.returncode


def container_check(
    work: Path, models: dict[str, str], factors: tuple[float, ...] = (0.8, 0.85, 0.9, 1.0)
) -> list[dict]:
    """The plan's peak as a container limit: the point trained on the host gives the plan, then the same run
    in the image under `factor` x that peak (issue 26: just below is OOM-killed, just above passes)."""
    row = run_point(CONTAINER_POINT, models, work)
    return [
        {
            "name": CONTAINER_POINT[0],
            "plan_peak": row["plan_peak"],
            "factor": f,
            "limit": int(f * row["plan_peak"]),
            "rc": container_run(CONTAINER_POINT, models[CONTAINER_POINT[1]], work, int(f * row["plan_peak"])),
        }
        for f in factors
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three points only")
    parser.add_argument("--container", action="store_true", help="only the container check, in " + IMAGE)
    parser.add_argument("--factors", type=float, nargs="+", default=[0.8, 0.85, 0.9, 1.0], help="limits / plan")
    parser.add_argument(
        "--out", type=Path, help=f"default: {LATEST.relative_to(ROOT)} for the whole grid; a part is kept only if given"
    )
    parser.add_argument("--only", nargs="+", default=[], metavar="TEXT", help="the points whose name contains a TEXT")
    parser.add_argument("--repeat", type=int, default=1, help="run each point this many times")
    args = parser.parse_args()
    whole = not (args.quick or args.only or args.repeat != 1)
    out = args.out or (LATEST if whole else None)  # a partial run never replaces the whole grid's record
    from kubetune.trainer.models import resolve_path

    with tempfile.TemporaryDirectory(prefix="plan-grid-") as tmp:
        work = Path(tmp)
        smol = resolve_path("builtin:smollm2-135m-instruct")
        shapes = {
            "d512-L2": (512, 2),
            "d512-L4": (512, 4),
            "d1024-L2": (1024, 2),
            "d1024-L4": (1024, 4),
            "d2048-L16": (2048, 16),
        }
        if args.container:
            work.chmod(0o755)
            model = {CONTAINER_POINT[1]: random_llama(work / CONTAINER_POINT[1], *shapes[CONTAINER_POINT[1]], smol)}
            for line in container_check(work, model, tuple(args.factors)):
                print(json.dumps(line), flush=True)
            return
        models = {k: random_llama(work / k, h, n, smol) for k, (h, n) in shapes.items()}
        os.sync()
        ref = reference_rates()
        print(json.dumps({"reference_gflops": {k: round(v, 1) for k, v in ref.items()}}), flush=True)
        rows: list[dict] = []
        chosen = [p for p in (QUICK if args.quick else GRID) if not args.only or any(t in p[0] for t in args.only)]
        for point in [p for p in chosen for _ in range(args.repeat)]:
            row = probed_point(point, models, work, rows, ref)
            rows.append(row)
            print(json.dumps(row), flush=True)
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            record = {"when": when, "reference_gflops": ref, "rows": rows}
            if out:
                out.write_text(json.dumps(record, indent=1) + "\n")  # after every point
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
