"""Stop a run whose loss has become NaN or infinite, instead of training on garbage to the end.

A non-finite logged loss never recovers for a LoRA run: the weights it updated
are already non-finite. So the first one stops training at once, skips the
checkpoint that step would have written (a diverged state is not worth
resuming), and `train` raises `Diverged`, which the CLI turns into one line,
exit code 5 and the termination message the operator shows in status.
The logged loss is the same on every rank (the Trainer gathers it before
logging), so all ranks stop at the same step.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback

from kubetune.trainer.errors import Diverged


class DivergenceGuard(TrainerCallback):
    def __init__(self) -> None:
        self.diverged_at: int | None = None
        self.loss: float | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        loss = (logs or {}).get("loss")
        if self.diverged_at is None and isinstance(loss, float) and not math.isfinite(loss):
            self.diverged_at, self.loss = state.global_step, loss
        if self.diverged_at is not None:
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False
        return control

    def raise_if_diverged(self, lr: float) -> None:
        if self.diverged_at is not None:
            raise Diverged(
                f"training diverged: loss is {self.loss} at step {self.diverged_at}; stopped without writing an "
                f"adapter or checkpoint. Lower training.lr (now {lr:g}), raise training.warmup_ratio, or check "
                "the data"
            )
