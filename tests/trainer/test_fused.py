"""The fused LoRA forward (kubetune.trainer.fused) against peft's own, on a real (tiny, random) Llama with LoRA on
every projection: the same outputs and gradients in fp32 and under bf16 autocast, three element-wise passes fewer
over each LoRA layer's output, and peft's forward wherever the fused one would not compute the same thing."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tinymodel import tiny_llama
from torch.utils._python_dispatch import TorchDispatchMode

from kubetune.trainer.fused import fuse_lora_scaling

HIDDEN, LAYERS = 64, 2
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_model(**lora: object) -> torch.nn.Module:
    model = get_peft_model(
        tiny_llama(256, hidden=HIDDEN, layers=LAYERS),
        LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, **{"lora_dropout": 0.0, **lora}),
    )
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, where the LoRA path adds nothing to compare
            torch.nn.init.normal_(p, std=0.05)
    return model


def step(model: torch.nn.Module, autocast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward and backward on a fixed batch: the logits and the gradients it left."""
    ids = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1)[:-1], ids.flatten()[1:])
    if loss.requires_grad:  # not with the adapters disabled: then nothing trains
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach().float(), grads


@pytest.mark.parametrize(("autocast", "rtol", "atol"), [(False, 1e-5, 1e-6), (True, 2e-2, 2e-2)])
def test_the_fused_forward_computes_what_peft_does(autocast, rtol, atol):
    theirs = lora_model()
    ours = copy.deepcopy(theirs)
    assert fuse_lora_scaling(ours) == len(TARGETS) * LAYERS
    want_logits, want_grads = step(theirs, autocast)
    got_logits, got_grads = step(ours, autocast)
    torch.testing.assert_close(got_logits, want_logits, rtol=rtol, atol=atol)
    assert got_grads.keys() == want_grads.keys() and len(got_grads) == 2 * len(TARGETS) * LAYERS
    for name in want_grads:
        scale = want_grads[name].abs().max()
        torch.testing.assert_close(got_grads[name] / scale, want_grads[name] / scale, rtol=rtol, atol=atol)


class ElementwiseOnOutputs(TorchDispatchMode):
    """Counts element-wise passes (mul, add, copies) whose result has a LoRA layer output's width and more than
    `rows` rows."""

    def __init__(self, widths: set[int], rows: int) -> None:
        super().__init__()
        self.widths, self.rows, self.count = widths, rows, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        big = isinstance(out, torch.Tensor) and out.dim() >= 2 and out.numel() // out.shape[-1] > self.rows
        if name in {"mul", "add", "add_", "copy_", "clone"} and big and out.shape[-1] in self.widths:
            self.count += 1
        return out


def elementwise_passes(model: torch.nn.Module) -> int:
    # The projections' output widths; every other element-wise op of the model (norms, residuals, the MLP's
    # gate) works on these widths too, so the count is compared between the two forwards, not against zero.
    widths = {m.out_features for n, m in model.named_modules() if n.endswith(".base_layer")}
    with ElementwiseOnOutputs(widths, rows=8) as counter:
        step(model, autocast=False)
    return counter.count


def test_the_fused_forward_makes_three_fewer_passes_per_lora_layer():
    theirs = lora_model()
    ours = copy.deepcopy(theirs)
    fuse_lora_scaling(ours)
    # peft: the scaling's multiply and the add in the forward, the multiply's gradient in the backward.
    assert elementwise_passes(theirs) - elementwise_passes(ours) == 3 * len(TARGETS) * LAYERS


@pytest.mark.parametrize("change", ["dropout", "disabled", "two-active", "mixed-dtypes"])
def test_what_the_fused_path_does_not_cover_runs_peft_s_forward(change):
    theirs = lora_model(lora_dropout=0.1) if change == "dropout" else lora_model()
    if change == "two-active":
        theirs.add_adapter("other", LoraConfig(r=4, target_modules=TARGETS))
        theirs.base_model.set_adapter(["default", "other"])
    if change == "mixed-dtypes":  # a bf16 base under fp32 adapters, outside autocast
        for name, p in theirs.named_parameters():
            p.data = p.data if "lora_" in name else p.data.to(torch.bfloat16)
    ours = copy.deepcopy(theirs)
    fuse_lora_scaling(ours)
    if change == "disabled":
        theirs.base_model.disable_adapter_layers()
        ours.base_model.disable_adapter_layers()
    torch.manual_seed(3)  # the same dropout masks in both
    want = step(theirs.train(), autocast=False)[0]
    torch.manual_seed(3)
    got = step(ours.train(), autocast=False)[0]
    assert torch.equal(got, want)
    assert elementwise_passes(ours) == elementwise_passes(theirs)
