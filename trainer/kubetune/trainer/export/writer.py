"""A Hugging Face causal LM (Llama or Qwen2 family) as one GGUF file, with the gguf package's writer and name maps.

Everything that can refuse does so in `plan()`, before a byte is written: an
architecture, a rope scaling or a tokenizer this writer cannot convert is one
line naming it. The tokenizer goes in as the model trained with it (vocab,
merges, special tokens, BOS policy, chat template), read from the tokenizer
itself, not guessed from the architecture.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from kubetune.trainer.data.render import adds_bos
from kubetune.trainer.errors import ModelError

ARCHITECTURES = {"LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA, "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2}
# GGUF tensor type of the 2-D weights, and the file type recorded in the header (1-D tensors stay F32).
TYPES = {
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


@dataclass(frozen=True)
class Plan:
    """What will be written, checked before any weight is loaded or any file opened."""

    arch: gguf.MODEL_ARCH
    config: Any
    pre: str  # llama.cpp's pre-tokenizer name


def _refuse(what: str) -> ModelError:
    return ModelError(f"export: {what}")


def plan(config: Any, tokenizer_json: dict[str, Any]) -> Plan:
    """Check architecture, rope and tokenizer; raise one line naming the first thing this writer cannot convert."""
    archs = list(getattr(config, "architectures", None) or [])
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise _refuse(f"unsupported architecture {', '.join(archs) or '(none in config.json)'} (supported: {known})")
    arch = ARCHITECTURES[archs[0]]
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise _refuse(f"unsupported rope scaling {rope['rope_type']!r} in {archs[0]} (only the default rope)")
    biased = getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)
    if arch == gguf.MODEL_ARCH.LLAMA and biased:
        raise _refuse(f"unsupported {archs[0]} with attention or MLP biases")
    return Plan(arch, config, pre_tokenizer(arch, tokenizer_json))


def tensor_names(p: Plan, names: list[str]) -> dict[str, str]:
    """HF tensor name -> GGUF tensor name (a tied output head is left out); refuse a tensor with no GGUF name."""
    tmap = gguf.get_tensor_name_map(p.arch, p.config.num_hidden_layers)
    mapped: dict[str, str] = {}
    for name in names:
        if name == "lm_head.weight" and p.config.tie_word_embeddings:
            continue  # llama.cpp uses the embedding as the output head when output.weight is absent
        gguf_name = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise _refuse(f"tensor {name} has no GGUF name for {gguf.MODEL_ARCH_NAMES[p.arch]}")
        mapped[name] = gguf_name
    return mapped


def pre_tokenizer(arch: gguf.MODEL_ARCH, tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization; refuse what is not byte-level BPE.

    The written file is checked in llama.cpp afterwards (prompt token counts and answers), so a wrong
    pick here fails the export instead of shipping a model that tokenizes differently.
    """
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise _refuse(f"unsupported tokenizer {model.get('type', '?')} (only byte-level BPE, as Llama 3/SmolLM/Qwen2)")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds and kinds[0] == "Split":
        return "qwen2" if arch == gguf.MODEL_ARCH.QWEN2 else "llama-bpe"
    raise _refuse(f"unsupported pre-tokenizer {'+'.join(map(str, kinds)) or '(none)'}")


def _token_types(tokenizer: Any, n_vocab: int) -> tuple[list[str], list[int]]:
    """Every id's token text and type: special tokens are CONTROL (llama.cpp matches them in text), ids beyond
    the tokenizer (a padded embedding) UNUSED."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = set(tokenizer.all_special_ids)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        text = tokenizer.convert_ids_to_tokens(i) if i < len(tokenizer) else None
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in special or (i in added and added[i].special):
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(added[i].content if i in added else text)
            types.append(gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
    return tokens, types


def _add_tokenizer(w: gguf.GGUFWriter, p: Plan, tokenizer: Any, model_dir: Path) -> None:
    tokens, types = _token_types(tokenizer, p.config.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(p.pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=p.config.vocab_size)
    special.chat_template = None  # set below from the tokenizer itself (a .jinja file is not always read)
    special.add_special_token = {}  # the policy is measured below, not read from a config key that may be absent
    special.add_to_gguf(w, quiet=True)
    if not special.merges:
        raise _refuse(f"{model_dir}: the tokenizer has no BPE merges")
    # The tokenizer's own policy, measured as training and `kubetune generate` measure it.
    w.add_add_bos_token(adds_bos(tokenizer))
    w.add_add_eos_token(tokenizer("a").input_ids[-1:] == [tokenizer.eos_token_id])
    if tokenizer.chat_template:
        w.add_chat_template(tokenizer.chat_template)


def _add_hparams(w: gguf.GGUFWriter, config: Any, name: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    w.add_name(name)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_vocab_size(config.vocab_size)


def _rotary_interleaved(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Llama's q/k rows from Hugging Face's rotate-half layout to the pairwise layout llama.cpp's rope expects."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _encode(data: np.ndarray, kind: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """1-D tensors (norms, biases) stay F32 as llama.cpp expects; Q8_0 falls back to F16 for rows not in blocks."""
    qtype = TYPES[kind][0]
    if data.ndim == 1:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


def _tensors(p: Plan, state: dict[str, torch.Tensor], kind: str) -> Iterator[tuple[str, np.ndarray, Any]]:
    for hf_name, name in tensor_names(p, list(state)).items():
        data = state[hf_name].detach().to(torch.float32).cpu().numpy()
        if p.arch == gguf.MODEL_ARCH.LLAMA and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = p.config.num_attention_heads if "q_proj" in hf_name else p.config.num_key_value_heads
            data = _rotary_interleaved(data, heads)
        encoded, qtype = _encode(data, kind)
        yield name, encoded, qtype


def write(path: Path, p: Plan, state: dict[str, torch.Tensor], tokenizer: Any, model_dir: Path, kind: str) -> None:
    """Write the GGUF file at `path` (the caller's temporary name); tensor names are all checked first."""
    tensor_names(p, list(state))
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[p.arch])
    try:
        _add_hparams(w, p.config, model_dir.name)
        w.add_file_type(TYPES[kind][1])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_tokenizer(w, p, tokenizer, model_dir)
        for name, data, qtype in _tensors(p, state, kind):
            w.add_tensor(name, data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def read_tokenizer_json(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _refuse(f"{path}: cannot read the tokenizer: {getattr(exc, 'strerror', None) or exc}") from None
    return value if isinstance(value, dict) else {}
