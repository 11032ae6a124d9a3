"""What a training job that continues from an adapter (its `parent`) takes from it: the LoRA's shape, which the
parent's weights fix, so the gateway (at submit time) and the trainer agree on it."""

from __future__ import annotations

from adapters.errors import InvalidRequest
from adapters.schema import Hyperparameters, LoraInfo


def inherited(hp: Hyperparameters, lora: LoraInfo, parent: str) -> Hyperparameters:
    """`hp` with the parent's rank, alpha and target modules; InvalidRequest naming the field a request set to
    something else (its weights fit no other shape). `target_modules` "all-linear" (the default) takes the
    parent's; dropout is free (training only)."""
    for field in ("rank", "alpha"):
        asked, has = getattr(hp, field), getattr(lora, field)
        if asked is not None and asked != has:
            raise InvalidRequest(
                f"hyperparameters.{field}={asked} does not fit {parent}, whose LoRA has {field} {has}: training "
                f"continues from its weights (leave {field} out, or set it to {has})",
                param=f"hyperparameters.{field}",
            )
    targets = hp.target_modules
    if isinstance(targets, list) and sorted(set(targets)) != sorted(set(lora.target_modules)):
        raise InvalidRequest(
            f"hyperparameters.target_modules {sorted(set(targets))} do not fit {parent}, whose LoRA adapts "
            f"{sorted(lora.target_modules)}: training continues from its weights (leave target_modules out)",
            param="hyperparameters.target_modules",
        )
    return hp.model_copy(update={"rank": lora.rank, "alpha": lora.alpha, "target_modules": list(lora.target_modules)})
