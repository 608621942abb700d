"""`kubetune train`: config in, adapter and a report out. Read it top to bottom.

Order matters for the user: everything that can be wrong with the config or
the data is found before the model is loaded, so a typo costs seconds, not
the minutes a 7B load takes.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from kubetune.api.config import TrainConfig
from kubetune.trainer import checkpoints, finish, launch, sources, tracking
from kubetune.trainer import device as devices
from kubetune.trainer.data.collate import Collator
from kubetune.trainer.data.pipeline import prepare
from kubetune.trainer.errors import Preempted, UsageError
from kubetune.trainer.models import load_model, load_tokenizer, resolve_path
from kubetune.trainer.progress import ProgressReporter
from kubetune.trainer.report import (
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
    cfg: TrainConfig, place: devices.Placement, has_eval: bool, no_bar: bool, backend: str | None = None
) -> Any:
    """Map our config onto transformers' TrainingArguments (pure apart from the class)."""
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
        learning_rate=t.lr,
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


def worker_setup(cfg: TrainConfig, place: devices.Placement) -> str:
    """In a torchrun worker: check the world size, pin this process to its cores, pick the backend."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
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
    if place.device == "cpu":
        pinned: list[int] | str
        try:
            pinned = launch.split_cores(sorted(os.sched_getaffinity(0)), local_world, local_rank)
            os.sched_setaffinity(0, pinned)
            threads = len(pinned)
        except (AttributeError, OSError):  # not Linux, or pinning not allowed: threads only
            pinned, threads = "not pinned", max(1, place.threads // local_world)
        torch.set_num_threads(threads)
        log.info("rank %s/%d: backend=%s threads=%d cores=%s", os.environ.get("RANK"), world, backend, threads, pinned)
    return backend


def run(cfg: TrainConfig, progress: str = "json") -> dict[str, Any]:
    """Train a LoRA adapter; returns the summary also written to run.json."""
    from kubetune.trainer.hf_trainer import GracefulStop

    stopper = GracefulStop()  # from the start: a SIGTERM while loading is a clean, retryable exit too
    try:
        cfg, fetched = sources.localize(cfg)  # remote model/data into the cache first; run.json notes the revisions
        trackers = tracking.start(cfg)  # report_to: runs opened (or one warning) before the model loads
        try:
            summary = _run(cfg, progress, stopper, trackers.callbacks)
        except BaseException:
            trackers.abort()
            raise
        return finish.after_training(cfg, summary, fetched, trackers)  # trackers closed, push_to, run.json
    finally:
        stopper.restore()


def _stop_if_requested(stopper: Any, phase: str) -> None:
    if stopper.requested:
        raise Preempted(f"stopped by SIGTERM {phase}; nothing to save yet; run the same command again")


def _run(cfg: TrainConfig, progress: str, stopper: Any, callbacks: list[Any] | None = None) -> dict[str, Any]:
    started = time.time()
    out = Path(cfg.output_dir)
    if not cfg.data.path:
        raise UsageError("data.path: no training data given (set data.path, DATA_PATH or --data)")

    # 1. Hardware: device, precision, threads, checkpointing, and why.
    try:
        place = devices.choose(
            devices.detect(),
            cfg.training.device,
            cfg.training.precision,
            cfg.training.gradient_checkpointing,
            cfg.model.quantization != "none",
            cfg.training.num_threads,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    backend = worker_setup(cfg, place) if os.environ.get(launch.LAUNCHED_ENV) else None
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

    # 2. Tokenizer and data: every data problem surfaces here, before the model loads.
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

    # What a checkpoint must agree with to be resumed, and the checkpoint to resume from.
    data_hashes = hash_paths(cfg.data.path + cfg.data.eval_path)
    fingerprint = model_fingerprint(resolve_path(cfg.model.path))
    identity = checkpoints.identity(cfg, data_hashes, fingerprint)
    ckpt_root = out / "checkpoints"
    resume_from = checkpoints.select_resume(ckpt_root, cfg.training.resume, identity, cfg.training.force_resume)
    if resume_from:
        log.info("resuming from %s", resume_from)

    _stop_if_requested(stopper, "while preparing data")

    # 3. Model: quantized base if asked, LoRA on top.
    from peft import get_peft_model, prepare_model_for_kbit_training

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
    model = get_peft_model(model, lora_config(cfg))
    trainable, total = model.get_nb_trainable_parameters()
    log.info("lora: %d trainable of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    load_seconds = time.time() - loaded_at

    # 4. Train with transformers' Trainer and our loss.
    from transformers.trainer_callback import PrinterCallback

    from kubetune.trainer.hf_trainer import CompletionTrainer

    _stop_if_requested(stopper, "while loading the model")

    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        checkpoints.clean_incomplete(ckpt_root)
        (ckpt_root / launch.PREEMPTED_MARKER).unlink(missing_ok=True)
        if resume_from is None:
            metrics_path.unlink(missing_ok=True)  # a fresh run; a resumed one appends
    # progress: json (lines on stdout), bar (tqdm), none (metrics.jsonl only; for embedding and benchmarks)
    args = training_arguments(cfg, place, bool(data.eval), progress != "bar", backend)
    reporter = ProgressReporter(metrics_path, print_json=progress == "json")
    strip = [{k: v for k, v in row.items() if k != "where"} for row in data.train]
    strip_eval = [{k: v for k, v in row.items() if k != "where"} for row in data.eval]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
        trainer = CompletionTrainer(
            model=model,
            args=args,
            train_dataset=strip,
            eval_dataset=strip_eval or None,
            data_collator=Collator(tokenizer.pad_token_id, packed=cfg.data.packing),
            processing_class=tokenizer,
            callbacks=[reporter, *(callbacks or [])],
            identity=identity,
        )
        trainer.remove_callback(PrinterCallback)  # its dict prints would interleave with JSON lines
        trainer.add_callback(stopper)
        train_started = time.time()
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_seconds = time.time() - train_started
        if stopper.stopped_at is not None:
            if trainer.is_world_process_zero():
                (ckpt_root / launch.PREEMPTED_MARKER).write_text(str(stopper.stopped_at))
            raise Preempted(
                f"stopped by SIGTERM/Ctrl-C after step {stopper.stopped_at}; checkpoint written to "
                f"{ckpt_root / f'checkpoint-{stopper.stopped_at}'}; run the same command again to resume"
            )
        eval_loss = None
        if data.eval:
            # Reuse the eval at the final step if the schedule already ran one there.
            last = [h for h in trainer.state.log_history if "eval_loss" in h]
            at_end = last and last[-1].get("step") == trainer.state.global_step
            eval_loss = last[-1]["eval_loss"] if at_end else trainer.evaluate()["eval_loss"]

    # 5. Outputs (main process only): adapter, run.json, loss.png, termination message.
    summary: dict[str, Any] = {}
    if trainer.is_world_process_zero():

        def save_adapter(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)

        replace_dir_atomically(out / "adapter", save_adapter)
        metrics = read_metrics(metrics_path)
        plot_loss(metrics, out / "loss.png")
        tokens = trainer.state.num_input_tokens_seen
        losses = [m["loss"] for m in metrics if m.get("event") == "progress" and m.get("loss") is not None]
        summary = {
            "event": "summary",
            "status": "succeeded",
            "adapter_path": str(out / "adapter"),
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "train_loss": result.training_loss,
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "eval_loss": eval_loss,
            "tokens": tokens,
            # This session's tokens over this session's time (a resumed run restores the earlier count).
            "tokens_per_second": (tokens - reporter.start_tokens) / train_seconds if train_seconds else None,
            "train_seconds": round(train_seconds, 2),
            "load_seconds": round(load_seconds, 2),
            "total_seconds": round(time.time() - started, 2),
        }
        run_info = {
            "config": cfg.model_dump(mode="json"),
            "resolved": {
                "device": place.device,
                "precision": place.precision,
                "precision_reason": place.reason,
                "threads": place.threads,
                "gradient_checkpointing": place.gradient_checkpointing,
                "data_format": data.format,
                "template": data.template,
                "world_size": trainer.args.world_size,
                "global_batch": cfg.training.batch_size * cfg.training.gradient_accumulation * trainer.args.world_size,
                "trainable_parameters": trainable,
                "total_parameters": total,
            },
            "data": {
                "train_records": len(data.train),
                "eval_records": len(data.eval),
                "truncated": data.stats.truncated,
                "dropped_no_target": data.stats.dropped_no_target,
                "skipped_bad_records": [str(b) for b in data.skipped[:100]],
                "skipped_bad_count": len(data.skipped),
                "hashes": data_hashes,
            },
            "resumed_from": str(resume_from) if resume_from else None,
            "model": {"path": cfg.model.path, "fingerprint": fingerprint},
            "versions": versions(),
            "metrics": summary,
        }
        write_json_atomic(out / "run.json", run_info)
        write_termination_message(summary)
    return summary
