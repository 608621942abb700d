"""`kubetune merge`: fold the adapter into the base it was trained against, and prove it.

For a 4-bit or 8-bit run the adapter learned to correct the *quantized* base,
so by default (`merge.base: as_trained`) the merged weights are the dequantized
quantized base plus the adapter's update, dequant(Q(W)) + BA: the base is loaded
exactly as training loaded it (quantization settings and dtype from run.json),
dequantized, and merged in fp32. `merge.base: original` merges into the
unquantized base instead (W + BA), a model the adapter never saw; it is kept for
comparison (docs/merge-and-generate.md has the measurements).

Two checks, each with its own tolerance, before anything replaces `dest`:
1. the merged model (fp32, in memory) against the reference: the quantized base +
   adapter as training computed it (bitsandbytes' training kernels), within the
   rounding of the training precision. A merge into the unquantized base of a
   quantized run misses by the quantization error itself (measured: 58% of the
   largest logit for NF4, 6% for int8 on SmolLM2-135M), far outside it.
2. the written model, reloaded from disk, against that fp32 merge, within the
   rounding of the saved dtype; and every adapted weight differs from the base.
The merged directory carries `kubetune-merge.json`: which adapter (by hash), which
base, both checks' figures. A failed check leaves the previous merged model alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from kubetune.api.config import MergeSection, ModelSection
from kubetune.trainer import outlock
from kubetune.trainer.errors import ModelError, UsageError
from kubetune.trainer.models import (
    DTYPES,
    adapter_tokenizer,
    first_line,
    load_adapted,
    resolve_path,
    training_compute_dtype,
)
from kubetune.trainer.report import replace_dir_atomically, sha256_file, write_json_atomic
from kubetune.trainer.runinfo import adapter_dir, base_model, load_run

log = logging.getLogger("kubetune.merge")
PROBE = "The quick brown fox jumps over the lazy dog. Once upon a time"
RECORD = "kubetune-merge.json"
# Allowed max |Δlogit| relative to the largest logit, by the dtype a model is saved in (check 2)...
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
# ...and by the dtype the reference was computed in (check 1): a bf16 forward through 30 layers of SmolLM2-135M
# lands 4% of the largest logit away from the same weights in fp32 (measured), NF4 quantization 55%.
REFERENCE_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-1, torch.float16: 2e-2}


@dataclass(frozen=True)
class TrainedBase:
    """The base as the run loaded it: location, quantization settings, and the dtype it was loaded in."""

    model: ModelSection
    dtype: torch.dtype

    @property
    def quantized(self) -> bool:
        return self.model.quantization != "none"

    @property
    def compute_dtype(self) -> torch.dtype:
        return training_compute_dtype(self.model, self.dtype)


def trained_base(run: dict[str, Any], adapter: Path, base: str | None) -> TrainedBase:
    """From run.json: the model section and precision training used (--base replaces only the location)."""
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    section = config.get("model") if isinstance(config.get("model"), dict) else {}
    try:
        model = ModelSection.model_validate({**section, "path": base_model(run, adapter, base)})
    except ValueError as exc:
        raise ModelError(f"run.json: config.model is not a model section: {first_line(exc)}") from None
    resolved = run.get("resolved") if isinstance(run.get("resolved"), dict) else {}
    return TrainedBase(model, DTYPES.get(resolved.get("precision"), torch.float32))


def merge_base(run: dict[str, Any], requested: str | None) -> str:
    """--merge-base, else the run's merge.base, else as_trained."""
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    section = config.get("merge") if isinstance(config.get("merge"), dict) else {}
    try:
        return MergeSection.model_validate({**section, **({"base": requested} if requested else {})}).base
    except ValueError as exc:
        raise UsageError(f"merge.base: {first_line(exc)} (as_trained | original)") from None


def adapter_identity(adapter: Path) -> str:
    """sha256 over the adapter's config and weights: what a merged model must have come from."""
    digest = hashlib.sha256()
    for f in sorted(adapter.glob("adapter_*")):
        if f.is_file():
            digest.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def read_record(merged: Path) -> dict[str, Any] | None:
    """The merge record of a merged directory, or None when it is not a (readable) merge result."""
    try:
        value = json.loads((merged / RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def is_current(merged: Path, adapter: Path) -> bool:
    """True when `merged` is a merge result of exactly this adapter."""
    record = read_record(merged)
    return record is not None and record.get("adapter_sha256") == adapter_identity(adapter)


def drop_stale(out: Path) -> bool:
    """A new adapter was written: remove OUTPUT_DIR/merged (and gguf/, exported from it) unless it was merged
    from this very adapter."""
    import shutil

    merged, adapter = out / "merged", out / "adapter"
    if not merged.exists() or ((adapter / "adapter_config.json").is_file() and is_current(merged, adapter)):
        return False
    log.info("removing %s: it was merged from an earlier adapter (run `kubetune merge` again)", merged)
    shutil.rmtree(merged)
    shutil.rmtree(out / "gguf", ignore_errors=True)
    return True


def check_dest(dest: Path) -> None:
    """Only an absent or empty directory, or an earlier merge result, may be replaced."""
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--dest {dest}: exists and is not a directory; refusing to replace it")
    if dest.is_dir() and any(dest.iterdir()) and read_record(dest) is None:
        raise UsageError(
            f"--dest {dest}: not empty and not a kubetune merge result (no {RECORD}); "
            "refusing to replace it: give an empty or new directory"
        )


def merge(
    output_dir: Path,
    adapter: Path | None = None,
    base: str | None = None,
    dest: Path | None = None,
    dtype: str = "auto",
    base_mode: str | None = None,
) -> dict[str, Any]:
    """Base (as trained, by default) + adapter -> merged model, verified before it replaces `dest`."""
    if dtype != "auto" and dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    run = load_run(output_dir)
    adapter = adapter_dir(output_dir, adapter)
    if dest is not None:  # OUTPUT_DIR/merged is kubetune's own; anywhere else, only an earlier merge is replaced
        check_dest(dest)
    dest = dest or output_dir / "merged"
    mode = merge_base(run, base_mode)
    trained = trained_base(run, adapter, base)
    with outlock.hold(output_dir, "merge"):
        tokenizer = adapter_tokenizer(adapter)
        merged, ref, record = _merged_and_checked(trained, adapter, tokenizer, mode)
        save_dtype = _save_dtype(dtype, trained.model.path)
        result: dict[str, Any] = {}

        def write_and_verify(tmp: Path) -> None:
            merged.to(save_dtype).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            result.update(merged_path=str(dest), **record, **_verify_saved(tmp, ref, save_dtype))
            write_json_atomic(tmp / RECORD, {k: v for k, v in result.items() if k != "merged_path"})

        replace_dir_atomically(dest, write_and_verify)
    log.info("merged %s (%s) + %s -> %s", trained.model.path, mode, adapter, dest)
    return result


def _merged_and_checked(trained: TrainedBase, adapter: Path, tokenizer: Any, mode: str) -> tuple[Any, Any, dict]:
    """The fp32 merged model and the reference it was checked against (check 1), with what the record says."""
    if mode == "as_trained" and trained.quantized:
        peft_model = load_adapted(trained.model, trained.dtype, "cpu", adapter)
        ref = _reference(peft_model, tokenizer)
        # Same weights training multiplied with: bitsandbytes' own dequantization of the loaded base.
        dense = peft_model.unload().dequantize(dtype=torch.float32).to(torch.float32)
        ref.base_sums = _checksums_of({t: dict(dense.named_parameters())[t] for t in ref.targets})
        peft_model = _apply(dense, adapter, trained.model.path)
        tol_dtype, against = trained.compute_dtype, f"the {trained.model.quantization} base + adapter as trained"
    else:
        peft_model = _apply(_load_fp32(trained.model.path), adapter, trained.model.path)
        ref = _reference(peft_model, tokenizer)
        tol_dtype, against = torch.float32, "the unquantized base + adapter"
        if trained.quantized:
            log.warning(
                "merge.base=original: merging into the unquantized base of a %s run; the adapter was trained "
                "against the quantized weights, so this model answers differently (docs/merge-and-generate.md)",
                trained.model.quantization,
            )
    merged = peft_model.merge_and_unload()
    merged.eval()
    diff, merged_logits = check_against(merged, ref, REFERENCE_TOLERANCE[tol_dtype], against)
    record = {
        "adapter_sha256": adapter_identity(adapter),
        "base": mode,
        "base_model": trained.model.path,
        "quantization": trained.model.quantization,
        "checked_against": against,
        "max_logit_diff": diff,
        "tolerance": REFERENCE_TOLERANCE[tol_dtype] * ref.scale,
        "adapter_effect": ref.adapter_effect,
    }
    return merged, replace(ref, expected=merged_logits), record


def _apply(model: Any, adapter: Path, base: str) -> Any:
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter).eval()
    except Exception as exc:  # incompatible or corrupt adapter: many library error types
        raise ModelError(f"{adapter}: cannot apply adapter to {base}: {first_line(exc)}") from None


def _load_fp32(path: str) -> Any:
    """The unquantized base in fp32."""
    from transformers import AutoModelForCausalLM

    location = resolve_path(path)
    try:
        return AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    except Exception as exc:  # corrupt weights or config: many library error types
        raise ModelError(f"model.path: cannot load {path}: {first_line(exc)}") from None


def _save_dtype(requested: str, base: str) -> torch.dtype:
    """`auto` keeps the base's own dtype on disk (bf16 checkpoints stay bf16-sized); fp32 if it names none."""
    from transformers import AutoConfig

    from kubetune.trainer.plan import saved_dtype  # the one rule, which the merge plan reads too

    if requested != "auto":
        return DTYPES[requested]
    return DTYPES[saved_dtype(AutoConfig.from_pretrained(resolve_path(base)))]


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

    return [f"{name}.weight" for name, m in peft_model.base_model.model.named_modules() if isinstance(m, LoraLayer)]


@dataclass
class Reference:
    """What the merged model must reproduce, taken from base + adapter before merging."""

    probe: dict[str, Any]
    expected: torch.Tensor
    adapter_effect: float
    targets: list[str]
    base_sums: dict[str, Any]

    @property
    def scale(self) -> float:
        return self.expected.abs().max().item()


def _reference(peft_model: Any, tokenizer: Any) -> Reference:
    probe = tokenizer(PROBE, return_tensors="pt")
    with torch.no_grad():
        expected = peft_model(**probe).logits.float()
        with peft_model.disable_adapter():  # the base alone: what the adapter changes
            base_logits = peft_model(**probe).logits.float()
    targets = _lora_weight_names(peft_model)
    # Fingerprint the base weights while LoRA still wraps them, instead of loading the base a second time.
    wrapped = dict(peft_model.base_model.model.named_parameters())
    base_sums = _checksums_of({t: wrapped[t.removesuffix(".weight") + ".base_layer.weight"] for t in targets})
    return Reference(probe, expected, (expected - base_logits).abs().max().item(), targets, base_sums)


def check_against(model: Any, ref: Reference, relative: float, against: str) -> tuple[float, torch.Tensor]:
    """`model`'s logits on the probe within `relative` x the largest reference logit; the diff and the logits."""
    with torch.no_grad():
        got = model(**{k: v.to(model.device) for k, v in ref.probe.items()}).logits.float().cpu()
    diff = (got - ref.expected).abs().max().item()
    tolerance = relative * ref.scale
    if not diff <= tolerance:
        raise ModelError(
            f"merge verification failed: merged logits differ from {against} by {diff:.3g} "
            f"(allowed {tolerance:.3g}, {relative:g} of the largest logit {ref.scale:.3g})"
        )
    return diff, got


def _verify_saved(saved: Path, ref: Reference, save_dtype: torch.dtype) -> dict[str, Any]:
    """Check 2: what was written reloads, matches the reference within the saved dtype, and changed the base."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    reloaded.eval()
    diff, _ = check_against(reloaded, ref, TOLERANCE[save_dtype], "the fp32 merge before saving")
    params = dict(reloaded.named_parameters())
    new = _checksums_of({t: params[t] for t in ref.targets})
    unchanged = [n for n in ref.targets if ref.base_sums[n] == new[n]]
    if unchanged:
        raise ModelError(
            f"merge verification failed: {len(unchanged)} adapted weights equal the base (e.g. {unchanged[0]})"
        )
    return {"saved_logit_diff": diff, "changed_tensors": len(ref.targets), "dtype": str(save_dtype).split(".")[-1]}
