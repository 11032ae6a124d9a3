"""The served models, the use cases behind /v1/models and DELETE /adapters: the list (the base model plus every
published adapter and fine-tuned `ft:` id), one model's card, and deletion: the one place a published model goes
and this replica's adapter cache forgets it.

Each card says where this replica holds the model (`tier`), which is what an adapter-aware router needs."""

from __future__ import annotations

import asyncio

from adapters.errors import InvalidRequest, ModelNotFound, NotFound
from adapters.schema import LATEST, FineTunedModel, Manifest, parse_ref
from service.engine.adapter_cache import FT_PREFIX
from service.gateway import Gateway
from service.protocol.common import Deleted
from service.protocol.models import ModelCard, ModelList


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
        owned_by=gw.owner if model_id.startswith(FT_PREFIX) else "skillserve",
        root=manifest.ref,
        parent=gw.engine.base_model_id,
        max_model_len=gw.engine.max_model_len,
        template=manifest.template_name,
        tier=gw.cache.tier(manifest.ref, engine_ids),  # type: ignore[arg-type]
    )


def _named_adapters(gw: Gateway) -> list[tuple[str, Manifest]]:
    """(model id, manifest) of every adapter name and alias on this base; `name` is what its `latest` alias points
    at (the main version of a split)."""
    named = []
    for newest in gw.registry.adapters():
        if newest.base_model != gw.engine.base_model_id:
            continue
        aliases = gw.registry.aliases(newest.name)
        for alias, target in sorted(aliases.aliases.items()):
            try:
                manifest = gw.registry.manifest(newest.name, target.version)
            except NotFound:
                continue  # deleted since the aliases were read
            named.append((newest.name if alias == LATEST else f"{newest.name}@{alias}", manifest))
        if LATEST not in aliases.aliases:
            named.append((newest.name, newest))
    return named


def _named_fine_tunes(gw: Gateway) -> list[tuple[str, Manifest]]:
    """(ft: id, manifest) of fine-tuning jobs' models, once their version is published."""
    named = []
    for alias in gw.registry.fine_tuned_models():
        try:
            manifest = gw.registry.manifest(alias.name, alias.version)
        except NotFound:
            continue  # still training, or deleted
        if manifest.base_model == gw.engine.base_model_id:
            named.append((alias.id, manifest))
    return named


async def list_models(gw: Gateway) -> ModelList:
    named = await asyncio.to_thread(lambda: sorted(_named_adapters(gw) + _named_fine_tunes(gw), key=lambda i: i[0]))
    engine_ids = await gw.engine.loaded_loras()
    return ModelList(data=[_base_card(gw)] + [_adapter_card(gw, m, model_id, engine_ids) for model_id, m in named])


async def get_model(gw: Gateway, model_id: str) -> ModelCard:
    if model_id == gw.engine.base_model_id:
        return _base_card(gw)
    manifest = await gw.cache.manifest(model_id)
    return _adapter_card(gw, manifest, model_id, await gw.engine.loaded_loras())


async def delete_adapter(gw: Gateway, model: str) -> Deleted:
    """DELETE /adapters/{model}: unpublish `name` (every version) or `name@version`."""
    name, version = parse_ref(model)  # `name@` is a 400, never "every version"
    await asyncio.to_thread(gw.registry.delete, name, version)
    await _forget(gw, name, version)
    return Deleted(id=model, object="adapter")


async def delete_model(gw: Gateway, model: str) -> Deleted:
    """DELETE /v1/models/{model}: an ft: id (and the adapter version it names), an adapter or `name@version`;
    anything that is not a served model is model_not_found, and the base model is never deleted."""
    if model == gw.engine.base_model_id:
        raise InvalidRequest("the base model cannot be deleted", param="model", code="model_not_deletable")
    if not model.startswith(FT_PREFIX):
        try:
            await delete_adapter(gw, model)
        except (NotFound, ValueError):
            raise ModelNotFound(model) from None
        return Deleted(id=model, object="model")
    try:
        alias: FineTunedModel = await asyncio.to_thread(gw.registry.delete_fine_tuned_model, model)
    except NotFound:
        raise ModelNotFound(model) from None
    await _forget(gw, alias.name, alias.version)
    return Deleted(id=model, object="model")


async def _forget(gw: Gateway, name: str, version: str | None) -> None:
    """A deleted model leaves this replica: its cached manifests, names and files (other replicas' caches expire)."""
    await gw.cache.forget(name, version)
