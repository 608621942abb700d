#!/usr/bin/env python3
"""Generate the demo task: rewrite a date written in words as ISO 8601 (YYYY-MM-DD).

Why this task: the answer is exact (exact-match is meaningful), the base model
knows dates but not this output discipline (it chats), and a LoRA learns it in
minutes on two CPU cores. Deterministic: the same seed writes the same files,
and a test checks the committed files match this script.

    python examples/make_dates.py            # writes examples/data/dates/{train,test}.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from datetime import date, timedelta
from pathlib import Path

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
PROMPTS = [
    "Convert this date to ISO 8601 (YYYY-MM-DD): {d}",
    "Write {d} as YYYY-MM-DD.",
    "What is {d} in ISO 8601 format?",
    "Normalize the date: {d}",
]


def ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def spell(d: date, style: int) -> str:
    month = MONTHS[d.month - 1]
    return [
        f"{month} {d.day}, {d.year}",
        f"{d.day} {month} {d.year}",
        f"{month[:3]} {d.day} {d.year}",
        f"the {ordinal(d.day)} of {month}, {d.year}",
        f"{d.year}, {month} {d.day}",
    ][style]


def generate(seed: int, n_train: int, n_test: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    start, span = date(1900, 1, 1), (date(2099, 12, 31) - date(1900, 1, 1)).days
    days = rng.sample(range(span + 1), n_train + n_test)  # distinct dates: test never seen in training
    rows = []
    for offset in days:
        d = start + timedelta(days=offset)
        prompt = rng.choice(PROMPTS).format(d=spell(d, rng.randrange(5)))
        rows.append({"prompt": prompt, "completion": d.isoformat()})
    return rows[:n_train], rows[n_train:]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "dates")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=100)
    args = parser.parse_args()
    train, test = generate(args.seed, args.train, args.test)
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "test.jsonl", test)
    print(f"wrote {len(train)} train and {len(test)} test records to {args.out}")


if __name__ == "__main__":
    main()
