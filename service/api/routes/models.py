"""GET /v1/models and /v1/models/{id}: the base model plus every published adapter (parent = base) and fine-tuned
model (`ft:` ids); DELETE /v1/models/{id} deletes a fine-tuned model (service/management/models.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.auth import require_admin, require_inference
from service.api.deps import GatewayDep
from service.management import models
from service.protocol.common import INFERENCE_ERRORS as ERRORS
from service.protocol.common import Deleted, ErrorResponse
from service.protocol.models import ModelCard, ModelList

router = APIRouter(tags=["openai"], dependencies=[Depends(require_inference)])


@router.get(
    "/v1/models", response_model=ModelList, responses=ERRORS, summary="List the base model and adapters"
)
async def list_models(gw: GatewayDep) -> ModelList:
    return await models.list_models(gw)


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    responses=ERRORS,
    summary="One model: the base id, `adapter` or `adapter@version`",
)
async def get_model(model_id: str, gw: GatewayDep) -> ModelCard:
    return await models.get_model(gw, model_id)


@router.delete(
    "/v1/models/{model_id:path}",
    response_model=Deleted,
    responses={**ERRORS, 403: {"model": ErrorResponse}},
    dependencies=[Depends(require_admin)],
    summary="Delete a fine-tuned model (admin): an ft: id with the adapter version it names, an adapter or "
    "`adapter@version`",
)
async def delete_model(model_id: str, gw: GatewayDep) -> Deleted:
    return await models.delete_model(gw, model_id)
