"""`kubetune train`: config in, adapter and a report out. Read it top to bottom.

Order matters for the user: everything that can be wrong with the config or
the data is found before the model is loaded, so a typo costs seconds, not
the minutes a 7B load takes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from kubetune.api.config import TrainConfig
from kubetune.api.contract import SummaryEvent
from kubetune.trainer import checkpoints, finish, launch, outlock, plan, selection, sources, tracking
from kubetune.trainer import device as devices
from kubetune.trainer import lr as lrs
from kubetune.trainer.data.collate import Collator
from kubetune.trainer.data.pipeline import PreparedData, prepare
from kubetune.trainer.divergence import DivergenceGuard
from kubetune.trainer.errors import Preempted, UsageError
from kubetune.trainer.merge import drop_stale as drop_stale_merge
from kubetune.trainer.models import apply_lora, compile_layers, load_model, load_tokenizer, resolve_path
from kubetune.trainer.progress import ProgressReporter
from kubetune.trainer.report import (
    check_output_dir,
    hash_paths,
    model_fingerprint,
    plot_loss,
    read_metrics,
    replace_dir_atomically,
    versions,
    write_json_atomic,
)
from kubetune.trainer.termination import write_termination_message

log = logging.getLogger("kubetune.train")


def lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias=cfg.lora.bias,
        modules_to_save=cfg.lora.modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def training_arguments(
    cfg: TrainConfig,
    place: devices.Placement,
    has_eval: bool,
    no_bar: bool,
    backend: str | None = None,
    lr: float | None = None,
) -> Any:
    """Map our config onto transformers' TrainingArguments (pure apart from the class).

    `lr` is the resolved rate (lr.resolve); it is required when training.lr is auto.
    """
    from transformers import TrainingArguments

    t = cfg.training
    eval_strategy = "no" if not has_eval else ("steps" if t.eval_steps else "epoch")
    return TrainingArguments(
        output_dir=str(Path(cfg.output_dir) / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=lr if lr is not None else t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=t.optimizer,
        seed=t.seed,
        bf16=place.precision == "bf16",
        fp16=place.precision == "fp16",
        use_cpu=place.device == "cpu",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must be seen (DivergenceGuard), not averaged away
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        report_to="none",
        disable_tqdm=no_bar,
        remove_unused_columns=False,
        label_names=["labels"],
        include_num_input_tokens_seen="all" if cfg.data.packing else "non_padding",
        dataloader_num_workers=0,
        ddp_backend=backend,
        ddp_timeout=cfg.distributed.timeout_seconds,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient; skip DDP's graph walk
    )


def launched_world_size() -> int:
    """Processes in this run: torchrun's WORLD_SIZE in a worker, else one."""
    return int(os.environ.get("WORLD_SIZE", "1")) if os.environ.get(launch.LAUNCHED_ENV) else 1


def worker_setup(cfg: TrainConfig, place: devices.Placement) -> tuple[devices.Placement, str]:
    """In a torchrun worker: check the world size, pick the backend, agree on one precision, pin cores."""
    world = launched_world_size()
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    layout = launch.layout_from_env(os.environ)
    if world != layout.world_size:
        raise UsageError(
            f"world size mismatch: this node expects KUBETUNE_NNODES x KUBETUNE_NPROC_PER_NODE = "
            f"{layout.nnodes} x {layout.nproc_per_node} = {layout.world_size} processes, but the job has {world}; "
            "every node must be started with the same values"
        )
    backend = launch.choose_backend(place.device, launch.ccl_importable(), cfg.distributed.backend)
    if backend == "ccl":
        import oneccl_bindings_for_pytorch  # noqa: F401  (registers the ccl backend)

        os.environ.setdefault("CCL_LOCAL_RANK", str(local_rank))
        os.environ.setdefault("CCL_LOCAL_SIZE", str(local_world))
    place = agree_across_ranks(place, backend, cfg.distributed.timeout_seconds)
    if place.device == "cpu":
        pinned: list[int] | str
        configured, usable = cfg.training.num_threads, devices.usable_cores()
        try:
            cores = sorted(os.sched_getaffinity(0))
            nodes = devices.numa_nodes()
            pinned, threads = launch.worker_cpus(cores, local_world, local_rank, nodes, usable, configured)
            os.sched_setaffinity(0, pinned)
        except (AttributeError, OSError):  # not Linux, or pinning not allowed: threads only
            pinned, threads = "not pinned", launch.worker_threads(usable, usable, local_world, configured)
        torch.set_num_threads(threads)
        place = replace(place, threads=threads)  # what the log, the plan and run.json report
        log.info("rank %s/%d: backend=%s threads=%d cores=%s", os.environ.get("RANK"), world, backend, threads, pinned)
    return place, backend


def agree_across_ranks(place: devices.Placement, backend: str, timeout_seconds: int) -> devices.Placement:
    """Join the process group now (Trainer reuses it) and make every rank use the same precision."""
    import torch.distributed as dist

    if not dist.is_initialized():
        if place.device in ("cuda", "xpu"):  # this rank's own GPU, as accelerate would set it; nccl binds to it
            getattr(torch, place.device).set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_seconds))
    # Over gloo whatever the training backend: an object gather is plain CPU bytes, which every
    # torch build can exchange that way (nccl, xccl and ccl would each need their own care).
    group = None if backend == "gloo" else dist.new_group(backend="gloo")
    chosen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(chosen, place.precision, group=group)
    if group is not None:
        dist.destroy_process_group(group)
    return devices.agree(place, chosen)


def run(cfg: TrainConfig, progress: str = "json") -> dict[str, Any]:
    """Train a LoRA adapter; returns the summary also written to run.json."""
    from kubetune.trainer.hf_trainer import GracefulStop

    stopper = GracefulStop()  # from the start: a SIGTERM while loading is a clean, retryable exit too
    try:
        cfg, fetched = sources.localize(cfg)  # remote model/data into the cache first; run.json notes the revisions
        trackers = tracking.start(cfg)  # report_to: runs opened (or one warning) before the model loads
        with contextlib.ExitStack() as held:  # the output lock, once _run takes it, lasts through the push
            try:
                summary = _run(cfg, progress, stopper, trackers.callbacks, held)
            except BaseException:
                trackers.abort()
                raise
            return finish.after_training(cfg, summary, fetched, trackers)  # trackers closed, push_to, run.json
    finally:
        stopper.restore()


def _stop_if_requested(stopper: Any, phase: str) -> None:
    if stopper.requested:
        raise Preempted(f"stopped by SIGTERM {phase}; nothing to save yet; run the same command again")


def _run(
    cfg: TrainConfig,
    progress: str,
    stopper: Any,
    callbacks: list[Any] | None = None,
    held: contextlib.ExitStack | None = None,
) -> dict[str, Any]:
    """The recipe: every phase that can fail on bad input runs before the (slow) model load.

    `callbacks` are the trackers' (report_to). The output lock is entered into `held` (the caller's, so
    that it outlives this function until the push is done), else into a stack of its own.
    """
    started = time.time()
    if not cfg.data.path:
        raise UsageError("data.path: no training data given (set data.path, DATA_PATH or --data)")
    check_output_dir(Path(cfg.output_dir))
    place, backend = setup_hardware(cfg)
    tokenizer, data = setup_data(cfg)
    resume = plan_resume(cfg, place.precision)
    # Before the (slow) load: a run that cannot fit here stops now, not OOM-killed at step 1.
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    planned = plan.preflight(cfg, data.train, place, launched_world_size(), local_processes)
    compiled = choose_compile(cfg, place, planned)
    _stop_if_requested(stopper, "while preparing data")
    # From here on the output directory is written: a second run on it fails now (outlock), not midway.
    with contextlib.ExitStack() as own:
        if os.environ.get("RANK", "0") == "0":
            (held or own).enter_context(outlock.hold(Path(cfg.output_dir)))
        model, loaded = setup_model(cfg, place, compiled[0])
        _stop_if_requested(stopper, "while loading the model")
        setup = Setup(place, backend, tokenizer, data, resume, model, loaded, compiled)
        fitted = fit(cfg, setup, progress, stopper, callbacks or [])
        if not fitted.trainer.is_world_process_zero():
            return {}
        return write_outputs(cfg, setup, fitted, started)


# --- phases -----------------------------------------------------------------------------------


@dataclass
class Resume:
    """What a checkpoint must agree with to be resumed, and the checkpoint to resume from."""

    data_hashes: dict[str, str]
    fingerprint: str
    identity: dict[str, Any]
    checkpoint: Path | None


@dataclass
class Loaded:
    trainable: int
    total: int
    seconds: float
    lr: lrs.LrChoice
    compiled_layers: int = 0  # decoder layers compiled (training.compile); 0: the model runs eagerly


@dataclass
class Setup:
    """Everything the phases before training produced, which fitting and reporting use."""

    place: devices.Placement
    backend: str | None
    tokenizer: Any
    data: PreparedData
    resume: Resume
    model: Any
    loaded: Loaded
    compiled: tuple[bool, str] = (False, "")  # whether the decoder layers are compiled, and why


@dataclass
class Fitted:
    trainer: Any
    result: Any
    reporter: ProgressReporter
    train_seconds: float
    eval_loss: float | None
    best: selection.BestAdapter


def setup_hardware(cfg: TrainConfig) -> tuple[devices.Placement, str | None]:
    """Device, precision, threads and checkpointing, and why; in a torchrun worker, also the backend."""
    t = cfg.training
    try:
        place = devices.choose(
            devices.detect(),
            t.device,
            t.precision,
            t.gradient_checkpointing,
            cfg.model.quantization != "none",
            t.num_threads,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    backend = None
    if os.environ.get(launch.LAUNCHED_ENV):
        place, backend = worker_setup(cfg, place)
    if place.device == "cpu" and backend is None:
        torch.set_num_threads(place.threads)
    log.info(
        "device=%s precision=%s (%s) threads=%d gradient_checkpointing=%s",
        place.device,
        place.precision,
        place.reason,
        place.threads,
        place.gradient_checkpointing,
    )
    return place, backend


def setup_data(cfg: TrainConfig) -> tuple[Any, PreparedData]:
    """Tokenizer and data: every data problem surfaces here, before the model loads."""
    from transformers import set_seed

    set_seed(cfg.training.seed)
    tokenizer = load_tokenizer(cfg.model.path)
    data = prepare(cfg.data, tokenizer, cfg.training.seed)
    log.info(
        "data: format=%s records=%d (eval %d) truncated=%d dropped=%d skipped_bad=%d tokens=%d",
        data.format,
        len(data.train),
        len(data.eval),
        data.stats.truncated,
        data.stats.dropped_no_target,
        len(data.skipped),
        sum(len(r["input_ids"]) for r in data.train),
    )
    if problem := selection.check(cfg.training.eval_metric, bool(data.eval), data.format):
        raise UsageError(problem)
    return tokenizer, data


def choose_compile(cfg: TrainConfig, place: devices.Placement, planned: Any) -> tuple[bool, str]:
    """training.compile resolved against the device, the model and the plan's time estimate."""
    try:
        choice = devices.choose_compile(
            cfg.training.compile,
            place.device,
            cfg.model.quantization != "none",
            place.gradient_checkpointing,
            planned.seconds if planned is not None else None,
            devices.cpp_compiler(),
            launched_world_size(),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    log.info("compile=%s (%s)", "on" if choice[0] else "off", choice[1])
    return choice


def plan_resume(cfg: TrainConfig, precision: str) -> Resume:
    data_hashes = hash_paths(cfg.data.path + cfg.data.eval_path)
    fingerprint = model_fingerprint(resolve_path(cfg.model.path))
    identity = checkpoints.identity(cfg, data_hashes, fingerprint, launched_world_size(), precision)
    ckpt_root = Path(cfg.output_dir) / "checkpoints"
    checkpoint = checkpoints.select_resume(ckpt_root, cfg.training.resume, identity, cfg.training.force_resume)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    return Resume(data_hashes, fingerprint, identity, checkpoint)


def setup_model(cfg: TrainConfig, place: devices.Placement, compiled: bool = False) -> tuple[Any, Loaded]:
    """The base (quantized if asked), made trainable for checkpointing, with LoRA on top, its layers compiled
    if asked (lazily: the first step compiles)."""
    from peft import prepare_model_for_kbit_training

    loaded_at = time.time()
    model = load_model(cfg.model, place.dtype, place.device)
    if cfg.model.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=place.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif place.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    try:
        lr_choice = lrs.resolve(cfg.training.lr, model.config, cfg.lora.alpha)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    log.info("lr=%g (%s)", lr_choice.lr, lr_choice.reason)
    model = apply_lora(model, cfg.lora, lora_config(cfg))
    layers = compile_layers(model) if compiled else 0
    if layers:
        log.info("compile: %d decoder layers, at the first step", layers)
    elif compiled:
        log.warning("compile: the model names no decoder layer class (_no_split_modules); training uncompiled")
    trainable, total = model.get_nb_trainable_parameters()
    log.info("lora: %d trainable of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    return model, Loaded(trainable, total, time.time() - loaded_at, lr_choice, layers)


def prepare_output(out: Path, resumed: bool) -> Path:
    """The main process clears what a crash left half-done; a fresh run starts a fresh metrics log."""
    ckpt_root = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    if int(os.environ.get("RANK", "0")) == 0:
        checkpoints.clean_incomplete(ckpt_root)
        (ckpt_root / launch.PREEMPTED_MARKER).unlink(missing_ok=True)
        if not resumed:
            metrics_path.unlink(missing_ok=True)  # a resumed run appends
    return metrics_path


def build_trainer(cfg: TrainConfig, setup: Setup, progress: str, callbacks: list[Any]) -> tuple[Any, ProgressReporter]:
    """transformers' Trainer with our loss, our progress lines and the caller's callbacks."""
    from transformers.trainer_callback import PrinterCallback

    from kubetune.trainer.hf_trainer import CompletionTrainer

    data, tokenizer = setup.data, setup.tokenizer
    metrics_path = prepare_output(Path(cfg.output_dir), setup.resume.checkpoint is not None)
    # progress: json (lines on stdout), bar (tqdm), none (metrics.jsonl only; for embedding and benchmarks)
    no_bar = progress != "bar"
    args = training_arguments(cfg, setup.place, bool(data.eval), no_bar, setup.backend, setup.loaded.lr.lr)
    reporter = ProgressReporter(metrics_path, print_json=progress == "json")
    eval_rows = _without_where(data.eval)
    trainer = CompletionTrainer(
        model=setup.model,
        args=args,
        train_dataset=_without_where(data.train),
        eval_dataset=eval_rows or None,
        data_collator=Collator(tokenizer.pad_token_id, packed=cfg.data.packing),
        processing_class=tokenizer,
        callbacks=[reporter, *callbacks],
        identity=setup.resume.identity,
        extra_metrics=selection.extra_metrics(cfg.training.eval_metric, tokenizer, eval_rows),
        group_by_length=cfg.data.length_grouped,
    )
    trainer.remove_callback(PrinterCallback)  # its dict prints would interleave with JSON lines
    return trainer, reporter


def _without_where(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "where"} for row in rows]


def fit(cfg: TrainConfig, setup: Setup, progress: str, stopper: Any, extra_callbacks: list[Any]) -> Fitted:
    """Train (resuming if planned); a SIGTERM becomes Preempted after its checkpoint is complete."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
        best, guard = selection.BestAdapter(cfg.training.eval_metric), DivergenceGuard()
        trainer, reporter = build_trainer(cfg, setup, progress, [best, stopper, guard, *extra_callbacks])
        checkpoint = setup.resume.checkpoint
        train_started = time.time()
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        train_seconds = time.time() - train_started
        guard.raise_if_diverged(setup.loaded.lr.lr)
        if stopper.stopped_at is not None:
            _preempted(trainer, Path(cfg.output_dir) / "checkpoints", stopper.stopped_at)
        eval_loss = final_eval_loss(trainer) if setup.data.eval else None
    if best.restore(setup.model):
        log.info("adapter: the weights of step %s (best eval %s %.4g)", best.best_step, best.metric, best.best)
    return Fitted(trainer, result, reporter, train_seconds, eval_loss, best)


def _preempted(trainer: Any, ckpt_root: Path, step: int) -> None:
    if trainer.is_world_process_zero():
        (ckpt_root / launch.PREEMPTED_MARKER).write_text(str(step))
    raise Preempted(
        f"stopped by SIGTERM/Ctrl-C after step {step}; checkpoint written to "
        f"{ckpt_root / f'checkpoint-{step}'}; run the same command again to resume"
    )


def final_eval_loss(trainer: Any) -> float:
    """Reuse the eval at the final step if the schedule already ran one there."""
    last = [h for h in trainer.state.log_history if "eval_loss" in h]
    if last and last[-1].get("step") == trainer.state.global_step:
        return last[-1]["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def write_outputs(cfg: TrainConfig, setup: Setup, fitted: Fitted, started: float) -> dict[str, Any]:
    """Main process only: adapter (atomically), loss.png, run.json and the termination message."""
    out = Path(cfg.output_dir)

    def save_adapter(tmp: Path) -> None:
        setup.model.save_pretrained(tmp)
        setup.tokenizer.save_pretrained(tmp)

    replace_dir_atomically(out / "adapter", save_adapter)
    drop_stale_merge(out)  # a merged/ from an earlier adapter must not be pushed or used as this run's
    metrics = read_metrics(out / "metrics.jsonl")
    plot_loss(metrics, out / "loss.png", fitted.best.best_step)
    summary = summarize(fitted, metrics, out / "adapter", setup.loaded.seconds, time.time() - started)
    world = fitted.trainer.args.world_size
    write_json_atomic(out / "run.json", run_record(cfg, setup, world, summary))
    write_termination_message(summary)
    return summary


# --- pure builders of what a run reports ----------------------------------------------------------


def summarize(
    fitted: Fitted, metrics: list[dict[str, Any]], adapter: Path, load_seconds: float, total_seconds: float
) -> dict[str, Any]:
    """The summary event: run.json's `metrics`, the termination message and the CLI's last line."""
    state = fitted.trainer.state
    losses = [m["loss"] for m in metrics if m.get("event") == "progress" and m.get("loss") is not None]
    tokens = state.num_input_tokens_seen
    # This session's tokens over this session's time (a resumed run restores the earlier count).
    session_tokens = tokens - fitted.reporter.start_tokens
    return SummaryEvent(
        adapter_path=str(adapter),
        steps=state.global_step,
        epochs=state.epoch,
        train_loss=fitted.result.training_loss,
        first_loss=losses[0] if losses else None,
        final_loss=losses[-1] if losses else None,
        eval_loss=fitted.eval_loss,
        **fitted.best.summary(),
        tokens=tokens,
        tokens_per_second=session_tokens / fitted.train_seconds if fitted.train_seconds else None,
        train_seconds=round(fitted.train_seconds, 2),
        load_seconds=round(load_seconds, 2),
        total_seconds=round(total_seconds, 2),
    ).model_dump(mode="json")


def run_record(cfg: TrainConfig, setup: Setup, world_size: int, summary: dict[str, Any]) -> dict[str, Any]:
    """run.json: what ran, on what, with which inputs, and how it ended."""
    place, data, resume, loaded = setup.place, setup.data, setup.resume, setup.loaded
    return {
        "config": cfg.model_dump(mode="json"),
        "resolved": {
            "device": place.device,
            "precision": place.precision,
            "precision_reason": place.reason,
            "threads": place.threads,
            "lr": loaded.lr.lr,
            "lr_reason": loaded.lr.reason,
            "gradient_checkpointing": place.gradient_checkpointing,
            "compile": loaded.compiled_layers > 0,  # what ran, not only what was chosen
            "compile_reason": setup.compiled[1],
            "data_format": data.format,
            "template": data.template,
            "world_size": world_size,
            "global_batch": cfg.training.global_batch(world_size),
            "trainable_parameters": loaded.trainable,
            "total_parameters": loaded.total,
        },
        "data": {
            "train_records": len(data.train),
            "eval_records": len(data.eval),
            "truncated": data.stats.truncated,
            "dropped_no_target": data.stats.dropped_no_target,
            "skipped_bad_records": [str(b) for b in data.skipped[:100]],
            "skipped_bad_count": len(data.skipped),
            "hashes": resume.data_hashes,
        },
        "resumed_from": str(resume.checkpoint) if resume.checkpoint else None,
        "model": {"path": cfg.model.path, "fingerprint": resume.fingerprint},
        "versions": versions(),
        "metrics": summary,
    }
