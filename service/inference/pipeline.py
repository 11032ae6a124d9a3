"""The steps chat and text completions share, called in order by service/inference/chat.py and completions.py
(this module never calls back into them): admission and the target a model name means (`admit`), the request's
limits, token budget and sampling, the engine work whole or streamed with aborts (`Work`), usage, logprob ranking
and per-model metrics. Errors are domain errors (adapters/errors.py); the edge maps them."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from adapters.errors import ClientGone, EngineFailed, InvalidRequest
from adapters.limits import CallerLimits, estimated_tokens
from adapters.templates import ChatTemplate, get_template, template_from_manifest
from service.engine.adapter_cache import Lease
from service.engine.core import sampling_params
from service.gateway import Gateway
from service.inference.fairness import Slot
from service.inference.ratelimit import Ticket
from service.metrics import RequestMeter
from service.protocol.common import SamplingFields, Usage

T = TypeVar("T")

# Which version answered: with aliases and canary splits, the model name alone no longer says.
VERSION_HEADER = "X-Skillserve-Model-Version"


@dataclass
class Target:
    """The base model or one adapter version, with the template its prompts are rendered with."""

    model: str
    template: ChatTemplate
    lora: Any = None
    lease: Lease | None = None
    metric_model: str = field(default="")
    answered_by: str = ""  # what the VERSION_HEADER says: the base id or `adapter@version`
    meter: RequestMeter | None = None
    ticket: Ticket | None = None  # its charge against its project's and key's per-minute limits
    slot: Slot | None = None  # its place among its project's requests in flight
    used_tokens: int = 0  # what the ticket is settled with: the prompt once started, then the whole usage

    @property
    def headers(self) -> dict[str, str]:
        return {VERSION_HEADER: self.answered_by, **(self.ticket.headers if self.ticket is not None else {})}

    @property
    def fair_priority(self) -> int:
        """Added to the request's engine priority: its project's requests already in flight (fairness.py)."""
        return self.slot.priority if self.slot is not None else 0

    def generated(self, tokens: int) -> None:
        """The answer is complete: count its tokens against the model."""
        if self.meter is not None:
            self.meter.generated(tokens)

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        if self.slot is not None:
            self.slot.release()
        if self.ticket is not None:
            self.ticket.settle(self.used_tokens)

    @contextmanager
    def released_on_error(self) -> Iterator[None]:
        """While a request is prepared (prompt, sampling, constraint): a failure releases the target."""
        try:
            yield
        except BaseException:
            self.release()
            raise


async def resolve_target(gw: Gateway, model: str, user: str | None = None) -> Target:
    """Base id -> the base model and its own template; else an adapter (through its aliases; `user` keeps a
    canary split sticky), fetched and held for the request."""
    tokenizer = gw.engine.tokenizer
    if model == gw.engine.base_model_id:
        return Target(model, get_template("base", tokenizer), metric_model=model, answered_by=model)
    from vllm.lora.request import LoRARequest

    manifest = await gw.cache.manifest(model, user)
    lease = await gw.cache.acquire(manifest)
    lora = LoRARequest(lora_name=lease.ref or manifest.ref, lora_int_id=lease.lora_id, lora_path=str(lease.path))
    return Target(
        model, template_from_manifest(manifest), lora, lease, metric_model=manifest.name, answered_by=manifest.ref
    )


def structured_constraint(body: SamplingFields) -> dict[str, Any] | None:
    """The one constrained-decoding rule a request asks for, as vLLM's StructuredOutputsParams fields."""
    if body.structured_outputs is not None:
        given = body.structured_outputs.model_dump(by_alias=True, exclude_none=True)
        return given
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    # No free whitespace between JSON tokens: a small model given the choice can spend its whole token budget
    # on blank lines inside an object and never close it.
    if fmt.type == "json_object":
        return {"json_object": True, "disable_any_whitespace": True}
    assert fmt.json_schema is not None
    return {"json": fmt.json_schema.schema_, "disable_any_whitespace": True}


def constraint_param(body: SamplingFields) -> str | None:
    """The field a constrained-decoding error is about, if the request asked for one."""
    if body.structured_outputs is not None:
        return "structured_outputs"
    return "response_format" if structured_constraint(body) else None


def schema_param(body: SamplingFields) -> str | None:
    """Where in the request a JSON schema constraint was given, for errors about a place inside it."""
    if body.structured_outputs is None and body.response_format is not None and body.response_format.json_schema:
        return "response_format.json_schema.schema"
    return None


def check_count(count: int, limit: int, param: str) -> None:
    """400 when a request carries more items (messages, prompts) than the gateway takes (max_messages)."""
    if count > limit:
        raise InvalidRequest(
            f"{param} has {count} items; this gateway takes at most {limit} (max_messages)",
            param=param,
            code="too_many_items",
        )


def check_prompt_chars(gw: Gateway, chars: int, param: str) -> None:
    """400 before any tokenizing when a prompt has more characters than its context could ever hold (for a
    chat: every text the template renders, tools and tool calls included)."""
    limit = gw.engine.max_prompt_chars
    if chars > limit:
        raise InvalidRequest(
            f"the prompt is {chars} characters; this model's context of {gw.engine.max_model_len} tokens holds "
            f"at most {limit} characters",
            param=param,
            code="context_length_exceeded",
        )


def token_budget(
    requested: int | None, prompt_tokens: int, max_model_len: int, param: str, prompt_param: str = "messages"
) -> int:
    """Tokens the completion may use: the client's limit if it fits the context, else all that is left."""
    room = max_model_len - prompt_tokens
    if room < 1:
        raise InvalidRequest(
            f"the prompt is {prompt_tokens} tokens; this model's context is {max_model_len} tokens",
            param=prompt_param,
            code="context_length_exceeded",
        )
    if requested is None:
        return room
    if requested > room:
        raise InvalidRequest(
            f"{param}={requested} plus the {prompt_tokens}-token prompt exceeds this model's context of "
            f"{max_model_len} tokens; ask for at most {room}",
            param=param,
            code="context_length_exceeded",
        )
    return requested


def finish_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


def merge_stops(client: list[str], template: ChatTemplate, ignore_eos: bool = False) -> list[str]:
    """The template's stop sequences plus the client's, without duplicates.

    With ignore_eos (vLLM's extension) the template's end-of-turn marks count as end-of-sequence and are
    dropped, as vLLM's own server drops the model's eos ids: the client's own stops still apply.
    """
    return list(dict.fromkeys([*([] if ignore_eos else template.stop), *client]))


def sse(payload: BaseModel | dict[str, Any] | str) -> str:
    if isinstance(payload, str):
        return f"data: {payload}\n\n"
    if isinstance(payload, BaseModel):
        return f"data: {payload.model_dump_json(exclude_none=False)}\n\n"
    return f"data: {json.dumps(payload)}\n\n"


async def until_disconnected(is_disconnected: Callable[[], Awaitable[bool]], work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and so aborting its vLLM requests) if the client goes away first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await is_disconnected():
                task.cancel()
                raise ClientGone("client disconnected")
    finally:
        if not task.done():
            task.cancel()


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def ranked(candidates: dict[int, Any], top: int) -> list[Any]:
    """A token's `top` most likely candidates (vLLM's {id: Logprob}), best first."""
    return sorted(candidates.values(), key=lambda lp: lp.rank if lp.rank is not None else 1 << 30)[:top]


def charge(gw: Gateway, chars: int, requested: int | None, answers: int) -> int:
    """The tokens a request is charged before it runs (corrected to its usage when it ends): its prompt of `chars`
    characters, and `answers` completions of `requested` tokens each (all the context leaves when not given)."""
    prompt = estimated_tokens(chars, 0)
    each = requested if requested is not None else max(0, gw.engine.max_model_len - prompt)
    return prompt + answers * each


async def admit(gw: Gateway, body: SamplingFields, caller: CallerLimits | None = None, tokens: int = 0) -> Target:
    """The first step of serving: the caller's per-minute limits (charged about `tokens`, corrected when it ends),
    admission (refused while the engine is full or starting, or the caller's project holds its share of it), then
    the target the model name means, held for the request and metered per model. Until the request's `Work`
    starts, a failure must release it (`Target.released_on_error`)."""
    ticket = await gw.limits.admit(caller, tokens) if caller is not None and gw.limits is not None else None
    slot = None
    try:
        gw.engine.admit()
        slot = gw.fair.enter(caller.project, caller.key_id) if caller is not None and gw.fair is not None else None
        target = await resolve_target(gw, body.model, body.user)
    except BaseException:
        if slot is not None:
            slot.release()
        if ticket is not None:
            ticket.settle(0)
        raise
    target.meter = gw.metrics.meter(target.metric_model, gw.project)
    target.ticket, target.slot = ticket, slot
    return target


@dataclass
class Work:
    """One request's engine work once prepared: its target, each prompt's token ids with its sampling, and the
    request's id. From here on, `held` records the request's outcome and releases the target however it ends."""

    gw: Gateway
    target: Target
    prompts: list[list[int]]
    params: list[Any]
    request_id: str
    priority: int = 0  # in the engine's waiting queue: live requests 0, background work more (scheduled later)

    @classmethod
    def start(
        cls, gw: Gateway, target: Target, prompts: list[list[int]], params: list[Any], id_prefix: str, priority: int = 0
    ) -> Work:
        """The prepared request, given its id (`chatcmpl-...`, `cmpl-...`), its prompt tokens metered. Its engine
        priority is `priority` plus its project's requests already in flight (service/inference/fairness.py)."""
        work = cls(gw, target, prompts, params, f"{id_prefix}-{uuid.uuid4().hex}", priority + target.fair_priority)
        if target.meter is not None:
            target.meter.tokens("prompt", work.prompt_tokens)
        target.used_tokens = work.prompt_tokens
        return work

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompts)

    @property
    def headers(self) -> dict[str, str]:
        return self.target.headers

    def engine_id(self, i: int) -> str:
        """Prompt `i`'s request id in the engine (one per prompt when a request carries several)."""
        return self.request_id if len(self.prompts) == 1 else f"{self.request_id}-{i}"

    def generate(self, i: int) -> AsyncIterator[Any]:
        """Prompt `i`'s outputs as the engine streams them (closing the iterator aborts the request)."""
        return self.gw.engine.generate(
            self.prompts[i], self.params[i], self.target.lora, self.engine_id(i), self.target.meter, self.priority
        )

    async def final(self, i: int) -> Any:
        """Prompt `i`'s finished output."""
        final = None
        async for out in self.generate(i):
            final = out
        if final is None:
            raise EngineFailed("the engine returned nothing")
        return final

    async def finals(self, is_disconnected: Callable[[], Awaitable[bool]]) -> list[Any]:
        """Every prompt's finished output, run together; the client going away first aborts them (ClientGone)."""
        every = asyncio.gather(*(self.final(i) for i in range(len(self.prompts))))
        return await until_disconnected(is_disconnected, every)

    def done(self, completion_tokens: int) -> Usage:
        """The answer is complete: its tokens counted against the model and its caller's limits, and its usage."""
        self.target.generated(completion_tokens)
        self.target.used_tokens = self.prompt_tokens + completion_tokens
        return usage(self.prompt_tokens, completion_tokens)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Around the answer, whole or streamed: the request's outcome counted (failed unless the block ends
        normally: an error, a cancel, a stream closed early) and the target released."""
        failed = True
        try:
            yield
            failed = False
        finally:
            if self.target.meter is not None:
                self.target.meter.outcome(failed)
            self.target.release()


@dataclass
class Answer:
    """A served request: the response body, or its Server-Sent Events; with the headers that say who answered.
    The edge renders it (service/api/answers.py)."""

    headers: dict[str, str]
    body: Any = None
    events: AsyncGenerator[str, None] | None = None


def request_sampling(
    body: SamplingFields,
    target: Target,
    tokenizer: Any,
    *,
    max_tokens: int,
    logprobs: int | None,
    structured: dict[str, Any] | None,
) -> Any:
    """A request's sampling fields as vLLM SamplingParams; the target's template adds its stop sequences (an
    adapter speaks its template's format even on raw prompts, so its stops end a turn there too)."""
    return sampling_params(
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=max_tokens,
        stop=merge_stops(body.stop or [], target.template, body.ignore_eos),  # type: ignore[arg-type]
        stop_token_ids=[] if body.ignore_eos else target.template.stop_token_ids(tokenizer),
        n=body.n,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logprobs=logprobs,
        stream=body.stream,
        ignore_eos=body.ignore_eos,
        logit_bias=body.logit_bias,
        structured=structured,
        repetition_penalty=body.repetition_penalty,
        top_k=body.top_k,
        min_p=body.min_p,
    )
