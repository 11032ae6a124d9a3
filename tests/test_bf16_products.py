"""The bf16 training base on CPU (trainer/precision.py, issue 30): the frozen products run in bf16, and a LoRA's change
smaller than bf16's spacing still reaches the layer's output and the model's logits, where a base loaded in bf16
rounds it away. Runs on any CPU (bf16 is emulated where the units are missing, only slower)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from adapters.models import DEFAULT_MODEL, resolve_model
from trainer.precision import Bf16ProductLinear, bf16_products


@pytest.fixture(scope="module")
def converted() -> tuple[torch.nn.Module, int]:
    model = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL), dtype=torch.float32)
    return model, bf16_products(model)


def test_every_linear_layer_multiplies_in_bf16_and_the_tied_head_keeps_the_embeddings_float32(
    converted: tuple[torch.nn.Module, int],
) -> None:
    model, layers = converted
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert layers == len(linears) == 30 * 7 + 1  # q, k, v, o, gate, up, down in each of 30 layers, and the head
    assert all(isinstance(m, Bf16ProductLinear) for m in linears)
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    # The head shares the embedding's weight: that stays float32 for the embedding, the head multiplies a bf16 copy.
    assert head.weight is embedding.weight and embedding.weight.dtype == torch.float32
    assert head.product_weight is not None and head.product_weight.dtype == torch.bfloat16
    assert torch.equal(head.product_weight, embedding.weight.detach().to(torch.bfloat16))
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight.dtype == torch.bfloat16 and q.product_weight is None and not q.weight.requires_grad
    assert {p.dtype for n, p in model.named_parameters() if "norm" in n} == {torch.float32}

    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        reference = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL), dtype=torch.float32)
        exact = reference(input_ids=ids).logits
    assert logits.dtype == torch.float32
    # The same next tokens as float32 and logits within bf16's rounding of 30 layers' products.
    assert torch.equal(logits.argmax(-1), exact.argmax(-1))
    assert (logits - exact).abs().max() < 0.05 * exact.abs().max()


def test_a_lora_change_under_bf16s_spacing_reaches_the_output_and_is_lost_over_a_bf16_base(
    converted: tuple[torch.nn.Module, int],
) -> None:
    """A fresh LoRA's first steps change a layer's output by well under bf16's 0.39%: the gradient of the next step
    must come from a forward pass that sees them."""
    layer = converted[0].model.layers[0].mlp.down_proj
    torch.manual_seed(0)
    x = torch.randn(4, layer.in_features)
    bf16_base = torch.nn.Linear(layer.in_features, layer.out_features, bias=False, dtype=torch.bfloat16)
    bf16_base.weight.data.copy_(layer.weight.data)

    def change(base: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
        holder = torch.nn.Sequential(base)
        wrapped = get_peft_model(holder, LoraConfig(r=8, lora_alpha=16, target_modules=["0"]))
        lora = wrapped.base_model.model[0]
        lora.lora_B["default"].weight.data.fill_(1e-4)  # the size of one early step's update
        with torch.no_grad():
            out = wrapped(x.to(dtype)).float()
            with wrapped.disable_adapter():
                plain = wrapped(x.to(dtype)).float()
            want = lora.lora_B["default"](lora.lora_A["default"](x)) * lora.scaling["default"]
        wrapped.unload()
        assert (want.abs() / plain.abs().clamp_min(1e-6)).median() < 2**-9  # under half of bf16's spacing
        return (out - plain - want).abs().mean() / want.abs().mean()

    assert change(layer, torch.float32) < 0.01  # the products' base: the change arrives whole (float32 rounding)
    assert change(bf16_base, torch.bfloat16) > 0.5  # a bf16 base: most of it is rounded away (99% here)
