"""GET /v1/models and /v1/models/{id}: the base model plus every published adapter (parent = base) and fine-tuned
model (`ft:` ids); DELETE /v1/models/{id} deletes a fine-tuned model.

Each card says where this replica holds the model (`tier`), which is what an adapter-aware router needs.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from adapters.errors import NotFound
from adapters.schema import LATEST, Manifest
from service.api.auth import require_admin, require_inference
from service.api.deps import GatewayDep
from service.engine.adapter_cache import FT_PREFIX
from service.gateway import Gateway
from service.management import fine_tuning
from service.protocol import INFERENCE_ERRORS as ERRORS
from service.protocol import Deleted, ErrorResponse, ModelCard, ModelList

router = APIRouter(tags=["openai"], dependencies=[Depends(require_inference)])


def _base_card(gw: Gateway) -> ModelCard:
    return ModelCard(
        id=gw.engine.base_model_id,
        created=int(gw.engine.model_dir.stat().st_mtime),
        owned_by="skillserve",
        root=gw.engine.base_model_id,  # an id, not the weights' path on this machine
        max_model_len=gw.engine.max_model_len,
        tier="engine",
    )


def _adapter_card(gw: Gateway, manifest: Manifest, model_id: str, engine_ids: set[int]) -> ModelCard:
    return ModelCard(
        id=model_id,
        created=int(manifest.created_at),
        owned_by=gw.settings.fine_tune_owner if model_id.startswith(FT_PREFIX) else "skillserve",
        root=manifest.ref,
        parent=gw.engine.base_model_id,
        max_model_len=gw.engine.max_model_len,
        template=manifest.template_name,
        tier=gw.cache.tier(manifest.ref, engine_ids),  # type: ignore[arg-type]
    )


@router.get(
    "/v1/models", response_model=ModelList, responses=ERRORS, summary="List the base model and adapters"
)
async def list_models(gw: GatewayDep) -> ModelList:
    def collect() -> list[tuple[str, Manifest]]:
        named = []
        for newest in gw.registry.adapters():
            if newest.base_model != gw.engine.base_model_id:
                continue
            aliases = gw.registry.aliases(newest.name)
            # `name` is what its `latest` alias points at (the main version of a split); every other alias too.
            for alias, target in sorted(aliases.aliases.items()):
                try:
                    manifest = gw.registry.manifest(newest.name, target.version)
                except NotFound:
                    continue  # deleted since the aliases were read
                named.append((newest.name if alias == LATEST else f"{newest.name}@{alias}", manifest))
            if LATEST not in aliases.aliases:
                named.append((newest.name, newest))
        for alias in gw.registry.fine_tuned_models():  # ft: ids of fine-tuning jobs, once their version is published
            try:
                manifest = gw.registry.manifest(alias.name, alias.version)
            except NotFound:
                continue  # still training, or deleted
            if manifest.base_model == gw.engine.base_model_id:
                named.append((alias.id, manifest))
        return sorted(named, key=lambda item: item[0])

    named = await asyncio.to_thread(collect)
    engine_ids = await gw.engine.loaded_loras()
    return ModelList(data=[_base_card(gw)] + [_adapter_card(gw, m, model_id, engine_ids) for model_id, m in named])


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    responses=ERRORS,
    summary="One model: the base id, `adapter` or `adapter@version`",
)
async def get_model(model_id: str, gw: GatewayDep) -> ModelCard:
    if model_id == gw.engine.base_model_id:
        return _base_card(gw)
    manifest = await gw.cache.manifest(model_id)
    return _adapter_card(gw, manifest, model_id, await gw.engine.loaded_loras())


@router.delete(
    "/v1/models/{model_id:path}",
    response_model=Deleted,
    responses={**ERRORS, 403: {"model": ErrorResponse}},
    dependencies=[Depends(require_admin)],
    summary="Delete a fine-tuned model (admin): an ft: id with the adapter version it names, an adapter or "
    "`adapter@version`",
)
async def delete_model(model_id: str, gw: GatewayDep) -> Deleted:
    return await fine_tuning.delete_model(gw, model_id)
