"""CompletionTrainer under mixed precision: LoRA's inputs are left to autocast, which gives the same bits."""

import torch
from peft import LoraConfig, get_peft_model
from tinymodel import tiny_llama
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerCallback, TrainingArguments

from kubetune.trainer.data.collate import Collator
from kubetune.trainer.data.render import IGNORE
from kubetune.trainer.hf_trainer import CompletionTrainer

LORA_LAYERS = 2 * 7  # two decoder layers, all seven projections


def records() -> list[dict]:
    g = torch.Generator().manual_seed(3)
    out = []
    for length, prompt in [(12, 8), (7, 3), (15, 12), (9, 4)] * 2:
        ids = torch.randint(3, 97, (length,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return out


class CountCasts(TorchDispatchMode):
    """Counts dtype conversions (aten._to_copy) that produce fp32 tensors of at least `elements` elements."""

    def __init__(self, elements: int):
        super().__init__()
        self.elements, self.fp32_copies = elements, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default and isinstance(out, torch.Tensor):
            self.fp32_copies += out.dtype == torch.float32 and out.numel() >= self.elements
        return out


class Losses(TrainerCallback):
    def __init__(self):
        self.losses = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def train(tmp_path, autocast_casts_lora: bool, counter: CountCasts | None = None):
    """Three bf16 steps of a tiny bf16 Llama with fp32 LoRA weights (peft's default); losses and LoRA weights."""
    torch.manual_seed(0)
    model = tiny_llama(97, hidden=32, layers=2).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    assert {p.dtype for n, p in model.named_parameters() if "lora_" in n} == {torch.float32}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        bf16=True,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        remove_unused_columns=False,
        label_names=["labels"],
        disable_tqdm=True,
        seed=0,
    )
    losses = Losses()
    trainer = CompletionTrainer(
        model=model, args=args, train_dataset=records(), data_collator=Collator(0, packed=False), callbacks=[losses]
    )
    assert trainer.autocast_casts_lora  # bf16 training leaves the cast to autocast by default
    trainer.autocast_casts_lora = autocast_casts_lora
    if counter is None:
        trainer.train()
    else:
        with counter:
            trainer.train()
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    return losses.losses, weights


def test_leaving_lora_inputs_to_autocast_trains_the_same_bits_with_no_fp32_copy_of_an_activation(tmp_path):
    activation = 4 * 7 * 32  # the smallest batch's [4, 7, hidden] activation: nothing LoRA-sized counts
    peft_casts, ours = CountCasts(activation), CountCasts(activation)
    losses_cast, weights_cast = train(tmp_path / "a", autocast_casts_lora=False, counter=peft_casts)
    losses, weights = train(tmp_path / "b", autocast_casts_lora=True, counter=ours)
    assert len(losses) == 3 and losses == losses_cast
    assert weights.keys() == weights_cast.keys()
    for name in weights:
        assert torch.equal(weights[name], weights_cast[name]), name
    # peft copies each LoRA layer's bf16 input to fp32 in every forward (three steps); autocast copies it back.
    assert peft_casts.fp32_copies - ours.fp32_copies >= 3 * LORA_LAYERS
