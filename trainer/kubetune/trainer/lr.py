"""`training.lr: auto`: the peak learning rate from the model's width and the LoRA scale.

The old default, 2e-4, is the convention for 7B-class models. Published LoRA
studies put the best LoRA learning rate about 10x full fine-tuning's and find
it falls with the model's width, so no single number fits 135M and 70B alike:

- Thinking Machines, "LoRA Without Regret" (Schulman et al., 2025): the optimal
  LoRA LR is ~10x the full fine-tuning LR, and with alpha=32 and the usual
  alpha/r scale it is roughly independent of the rank.
- Tinker's supervised-learning hyperparameter notes (tinker-docs.thinkingmachines.ai,
  sl-hyperparams; tinker_cookbook.hyperparam_utils.get_lr) fit
  LR = 5e-5 * 10 * (2000 / hidden_size) ** P with P = 0.781 for Llama-family
  models and P = 0.0775 for Qwen.
- Chen, Villar, Hayou, "Learning Rate Scaling across LoRA Ranks" (muA): the
  optimal LR depends on the width and, through the scale factor, on the rank.

So: the Tinker fit, for alpha=32 (what it was fitted at). With Adam, B's first
steps have a size set by the LR alone, so the update to W scales with
lr * alpha (the 1/r in alpha/r cancels the r rank-one terms); another alpha
therefore gets lr * 32 / alpha. SmolLM2-135M (hidden 576, alpha 32) gets
1.3e-3; a Llama-2-7B (hidden 4096) gets 2.9e-4, close to the old convention.
Our own sweep (docs/benchmarks.md) confirms the optimum for the builtin model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FULL_FT_LR = 5e-5  # Tinker's full fine-tuning base LR at hidden size 2000
LORA_MULTIPLIER = 10.0  # LoRA Without Regret: LoRA's optimum is ~10x full fine-tuning's
REFERENCE_WIDTH = 2000
REFERENCE_ALPHA = 32
# Width exponents fitted by Tinker per family; Llama's is the default (most open models share its shape).
WIDTH_EXPONENT = {"qwen": 0.0775, "llama": 0.781}
BOUNDS = (1e-5, 3e-3)  # a typo in a config.json hidden_size must not produce an absurd LR


@dataclass(frozen=True)
class LrChoice:
    lr: float
    reason: str


def family(model_type: str) -> str:
    return "qwen" if model_type.lower().startswith("qwen") else "llama"


def auto_lr(hidden_size: int, model_type: str, lora_alpha: int) -> LrChoice:
    """The rule; pure, so its numbers are unit tested against the published ones."""
    fam = family(model_type)
    exponent = WIDTH_EXPONENT[fam]
    raw = FULL_FT_LR * LORA_MULTIPLIER * (REFERENCE_WIDTH / hidden_size) ** exponent * REFERENCE_ALPHA / lora_alpha
    lr = float(f"{min(max(raw, BOUNDS[0]), BOUNDS[1]):.3g}")
    reason = (
        f"auto: 5e-5 x 10 (LoRA) x (2000/hidden_size {hidden_size})^{exponent} ({fam} family) "
        f"x 32/alpha {lora_alpha} = {lr:.3g}"
    )
    if lr != float(f"{raw:.3g}"):
        reason += f" (clamped from {raw:.3g} to {BOUNDS})"
    return LrChoice(lr, reason)


def hidden_size(model_config: Any) -> int:
    """The model's width; multimodal configs keep it in their text config."""
    for cfg in (model_config, getattr(model_config, "text_config", None)):
        for key in ("hidden_size", "n_embd", "d_model"):
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int) and value > 0:
                return value
    raise ValueError("training.lr: auto needs the model's hidden size, which its config does not state; set a number")


def resolve(configured: float | str, model_config: Any, lora_alpha: int) -> LrChoice:
    """An explicit number wins; `auto` applies the rule to this model."""
    if configured != "auto":
        return LrChoice(float(configured), "set explicitly")
    return auto_lr(hidden_size(model_config), getattr(model_config, "model_type", "") or "", lora_alpha)
