"""`kubetune plan`: peak memory per process and time per epoch, known before the first step.

Nothing here loads weights. The model is built on torch's `meta` device from its
config (config.json, or a GGUF file's metadata), LoRA is applied to it, and one
forward pass of the run's largest micro-batch is traced on meta tensors: every
tensor autograd saves for backward is counted once (by storage), which is the
activation memory that batch holds at the start of backward. The batch comes
from the actual data after templating, masking, truncation and packing (the
records `data inspect` reports), and the output head is traced only at the
positions that have a target, as loss.py computes it.

The other terms are counted from shapes: the frozen weights at their resident
bytes per weight (bitsandbytes' int8 or 4-bit with their scales; non-quantized
parameters upcast to fp32 as peft's kbit preparation does), the checkpoint file
mapped while a converting load reads it, and LoRA's parameters, gradients and
optimizer state in fp32. The process itself (interpreter, libraries, tokenizer,
the tokenized data) is measured, not guessed: it is this process's resident
memory, taken after the same imports and the same data preparation as `train`.

Time: FLOPs per token from the shapes (frozen weights forward and input-gradient
backward, recompute when checkpointing, causal attention, the head at target
positions) over a matmul rate measured on this machine at the run's precision.
CPU only is measured; CUDA/XPU allocators add their own overheads (docs/plan.md).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.config import TrainConfig
from kubetune.api.contract import ExitCode, PlanEvent
from kubetune.trainer.errors import KubetuneError, ModelError, UsageError
from kubetune.trainer.models import first_line

if TYPE_CHECKING:
    from kubetune.trainer.device import Placement

log = logging.getLogger("kubetune.plan")

IGNORE = -100  # render.IGNORE, without importing torch-free code paths twice
FP32 = 4
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Resident bytes per quantized weight: 8-bit is int8 plus one fp32 scale per output row (added per row
# below); 4-bit is half a byte plus one absmax per 64 weights (fp32, or int8 + fp32 per 256 blocks).
QUANT_BLOCK = 64
OPTIMIZER_BYTES = {"adamw_torch": 8, "adamw_torch_fused": 8, "adamw_8bit": 2, "paged_adamw_8bit": 2, "sgd": 0}
# What the trace does not see, fitted on the benchmark grid (bench/plan_grid.py, docs/plan.md) against each
# run's own peak resident memory (VmHWM): inside the decoder layers, the forward's freed temporaries, which
# the C allocator keeps mapped (resident memory per traced byte); at the head, the loss's gradient buffers
# (fp32 copies of the kept logits); and the run's own fixed cost once training starts (Trainer, accelerate,
# autograd's threads, oneDNN). With LoRA's update fused into one addmm per layer (fused.py) the layers make fewer
# temporaries: their overhead fell from 1.7 to 1.3-1.4 on the Xeon grid (docs/plan.md).
LAYER_OVERHEAD = 1.4
LOGIT_GRADIENTS = 2.5
RUNTIME_BYTES = 85 * 2**20
# With gradient checkpointing the trace keeps only the layer inputs and one layer's activations, but the
# measured resident memory in the layers stays at a fraction of what the same batch saves without checkpointing
# (the backward's recomputed layers' freed memory stays mapped too). A quantized run holds more of it
# (bitsandbytes dequantizes each weight into a temporary in every pass, the stream is fp32): at the largest QLoRA
# point 0.49-0.65 over five runs on two machines; a full-precision run's layers 0.2-0.55 on the Xeon grid with the
# fused LoRA forward (docs/plan.md). fp16 takes bf16's. One point's peak moves by up to 15 % between two runs.
CHECKPOINT_RESIDENT = 0.5
QUANTIZED_CHECKPOINT_RESIDENT = {"fp32": 0.7, "bf16": 0.6, "fp16": 0.6}
# Time: the dense matmul FLOPs (weights, LoRA, the head) at a fraction of the probed dense-matmul rate in the
# run's precision, fitted on the grid (docs/plan.md); attention at the rate its kernel runs at that width, measured
# alone (bench/plan_attention.py); the element-wise work of each layer (norms, RoPE, the MLP's activation and
# product, residual adds, autocast's casts) at a fixed cost per element, since it runs at memory speed, not at the
# matmul rate: on an AMX Xeon bf16 matmuls are 7x fp32's and these are not faster at all, so at d=512 they are half
# a bf16 step; per micro-batch a fixed cost (the Trainer's step, the optimizer, collation) and one per decoder
# layer (the Python of a layer's forward and backward: peft's per-layer LoRA calls), more for a quantized layer
# (bitsandbytes' per-call work), fitted on the grid's whole and step-by-step times on two machines (one run on a
# 2-vCPU AMD EPYC without AMX, three on a 2-vCPU Xeon with it). These are steady-state costs; the first step
# costs more once (`warm_up`). The fixed and element-wise costs are this machine's core and memory speed, which
# the probe does not see (a probe of the fixed costs was tried and did not help: docs/plan.md).
# bf16 at the probe's rate: the model's GEMMs run as fast as the 2048^3 product (faster with 4,096-token batches).
DENSE_EFFICIENCY = {"fp32": 0.71, "bf16": 1.0, "fp16": 1.0}  # fp16: not measured, bf16's
# Seconds per element of a layer's element-wise work: tokens x (4 hidden + 3 intermediate) per pass.
ELEMENTWISE_SECONDS = {"fp32": 1.25e-9, "bf16": 3.0e-9, "fp16": 3.0e-9}
# The fused CPU attention kernel's forward and backward as a fraction of the probed matmul rate, by width, on
# its two paths (loss.py): a right-padded batch runs causal without a mask, a packed one under its block-diagonal
# mask, which costs the full width squared. bench/plan_attention.py measured these (8 query and 2 key/value heads
# of 64, the best of 1.2 s per width); between widths the fraction is interpolated on log2(width). In bf16 the
# fraction depends on the CPU: with AMX the probe runs on its tiles at 2.4 TFLOP/s while attention reaches a
# twentieth of that; without AMX (an AVX512-BF16 EPYC, against its 1024^3 probe) a quarter. fp32 read the same
# on both machines.
ATTENTION_EFFICIENCY = {
    ("fp32", "causal"): {128: 0.22, 256: 0.29, 512: 0.28, 1024: 0.44, 2048: 0.45},
    ("fp32", "masked"): {128: 0.21, 256: 0.27, 512: 0.27, 1024: 0.24, 2048: 0.24},
    ("bf16", "causal"): {128: 0.058, 256: 0.11, 512: 0.12, 1024: 0.23, 2048: 0.25},
    ("bf16", "masked"): {128: 0.059, 256: 0.11, 512: 0.11, 1024: 0.15, 2048: 0.17},
    ("bf16-amx", "causal"): {128: 0.014, 256: 0.041, 512: 0.057, 1024: 0.096, 2048: 0.118},
    ("bf16-amx", "masked"): {128: 0.014, 256: 0.036, 512: 0.05, 1024: 0.063, 2048: 0.064},
}
MICRO_BATCH_SECONDS = 0.019  # the grid ran no gradient accumulation: with it, the optimizer's share is overcounted
LAYER_SECONDS = 0.010
QUANTIZED_LAYER_SECONDS = 0.050
FIRST_STEP_SECONDS = 0.23
FIRST_TOUCH_SECONDS_PER_GIB = 0.25


class InsufficientMemory(KubetuneError):
    """The plan's peak is above the memory this process can have: the run would be OOM-killed midway."""

    exit_code = ExitCode.INSUFFICIENT_MEMORY


@dataclass(frozen=True)
class Batch:
    """One micro-batch as the collator builds it: rows x width tokens, `kept` head positions."""

    rows: int
    width: int
    kept: int

    @property
    def tokens(self) -> int:
        return self.rows * self.width


def kept_positions(label_rows: list[list[int]], width: int) -> int:
    """Positions t whose next token is a target in at least one row (loss.target_positions), at least 1."""
    keep: set[int] = set()
    for labels in label_rows:
        keep.update(t for t in range(min(len(labels), width) - 1) if labels[t + 1] != IGNORE)
    return max(1, len(keep))


def packed_labels(rows: list[dict[str, Any]]) -> list[int]:
    """The packed row's labels: each record's first token is never a target (collate.pack_rows)."""
    return [IGNORE if i == 0 else t for r in rows for i, t in enumerate(r["labels"])]


def largest_batch(rows: list[dict[str, Any]], batch_size: int, packed: bool) -> Batch:
    """The worst micro-batch of an epoch: the `batch_size` longest records together.

    Padded, its width is the longest record's whatever the order (the batch holding that record is
    as wide); grouped by length it is the first batch. Packed, it is an upper bound.
    """
    longest = sorted(rows, key=lambda r: len(r["input_ids"]), reverse=True)[:batch_size]
    if packed:
        labels = packed_labels(longest)
        return Batch(1, len(labels), kept_positions([labels], len(labels)))
    width = len(longest[0]["input_ids"])
    return Batch(len(longest), width, kept_positions([r["labels"] for r in longest], width))


def epoch_batches(lengths: list[int], batch_size: int, packed: bool, grouped: bool, seed: int) -> list[Batch]:
    """Every micro-batch of one epoch (width and rows; `kept` is not needed for time)."""
    if grouped:
        from kubetune.trainer.data.order import length_grouped_order

        order = length_grouped_order(lengths, batch_size, seed)
    else:
        order = list(range(len(lengths)))
    out = []
    for i in range(0, len(order), batch_size):
        chunk = [lengths[j] for j in order[i : i + batch_size]]
        out.append(Batch(1, sum(chunk), 0) if packed else Batch(len(chunk), max(chunk), 0))
    return out


# --- the model, from its config ---------------------------------------------------------------------


def model_config(location: str, trust_remote_code: bool) -> Any:
    """The model's config from config.json or GGUF metadata; no weights read."""
    from transformers import AutoConfig

    try:
        if location.endswith(".gguf"):
            p = Path(location)
            return AutoConfig.from_pretrained(p.parent, gguf_file=p.name, trust_remote_code=trust_remote_code)
        return AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception as exc:  # a config.json that is not one, an unknown architecture, a damaged GGUF
        raise ModelError(f"model.path: cannot read the model's config from {location}: {first_line(exc)}") from None


def checkpoint_files(location: str) -> tuple[int, set[str]]:
    """(bytes of the weight files, their dtypes), from safetensors headers or the GGUF file size."""
    from safetensors import safe_open

    p = Path(location)
    if p.suffix == ".gguf":
        return p.stat().st_size, {"gguf"}
    total, dtypes = 0, set()
    for f in sorted(p.glob("*.safetensors")) if p.is_dir() else []:
        try:
            with safe_open(str(f), "pt", device="cpu") as st:
                for name in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                    s = st.get_slice(name)
                    dtypes.add(s.get_dtype())
        except Exception as exc:  # a truncated or foreign file named .safetensors
            raise ModelError(f"model.path: {f}: not a readable safetensors file: {first_line(exc)}") from None
        total += f.stat().st_size
    if not total:  # .bin checkpoints: their size is what a load maps
        total = sum(f.stat().st_size for f in p.glob("*.bin")) if p.is_dir() else 0
    return total, dtypes


def meta_model(cfg: TrainConfig, config: Any, precision: str, checkpointing: bool) -> Any:
    """The model with LoRA on top, on the meta device: shapes and autograd, no memory."""
    import torch
    from transformers import AutoModelForCausalLM

    from kubetune.trainer.models import DTYPES, apply_lora
    from kubetune.trainer.train import lora_config

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                config, dtype=DTYPES[precision], trust_remote_code=cfg.model.trust_remote_code
            )
    except Exception as exc:  # an architecture transformers cannot build
        raise ModelError(f"model.path: cannot build {cfg.model.path} from its config: {first_line(exc)}") from None
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return apply_lora(model, cfg.lora, lora_config(cfg))


def _flash_attention(dtype: Any) -> Any:
    """Scaled dot-product attention as CPU training runs it, for the trace: the fused (flash) kernel
    saves q, k, v, its output and a float32 log-sum-exp per query row, never the T x T weights that
    the meta device's math decomposition would save. With `dtype` (autocast's, over an fp32 stream)
    it saves autocast's copies of q, k and v in that dtype, and its output is in it."""
    import torch

    class FlashShapes(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any) -> Any:
            if dtype is not None and q.dtype != dtype:
                q, k, v = (x.new_empty(x.shape, dtype=dtype) for x in (q, k, v))
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))
            ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:  # pragma: no cover (the trace never runs backward)
            raise NotImplementedError

    return lambda q, k, v, *args, **kwargs: FlashShapes.apply(q, k, v)


def decoder_layers(model: Any) -> list[Any]:
    """The repeated blocks: the longest ModuleList in the model (Llama's model.layers and its kin)."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def saved_bytes(model: Any, batch: Batch, autocast: Any = None) -> tuple[int, int]:
    """Bytes autograd holds for backward after the forward and loss of `batch` (each storage once):
    (saved inside the decoder layers, saved outside them: embeddings, final norm, head and loss).
    `autocast`: the dtype autocast computes attention and the head in over an fp32 model (`Planner.autocast`)."""
    import torch
    import torch.nn.functional as F
    import transformers.masking_utils as masking

    params = {p.untyped_storage()._cdata for p in model.parameters()}
    sizes = {p.numel() for p in model.parameters()}
    saved: dict[int, tuple[int, bool]] = {}
    inside = [False]

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        # A weight the meta decomposition re-laid out (a transposed head) is still the weight, not an activation.
        leaf_copy = t.grad_fn is None and not t.requires_grad and t.is_floating_point() and t.numel() in sizes
        if key not in params and not leaf_copy:
            saved[key] = (max(saved.get(key, (0, False))[0], t.untyped_storage().nbytes()), inside[0])
        return t

    def enter(*_: Any) -> None:
        inside[0] = True

    def leave(*_: Any) -> None:
        inside[0] = False

    hooks = [
        h
        for layer in decoder_layers(model)
        for h in (layer.register_forward_pre_hook(enter), layer.register_forward_hook(leave))
    ]

    ids = torch.zeros(batch.rows, batch.width, dtype=torch.long, device="meta")
    keep = torch.arange(batch.kept, device="meta")
    # On meta tensors the packed-sequence check (a data-dependent .item()) cannot run; a padded batch
    # has none and a packed one is traced as one causal row, whose saved tensors are the same size.
    originals = masking.find_packed_sequence_indices, F.scaled_dot_product_attention
    masking.find_packed_sequence_indices = lambda position_ids: None
    F.scaled_dot_product_attention = _flash_attention(autocast)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
            targets = torch.zeros(logits.shape[:2], dtype=torch.long, device="meta")
            F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum")
    finally:
        masking.find_packed_sequence_indices, F.scaled_dot_product_attention = originals
        for h in hooks:
            h.remove()
    layers = sum(n for n, within in saved.values() if within)
    outside = sum(n for n, within in saved.values() if not within)
    if autocast is not None:  # autocast's copy of the fp32 head weight for its matmul, saved for the backward
        outside += model.get_output_embeddings().weight.numel() * autocast.itemsize
    return layers, outside


def activation_bytes(
    model: Any,
    batch: Batch,
    checkpointing: bool,
    layers: int,
    autocast: Any = None,
    precision: str = "fp32",
    quantized: bool = False,
) -> tuple[int, int]:
    """Resident activation bytes at the start of backward, (in the decoder layers, outside them): the saved
    tensors times LAYER_OVERHEAD in the layers; with checkpointing, the larger of that for the layer inputs
    plus one layer's own and CHECKPOINT_RESIDENT of what the layers save without checkpointing.

    Autocast does not apply to meta tensors, so the model arrives here with the dtypes autocast would give
    (`planner`): a bf16 model has its LoRA weights in bf16 too, as the adapters compute in bf16 on the base
    layer's own (already saved) input. A quantized model is fp32 with bf16 adapters (`autocast`).
    """
    if not checkpointing:
        in_layers, outside = saved_bytes(model, batch, autocast)
        return round(in_layers * LAYER_OVERHEAD), outside
    model.gradient_checkpointing_disable()
    whole, _ = saved_bytes(model, batch, autocast)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    kept, rest = saved_bytes(model, batch, autocast)
    resident = whole * (QUANTIZED_CHECKPOINT_RESIDENT[precision] if quantized else CHECKPOINT_RESIDENT)
    return round(max((kept + whole // max(1, layers)) * LAYER_OVERHEAD, resident)), rest


@dataclass(frozen=True)
class Shapes:
    """What the estimate needs from the (meta) model: parameter counts by role and the dimensions."""

    frozen: int  # frozen parameters, each storage once (tied embeddings count once)
    quantized: int  # of which in linear layers bitsandbytes would quantize
    quantized_rows: int  # their output rows (8-bit keeps one fp32 scale per row)
    trainable: int
    layers: int
    hidden: int
    attention_width: int  # heads x head_dim
    vocab: int
    head: int  # parameters of the output head (vocab x hidden)
    intermediate: int  # the MLP's width (element-wise work: its activation and product)


def shapes_of(model: Any, config: Any) -> Shapes:
    import torch

    head = model.get_output_embeddings()
    seen: set[int] = set()
    frozen = quantized = rows = trainable = 0
    for module in model.modules():
        for p in module.parameters(recurse=False):
            key = p.untyped_storage()._cdata
            if key in seen:
                continue
            seen.add(key)
            if p.requires_grad:
                trainable += p.numel()
                continue
            frozen += p.numel()
            if isinstance(module, torch.nn.Linear) and module is not head and p.dim() == 2:
                quantized, rows = quantized + p.numel(), rows + p.shape[0]
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return Shapes(
        frozen,
        quantized,
        rows,
        trainable,
        text.num_hidden_layers,
        text.hidden_size,
        heads * head_dim,
        text.vocab_size,
        head.weight.numel(),
        getattr(text, "intermediate_size", None) or 4 * text.hidden_size,
    )


# --- memory terms ---------------------------------------------------------------------------------

SAFETENSORS_DTYPE = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}


def quantized_bytes(n: int, rows: int, quantization: str, double_quant: bool) -> int:
    """Resident bytes of `n` weights in `rows` output rows under bitsandbytes."""
    if quantization == "8bit":
        return n + rows * FP32
    blocks = math.ceil(n / QUANT_BLOCK)
    constants = blocks + math.ceil(blocks / 256) * FP32 if double_quant else blocks * FP32
    return math.ceil(n / 2) + constants


def weight_terms(
    s: Shapes, file_bytes: int, file_dtypes: set[str], precision: str, quantization: str, double_quant: bool
) -> dict[str, int]:
    """Resident weights during training, and the extra at the load's peak.

    A tensor loaded in the file's own dtype is a view of the memory-mapped file, and the mapping stays
    (all of it, once read) for as long as one such view lives; any other tensor is a copy. peft's kbit
    preparation upcasts the non-quantized parameters to fp32.
    """
    same = file_dtypes == {SAFETENSORS_DTYPE[precision]}
    if quantization == "none":
        resident = file_bytes if same else s.frozen * DTYPE_BYTES[precision]
        return {"weights": resident, "load_extra": 0 if same else file_bytes}
    others = s.frozen - s.quantized
    q = quantized_bytes(s.quantized, s.quantized_rows, quantization, double_quant)
    fp32_view = file_dtypes == {"F32"} and precision == "fp32"
    resident = q + (file_bytes if fp32_view else others * FP32)
    return {"weights": resident, "load_extra": 0 if fp32_view else file_bytes}


def lora_bytes(trainable: int, optimizer: str) -> int:
    """LoRA's fp32 parameters, their gradients and the optimizer's state."""
    return trainable * (FP32 + FP32 + OPTIMIZER_BYTES[optimizer])


# --- the merge afterwards (`kubetune merge`, merge.py) ---------------------------------------------------

TORCH_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def saved_dtype(config: Any) -> str:
    """The dtype `kubetune merge --dtype auto` writes (merge._save_dtype uses this): the base's declared one,
    else fp32."""
    declared = str(getattr(config, "dtype", None) or "").removeprefix("torch.")
    return TORCH_DTYPES.get(declared, "fp32")


def merge_weights(s: Shapes, cfg: TrainConfig, saved: str, trained_weights: int) -> dict[str, int]:
    """Weight bytes `kubetune merge` holds at its peak, check 2 (merge.py; measured stage by stage, docs/plan.md).

    merged: the merged model in the saved dtype. reload: what was written, loaded back in fp32 (a view of the
    file when fp32, else a copy next to the mapped file). quantized_base: merging a 4/8-bit run as trained
    loads the base as training did and dequantizes it to fp32; the quantized model it loaded is freed, but its
    memory stays in the C allocator's heap (measured), about training's resident `weights` (`trained_weights`).
    Loading and dequantizing hold less: the fp32 model next to at most the checkpoint file.
    """
    written = s.frozen * DTYPE_BYTES[saved]
    reload = s.frozen * FP32 + (0 if saved == "fp32" else written)
    as_trained = cfg.model.quantization != "none" and cfg.merge.base == "as_trained"
    return {"merged": written, "reload": reload, "quantized_base": trained_weights if as_trained else 0}


def process_rss() -> int:
    """This process's resident memory now: interpreter, libraries, tokenizer, tokenized data."""
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- time -------------------------------------------------------------------------------------------


def batch_flops(s: Shapes, b: Batch, head_positions: int, checkpointing: bool) -> tuple[float, float]:
    """Training FLOPs of one micro-batch (2 per multiply-add), (dense, attention).

    Dense: the frozen weights' forward and input-gradient backward (no weight gradient), plus a second forward
    when checkpointing; LoRA's forward, input and weight gradients; the output head only at `head_positions`.
    Attention: QK and AV over the padded width, half of it masked, in each pass and its backward.
    """
    passes = 3 if checkpointing else 2
    dense = 2 * passes * (s.frozen - s.head) * b.tokens + 6 * s.trainable * b.tokens + 2 * 2 * s.head * head_positions
    attention = 2 * (passes + 1) * s.layers * s.attention_width * b.width * b.width * b.rows
    return float(dense), float(attention)


# Two windows of 0.4 s: on a shared 2-vCPU host the best 1024^3 matmul of one 0.15 s window read 95-197 GFLOP/s
# within one process over 3 s, the best of a 1 s window varied by at most 8 % (docs/plan.md).
PROBE_SECONDS = 0.8


# The square product's side: large enough for the kernel's steady rate. On an AMX Xeon a bf16 1024^3 product ran
# at 1.3 TFLOP/s and 1536^3 to 3072^3 at 2.3-2.4, as the model's own GEMM shapes do; fp32 was flat from 1024 on.
PROBE_SIZE = {"fp32": 1024, "bf16": 2048, "fp16": 2048}


def probe_side(wanted: int, seconds_at_1024: float, repeats: int, budget: float) -> int:
    """The probe's side: `wanted`, unless its `repeats` products would take longer than the whole `budget` at the
    rate a 1024^3 product just ran (bf16 without native support runs two orders of magnitude slower: 2048^3 would
    take seconds each); then 1024."""
    return wanted if seconds_at_1024 * (wanted / 1024) ** 3 * repeats <= budget else 1024


def matmul_rate(
    precision: str, threads: int, size: int | None = None, repeats: int = 5, budget: float = PROBE_SECONDS
) -> float:
    """FLOP/s of a square matmul at the run's dtype on `threads` threads: the best of at least `repeats`, for at
    least `budget` seconds, so that one short stall of the machine (a neighbour, the first touch of fresh pages)
    does not become the plan's rate."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if size is None:
            size = PROBE_SIZE[precision]
            if size > 1024:
                small = torch.randn(1024, 1024, dtype=dtype)
                small @ small  # the first call chooses and compiles the kernel
                start = time.perf_counter()
                small @ small
                size = probe_side(size, time.perf_counter() - start, repeats, budget)
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up: kernel choice and allocation
        best, runs, began = math.inf, 0, time.perf_counter()
        while runs < repeats or time.perf_counter() - began < budget:
            start = time.perf_counter()
            a @ b
            best, runs = min(best, time.perf_counter() - start), runs + 1
    finally:
        torch.set_num_threads(before)
    return 2 * size**3 / best


def attention_efficiency(precision: str, packed: bool, width: int, amx: bool = False) -> float:
    """The attention kernel's fraction of the matmul rate at `width` (fp16 as bf16: not measured)."""
    kind = "fp32" if precision == "fp32" else "bf16-amx" if amx else "bf16"
    table = ATTENTION_EFFICIENCY[(kind, "masked" if packed else "causal")]
    widths = sorted(table)
    x = math.log2(min(max(width, widths[0]), widths[-1]))
    for lo, hi in itertools.pairwise(widths):
        if x <= math.log2(hi):
            f = (x - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
            return table[lo] + f * (table[hi] - table[lo])
    return table[widths[-1]]


def cpu_has_amx() -> bool:
    from kubetune.trainer.device import _cpu_flags

    return "amx_bf16" in _cpu_flags()


def elementwise_elements(s: Shapes, b: Batch, checkpointing: bool) -> int:
    """Elements the decoder layers' element-wise ops touch in one micro-batch: per token and layer, about four
    hidden-wide passes (two norms, RoPE, two residual adds) and three intermediate-wide ones (the activation, the
    gate's product and its input), in the forward, the backward, and a second forward when checkpointing."""
    passes = 3 if checkpointing else 2
    return passes * b.tokens * s.layers * (4 * s.hidden + 3 * s.intermediate)


def epoch_seconds(s: Shapes, rows: list[dict[str, Any]], cfg: TrainConfig, place: Placement, rate: float) -> float:
    """One epoch over the data's real micro-batches: their dense FLOPs at a fraction of the probed rate, their
    attention at its kernel's rate for each batch's width and path, their element-wise work at its fixed cost per
    element, and each micro-batch's fixed and per-layer costs."""
    lengths = [len(r["input_ids"]) for r in rows]
    trained = sum(1 for r in rows for x in r["labels"][1:] if x != IGNORE)
    packed = cfg.data.packing
    batches = epoch_batches(lengths, cfg.training.batch_size, packed, cfg.data.length_grouped, 0)
    per_token = trained / max(1, sum(lengths))  # the head runs at the trained positions
    ckpt = place.gradient_checkpointing
    compute = elementwise = 0.0
    amx = cpu_has_amx()
    for b in batches:
        dense, attention = batch_flops(s, b, round(per_token * b.tokens), ckpt)
        compute += dense / DENSE_EFFICIENCY[place.precision]
        compute += attention / attention_efficiency(place.precision, packed, b.width, amx)
        elementwise += elementwise_elements(s, b, ckpt) * ELEMENTWISE_SECONDS[place.precision]
    layer = LAYER_SECONDS + (QUANTIZED_LAYER_SECONDS if cfg.model.quantization != "none" else 0.0)
    return compute / rate + elementwise + len(batches) * (MICRO_BATCH_SECONDS + layer * s.layers)


def warm_up(touched: int) -> float:
    """The first step's one-time cost over a steady one: kernel selection, and the first touch of every page the
    run holds beyond the process (the mapped weights faulted in, fresh activation memory zeroed)."""
    return FIRST_STEP_SECONDS + FIRST_TOUCH_SECONDS_PER_GIB * touched / 2**30


# --- the plan -----------------------------------------------------------------------------------------


@dataclass
class Planner:
    """Everything that does not change with the batch size, computed once."""

    cfg: TrainConfig
    rows: list[dict[str, Any]]
    precision: str
    checkpointing: bool
    model: Any
    shapes: Shapes
    weights: dict[str, int]
    process: int
    merge: dict[str, int]  # merge_weights: what `kubetune merge` holds at its peak, beside `process`
    autocast: Any = None  # the dtype autocast computes in over an fp32 model (a quantized base), else None

    def memory(self, batch_size: int) -> tuple[int, dict[str, int], Batch]:
        """(peak bytes per process, the terms, the batch that sets it) at this batch size."""
        batch = largest_batch(self.rows, batch_size, self.cfg.data.packing)
        in_layers, outside = activation_bytes(
            self.model,
            batch,
            self.checkpointing,
            self.shapes.layers,
            self.autocast,
            self.precision,
            self.cfg.model.quantization != "none",
        )
        logits = batch.rows * batch.kept * self.shapes.vocab * FP32
        terms = {
            "process": self.process,
            "runtime": RUNTIME_BYTES,
            "weights": self.weights["weights"],
            "lora_and_optimizer": lora_bytes(self.shapes.trainable, self.cfg.training.optimizer),
            "activations": in_layers + outside + round(LOGIT_GRADIENTS * logits),
        }
        load_peak = self.process + self.weights["weights"] + self.weights["load_extra"]
        traced = {"resident_in_layers": in_layers, "traced_outside": outside, "traced_logits": logits}
        return max(sum(terms.values()), load_peak), {**terms, "load_peak": load_peak, **traced}, batch

    def largest_fitting(self, limit: int, ceiling: int) -> int | None:
        """The largest batch size (1..ceiling) whose peak is within `limit`; None when not even 1 fits."""
        lo, hi = 0, ceiling
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.memory(mid)[0] <= limit else (lo, mid - 1)
        return lo or None


def planner(cfg: TrainConfig, rows: list[dict[str, Any]], precision: str, checkpointing: bool) -> Planner:
    """Read the model's shapes and weight files and build it on meta; measure this process."""
    from kubetune.trainer.models import resolve_path

    location = resolve_path(cfg.model.path)
    config = model_config(location, cfg.model.trust_remote_code)
    file_bytes, dtypes = checkpoint_files(location)
    saved = saved_dtype(config)  # before the meta build, which sets config.dtype to the run's precision
    q = cfg.model
    model, autocast = autocast_model(cfg, config, precision)
    shapes = shapes_of(model, config)
    weights = weight_terms(shapes, file_bytes, dtypes, precision, q.quantization, q.double_quant)
    merge = merge_weights(shapes, cfg, saved, weights["weights"])
    return Planner(cfg, rows, precision, checkpointing, model, shapes, weights, process_rss(), merge, autocast)


def autocast_model(cfg: TrainConfig, config: Any, precision: str) -> tuple[Any, Any]:
    """The meta model in the dtypes the run's activations have under the Trainer's CPU autocast, and autocast's
    dtype where it differs from the model's (attention and the head run in it; None otherwise).

    Not quantized: the model is loaded in the run's precision, and the adapters compute in it. Quantized: peft's
    kbit preparation upcasts every non-quantized weight to fp32 and bitsandbytes returns each layer's output in
    its input's dtype, so the residual stream, the norms and the MLP's products are fp32; under bf16 autocast the
    adapters and attention cast their fp32 inputs to bf16, a copy each, and an 8-bit layer's output is bf16
    (measured: tests/trainer/test_plan.py).
    """
    from kubetune.trainer.models import DTYPES

    quantized = cfg.model.quantization != "none"
    model = meta_model(cfg, config, "fp32" if quantized else precision, checkpointing=False)
    if precision == "fp32":
        return model, None
    if not quantized:
        return model.to(DTYPES[precision]), None
    dtype = DTYPES[precision]
    for p in model.parameters():
        if p.requires_grad:  # the adapters
            p.data = p.data.to(dtype)
    if cfg.model.quantization == "8bit":  # bitsandbytes' 8-bit matmul returns autocast's dtype, 4-bit its input's
        import torch

        head = model.get_output_embeddings()
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m is not head and not m.weight.requires_grad:
                m.register_forward_hook(lambda _m, _inputs, out: out.to(dtype))
    return model, dtype


def make_plan(
    cfg: TrainConfig,
    rows: list[dict[str, Any]],
    place: Any,
    world_size: int = 1,
    limit: int | None = None,
    search: bool = True,
) -> PlanEvent:
    """The plan of this config on this data and this placement; with `limit`, the largest batch that fits
    (searched for always with `search`, else only when the configured batch does not fit)."""
    cpu = place.device == "cpu"
    # The probe in two windows, before and after the trace (seconds apart): a stall of the machine that spans
    # one (measured on the grid: two processes in forty probed half the rate) does not become the plan's rate.
    first = matmul_rate(place.precision, place.threads, budget=PROBE_SECONDS / 2) if cpu else None
    p = planner(cfg, rows, place.precision, place.gradient_checkpointing)
    peak, terms, batch = p.memory(cfg.training.batch_size)
    rate = max(first, matmul_rate(place.precision, place.threads, budget=PROBE_SECONDS / 2)) if first else None
    epoch = epoch_seconds(p.shapes, rows, cfg, place, rate) / world_size if rate else None
    per_step = cfg.training.global_batch(world_size)
    steps_per_epoch = max(1, math.ceil(len(rows) / per_step))
    steps = cfg.training.max_steps or math.ceil(steps_per_epoch * cfg.training.epochs)
    return PlanEvent(
        peak_bytes=peak,
        memory={**terms, **{f"merge_{k}": v for k, v in p.merge.items()}},
        device=place.device,
        precision=place.precision,
        gradient_checkpointing=place.gradient_checkpointing,
        batch_size=cfg.training.batch_size,
        largest_batch={"rows": batch.rows, "width": batch.width, "head_positions": batch.kept},
        trainable_parameters=p.shapes.trainable,
        frozen_parameters=p.shapes.frozen,
        records=len(rows),
        tokens_per_epoch=sum(len(r["input_ids"]) for r in rows),
        steps_per_epoch=steps_per_epoch,
        steps=steps,
        seconds_per_epoch=round(epoch, 1) if epoch is not None else None,
        seconds=round(epoch * steps / steps_per_epoch + warm_up(peak - p.process), 1) if epoch is not None else None,
        matmul_rate=round(rate) if rate else None,
        memory_limit_bytes=limit,
        fits=None if limit is None else peak <= limit,
        max_batch_size=p.largest_fitting(limit, len(rows)) if limit is not None and (search or peak > limit) else None,
        merge_peak_bytes=p.process + sum(p.merge.values()),
    )


# --- before training ------------------------------------------------------------------------------

CGROUP_MEMORY_MAX = Path("/sys/fs/cgroup/memory.max")  # cgroup v2
CGROUP_V1_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a page-rounded 2**63


def visible_memory() -> tuple[int, str]:
    """(bytes this process may grow to, where that figure comes from): the cgroup limit, else free RAM.

    Free RAM is MemAvailable plus what this process already holds (the plan's peak includes it).
    """
    import psutil

    for path in (CGROUP_MEMORY_MAX, CGROUP_V1_LIMIT):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < UNLIMITED:
            return int(text), f"the cgroup limit ({path})"
    return psutil.virtual_memory().available + process_rss(), "free RAM"


def gib(n: int | float) -> str:
    return f"{n / 2**30:.1f} GiB"


def summary_line(ev: PlanEvent) -> str:
    """The plan as one line for people (train's log, plan's footer)."""
    b = ev.largest_batch
    time_part = f", ~{ev.seconds:.0f} s for {ev.steps} step(s)" if ev.seconds is not None else ""
    return (
        f"plan: peak {gib(ev.peak_bytes)} per process (largest batch {b.get('rows')}x{b.get('width')} tokens, "
        f"{ev.precision}, checkpointing {'on' if ev.gradient_checkpointing else 'off'}){time_part}"
    )


def refusal(ev: PlanEvent, processes: int, limit: int, source: str) -> str:
    """The one line a run that will not fit stops with."""
    fit = f"; training.batch_size {ev.max_batch_size} would fit" if ev.max_batch_size else ""
    per = f" x {processes} processes" if processes > 1 else ""
    return (
        f"training.batch_size: the plan needs {gib(ev.peak_bytes)} per process{per}, {source} is {gib(limit)}"
        f"{fit}; set training.ignore_plan (--ignore-plan) to start anyway"
    )


def preflight(cfg: TrainConfig, rows: list[dict[str, Any]], place: Any, world: int, processes: int) -> PlanEvent | None:
    """Plan the run, say so first, and stop it (InsufficientMemory) when it cannot fit here.

    A plan that cannot be made (an architecture the meta build does not support) never blocks a run.
    """
    limit, source = visible_memory()
    per_process = limit // max(1, processes)
    try:
        ev = make_plan(cfg, rows, place, world, per_process, search=False)  # a search costs a trace per step
    except KubetuneError:
        raise
    except Exception as exc:  # the estimate is advice: training goes on without it
        log.warning("plan: not available (%s); training without one", first_line(exc))
        return None
    log.info("%s; %s: %s", summary_line(ev), source, gib(limit))
    log.info("plan event: %s", ev.line())  # on stderr: stdout carries progress events only
    # On a GPU the weights and activations live in device memory, which the host's limit says nothing
    # about (and the plan is not yet checked against a GPU's allocator): advice only there.
    if not ev.fits and not cfg.training.ignore_plan and place.device == "cpu":
        raise InsufficientMemory(refusal(ev, processes, limit, source))
    return ev


# --- `kubetune plan` ------------------------------------------------------------------------------

UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_memory(text: str) -> int:
    """Bytes from `16Gi`, `16GiB`, `1.5G`, `800Mi` or a plain byte count (Kubernetes' suffixes and GiB/GB)."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if not m:
        raise UsageError(f"--memory: {text!r} is not a memory size (e.g. 16Gi, 16GiB, 1.5G, 800Mi)")
    value = float(m.group(1)) * UNITS[m.group(2) or ""]
    if value < 1:
        raise UsageError(f"--memory: {text!r} must be at least one byte")
    return int(value)


def plan_config(cfg: TrainConfig, memory: str | None) -> PlanEvent:
    """`kubetune plan`: the same sources, hardware choice and data preparation as `train`, then the plan."""
    from kubetune.trainer import (
        hf_trainer,  # noqa: F401  (imported by train too: part of the measured process)
        launch,
        sources,
    )
    from kubetune.trainer.train import setup_data, setup_hardware

    limit = parse_memory(memory) if memory is not None else None
    if not cfg.data.path:
        raise UsageError("data.path: no training data given (set data.path, DATA_PATH or --data)")
    from kubetune.trainer.device import numa_node_count

    layout = launch.layout_from_env(os.environ, numa_nodes=numa_node_count())
    cfg, _ = sources.localize(cfg)
    place, _ = setup_hardware(cfg)
    _, data = setup_data(cfg)
    per_process = limit // layout.nproc_per_node if limit is not None else None
    return make_plan(cfg, data.train, place, layout.world_size, per_process)


def preflight_plan(cfg: TrainConfig, memory: str | None) -> PlanEvent | None:
    """`kubetune plan --preflight`, a FinetuneJob's initializer: fetch the remote sources into the cache first
    (writing the sources lock the workers read), then plan, and leave the plan as the pod's termination
    message for the operator. As in `train`, a plan that cannot be made is a warning (None), never a failure:
    only config, data, model and source errors (KubetuneError) stop the job here."""
    from kubetune.api.remote import is_remote
    from kubetune.trainer.sources import fetch_all
    from kubetune.trainer.termination import write_termination_message

    if any(is_remote(p) for p in (cfg.model.path, *cfg.data.path, *cfg.data.eval_path)):
        fetch_all(cfg)
    if cfg.model.trust_remote_code:
        # Planning loads the checkpoint's config and tokenizer classes, its own code then. This pod alone
        # writes the shared cache and holds every source credential (docs/security.md): no repo code runs
        # here; the workers, which read the cache only, plan for themselves.
        log.warning("plan: skipped in the initializer (model.trust_remote_code); the workers get the defaults")
        return None
    try:
        ev = plan_config(cfg, memory)
    except KubetuneError:
        raise
    except Exception as exc:  # the estimate is advice: the workers start without one
        log.warning("plan: not available (%s); the workers get the default resources", first_line(exc))
        return None
    write_termination_message(ev.model_dump(mode="json"))
    return ev


def print_plan(ev: PlanEvent) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="peak memory per process", show_header=True)
    table.add_column("term")
    table.add_column("GiB", justify="right")
    for name, value in ev.memory.items():
        if name != "load_peak" and not name.startswith(("traced_", "resident_", "merge_")):  # inside a row above
            table.add_row(name, f"{value / 2**30:.2f}")
    table.add_row("peak (training)", f"{ev.peak_bytes / 2**30:.2f}", style="bold")
    table.add_row("peak while loading", f"{ev.memory.get('load_peak', 0) / 2**30:.2f}")
    if ev.merge_peak_bytes is not None:
        table.add_row("peak of `kubetune merge`", f"{ev.merge_peak_bytes / 2**30:.2f}")
    console = Console()
    console.print(table)
    b = ev.largest_batch
    console.print(
        f"{ev.device} {ev.precision}, gradient checkpointing {'on' if ev.gradient_checkpointing else 'off'}; "
        f"largest micro-batch {b['rows']} x {b['width']} tokens, head at {b['head_positions']} positions"
    )
    console.print(
        f"{ev.records} records, {ev.tokens_per_epoch} tokens per epoch, {ev.steps_per_epoch} steps per epoch, "
        f"{ev.steps} steps in all"
    )
    if ev.seconds is not None:
        rate = f", at a probed {ev.matmul_rate / 1e9:.0f} GFLOP/s" if ev.matmul_rate else ""
        console.print(
            f"time: ~{ev.seconds_per_epoch:.0f} s per epoch, ~{ev.seconds:.0f} s for the run (CPU estimate{rate})"
        )
    if ev.memory_limit_bytes is not None:
        verdict = "fits" if ev.fits else "does NOT fit"
        largest = f"largest batch_size that fits: {ev.max_batch_size}" if ev.max_batch_size else "not even batch 1 fits"
        console.print(f"within {gib(ev.memory_limit_bytes)} per process: {verdict}; {largest}")
