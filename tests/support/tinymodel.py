"""A randomly initialised 1-layer Llama with the builtin model's tokenizer: a real HF model directory of ~3 MB.

Small enough to upload to a test's S3 store and train for a few steps in seconds; real enough for
the trainer to load, adapt, merge and verify.
"""

from __future__ import annotations

from pathlib import Path


def tiny_llama(vocab_size: int, hidden: int = 16, layers: int = 1, **config: object):
    """A random Llama this small (seeded): the shape of the real thing at a few MB or less."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(2, hidden // 8),
            num_key_value_heads=max(1, hidden // 16),
            max_position_embeddings=256,
            **config,
        )
    )


def save_tiny_llama(dest: Path, tokenizer_path: str) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    model = tiny_llama(len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def random_llama(dest: Path, hidden: int, layers: int, tokenizer_dir: str, intermediate: int | None = None) -> str:
    """A random-init Llama of a real model's proportions (64-wide heads, a key/value head per four, the MLP
    8/3 as wide unless `intermediate`) with that tokenizer, saved as fp32 safetensors; kept if already there."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (dest / "config.json").exists():
        return str(dest)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=max(1, hidden // 256),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return str(dest)
