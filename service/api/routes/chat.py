"""POST /v1/chat/completions: parsed here, served by service/inference/chat.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from service.api.answers import render
from service.api.auth import PrincipalDep, require_inference
from service.api.bodies import OffLoopRoute
from service.api.deps import GatewayDep
from service.api.limits import limits_for
from service.inference.chat import create_chat_completion
from service.protocol.chat import ChatCompletion, ChatCompletionRequest
from service.protocol.common import STREAMING_RESPONSES

router = APIRouter(route_class=OffLoopRoute, tags=["openai"], dependencies=[Depends(require_inference)])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=STREAMING_RESPONSES,
    summary="Create a chat completion (OpenAI-compatible); `stream: true` returns SSE chunks",
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, response: Response, gw: GatewayDep, principal: PrincipalDep
) -> Any:
    answer = await create_chat_completion(
        gw, body, request.is_disconnected, caller=limits_for(principal, gw.settings)
    )
    return render(answer, response)
