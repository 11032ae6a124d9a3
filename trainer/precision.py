"""Training over a bf16 base on CPU: the frozen linear layers multiply in bfloat16, everything else stays float32.

Loading the whole base in bf16 (the usual GPU recipe) cost 4.4-6.0% of held-out loss in the training benchmark: a
LoRA layer's change to its output is about 0.8% of that output after 12 steps and under 0.2% in the first few, close
to or under bf16's spacing (2^-8 = 0.39%), and adding it to a bf16 output and a bf16 residual stream rounds much of
it away, so the forward pass a step's gradient comes from barely sees what the adapter has learned. Here only the
products of the frozen weights run in bf16 (where AMX and AVX-512 BF16 give the speed); their outputs come back in
float32 before the LoRA's float32 change is added, and the residual stream, norms, attention and loss stay float32.
Measured: train and held-out loss within 0.5% of float32's on three seeds (docs/performance.md, "Training in bf16").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Bf16ProductLinear(torch.nn.Linear):
    """A frozen `nn.Linear` whose product runs in bf16 and returns in its input's dtype. The weight is the module's
    own, converted, except where it is shared with another module (a head tied to the embedding): that one keeps its
    float32 weight for the sharer and multiplies by a bf16 copy."""

    product_weight: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.product_weight is None else self.product_weight
        out = F.linear(x.to(weight.dtype), weight).to(x.dtype)
        return out if self.bias is None else out + self.bias


def bf16_products(model: torch.nn.Module) -> int:
    """Turn every plain linear layer of a float32 `model` into a Bf16ProductLinear, before peft wraps them (peft
    takes subclasses of nn.Linear as it takes nn.Linear). Returns how many layers now multiply in bf16."""
    shared = {id(p) for m in model.modules() if not isinstance(m, torch.nn.Linear) for p in m.parameters(False)}
    converted = 0
    for module in model.modules():
        if type(module) is not torch.nn.Linear:
            continue
        module.__class__ = Bf16ProductLinear
        assert isinstance(module, Bf16ProductLinear)
        weight = module.weight.detach().to(torch.bfloat16)
        if id(module.weight) in shared:
            module.register_buffer("product_weight", weight, persistent=False)
        else:
            module.weight = torch.nn.Parameter(weight, requires_grad=False)
            module.product_weight = None
        converted += 1
    return converted
