"""LoRA's update added inside one GEMM: `addmm(base(x), A(x), B^T, alpha=scaling)` instead of peft's
`base(x) + B(A(x)) * scaling`.

peft's form makes two element-wise passes over every LoRA layer's full output in the forward (the scaling's
multiply, then the add, each writing a fresh tensor) and one in the backward (the multiply's gradient). At the
shapes users train those outputs are the largest tensors of a step: a 1B-class Llama's seven projections write
23,552 values per token per layer. addmm starts from the base output (beta=1) and takes the scaling as its alpha,
and its backward scales only the small r-wide gradients. The result is the same sum, rounded once instead of
twice. What it saves per epoch is measured in docs/benchmarks.md (the AMX Xeon's results).

Only plain `peft.tuners.lora.Linear` layers running one vanilla adapter (no dropout, DoRA or other variant, no
lora_B bias, not merged, no per-row adapter names) take the fused path; anything else runs peft's own forward.
"""

from __future__ import annotations

import types
from typing import Any

import torch


def fuse_lora_scaling(model: Any) -> int:
    """Give every plain LoRA Linear of `model` the fused forward (per instance: the class, the state_dict and
    saving are untouched); returns how many layers have it."""
    from peft.tuners.lora.layer import Linear

    layers = [m for m in model.modules() if type(m) is Linear]
    for layer in layers:
        layer.forward = types.MethodType(_fused_forward, layer)
    return len(layers)


def _vanilla(layer: Any, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active adapter when the fused path computes exactly what peft's forward would, else None."""
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or name in layer.lora_variant or layer.lora_B[name].bias is not None:
        return None
    if not isinstance(layer.lora_dropout[name], torch.nn.Identity):
        return None
    dtypes = {x.dtype, layer.base_layer.weight.dtype, layer.lora_A[name].weight.dtype, layer.lora_B[name].weight.dtype}
    # Mixed dtypes outside autocast: peft's forward casts between them, addmm would not.
    return name if len(dtypes) == 1 or _autocast_on(x.device.type) else None


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta): nothing is cast there
        return False


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = _vanilla(self, x, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    lora_a, lora_b = self.lora_A[name], self.lora_B[name]
    result = self.base_layer(x)
    low = lora_a(self._cast_input_dtype(x, lora_a.weight.dtype))
    rows = result.reshape(-1, result.shape[-1])
    flat = torch.addmm(rows, low.reshape(-1, low.shape[-1]), lora_b.weight.t(), alpha=self.scaling[name])
    return flat.view(result.shape).to(result.dtype)
