"""transformers' Trainer with kubetune's loss, atomic checkpoints and a graceful SIGTERM.

Records are batched by length (data/order.py) unless packing makes padding moot.
Everything else (optimizer, schedule, accumulation, DDP, what a checkpoint
holds, resuming the data position) is the Trainer's own. See loss.py for the
loss and checkpoints.py for the on-disk protocol.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from peft.helpers import disable_input_dtype_casting
from transformers import Trainer, TrainerCallback

from kubetune.trainer import checkpoints
from kubetune.trainer.data.order import LengthGroupedOrder
from kubetune.trainer.loss import selective_loss_sum


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CompletionTrainer(Trainer):
    def __init__(
        self,
        *args: Any,
        identity: dict[str, Any] | None = None,
        extra_metrics: Callable[[Any], dict[str, float]] | None = None,
        group_by_length: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length
        self.extra_metrics = extra_metrics  # e.g. exact match by generation (selection.py)
        # Our loss is already divided by the whole accumulated batch's token count.
        self.loss_is_scaled_for_ga = True
        self.identity = identity or {}
        self._staging = False
        # Under mixed precision accelerate runs the forward in autocast, which casts every linear's input itself:
        # peft's own cast of each LoRA layer's bf16 input to its fp32 weights would be undone at once, and it cost
        # an activation-sized copy per layer and direction (3.9 % of a 1b step's profile). The result is bit-identical.
        self.autocast_casts_lora = self.args.bf16 or self.args.fp16

    def _loss_sum(self, model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with disable_input_dtype_casting(model, active=self.autocast_casts_lora):
            return selective_loss_sum(model, inputs)

    def _get_train_sampler(self, train_dataset=None):
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        return LengthGroupedOrder([len(r["input_ids"]) for r in dataset], global_batch, args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_sum, count = self._loss_sum(model, inputs)
        if num_items_in_batch is None:  # evaluation: a plain per-batch mean
            return loss_sum / count.clamp(min=1)
        loss = loss_sum / torch.as_tensor(num_items_in_batch, device=loss_sum.device).clamp(min=1)
        if self.args.average_tokens_across_devices:
            # num_items_in_batch counts every rank's tokens while DDP averages gradients over ranks.
            loss = loss * self.accelerator.num_processes
        return loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Eval only needs the loss; skipping the full logits saves memory on long eval sets.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss_sum, count = self._loss_sum(model, inputs)
        return (loss_sum / count.clamp(min=1)).detach(), None, None

    def evaluation_loop(self, *args: Any, **kwargs: Any):
        output = super().evaluation_loop(*args, **kwargs)
        if self.extra_metrics is not None:
            prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            output.metrics.update({f"{prefix}_{k}": v for k, v in self.extra_metrics(self.model).items()})
        return output

    # --- atomic checkpoints -------------------------------------------------------------------

    def _get_output_dir(self, trial):
        base = super()._get_output_dir(trial)
        return os.path.join(base, checkpoints.STAGING) if self._staging else base

    def _save_checkpoint(self, model, trial):
        root = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)  # every rank writes its part (RNG state) into staging
        finally:
            self._staging = False
        _barrier()
        if self.is_world_process_zero():
            staged, final = root / checkpoints.STAGING / name, root / name
            marker = {"step": self.state.global_step, "identity": self.identity}
            with (staged / checkpoints.MARKER).open("w") as fh:
                json.dump(marker, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if final.exists():  # a re-save of the same step (e.g. at the end of a resumed run)
                os.replace(final, root / checkpoints.STAGING / f"{name}.old")
            os.replace(staged, final)  # the atomic step: the checkpoint appears complete or not at all
            checkpoints.clean_incomplete(root)
            checkpoints.rotate(root, self.args.save_total_limit or 1_000_000)
        _barrier()


class GracefulStop(TrainerCallback):
    """SIGTERM or a first Ctrl-C: finish the current step, save a checkpoint, stop. All ranks agree on when.

    A second Ctrl-C aborts at once, for when even one more step is too long to wait.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT:
            if self.requested:
                raise KeyboardInterrupt
            print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)
        self.requested = True

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _agreed(self, args: Any) -> bool:
        flag = self.requested
        if dist.is_available() and dist.is_initialized():
            t = torch.tensor([1 if flag else 0], device=args.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args) and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control
