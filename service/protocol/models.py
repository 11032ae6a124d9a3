"""GET /v1/models: the model cards."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    Field,
)


class ModelCard(BaseModel):
    """One servable model: the base, or an adapter (parent = the base)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "skillserve"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    template: str | None = Field(None, description="adapters: the template the adapter was trained with")
    tier: Literal["engine", "disk", "store"] | None = Field(
        None,
        description="where this replica holds the model: in the engine's LoRA cache (engine), on local disk "
        "(disk) or only in the object store (store); adapter-aware routers prefer replicas at engine",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
