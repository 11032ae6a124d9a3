"""POST /v1/completions: parsed here, served by service/inference/completions.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from service.api.answers import render
from service.api.auth import PrincipalDep, require_inference
from service.api.bodies import OffLoopRoute
from service.api.deps import GatewayDep
from service.api.limits import limits_for
from service.inference.completions import create_completion
from service.protocol.common import STREAMING_RESPONSES
from service.protocol.completions import Completion, CompletionRequest

router = APIRouter(route_class=OffLoopRoute, tags=["openai"], dependencies=[Depends(require_inference)])


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses=STREAMING_RESPONSES,
    summary="Create a text completion (OpenAI-compatible); the template's stop sequences still apply",
)
async def completions(
    body: CompletionRequest, request: Request, response: Response, gw: GatewayDep, principal: PrincipalDep
) -> Any:
    answer = await create_completion(
        gw, body, request.is_disconnected, caller=limits_for(principal, gw.settings)
    )
    return render(answer, response)
