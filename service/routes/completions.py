"""POST /v1/completions: raw prompts (no chat template), one engine request per prompt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from service.auth import require_inference
from service.dependencies import Gateway, GatewayDep
from service.errors import APIError
from service.protocol import (
    STREAMING_RESPONSES,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    Usage,
)
from service.serving import (
    Prepared,
    Target,
    check_count,
    check_prompt_chars,
    constraint_param,
    finish_reason,
    request_sampling,
    schema_param,
    serve,
    sse,
    structured_constraint,
    token_budget,
)

router = APIRouter(tags=["openai"], dependencies=[Depends(require_inference)])


def completion_logprobs(token_ids: Any, logprobs: Any, top: int, offset: int) -> CompletionLogprobs | None:
    if logprobs is None:
        return None
    result = CompletionLogprobs()
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        chosen = candidates[token_id]
        token = chosen.decoded_token or ""
        ranked = sorted(candidates.values(), key=lambda lp: lp.rank if lp.rank is not None else 1 << 30)[:top]
        result.tokens.append(token)
        result.token_logprobs.append(chosen.logprob)
        result.top_logprobs.append({lp.decoded_token or "": lp.logprob for lp in ranked} if top else None)
        result.text_offset.append(offset)
        offset += len(token)
    return result


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses=STREAMING_RESPONSES,
    summary="Create a text completion (OpenAI-compatible); the template's stop sequences still apply",
)
async def completions(body: CompletionRequest, request: Request, response: Response, gw: GatewayDep) -> Any:
    check_count(len(body.prompts), gw.settings.max_messages, "prompt")
    for text in body.prompts:
        check_prompt_chars(gw, len(text), "prompt")

    async def prepare(target: Target) -> Prepared:
        tokenizer = gw.engine.tokenizer
        prompts = await gw.engine.tokenize(lambda: [list(tokenizer(p)["input_ids"]) for p in body.prompts])
        if any(not ids for ids in prompts):
            raise APIError(400, "prompts must not be empty", param="prompt")
        params = [
            request_sampling(
                body,
                target,
                tokenizer,
                max_tokens=token_budget(
                    body.max_tokens, len(ids), gw.engine.max_model_len, "max_tokens", prompt_param="prompt"
                ),
                logprobs=body.logprobs,
                structured=structured_constraint(body),
            )
            for ids in prompts
        ]
        await gw.engine.verify(params[0], constraint_param(body), schema_param(body))
        for other in params[1:]:  # one constraint for every prompt: checked and compiled once
            other.structured_outputs = params[0].structured_outputs
        return Prepared(
            sum(len(p) for p in prompts),
            lambda rid: _complete(gw, body, target, prompts, params, rid),
            lambda rid: _stream(gw, body, target, prompts, params, rid),
        )

    return await serve(gw, request, response, body, "cmpl", prepare)


async def _one(gw: Gateway, target: Target, ids: list[int], params: Any, request_id: str) -> Any:
    final = None
    async for out in gw.engine.generate(ids, params, target.lora, request_id, target.meter):
        final = out
    return final


async def _complete(
    gw: Gateway,
    body: CompletionRequest,
    target: Target,
    prompts: list[list[int]],
    params: list[Any],
    request_id: str,
) -> Completion:
    finals = await asyncio.gather(
        *(
            _one(gw, target, ids, p, f"{request_id}-{i}")
            for i, (ids, p) in enumerate(zip(prompts, params, strict=True))
        )
    )
    choices = []
    completion_tokens = 0
    for i, final in enumerate(finals):
        prefix = body.prompts[i] if body.echo else ""
        for o in sorted(final.outputs, key=lambda o: o.index):
            completion_tokens += len(o.token_ids)
            choices.append(
                CompletionChoice(
                    index=i * body.n + o.index,
                    text=prefix + o.text,
                    logprobs=completion_logprobs(o.token_ids, o.logprobs, body.logprobs or 0, len(prefix))
                    if body.logprobs is not None
                    else None,
                    finish_reason=finish_reason(o.finish_reason),  # type: ignore[arg-type]
                )
            )
    prompt_tokens = sum(len(p) for p in prompts)
    target.generated(completion_tokens)
    return Completion(
        id=request_id,
        model=body.model,
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )


async def _stream(
    gw: Gateway,
    body: CompletionRequest,
    target: Target,
    prompts: list[list[int]],
    params: list[Any],
    request_id: str,
) -> AsyncIterator[str]:
    created = int(time.time())
    produced = 0
    queue: asyncio.Queue[tuple[int, Any] | None] = asyncio.Queue()

    async def pump(i: int) -> None:
        async for out in gw.engine.generate(prompts[i], params[i], target.lora, f"{request_id}-{i}", target.meter):
            await queue.put((i, out))

    async def run_all() -> None:
        try:
            await asyncio.gather(*(pump(i) for i in range(len(prompts))))
        finally:
            await queue.put(None)

    runner = asyncio.create_task(run_all())
    try:
        while (item := await queue.get()) is not None:
            i, out = item
            for o in out.outputs:
                produced += len(o.token_ids)
                reason = finish_reason(o.finish_reason)
                if not o.text and reason is None and body.logprobs is None:
                    continue
                logprobs = (
                    completion_logprobs(o.token_ids, o.logprobs, body.logprobs or 0, 0)
                    if body.logprobs is not None
                    else None
                )
                choice = CompletionChoice(
                    index=i * body.n + o.index,
                    text=o.text,
                    logprobs=logprobs,
                    finish_reason=reason,  # type: ignore[arg-type]
                )
                yield sse(Completion(id=request_id, created=created, model=body.model, choices=[choice]))
        await runner  # re-raise an engine error
    finally:
        runner.cancel()
    target.generated(produced)
    if body.include_usage:
        prompt_tokens = sum(len(p) for p in prompts)
        yield sse(
            Completion(
                id=request_id,
                created=created,
                model=body.model,
                choices=[],
                usage=Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=produced,
                    total_tokens=prompt_tokens + produced,
                ),
            )
        )
    yield sse("[DONE]")
