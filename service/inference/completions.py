"""Text completions: raw prompts (no chat template), one engine request per prompt, shaped into OpenAI's
completion answer. This module drives the request; the steps it shares with chat are in
service/inference/pipeline.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from adapters.errors import InvalidRequest
from adapters.limits import CallerLimits
from service.gateway import Gateway
from service.inference.pipeline import (
    Answer,
    Work,
    admit,
    charge,
    check_count,
    check_prompt_chars,
    constraint_param,
    finish_reason,
    ranked,
    request_sampling,
    schema_param,
    sse,
    structured_constraint,
    token_budget,
)
from service.protocol.completions import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest


def completion_logprobs(token_ids: Any, logprobs: Any, top: int, offset: int) -> CompletionLogprobs | None:
    if logprobs is None:
        return None
    result = CompletionLogprobs()
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        chosen = candidates[token_id]
        token = chosen.decoded_token or ""
        result.tokens.append(token)
        result.token_logprobs.append(chosen.logprob)
        result.top_logprobs.append(
            {lp.decoded_token or "": lp.logprob for lp in ranked(candidates, top)} if top else None
        )
        result.text_offset.append(offset)
        offset += len(token)
    return result


async def create_completion(
    gw: Gateway, body: CompletionRequest, is_disconnected: Callable[[], Awaitable[bool]], priority: int = 0,
    caller: CallerLimits | None = None,
) -> Answer:
    """POST /v1/completions (and a batch's line: `priority` above 0), step by step: the request's limits, admission
    and the target it names, each prompt tokenized with its sampling, then the answer whole or streamed."""
    check_count(len(body.prompts), gw.settings.max_messages, "prompt")
    for text in body.prompts:
        check_prompt_chars(gw, len(text), "prompt")
    chars = sum(len(text) for text in body.prompts)
    target = await admit(gw, body, caller, charge(gw, chars, body.max_tokens, body.n * len(body.prompts)))
    with target.released_on_error():
        tokenizer = gw.engine.tokenizer
        prompts = await gw.engine.tokenize(lambda: [list(tokenizer(p)["input_ids"]) for p in body.prompts])
        if any(not ids for ids in prompts):
            raise InvalidRequest("prompts must not be empty", param="prompt")
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
    work = Work.start(gw, target, prompts, params, "cmpl", priority)
    if body.stream:
        return Answer(work.headers, events=_stream(work, body))
    return Answer(work.headers, body=await _complete(work, body, is_disconnected))


def _logprobs(body: CompletionRequest, o: Any, offset: int) -> CompletionLogprobs | None:
    if body.logprobs is None:
        return None
    return completion_logprobs(o.token_ids, o.logprobs, body.logprobs or 0, offset)


async def _complete(
    work: Work, body: CompletionRequest, is_disconnected: Callable[[], Awaitable[bool]]
) -> Completion:
    with work.held():
        finals = await work.finals(is_disconnected)
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
                        logprobs=_logprobs(body, o, len(prefix)),
                        finish_reason=finish_reason(o.finish_reason),  # type: ignore[arg-type]
                    )
                )
        usage = work.done(completion_tokens)
    return Completion(id=work.request_id, model=body.model, choices=choices, usage=usage)


async def _stream(work: Work, body: CompletionRequest) -> AsyncGenerator[str, None]:
    created = int(time.time())
    with work.held():
        produced = 0
        queue: asyncio.Queue[tuple[int, Any] | None] = asyncio.Queue()

        async def pump(i: int) -> None:
            async for out in work.generate(i):
                await queue.put((i, out))

        async def run_all() -> None:
            try:
                await asyncio.gather(*(pump(i) for i in range(len(work.prompts))))
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
                    choice = CompletionChoice(
                        index=i * body.n + o.index,
                        text=o.text,
                        logprobs=_logprobs(body, o, 0),
                        finish_reason=reason,  # type: ignore[arg-type]
                    )
                    yield sse(Completion(id=work.request_id, created=created, model=body.model, choices=[choice]))
            await runner  # re-raise an engine error
        finally:
            runner.cancel()
        usage = work.done(produced)
        if body.include_usage:
            yield sse(Completion(id=work.request_id, created=created, model=body.model, choices=[], usage=usage))
        yield sse("[DONE]")
