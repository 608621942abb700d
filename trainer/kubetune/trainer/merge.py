"""`kubetune merge`: fold the adapter into a full-precision base and prove it worked.

Never merge into a 4-bit base (the rounding would undo much of the adapter):
the base is always reloaded unquantized in fp32. The merged model is written
to a temporary directory, reloaded from disk and checked before it replaces
anything: its logits must match base+adapter on a probe prompt, and every
weight LoRA touched must differ from the base. A failed check leaves the
previous merged model (if any) untouched and exits non-zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kubetune.trainer.errors import ModelError
from kubetune.trainer.models import DTYPES, adapter_tokenizer, first_line, resolve_path
from kubetune.trainer.report import replace_dir_atomically
from kubetune.trainer.runinfo import adapter_dir, base_model, load_run

log = logging.getLogger("kubetune.merge")
PROBE = "The quick brown fox jumps over the lazy dog. Once upon a time"
# Allowed max |Δlogit| relative to the largest logit, by saved dtype.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def _checksums_of(weights: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Two cheap fingerprints per weight: sum and sum of squares in float64 (no copies kept)."""
    out = {}
    for name, weight in weights.items():
        w = weight.detach().double()
        out[name] = (w.sum().item(), (w * w).sum().item())
    return out


def _lora_weight_names(peft_model: Any) -> list[str]:
    """Names, in the merged model, of the weights LoRA adapts."""
    from peft.tuners.lora import LoraLayer

    names = []
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            names.append(f"{name}.weight")
    return names


def _save_dtype(requested: str, base_config: Any) -> torch.dtype:
    """`auto` keeps the base's own dtype (bf16 checkpoints stay bf16-sized); fp32 if it names none."""
    if requested != "auto":
        return DTYPES[requested]
    declared = getattr(base_config, "dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared if declared in TOLERANCE else torch.float32


def merge(
    output_dir: Path,
    adapter: Path | None = None,
    base: str | None = None,
    dest: Path | None = None,
    dtype: str = "auto",
) -> dict[str, Any]:
    """fp32 base + adapter -> merged model in the base's dtype, verified before it replaces `dest`."""
    from transformers import AutoConfig

    run = load_run(output_dir)
    adapter = adapter_dir(output_dir, adapter)
    base_path = resolve_path(base_model(run, adapter, base))
    dest = dest or output_dir / "merged"
    tokenizer = adapter_tokenizer(adapter)
    peft_model = _load_with_adapter(base_path, adapter)
    reference = _reference(peft_model, tokenizer)
    merged = peft_model.merge_and_unload()
    save_dtype = _save_dtype(dtype, AutoConfig.from_pretrained(base_path))
    result: dict[str, Any] = {}

    def write_and_verify(tmp: Path) -> None:
        merged.to(save_dtype).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        result.update(merged_path=str(dest), **_verify(tmp, reference, save_dtype))

    replace_dir_atomically(dest, write_and_verify)
    log.info("merged %s + %s -> %s", base_path, adapter, dest)
    return result


def _load_with_adapter(base_path: str, adapter: Path) -> Any:
    """The base in fp32 (never quantized: merging into 4-bit weights would lose the adapter) with LoRA applied."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(model, adapter)
    except Exception as exc:  # corrupt weights or config: many library error types
        raise ModelError(f"{adapter}: cannot apply adapter to {base_path}: {first_line(exc)}") from None
    peft_model.eval()
    return peft_model


@dataclass
class _Reference:
    """What the merged model must reproduce, taken from base+adapter before merging."""

    probe: dict[str, Any]
    expected: torch.Tensor
    adapter_effect: float
    targets: list[str]
    base_sums: dict[str, Any]


def _reference(peft_model: Any, tokenizer: Any) -> _Reference:
    probe = tokenizer(PROBE, return_tensors="pt")
    with torch.no_grad():
        expected = peft_model(**probe).logits
        # The base alone, to measure what the adapter changes.
        with peft_model.disable_adapter():
            base_logits = peft_model(**probe).logits
    targets = _lora_weight_names(peft_model)
    # Fingerprint the base weights now, while LoRA still wraps them, instead of loading the base a second time
    # (for a 7B model in fp32 that would be another 28 GB).
    wrapped = dict(peft_model.base_model.model.named_parameters())
    base_sums = _checksums_of({t: wrapped[t.removesuffix(".weight") + ".base_layer.weight"] for t in targets})
    return _Reference(probe, expected, (expected - base_logits).abs().max().item(), targets, base_sums)


def _verify(saved: Path, ref: _Reference, save_dtype: torch.dtype) -> dict[str, Any]:
    """Reload what was written: its logits match base+adapter and every adapted weight differs from the base."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    reloaded.eval()
    with torch.no_grad():
        got = reloaded(**ref.probe).logits
    diff = (got - ref.expected).abs().max().item()
    scale = ref.expected.abs().max().item()
    if not diff <= TOLERANCE[save_dtype] * scale:
        raise ModelError(f"merge verification failed: merged logits differ from base+adapter by {diff:.3g}")
    params = dict(reloaded.named_parameters())
    new = _checksums_of({t: params[t] for t in ref.targets})
    unchanged = [n for n in ref.targets if ref.base_sums[n] == new[n]]
    if unchanged:
        raise ModelError(
            f"merge verification failed: {len(unchanged)} adapted weights equal the base (e.g. {unchanged[0]})"
        )
    return {
        "max_logit_diff": diff,
        "changed_tensors": len(ref.targets),
        "adapter_effect": ref.adapter_effect,
        "dtype": str(save_dtype).split(".")[-1],
    }
