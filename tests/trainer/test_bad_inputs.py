"""A battery of bad inputs, as a new user would make them: each ends in one line, a documented code, nothing lost.

Every case runs the real `kubetune` command line (typer's runner, in this process) against an output
directory that already holds a previous run's outputs, and asserts:

- the exit code (docs/user/exit-codes.md) and that no traceback escaped;
- the culprit (file, line, field or variable) is named in the error line;
- the same line and code went to the termination log, which the operator shows in status;
- the previous run's files are byte-for-byte unchanged.

The cases are grouped by where the fault enters: config, environment and process layout, data,
output directory, model, adapter and checkpoint. Most fail before the model loads, so the table
costs seconds; the few that need the real model say so in their names.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import traceback
from collections.abc import Callable
from pathlib import Path

import precision_modes
import pytest
from typer.testing import CliRunner

from kubetune.api.contract import ExitCode
from kubetune.trainer.cli import app

# A case builds its inputs under a temporary directory T (the output directory is T/out) and returns
# (argv, env). Its culprit is formatted with T, so it can name the very file the case wrote.
Build = Callable[[Path], tuple[list[str], dict[str, str]]]
GOOD = [{"prompt": f"Say {i}", "completion": f"{i}"} for i in range(4)]


def write(path: Path, content: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def train(t: Path, *more: str, data: str | None = None) -> list[str]:
    data = data or write(t / "good.jsonl", jsonl(GOOD))
    return ["train", "--data", data, "--output-dir", str(t / "out"), "--max-steps", "1", "--batch-size", "2", *more]


def plan(t: Path, *more: str, data: str | None = None) -> list[str]:
    return ["plan", "--data", data or write(t / "good.jsonl", jsonl(GOOD)), "--batch-size", "2", *more]


def on(argv: list[str], **env: str) -> tuple[list[str], dict[str, str]]:
    return argv, env


def with_data(name: str, content: str | bytes, *more: str) -> Build:
    return lambda t: on(train(t, *more, data=write(t / name, content)))


def with_config(text: str | bytes) -> Build:
    return lambda t: on(train(t, "--config", write(t / "c.yaml", text)))


def with_set(*pairs: str) -> Build:
    return lambda t: on(train(t, *[x for p in pairs for x in ("--set", p)]))


def with_env(**env: str) -> Build:
    return lambda t: on(train(t), **env)


def parquet(path: Path) -> str:
    return write(path, b"PAR1 this is not a parquet file PAR1")


def busy_port(t: Path) -> tuple[list[str], dict[str, str]]:
    sock = socket.socket()
    sock.bind(("", 0))
    sock.listen()
    BUSY.append(sock)  # closed after the case
    return on(train(t, "--nproc-per-node", "2"), MASTER_PORT=str(sock.getsockname()[1]))


BUSY: list[socket.socket] = []

# (id, build, exit code, culprit). Fast: no model weights are loaded.
CASES: list[tuple[str, Build, int, str]] = [
    # --- config: YAML, env, --set, flags ---
    ("yaml-syntax", with_config("training:\n  lr: [1\n"), ExitCode.CONFIG, "{t}/c.yaml:"),
    ("yaml-unknown-key", with_config("training:\n  epoch: 3\n"), ExitCode.CONFIG, "{t}/c.yaml:2: training.epoch"),
    ("yaml-wrong-type", with_config("training:\n  lr: fast\n"), ExitCode.CONFIG, "{t}/c.yaml:2: training.lr"),
    ("yaml-out-of-range", with_config("lora:\n  r: 0\n"), ExitCode.CONFIG, "{t}/c.yaml:2: lora.r"),
    ("yaml-not-a-mapping", with_config("- a\n- b\n"), ExitCode.CONFIG, "{t}/c.yaml"),
    ("yaml-not-utf8", with_config(b"training:\n  lr: \xff\xfe\n"), ExitCode.CONFIG, "{t}/c.yaml"),
    ("config-missing", lambda t: on(train(t, "--config", str(t / "nope.yaml"))), ExitCode.CONFIG, "{t}/nope.yaml"),
    ("config-is-dir", lambda t: on(train(t, "--config", str(t))), ExitCode.CONFIG, "{t}: cannot read config"),
    ("env-config-missing", with_env(KUBETUNE_CONFIG="/nonexistent/c.yaml"), ExitCode.CONFIG, "/nonexistent/c.yaml"),
    ("env-wrong-type", with_env(KUBETUNE_TRAINING__LR="fast"), ExitCode.CONFIG, "KUBETUNE_TRAINING__LR"),
    ("env-unknown-key", with_env(KUBETUNE_TRAINING__EPOCH="3"), ExitCode.CONFIG, "KUBETUNE_TRAINING__EPOCH"),
    ("set-unknown-key", with_set("training.epoch=3"), ExitCode.CONFIG, "training.epoch"),
    ("set-without-value", with_set("training.lr"), ExitCode.CONFIG, "training.lr"),
    ("set-bad-choice", with_set("data.train_on=everything"), ExitCode.CONFIG, "data.train_on"),
    ("flag-bad-precision", lambda t: on(train(t, "--precision", "fp64")), ExitCode.CONFIG, "--precision"),
    ("fp16-on-cpu", lambda t: on(train(t, "--precision", "fp16")), ExitCode.CONFIG, "training.precision"),
    ("cuda-not-there", lambda t: on(train(t, "--device", "cuda")), ExitCode.CONFIG, "training.device"),
    ("no-data", lambda t: on(["train", "--output-dir", str(t / "out")]), ExitCode.CONFIG, "data.path"),
    # --- environment: the process layout and the rendezvous ---
    ("nproc-not-int", with_env(KUBETUNE_NPROC_PER_NODE="two"), ExitCode.CONFIG, "KUBETUNE_NPROC_PER_NODE"),
    ("nproc-zero", with_env(KUBETUNE_NPROC_PER_NODE="0"), ExitCode.CONFIG, "KUBETUNE_NPROC_PER_NODE"),
    ("nnodes-zero", with_env(KUBETUNE_NNODES="0"), ExitCode.CONFIG, "KUBETUNE_NNODES"),
    ("node-rank-too-big", with_env(KUBETUNE_NNODES="2", KUBETUNE_NODE_RANK="2"), ExitCode.CONFIG, "KUBETUNE_NODE_RANK"),
    ("node-rank-negative", with_env(KUBETUNE_NODE_RANK="-1"), ExitCode.CONFIG, "KUBETUNE_NODE_RANK"),
    (
        "job-index-too-big",
        with_env(KUBETUNE_NNODES="2", JOB_COMPLETION_INDEX="5"),
        ExitCode.CONFIG,
        "JOB_COMPLETION_INDEX",
    ),
    ("port-not-int", with_env(MASTER_PORT="http"), ExitCode.CONFIG, "MASTER_PORT"),
    ("port-too-big", with_env(MASTER_PORT="70000"), ExitCode.CONFIG, "MASTER_PORT"),
    ("port-zero", with_env(MASTER_PORT="0"), ExitCode.CONFIG, "MASTER_PORT"),
    ("addr-is-url", with_env(MASTER_ADDR="http://10.0.0.1"), ExitCode.CONFIG, "MASTER_ADDR"),
    ("addr-with-port", with_env(MASTER_ADDR="10.0.0.1:29500"), ExitCode.CONFIG, "MASTER_ADDR"),
    ("flag-nproc-zero", lambda t: on(train(t, "--nproc-per-node", "0")), ExitCode.CONFIG, "--nproc-per-node"),
    ("flag-nnodes-negative", lambda t: on(train(t, "--nnodes", "-1")), ExitCode.CONFIG, "--nnodes"),
    ("world-size-outside-torchrun", with_env(WORLD_SIZE="2", RANK="0"), ExitCode.CONFIG, "RANK, WORLD_SIZE"),
    ("local-rank-outside-torchrun", with_env(LOCAL_RANK="1"), ExitCode.CONFIG, "LOCAL_RANK"),
    ("master-port-busy", busy_port, ExitCode.CONFIG, "MASTER_PORT"),
    # --- data files and records ---
    ("data-missing", lambda t: on(train(t, data=str(t / "nope.jsonl"))), ExitCode.DATA, "{t}/nope.jsonl"),
    ("data-unsupported-type", with_data("d.txt", "hello\n"), ExitCode.DATA, "{t}/d.txt"),
    ("jsonl-malformed", with_data("d.jsonl", jsonl(GOOD[:1]) + "{oops\n"), ExitCode.DATA, "{t}/d.jsonl:2"),
    ("jsonl-not-object", with_data("d.jsonl", jsonl(GOOD[:1]) + "[1, 2]\n"), ExitCode.DATA, "{t}/d.jsonl:2"),
    ("jsonl-only-non-objects", with_data("d.jsonl", '"a"\n3\n'), ExitCode.DATA, "{t}/d.jsonl:1"),
    (
        "jsonl-not-utf8",
        with_data("d.jsonl", jsonl(GOOD[:2]).encode() + b'{"prompt": "\xff"}\n'),
        ExitCode.DATA,
        "{t}/d.jsonl:3",
    ),
    (
        "jsonl-latin1-file",
        with_data("d.jsonl", '{"prompt": "café", "completion": "x"}\n'.encode("latin-1")),
        ExitCode.DATA,
        "{t}/d.jsonl:1",
    ),
    ("jsonl-empty", with_data("d.jsonl", ""), ExitCode.DATA, "{t}/d.jsonl"),
    ("jsonl-blank-lines", with_data("d.jsonl", "\n  \n"), ExitCode.DATA, "{t}/d.jsonl"),
    ("jsonl-missing-field", with_data("d.jsonl", jsonl([*GOOD[:1], {"prompt": "a"}])), ExitCode.DATA, "{t}/d.jsonl:2"),
    (
        "jsonl-wrong-type",
        with_data("d.jsonl", jsonl([{"prompt": 5, "completion": "x"}])),
        ExitCode.DATA,
        "{t}/d.jsonl:1",
    ),
    ("jsonl-unknown-columns", with_data("d.jsonl", jsonl([{"q": "a", "a": "b"}])), ExitCode.DATA, "{t}/d.jsonl:1"),
    (
        "messages-bad-role",
        with_data("d.jsonl", jsonl([{"messages": [{"role": "bot", "content": "x"}]}])),
        ExitCode.DATA,
        "{t}/d.jsonl:1",
    ),
    (
        "messages-no-assistant",
        with_data("d.jsonl", jsonl([{"messages": [{"role": "user", "content": "x"}]}])),
        ExitCode.DATA,
        "{t}/d.jsonl:1",
    ),
    (
        "format-mismatch",
        with_data("d.jsonl", jsonl(GOOD), "--set", "data.format=alpaca"),
        ExitCode.DATA,
        "{t}/d.jsonl:1",
    ),
    ("csv-unknown-columns", with_data("d.csv", "question,answer\na,b\n"), ExitCode.DATA, "{t}/d.csv"),
    ("csv-ragged-row", with_data("d.csv", "prompt,completion\na,b\nc\n"), ExitCode.DATA, "{t}/d.csv:3"),
    ("csv-header-only", with_data("d.csv", "prompt,completion\n"), ExitCode.DATA, "{t}/d.csv"),
    ("csv-not-utf8", with_data("d.csv", b"prompt,completion\n\xff\xfe,b\n"), ExitCode.DATA, "{t}/d.csv"),
    ("json-malformed", with_data("d.json", '[{"prompt": "a",\n'), ExitCode.DATA, "{t}/d.json:"),
    ("json-not-a-list", with_data("d.json", "42"), ExitCode.DATA, "{t}/d.json"),
    ("json-two-lists", with_data("d.json", '{"a": [], "b": []}'), ExitCode.DATA, "{t}/d.json"),
    ("json-non-object-item", with_data("d.json", json.dumps([*GOOD[:1], 7])), ExitCode.DATA, "{t}/d.json:record 2"),
    ("json-not-utf8", with_data("d.json", b'[{"prompt": "\xff"}]'), ExitCode.DATA, "{t}/d.json"),
    ("parquet-corrupt", lambda t: on(train(t, data=parquet(t / "d.parquet"))), ExitCode.DATA, "{t}/d.parquet"),
    (
        "dir-without-data",
        lambda t: on(train(t, data=write(t / "dd" / "x.txt", "x") and str(t / "dd"))),
        ExitCode.DATA,
        "{t}/dd",
    ),
    (
        "eval-file-bad",
        lambda t: on(train(t, "--set", f"data.eval_path={write(t / 'e.jsonl', '{bad')}")),
        ExitCode.DATA,
        "{t}/e.jsonl:1",
    ),
    (
        "nothing-left-after-truncation",
        with_data("d.jsonl", jsonl([{"prompt": "word " * 64, "completion": "x"}]), "--set", "data.max_length=16"),
        ExitCode.DATA,
        "data.max_length",
    ),
    # --- input that would cost a node (issue 22, item 7) ---
    ("jsonl-nested-too-deep", with_data("d.jsonl", jsonl(GOOD) + "[" * 200_000 + "\n"), ExitCode.DATA, "{t}/d.jsonl:5"),
    ("json-nested-too-deep", with_data("d.json", "[" * 200_000), ExitCode.DATA, "{t}/d.json: JSON nested too deeply"),
    (
        "jsonl-line-over-the-bound",
        with_data("d.jsonl", jsonl(GOOD) + json.dumps({"prompt": "a" * (65 << 20), "completion": "b"}) + "\n"),
        ExitCode.DATA,
        "{t}/d.jsonl:5: line longer than 64 MiB",
    ),
    ("max-length-unbounded", with_set("data.max_length=100000000"), ExitCode.CONFIG, "data.max_length"),
    ("epochs-infinite", with_set("training.epochs=.inf"), ExitCode.CONFIG, "training.epochs"),
    ("epochs-nan", with_set("training.epochs=.nan"), ExitCode.CONFIG, "training.epochs"),
    ("max-grad-norm-infinite", with_set("training.max_grad_norm=.inf"), ExitCode.CONFIG, "training.max_grad_norm"),
    # --- remote sources refused before anything is fetched (issue 22, items 1 and 6) ---
    (
        "hf-path-climbs-out",
        lambda t: on(train(t, data="hf://org/name/../../..")),
        ExitCode.CONFIG,
        "may not contain '..'",
    ),
    (
        "hf-revision-climbs-out",
        lambda t: on(train(t, "--model", "hf://org/name@..%2F..%2Ftmp")),
        ExitCode.CONFIG,
        "model.path: hf://org/name@..%2F..%2Ftmp: '../../tmp' is not a valid revision",
    ),
    (
        "require-pins-unpinned-url",
        lambda t: on(train(t, "--set", "sources.require_pins=true", data="https://127.0.0.1:9/d/t.jsonl")),
        ExitCode.CONFIG,
        "sources.require_pins: https://127.0.0.1:9/d/t.jsonl: not pinned",
    ),
    (
        "sources-lock-missing",
        lambda t: on(train(t, data="s3://bucket-x/d.jsonl"), KUBETUNE_SOURCES_LOCK="job-that-never-fetched"),
        ExitCode.CONFIG,
        "cannot read the sources lock",
    ),
    (
        "sources-lock-name-is-a-path",
        lambda t: on(train(t, data="s3://bucket-x/d.jsonl"), KUBETUNE_SOURCES_LOCK="../../etc/x"),
        ExitCode.CONFIG,
        "KUBETUNE_SOURCES_LOCK: '../../etc/x' is not a plain name",
    ),
    # --- the output directory ---
    (
        "output-is-a-file",
        lambda t: on([*train(t)[:-6], "--output-dir", write(t / "o.txt", "x")]),
        ExitCode.CONFIG,
        "output_dir: {t}/o.txt",
    ),
    (
        "output-under-a-file",
        lambda t: on([*train(t)[:-6], "--output-dir", write(t / "f", "x") + "/sub"]),
        ExitCode.CONFIG,
        "output_dir: {t}/f/sub",
    ),
    # --- the model (tokenizer and files checked before the weights load) ---
    ("model-missing", lambda t: on(train(t, "--model", str(t / "nomodel"))), ExitCode.MODEL, "{t}/nomodel"),
    (
        "model-dir-no-config",
        lambda t: on(train(t, "--model", str((t / "m").mkdir() or t / "m"))),
        ExitCode.MODEL,
        "{t}/m",
    ),
    ("model-is-a-plain-file", lambda t: on(train(t, "--model", write(t / "m.bin", "x"))), ExitCode.MODEL, "{t}/m.bin"),
    (
        "model-gguf-garbage",
        lambda t: on(train(t, "--model", write(t / "m.gguf", b"not gguf"))),
        ExitCode.MODEL,
        "{t}/m.gguf",
    ),
    ("model-unknown-builtin", lambda t: on(train(t, "--model", "builtin:nope")), ExitCode.MODEL, "builtin"),
    (
        "model-hub-offline",
        lambda t: on(train(t, "--model", "no-such-org/no-such-model"), HF_HUB_OFFLINE="1"),
        ExitCode.MODEL,
        "no-such-org/no-such-model",
    ),
    (
        "export-gguf-garbage",
        lambda t: on(["model", "export", write(t / "x.gguf", b"GGUF?"), str(t / "exp")]),
        ExitCode.MODEL,
        "{t}/x.gguf",
    ),
    (
        "export-onto-a-file",
        lambda t: on(["model", "export", "builtin:smollm2-135m-instruct", write(t / "e", "x")]),
        ExitCode.CONFIG,
        "{t}/e: exists and is not a directory",
    ),
    (
        "merge-no-adapter",
        lambda t: on(["merge", "--output-dir", str(t / "empty")]),
        ExitCode.MODEL,
        "{t}/empty/adapter",
    ),
    (
        "merge-bad-dtype",
        lambda t: on(["merge", "--output-dir", str(t / "empty"), "--dtype", "int4"]),
        ExitCode.CONFIG,
        "--dtype 'int4'",
    ),
    ("generate-nothing-asked", lambda t: on(["generate", "--output-dir", str(t / "out")]), ExitCode.CONFIG, "--prompt"),
    (
        "inspect-bad-data",
        lambda t: on(["data", "inspect", "--data", write(t / "i.jsonl", "{x\n")]),
        ExitCode.DATA,
        "{t}/i.jsonl:1",
    ),
    # --- checkpoints named for resuming ---
    ("resume-not-a-checkpoint", with_set("training.resume=/nonexistent/ckpt"), ExitCode.CONFIG, "/nonexistent/ckpt"),
    # --- `kubetune plan`: the same config, data and model checks as train (docs/plan.md) ---
    (
        "plan-yaml-unknown-key",
        lambda t: on(plan(t, "--config", write(t / "c.yaml", "lora:\n  rank: 8\n"))),
        ExitCode.CONFIG,
        "{t}/c.yaml:2: lora.rank",
    ),
    ("plan-no-data", lambda t: on(["plan"]), ExitCode.CONFIG, "data.path"),
    ("plan-memory-garbage", lambda t: on(plan(t, "--memory", "lots")), ExitCode.CONFIG, "--memory"),
    (
        "plan-jsonl-malformed",
        lambda t: on(plan(t, data=write(t / "p.jsonl", jsonl(GOOD[:1]) + "{oops\n"))),
        ExitCode.DATA,
        "{t}/p.jsonl:2",
    ),
    ("plan-model-missing", lambda t: on(plan(t, "--model", str(t / "nomodel"))), ExitCode.MODEL, "{t}/nomodel"),
]


def fake_model(t: Path, builtin: str, break_it: Callable[[Path], None]) -> str:
    """A copy of the builtin model directory with one thing wrong with it."""
    dest = t / "model"
    shutil.copytree(builtin, dest)
    break_it(dest)
    return str(dest)


def checkpoint(root: Path, marker: str, state: str = "{}") -> Path:
    ckpt = root / "checkpoint-2"
    write(ckpt / "COMPLETE", marker)
    write(ckpt / "trainer_state.json", state)
    return ckpt


def broken_adapter(out: Path, builtin: str, weights: bytes = b"\x00" * 64, run: str | None = None) -> str:
    """An adapter directory with a valid config and tokenizer, and damaged weights (or run.json)."""
    adapter = out / "adapter"
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj"],
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": builtin,
    }
    write(adapter / "adapter_config.json", json.dumps(config))
    write(adapter / "adapter_model.safetensors", weights)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(builtin) / name, adapter / name)
    if run is not None:
        write(out / "run.json", run)
    return str(out)


# Cases that need the builtin model's files: (id, build(t, builtin), code, culprit).
MODEL_CASES: list[tuple[str, Callable[[Path, str], tuple[list[str], dict[str, str]]], int, str]] = [
    (
        "model-config-garbage",
        lambda t, b: on(train(t, "--model", fake_model(t, b, lambda m: write(m / "config.json", "{not json")))),
        ExitCode.MODEL,
        "{t}/model",
    ),
    (
        "model-weights-garbage",
        lambda t, b: on(train(t, "--model", fake_model(t, b, lambda m: write(m / "model.safetensors", b"\x00" * 64)))),
        ExitCode.MODEL,
        "{t}/model",
    ),
    (
        "model-tokenizer-garbage",
        lambda t, b: on(train(t, "--model", fake_model(t, b, lambda m: write(m / "tokenizer.json", "[1, 2]")))),
        ExitCode.MODEL,
        "{t}/model",
    ),
    (
        "lora-unknown-target",
        lambda t, b: on(train(t, "--set", "lora.target_modules=q_proj,qkv")),
        ExitCode.CONFIG,
        "lora.target_modules",
    ),
    (
        "lora-unknown-modules-to-save",
        lambda t, b: on(train(t, "--set", "lora.modules_to_save=classifier")),
        ExitCode.CONFIG,
        "lora.modules_to_save",
    ),
    (
        "merge-adapter-without-tokenizer",
        lambda t, b: on(["merge", "--output-dir", str(t / "out"), "--base", b]),
        ExitCode.MODEL,
        "{t}/out/adapter",
    ),
    (
        "merge-adapter-weights-garbage",
        lambda t, b: on(["merge", "--output-dir", broken_adapter(t / "o2", b)]),
        ExitCode.MODEL,
        "{t}/o2/adapter",
    ),
    (
        "merge-run-json-garbage",
        lambda t, b: on(["merge", "--output-dir", broken_adapter(t / "o3", b, run="{x")]),
        ExitCode.MODEL,
        "{t}/o3/run.json:1",
    ),
    (
        "generate-adapter-weights-garbage",
        lambda t, b: on(["generate", "--output-dir", broken_adapter(t / "o4", b), "-p", "hi"]),
        ExitCode.MODEL,
        "{t}/o4/adapter",
    ),
    (
        "plan-model-config-garbage",
        lambda t, b: on(plan(t, "--model", fake_model(t, b, lambda m: write(m / "config.json", "{not json")))),
        ExitCode.MODEL,
        "{t}/model",
    ),
    (
        "plan-model-weights-garbage",
        lambda t, b: on(plan(t, "--model", fake_model(t, b, lambda m: write(m / "model.safetensors", b"\x00" * 64)))),
        ExitCode.MODEL,
        "{t}/model",
    ),
    (
        "plan-lora-unknown-target",
        lambda t, b: on(plan(t, "--set", "lora.target_modules=qkv")),
        ExitCode.CONFIG,
        "lora.target_modules",
    ),
    (
        "checkpoint-marker-garbage",
        lambda t, b: on(train(t, "--set", "training.resume=" + str(checkpoint(t / "ck", "{oops")))),
        ExitCode.CONFIG,
        "{t}/ck/checkpoint-2/COMPLETE",
    ),
    (
        "checkpoint-state-garbage",
        lambda t, b: on(train(t, "--set", "training.resume=" + str(checkpoint(t / "ck", '{"identity": {}}', "nope")))),
        ExitCode.CONFIG,
        "{t}/ck/checkpoint-2/trainer_state.json",
    ),
    (
        "checkpoint-of-another-run",
        lambda t, b: on(
            train(t, "--set", "training.resume=" + str(checkpoint(t / "ck", '{"identity": {"model": "other"}}')))
        ),
        ExitCode.CONFIG,
        "{t}/ck/checkpoint-2 was written by a different run",
    ),
]


@pytest.fixture(scope="module", autouse=True)
def library_loggers():
    """Libraries bind their log handlers to sys.stderr on first use: let that be the real one, not a runner's."""
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os

    keep = {"KUBETUNE_CACHE_DIR", precision_modes.ENV}
    layout = {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "JOB_COMPLETION_INDEX",
        "TORCHELASTIC_RUN_ID",
        "DATA_PATH",
        "OUTPUT_DIR",
        "BASE_MODEL_PATH",
    }
    for k in list(os.environ):
        if (k.startswith("KUBETUNE_") and k not in keep) or k in layout:
            monkeypatch.delenv(k)
    # The pod's last words: the operator puts this file's message in the FinetuneJob's status.
    write(tmp_path / "termination-log", "")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    handlers = logging.root.handlers[:]
    yield
    # The CLI's logging.basicConfig bound a handler to this invocation's (now closed) stderr.
    logging.root.handlers[:] = handlers
    while BUSY:
        BUSY.pop().close()


def previous_run(out: Path) -> None:
    """What an earlier successful run left in the output directory (a user re-running in the same place)."""
    write(out / "adapter" / "adapter_config.json", '{"r": 8}')
    write(out / "adapter" / "adapter_model.safetensors", b"earlier weights")
    write(out / "run.json", '{"metrics": {"steps": 100}}')
    write(out / "metrics.jsonl", '{"event": "progress", "step": 1, "loss": 1.0}\n')
    write(out / "merged" / "model.safetensors", b"earlier merged model")
    write(out / "eval.json", "{}")


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check(t: Path, argv: list[str], env: dict[str, str], code: int, culprit: str, monkeypatch) -> str:
    previous_run(t / "out")
    before = snapshot(t / "out")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if "HF_HUB_OFFLINE" in env:  # read once, when huggingface_hub is imported: set what a fresh process would see
        import huggingface_hub.constants

        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", env["HF_HUB_OFFLINE"] == "1")
    result = CliRunner().invoke(app, argv)
    output = result.output
    assert result.exit_code == code, output[-3000:] + "".join(traceback.format_exception(result.exception))
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # typer.Exit, not an escaped error
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    want = culprit.format(t=t)
    assert errors and any(want in line for line in errors), (want, output[-3000:])
    last = json.loads((t / "termination-log").read_text())
    assert (last["event"], last["exit_code"]) == ("error", code) and want in last["message"]
    assert snapshot(t / "out") == before  # the earlier run's outputs survive, byte for byte
    return output


@pytest.mark.parametrize(("build", "code", "culprit"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, monkeypatch, build, code, culprit):
    argv, env = build(tmp_path)
    check(tmp_path, argv, env, code, culprit, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize(("build", "code", "culprit"), [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_bad_model_adapter_or_checkpoint(tmp_path, monkeypatch, builtin_path, build, code, culprit):
    argv, env = build(tmp_path, builtin_path)
    check(tmp_path, argv, env, code, culprit, monkeypatch)


@pytest.mark.slow
def test_a_diverging_run_stops_at_once_with_its_own_code(tmp_path, monkeypatch):
    # Adam moves every LoRA weight by ~lr per step: at 1e30 the activations overflow to inf/NaN at once.
    argv = [
        *train(tmp_path)[:-4],
        "--max-steps",
        "20",
        "--lr",
        "1e30",
        "--set",
        "training.logging_steps=1",
        "--set",
        "training.save_steps=1",
        "--set",
        "training.warmup_ratio=0",
        "--progress",
        "json",
    ]
    out = tmp_path / "out"
    previous_run(out)
    kept = {k: v for k, v in snapshot(out).items() if k != "metrics.jsonl"}  # metrics.jsonl is this run's record
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == ExitCode.DIVERGED, result.output[-3000:]
    assert "Traceback" not in result.output
    error = next(line for line in result.output.splitlines() if line.startswith("error: "))
    assert "training diverged" in error and "training.lr" in error
    step = int(error.split(" at step ")[1].split(";")[0])
    assert step < 20  # stopped early, not after the whole schedule
    assert json.loads((tmp_path / "termination-log").read_text())["exit_code"] == ExitCode.DIVERGED
    # The diverged state was not saved as a checkpoint or an adapter; the earlier outputs are intact.
    assert not list((out / "checkpoints").glob(f"checkpoint-{step}"))
    assert {k: v for k, v in snapshot(out).items() if k in kept} == kept


@pytest.mark.slow
def test_bad_data_in_a_two_process_run_keeps_its_code_and_line(tmp_path):
    """Through torchrun: each worker's one line and exit 3, not torchrun's exit 1 and its traceback."""
    import subprocess
    import sys

    data = write(tmp_path / "d.jsonl", jsonl(GOOD[:1]) + "[1, 2]\n")
    out = tmp_path / "out"
    previous_run(out)
    before = snapshot(out)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = precision_modes.child_env(MASTER_PORT=str(port), KUBETUNE_LOG_LEVEL="ERROR")
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune.trainer.cli", *train(tmp_path, "--nproc-per-node", "2", data=data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == ExitCode.DATA, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"error: [rank 0] {data}:2: expected a JSON object" in proc.stderr
    assert snapshot(out) == before


SECRETS = ("hunter2pass", "SIGNATURE0123456789", "hf_abcdefghijklmnopqrstuvwxyz", "tokenFromTheSecret99")


@pytest.mark.parametrize(
    "command",
    [
        ["fetch", "--data", "http://alice:hunter2pass@127.0.0.1:9/d/t.jsonl?X-Amz-Signature=SIGNATURE0123456789"],
        ["train", "--data", "https://127.0.0.1:9/d/t.jsonl?X-Amz-Credential=a&X-Amz-Signature=SIGNATURE0123456789"],
    ],
    ids=["fetch-userinfo-url", "train-presigned-url"],
)
def test_no_credential_reaches_the_error_the_logs_or_the_termination_message(tmp_path, command):
    """A real process at DEBUG, an unreachable source whose URL carries credentials, tokens in env and a Secret file."""
    import subprocess
    import sys

    secret_file = write(tmp_path / "http-token", "tokenFromTheSecret99\n")
    write(tmp_path / "termination-log", "")
    env = precision_modes.child_env(
        KUBETUNE_LOG_LEVEL="DEBUG",
        KUBETUNE_TERMINATION_LOG=str(tmp_path / "termination-log"),
        KUBETUNE_CACHE_DIR=str(tmp_path / "cache"),
        HF_TOKEN="hf_abcdefghijklmnopqrstuvwxyz",
        KUBETUNE_HTTP_TOKEN_FILE=secret_file,
    )
    argv = [*command, "--set", "tracking.mlflow_uri=http://bob:hunter2pass@127.0.0.1:9"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune.trainer.cli",
            *argv,
            *(["--output-dir", str(tmp_path / "out")] * (command[0] == "train")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    from kubetune.api.contract import ExitCode

    assert proc.returncode == ExitCode.TRANSFER, proc.stderr[-3000:]
    error = next(line for line in proc.stderr.splitlines() if line.startswith("error: "))
    assert "127.0.0.1:9/d/t.jsonl" in error and "X-Amz-Signature=***" in error, error  # still says which source
    last = (tmp_path / "termination-log").read_text()
    assert json.loads(last)["exit_code"] == ExitCode.TRANSFER
    for secret in SECRETS:
        assert secret not in proc.stderr and secret not in proc.stdout and secret not in last, secret
