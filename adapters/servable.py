"""What a servable PEFT LoRA adapter is: its files, its config, its tensors' shapes and the base layers they fit.

One set of rules for every door an adapter comes through: the trainer checks its output before publishing, the
import checks a directory before publishing it, and the gateway's cache checks a manifest before downloading and
the downloaded files before the engine sees them (a failed LoRA load kills vLLM's engine core).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from adapters.errors import InvalidAdapter
from adapters.schema import LoraInfo, Manifest

REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
ALLOWED_SUFFIXES = (".safetensors", ".json")
# peft writes a model card beside the weights; it is inert text, so it may travel with them.
INERT_FILES = ("README.md",)
# The most any gateway could accept (Hyperparameters.rank's bound); a gateway's own max_lora_rank is lower.
MAX_RANK = 256

_LORA_TENSOR = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight")


def allowed_file(name: str) -> bool:
    """Whether a file may be part of an adapter: weights and JSON, or peft's inert model card; never a path."""
    unsafe = "/" in name or "\\" in name or name.startswith(".")
    return not unsafe and (name.endswith(ALLOWED_SUFFIXES) or name in INERT_FILES)


@lru_cache(maxsize=4)
def base_linear_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the base model's 2-D weights in its layers (what LoRA may adapt), read from headers only."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = tuple(handle.get_slice(key).get_shape())
                if ".layers." in key and key.endswith(".weight") and len(shape) == 2:
                    shapes[key] = shape
    return shapes


def supported_modules(shapes: dict[str, tuple[int, ...]]) -> set[str]:
    """Module names (q_proj, down_proj, ...) LoRA may target, from base_linear_shapes."""
    return {key.split(".")[-2] for key in shapes}


def check_manifest(manifest: Manifest, base_model_id: str, max_lora_rank: int) -> None:
    """Refuse, before any download, an adapter that must not reach the engine (InvalidAdapter, a 400)."""
    if manifest.base_model != base_model_id:
        raise InvalidAdapter(
            f"adapter trained on another base: {manifest.ref} was trained on {manifest.base_model!r}, "
            f"this gateway serves {base_model_id!r}"
        )
    if manifest.lora.rank > max_lora_rank:
        raise InvalidAdapter(
            f"adapter {manifest.ref} has LoRA rank {manifest.lora.rank}; "
            f"this gateway accepts at most {max_lora_rank}"
        )
    for name in manifest.files:
        if not allowed_file(name):
            raise InvalidAdapter(f"adapter {manifest.ref} holds a file that is not allowed: {name!r}")
    if "adapter_config.json" not in manifest.files:
        raise InvalidAdapter(f"adapter {manifest.ref} has no adapter_config.json")


def lora_info(
    config: dict[str, Any], *, base_model_id: str, base_dir: Path, max_lora_rank: int, supported: set[str]
) -> LoraInfo:
    """An imported adapter_config.json checked against the base served as `base_model_id` from `base_dir`; its
    LoRA fields."""
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise InvalidAdapter(f"only LoRA adapters can be imported, not {config.get('peft_type')!r}")
    base = str(config.get("base_model_name_or_path") or "")
    if base not in (base_model_id, str(base_dir)) and Path(base.rstrip("/")).name != base_model_id:
        raise InvalidAdapter(f"adapter trained on another base: {base!r}; this gateway serves {base_model_id!r}")
    rank = int(config.get("r") or 0)
    if not 1 <= rank <= max_lora_rank:
        raise InvalidAdapter(f"LoRA rank {rank} is outside 1..{max_lora_rank} (max_lora_rank)")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise InvalidAdapter("adapter_config.json names no target_modules")
    unsupported = sorted(set(targets) - supported)
    if unsupported:
        raise InvalidAdapter(
            f"target modules {unsupported} are not linear layers of the base model (supported: {sorted(supported)})"
        )
    if config.get("modules_to_save"):
        raise InvalidAdapter("adapters with modules_to_save are not supported by the engine")
    return LoraInfo(
        rank=rank,
        alpha=int(config.get("lora_alpha") or rank),
        dropout=float(config.get("lora_dropout") or 0.0),
        target_modules=sorted(targets),
    )


def check_files(
    path: Path, manifest: Manifest, max_lora_rank: int, base_shapes: dict[str, tuple[int, ...]]
) -> None:
    """Refuse adapter files the engine must not load (raises InvalidAdapter, a 400).

    This checks what the files themselves say, so a manifest that lies about rank or targets, or weights that
    are not safetensors or do not fit the base model's layers, never reach vLLM. An empty `base_shapes` (no
    local base weights) skips the comparison with the base.
    """
    from safetensors import safe_open

    ref = manifest.ref
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise InvalidAdapter(f"adapter {ref} has no {', '.join(missing)}")
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidAdapter(f"adapter {ref}: adapter_config.json is unreadable: {exc}") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise InvalidAdapter(f"adapter {ref}: adapter_config.json does not describe a LoRA adapter")
    rank = config.get("r")
    if not isinstance(rank, int) or not 1 <= rank <= max_lora_rank:
        raise InvalidAdapter(f"adapter {ref}: LoRA rank {rank!r} is outside 1..{max_lora_rank} (max_lora_rank)")
    if rank != manifest.lora.rank:
        raise InvalidAdapter(f"adapter {ref}: adapter_config.json has r={rank}, its manifest {manifest.lora.rank}")
    if config.get("modules_to_save") or config.get("use_dora"):
        raise InvalidAdapter(f"adapter {ref}: modules_to_save and DoRA are not supported by the engine")
    targets = config.get("target_modules")
    supported = supported_modules(base_shapes)
    if isinstance(targets, list) and supported and not set(targets) <= supported:
        raise InvalidAdapter(
            f"adapter {ref}: target modules {sorted(set(targets) - supported)} are not linear layers of the "
            f"base model (supported: {sorted(supported)})"
        )
    try:
        with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as handle:
            tensors = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error type for every malformed file
        raise InvalidAdapter(
            f"adapter {ref}: adapter_model.safetensors is not a valid safetensors file: {exc}"
        ) from None
    if not tensors:
        raise InvalidAdapter(f"adapter {ref}: adapter_model.safetensors holds no tensors")
    for key, shape in tensors.items():
        match = _LORA_TENSOR.fullmatch(key)
        if match is None or len(shape) != 2:
            raise InvalidAdapter(f"adapter {ref}: unexpected tensor {key!r} {list(shape)} in its weights")
        is_a = match["ab"] == "A"
        tensor_rank, features = (shape[0], shape[1]) if is_a else (shape[1], shape[0])
        if tensor_rank > max_lora_rank:
            raise InvalidAdapter(f"adapter {ref}: tensor {key} has rank {tensor_rank} > {max_lora_rank}")
        if not base_shapes:
            continue
        base = base_shapes.get(match["module"] + ".weight")
        if base is None:
            raise InvalidAdapter(f"adapter {ref}: tensor {key} adapts no linear layer of the base model")
        if features != (base[1] if is_a else base[0]):
            raise InvalidAdapter(f"adapter {ref}: tensor {key} {list(shape)} does not fit the base layer {list(base)}")
