"""transformers' Trainer with kubetune's loss: only positions with a target are projected.

Everything else (optimizer, schedule, accumulation, checkpoints, DDP) is the
Trainer's own. See loss.py for why the loss is computed this way.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from kubetune.trainer.loss import selective_loss_sum


class CompletionTrainer(Trainer):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Our loss is already divided by the whole accumulated batch's token count.
        self.loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss_sum, count = selective_loss_sum(model, inputs)
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
            loss_sum, count = selective_loss_sum(model, inputs)
        return (loss_sum / count.clamp(min=1)).detach(), None, None
