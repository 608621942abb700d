"""A randomly initialised 1-layer Llama with the builtin model's tokenizer: a real HF model directory of ~3 MB.

Small enough to upload to a test's S3 store and train for a few steps in seconds; real enough for
the trainer to load, adapt, merge and verify.
"""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama(dest: Path, tokenizer_path: str) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest
