"""POST /v1/chat/completions: messages rendered with the target's own template, then vLLM."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from adapters.masking import encode
from adapters.templates import ChatTemplate
from service.auth import require_inference
from service.dependencies import Gateway, GatewayDep
from service.engine import sampling_params
from service.errors import APIError
from service.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ErrorResponse,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from service.serving import (
    Target,
    check_count,
    check_prompt_chars,
    finish_reason,
    guarded_stream,
    merge_stops,
    resolve_target,
    sse,
    token_budget,
    until_disconnected,
)

router = APIRouter(tags=["openai"], dependencies=[Depends(require_inference)])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 503)
}
# With `stream: true` the 200 is Server-Sent Events: chunks as `data: {json}` lines, then `data: [DONE]`.
STREAMING: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/event-stream": {
                "schema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
            }
        }
    },
    **ERRORS,
}


def _role(role: str) -> str:
    # OpenAI's newer "developer" role plays the part the templates know as "system".
    return "system" if role == "developer" else role


def chat_prompt_ids(tokenizer: Any, template: ChatTemplate, messages: list[ChatMessage]) -> list[int]:
    """The token ids a chat request sends to the engine: encoded as the trainer encodes, up to the answer."""
    turns = [{"role": _role(m.role), "content": m.text()} for m in messages]
    return encode(tokenizer, template, turns, add_generation_prompt=True).input_ids


def chat_logprobs(token_ids: Any, logprobs: Any, top: int) -> ChoiceLogprobs | None:
    """vLLM's per-token {id: Logprob} dicts as OpenAI's chat logprobs."""
    if logprobs is None:
        return None
    content = []
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        chosen = candidates[token_id]
        ranked = sorted(candidates.values(), key=lambda lp: lp.rank if lp.rank is not None else 1 << 30)[:top]
        token = chosen.decoded_token or ""
        content.append(
            TokenLogprob(
                token=token,
                logprob=chosen.logprob,
                bytes=list(token.encode()),
                top_logprobs=[
                    TopLogprob(
                        token=lp.decoded_token or "",
                        logprob=lp.logprob,
                        bytes=list((lp.decoded_token or "").encode()),
                    )
                    for lp in ranked
                ],
            )
        )
    return ChoiceLogprobs(content=content)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses=STREAMING,
    summary="Create a chat completion (OpenAI-compatible); `stream: true` returns SSE chunks",
)
async def chat_completions(body: ChatCompletionRequest, request: Request, gw: GatewayDep) -> Any:
    check_count(len(body.messages), gw.settings.max_messages, "messages")
    gw.engine.admit()
    check_prompt_chars(gw, sum(len(m.text()) for m in body.messages), "messages")
    target = await resolve_target(gw, body.model)
    try:
        tokenizer = gw.engine.tokenizer
        prompt_ids = await gw.engine.tokenize(lambda: chat_prompt_ids(tokenizer, target.template, body.messages))
        max_tokens = token_budget(
            body.token_limit,
            len(prompt_ids),
            gw.engine.max_model_len,
            "max_completion_tokens" if body.max_completion_tokens else "max_tokens",
        )
        top = body.top_logprobs or 0
        params = sampling_params(
            temperature=body.temperature,
            top_p=body.top_p,
            max_tokens=max_tokens,
            stop=merge_stops(body.stop or [], target.template, body.ignore_eos),  # type: ignore[arg-type]
            stop_token_ids=[] if body.ignore_eos else target.template.stop_token_ids(tokenizer),
            n=body.n,
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logprobs=top if body.logprobs else None,
            stream=body.stream,
            ignore_eos=body.ignore_eos,
        )
    except BaseException:
        target.release()
        raise
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    gw.metrics.tokens.labels("prompt", target.metric_model).inc(len(prompt_ids))
    if body.stream:
        events = _stream(gw, body, target, prompt_ids, params, request_id, top)
        return StreamingResponse(
            guarded_stream(events, target.release),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        return await until_disconnected(
            request, _complete(gw, body, target, prompt_ids, params, request_id, top)
        )
    finally:
        target.release()


async def _complete(
    gw: Gateway,
    body: ChatCompletionRequest,
    target: Target,
    prompt_ids: list[int],
    params: Any,
    request_id: str,
    top: int,
) -> ChatCompletion:
    final = None
    async for out in gw.engine.generate(prompt_ids, params, target.lora, request_id):
        final = out
    if final is None:
        raise APIError(500, "the engine returned nothing", type="server_error")
    choices = [
        ChatChoice(
            index=o.index,
            message=AssistantMessage(content=o.text),
            logprobs=chat_logprobs(o.token_ids, o.logprobs, top) if body.logprobs else None,
            finish_reason=finish_reason(o.finish_reason),  # type: ignore[arg-type]
        )
        for o in sorted(final.outputs, key=lambda o: o.index)
    ]
    completion_tokens = sum(len(o.token_ids) for o in final.outputs)
    gw.metrics.tokens.labels("completion", target.metric_model).inc(completion_tokens)
    return ChatCompletion(
        id=request_id,
        model=body.model,
        choices=choices,
        usage=Usage(
            prompt_tokens=len(prompt_ids),
            completion_tokens=completion_tokens,
            total_tokens=len(prompt_ids) + completion_tokens,
        ),
    )


async def _stream(
    gw: Gateway,
    body: ChatCompletionRequest,
    target: Target,
    prompt_ids: list[int],
    params: Any,
    request_id: str,
    top: int,
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        return sse(
            ChatCompletionChunk(
                id=request_id, created=created, model=body.model, choices=choices, usage=usage
            )
        )

    for index in range(body.n):
        yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
    produced = [0] * body.n
    async for out in gw.engine.generate(prompt_ids, params, target.lora, request_id):
        for o in out.outputs:
            produced[o.index] += len(o.token_ids)
            reason = finish_reason(o.finish_reason)
            # The detokenizer may hold text back (a partial character or stop string): nothing to send yet.
            if not o.text and reason is None and not body.logprobs:
                continue
            yield chunk(
                [
                    ChunkChoice(
                        index=o.index,
                        delta=Delta(content=o.text),
                        logprobs=chat_logprobs(o.token_ids, o.logprobs, top) if body.logprobs else None,
                        finish_reason=reason,  # type: ignore[arg-type]
                    )
                ]
            )
    completion_tokens = sum(produced)
    gw.metrics.tokens.labels("completion", target.metric_model).inc(completion_tokens)
    if body.include_usage:
        yield chunk(
            [],
            Usage(
                prompt_tokens=len(prompt_ids),
                completion_tokens=completion_tokens,
                total_tokens=len(prompt_ids) + completion_tokens,
            ),
        )
    yield sse("[DONE]")
