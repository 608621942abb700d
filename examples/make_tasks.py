#!/usr/bin/env python3
"""Generate the quality suite: four small tasks with exact answers and held-out splits.

    python examples/make_tasks.py        # writes examples/data/tasks/<task>/{train,test}.jsonl

Each task is a kind users fine-tune small models for, with answers that are
exact, so exact match measures whether one epoch taught the task:

  extract    a product note to JSON, with unit conversions (kg -> g, cm -> mm)
  classify   a support message to one of four queues
  normalize  a US phone number, written any common way, to E.164
  style      a terse instruction rewritten as a polite request

Deterministic (one seed per task), and the held-out split shares no answer
with the training split. A test checks the committed files match this script;
`make quality` trains on them.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

OUT = Path(__file__).parent / "data" / "tasks"
N_TRAIN, N_TEST = 320, 60

ITEMS = [
    "steel bolt",
    "oak shelf",
    "copper pipe",
    "glass jar",
    "rubber mat",
    "brass hinge",
    "clay pot",
    "pine board",
    "nylon rope",
    "cast iron pan",
    "paper lamp",
    "wool blanket",
    "zinc bucket",
    "marble tile",
    "cotton bag",
    "bamboo tray",
    "leather belt",
    "silk scarf",
    "tin box",
    "felt pad",
]


def extract(rng: random.Random) -> dict:
    item = rng.choice(ITEMS)
    grams = rng.choice([rng.randrange(50, 1000, 10), rng.randrange(11, 200) * 100])
    if grams >= 1000 and grams % 100 == 0 and rng.random() < 0.7:
        weight = f"{grams / 1000:g} kg"
    else:
        weight = f"{grams} g"
    mm = rng.randrange(5, 400) * rng.choice([1, 10])
    length = f"{mm // 10} cm" if mm % 10 == 0 and rng.random() < 0.6 else f"{mm} mm"
    note = rng.choice(
        [
            f"{item}, {weight}, {length} long",
            f"Item: {item}. Weight {weight}. Length {length}.",
            f"The {item} weighs {weight} and is {length} long.",
            f"{length} {item} ({weight})",
        ]
    )
    answer = json.dumps({"item": item, "weight_g": grams, "length_mm": mm})
    return {"prompt": f"Extract item, weight_g and length_mm as JSON: {note}", "completion": answer}


QUEUES = {
    "billing": [
        "I was charged twice for {x}",
        "my invoice for {x} is wrong",
        "please refund {x}",
        "the price of {x} on my bill is too high",
    ],
    "shipping": [
        "{x} has not arrived yet",
        "the parcel with {x} went to the wrong address",
        "where is my delivery of {x}",
        "{x} arrived damaged in the box",
    ],
    "technical": [
        "{x} crashes when I open it",
        "{x} shows an error code",
        "{x} will not connect to wifi",
        "the app for {x} keeps freezing",
    ],
    "account": [
        "I cannot log in to see {x}",
        "please change the email on my account for {x}",
        "reset my password so I can manage {x}",
        "delete my account and my {x} history",
    ],
}
PRODUCTS = [
    "the router",
    "my order",
    "the headphones",
    "the printer",
    "the subscription",
    "the camera",
    "the smart plug",
    "the laptop",
    "the gift card",
    "the speaker",
    "the tablet",
    "the watch",
]


def classify(rng: random.Random) -> dict:
    queue = rng.choice(sorted(QUEUES))
    text = rng.choice(QUEUES[queue]).format(x=rng.choice(PRODUCTS))
    text = rng.choice(["{t}.", "Hi, {t}!", "{t}, can you help?", "Hello. {t}. Thanks"]).format(t=text)
    text = text[0].upper() + text[1:]
    prompt = f"Route this message to billing, shipping, technical or account: {text}"
    return {"prompt": prompt, "completion": queue}


def normalize(rng: random.Random) -> dict:
    area, mid, last = rng.randrange(201, 990), rng.randrange(200, 1000), rng.randrange(0, 10000)
    a, m, n = f"{area}", f"{mid}", f"{last:04d}"
    written = rng.choice(
        [
            f"({a}) {m}-{n}",
            f"{a}-{m}-{n}",
            f"{a}.{m}.{n}",
            f"{a} {m} {n}",
            f"+1 {a} {m} {n}",
            f"1-{a}-{m}-{n}",
            f"{a}{m}{n}",
        ]
    )
    prompt = rng.choice(
        ["Write this phone number in E.164: {p}", "Normalize the phone number {p}", "E.164 for {p}?"]
    ).format(p=written)
    return {"prompt": prompt, "completion": f"+1{a}{m}{n}"}


VERBS = [
    "send",
    "check",
    "update",
    "print",
    "sign",
    "review",
    "file",
    "share",
    "copy",
    "archive",
    "translate",
    "proofread",
]
OBJECTS = [
    "the report",
    "the contract",
    "this invoice",
    "the slides",
    "my notes",
    "the schedule",
    "the budget",
    "the minutes",
    "the draft",
    "the form",
    "the summary",
    "the agenda",
]
WHEN = ["", " today", " by Friday", " before noon", " tomorrow"]


def style(rng: random.Random) -> dict:
    action = f"{rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(WHEN)}"
    terse = rng.choice(
        [
            f"{action}!",
            f"{action.capitalize()} now.",
            f"I need you to {action}.",
            f"{action.capitalize()}, ASAP",
            f"Just {action}.",
        ]
    )
    prompt = f"Rewrite as a polite request: {terse}"
    return {"prompt": prompt, "completion": f"Could you please {action}?"}


TASKS: dict[str, tuple[Callable[[random.Random], dict], int]] = {
    "extract": (extract, 101),
    "classify": (classify, 202),
    "normalize": (normalize, 303),
    "style": (style, 404),
}


def generate(task: str, n_train: int = N_TRAIN, n_test: int = N_TEST) -> tuple[list[dict], list[dict]]:
    """Draw records until both splits are full; a test record's answer never appears in training."""
    make, seed = TASKS[task]
    rng = random.Random(seed)
    train: list[dict] = []
    test: list[dict] = []
    seen_prompts: set[str] = set()
    while len(test) < n_test:  # the held-out split first, so training cannot contain its answers
        row = make(rng)
        if row["prompt"] not in seen_prompts:
            seen_prompts.add(row["prompt"])
            test.append(row)
    test_answers = {r["completion"] for r in test}
    while len(train) < n_train:
        row = make(rng)
        # classify has four answers: there the prompt, not the answer, must be new.
        fresh = row["prompt"] not in seen_prompts and (task == "classify" or row["completion"] not in test_answers)
        if fresh:
            seen_prompts.add(row["prompt"])
            train.append(row)
    return train, test


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    for task in TASKS:
        train, test = generate(task)
        write_jsonl(args.out / task / "train.jsonl", train)
        write_jsonl(args.out / task / "test.jsonl", test)
        print(f"{task}: wrote {len(train)} train and {len(test)} test records")


if __name__ == "__main__":
    main()
