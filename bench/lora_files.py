"""Real PEFT LoRA adapters on the offline base, randomly initialised, and their publication to a store."""

from __future__ import annotations

from pathlib import Path

from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.registry import Registry, new_manifest
from adapters.schema import LoraInfo, Manifest
from adapters.templates import get_template

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def make_adapters(out: Path, rank: int, count: int, seed: int = 0) -> list[Path]:
    """`count` adapters of one rank: one saved by peft, the rest the same files with other random weights.

    Weights are non-zero (init_lora_weights=False), so every adapter changes the base's output and the
    engine does its full LoRA work.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    first = out / f"r{rank}-0"
    if not (first / "adapter_model.safetensors").exists():
        model = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL), dtype=torch.float32)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(str(first))
    tensors = load_file(str(first / "adapter_model.safetensors"))
    dirs = [first]
    for i in range(1, count):
        d = out / f"r{rank}-{i}"
        if not (d / "adapter_model.safetensors").exists():
            d.mkdir(parents=True, exist_ok=True)
            gen = torch.Generator().manual_seed(seed * 1000 + i)
            # Same scale as peft's own random init, so each variant is as plausible as the first.
            varied = {k: torch.randn(v.shape, generator=gen) * v.std() for k, v in tensors.items()}
            save_file(varied, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
            (d / "adapter_config.json").write_bytes((first / "adapter_config.json").read_bytes())
        dirs.append(d)
    return dirs


def publish(registry: Registry, directory: Path, name: str, rank: int) -> Manifest:
    """Publish `directory` as a new version of `name`, as the trainer does (manifest last)."""
    lora = LoraInfo(rank=rank, alpha=2 * rank, target_modules=TARGETS)
    manifest = new_manifest(
        name, get_template("chatml", None), lora, base_model=DEFAULT_MODEL, base_dir=resolve_model(DEFAULT_MODEL)
    )
    return registry.publish(manifest, directory)
