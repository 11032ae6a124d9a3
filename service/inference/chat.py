"""Chat completions: messages rendered with the target's own template (tools, tool calls and tool results written
as the trainer writes them), decoded, and shaped into OpenAI's chat answer, whole or streamed with tool calls held
back until they are whole. This module drives the request; the steps it shares with text completions are in
service/inference/pipeline.py, which never calls back into it."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from adapters.errors import InvalidRequest
from adapters.limits import CallerLimits
from adapters.masking import encode
from adapters.schema import StoredCompletion
from adapters.templates import ChatTemplate
from adapters.tools import CALL_OPEN, call_schema, flatten, forced_call, parse_calls
from service.engine.grammar_limits import GrammarLimitError, GrammarLimits, check_constraint
from service.gateway import Gateway
from service.inference.pipeline import (
    Answer,
    Target,
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
from service.inference.stored import storing
from service.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    FunctionCall,
    NamedToolChoice,
    TokenLogprob,
    ToolCallDelta,
    ToolCallOut,
    TopLogprob,
)
from service.protocol.common import Usage


def chat_prompt_ids(
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[ChatMessage],
    tools: list[dict[str, Any]] | None = None,
    prefill: str = "",
    max_chars: int | None = None,
) -> list[int]:
    """The token ids a chat request sends to the engine: encoded as the trainer encodes, up to the answer
    (tools, tool calls and tool results written as the trainer writes them), plus any forced `prefill`.
    Over `max_chars` of text to render: ValueError, before the tokenizer sees any of it."""
    turns = flatten([m.turn() for m in messages], tools)
    if max_chars is not None:
        chars = sum(len(turn["content"]) for turn in turns)
        if chars > max_chars:
            raise ValueError(chars)
    ids = encode(tokenizer, template, turns, add_generation_prompt=True).input_ids
    return ids + (list(tokenizer(prefill, add_special_tokens=False)["input_ids"]) if prefill else [])


@dataclass(frozen=True)
class ToolPlan:
    """What a request's `tools` and `tool_choice` mean for the prompt, the decoding and the answer."""

    tools: list[dict[str, Any]] | None = None  # rendered into the prompt
    forced: str | None = None  # "required" or a function name: structured decoding writes one call
    names: frozenset[str] = frozenset()
    parallel: bool = True  # parallel_tool_calls: false keeps the first call of a turn only

    @classmethod
    def of(cls, body: ChatCompletionRequest) -> ToolPlan:
        choice = body.tool_choice or ("auto" if body.tools else "none")
        if not body.tools or choice == "none":
            return cls()
        tools = [tool.model_dump(exclude_none=True) for tool in body.tools]
        forced = choice.function["name"] if isinstance(choice, NamedToolChoice) else choice
        names = frozenset(t["function"]["name"] for t in tools)
        return cls(tools, None if forced == "auto" else forced, names, body.parallel_tool_calls)

    def check(self, limits: GrammarLimits) -> None:
        """A forced call's grammar is built from the tools' parameters: each within the grammar limits, named
        by its place in the request (the combined grammar is checked again, as `tools`, by the engine)."""
        if self.forced is None or self.tools is None:
            return
        for index, tool in enumerate(self.tools):
            if self.forced in ("required", tool["function"]["name"]) and tool["function"].get("parameters"):
                try:
                    check_constraint(
                        {"json": tool["function"]["parameters"]}, limits, "tools",
                        f"tools[{index}].function.parameters",
                    )
                except GrammarLimitError as exc:
                    raise InvalidRequest(str(exc), param=exc.param, code="grammar_too_large") from None

    @property
    def parses(self) -> bool:
        return self.tools is not None

    def constraint(self) -> dict[str, Any] | None:
        if self.forced is None or self.tools is None:
            return None
        schema = call_schema(self.tools, None if self.forced == "required" else self.forced)
        return {"json": schema, "disable_any_whitespace": True}

    def answer(self, text: str, reason: str | None) -> tuple[str | None, list[ToolCallOut] | None, str | None]:
        """(content, tool calls, finish reason) of one finished choice."""
        if self.forced is not None:
            call = forced_call(text)
            found = [call] if call is not None else []
            content = None if found else text
        elif self.parses:
            content, found = parse_calls(text, set(self.names))
            found = found if self.parallel else found[:1]
        else:
            return text, None, reason
        if not found:
            return content, None, reason
        calls = [ToolCallOut(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in found]
        return content, calls, "tool_calls"


def _held_back(text: str) -> int:
    """How much of streamed `text` may go out as content while a tool call may be starting: everything before
    `<tool_call>`, or before a tail that could be the start of it."""
    if CALL_OPEN in text:
        return text.index(CALL_OPEN)
    for keep in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-keep:]):
            return len(text) - keep
    return len(text)


def chat_logprobs(token_ids: Any, logprobs: Any, top: int) -> ChoiceLogprobs | None:
    """vLLM's per-token {id: Logprob} dicts as OpenAI's chat logprobs."""
    if logprobs is None:
        return None
    content = []
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        chosen = candidates[token_id]
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
                    for lp in ranked(candidates, top)
                ],
            )
        )
    return ChoiceLogprobs(content=content)


def rendered_chars_at_least(body: ChatCompletionRequest) -> int:
    """A lower bound of the characters the template will render, counted without copying anything: the
    messages' text, their tool calls, and every string in the tools (JSON adds quotes and punctuation)."""
    chars = sum(len(m.text()) for m in body.messages)
    for message in body.messages:
        for call in message.tool_calls or []:
            chars += len(call.function.name) + len(call.function.arguments)
    for tool in body.tools or []:
        function = tool.function
        chars += len(function.name) + len(function.description or "")
        chars += sum(len(text) for text in _strings(function.parameters))
    return chars


def _strings(value: Any) -> Iterator[str]:
    """Every string of a JSON value, keys included."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


async def create_chat_completion(
    gw: Gateway, body: ChatCompletionRequest, is_disconnected: Callable[[], Awaitable[bool]], priority: int = 0,
    caller: CallerLimits | None = None,
) -> Answer:
    """POST /v1/chat/completions (and an eval run's sample, a batch's line: `priority` above 0), step by step: the
    request's limits, admission (the `caller`'s per-minute limits and share of the engine) and the target it names,
    its prompt and sampling, then the answer whole or streamed."""
    check_count(len(body.messages), gw.settings.max_messages, "messages")
    # Everything the template renders counts (tools, tool calls, tool results), not the messages' text alone:
    # a cheap lower bound here, the exact count on the tokenizer's thread before it tokenizes anything.
    check_prompt_chars(gw, sum(len(m.text()) for m in body.messages), "messages")
    check_prompt_chars(gw, rendered_chars_at_least(body), "tools" if body.tools else "messages")
    plan = ToolPlan.of(body)
    plan.check(gw.engine.grammar_limits)
    target = await admit(gw, body, caller, charge(gw, rendered_chars_at_least(body), body.token_limit, body.n))
    with target.released_on_error():
        prompt_ids = await _prompt_ids(gw, body, plan, target)
        limit = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        params = request_sampling(
            body,
            target,
            gw.engine.tokenizer,
            max_tokens=token_budget(body.token_limit, len(prompt_ids), gw.engine.max_model_len, limit),
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            structured=plan.constraint() or structured_constraint(body),
        )
        await gw.engine.verify(
            params, "tools" if plan.forced else constraint_param(body), None if plan.forced else schema_param(body)
        )
    work = Work.start(gw, target, [prompt_ids], [params], "chatcmpl", priority)
    if body.stream:
        return Answer(work.headers, events=_stream(work, body, plan))
    return Answer(work.headers, body=await _complete(work, body, plan, is_disconnected))


async def _prompt_ids(gw: Gateway, body: ChatCompletionRequest, plan: ToolPlan, target: Target) -> list[int]:
    """The prompt rendered with the target's template and tokenized on the tokenizer's thread."""
    tokenizer = gw.engine.tokenizer
    prefill = CALL_OPEN if plan.forced else ""
    max_chars = gw.engine.max_prompt_chars
    try:
        return await gw.engine.tokenize(
            lambda: chat_prompt_ids(tokenizer, target.template, body.messages, plan.tools, prefill, max_chars)
        )
    except ValueError as exc:
        check_prompt_chars(gw, int(exc.args[0]), "tools" if body.tools else "messages")
        raise


def _logprobs(body: ChatCompletionRequest, o: Any) -> ChoiceLogprobs | None:
    return chat_logprobs(o.token_ids, o.logprobs, body.top_logprobs or 0) if body.logprobs else None


async def _complete(
    work: Work, body: ChatCompletionRequest, plan: ToolPlan, is_disconnected: Callable[[], Awaitable[bool]]
) -> ChatCompletion:
    with work.held():
        (final,) = await work.finals(is_disconnected)
        choices = []
        for o in sorted(final.outputs, key=lambda o: o.index):
            content, calls, reason = plan.answer(o.text, finish_reason(o.finish_reason))
            choices.append(
                ChatChoice(
                    index=o.index,
                    message=AssistantMessage(content=content, tool_calls=calls),
                    logprobs=_logprobs(body, o),
                    finish_reason=reason,  # type: ignore[arg-type]
                )
            )
        usage = work.done(sum(len(o.token_ids) for o in final.outputs))
    answer = ChatCompletion(id=work.request_id, model=body.model, choices=choices, usage=usage)
    _keep(work, body, answer)
    return answer


def _keep(work: Work, body: ChatCompletionRequest, answer: ChatCompletion) -> None:
    """Hand the answer to the stored completions' writer when it is to be stored: a queue, never the store itself,
    so storing costs the request no store round trip (service/inference/stored.py)."""
    writer = work.gw.completions
    if writer is None or not storing(work.gw.settings.store_completions, body.store):
        return
    writer.offer(
        StoredCompletion.model_construct(
            id=answer.id,
            created=time.time(),  # not the answer's whole seconds: two answers of one second keep their order
            model=body.model,
            answered_by=work.target.answered_by,
            messages=[message.model_dump(mode="json", exclude_none=True) for message in body.messages],
            tools=[tool.model_dump(mode="json", exclude_none=True) for tool in body.tools] if body.tools else None,
            response=answer.model_dump(mode="json"),
            metadata=dict(body.metadata or {}),
            feedback=None,
        ),
        work.gw.registry,  # the caller's project's
    )


async def _stream(work: Work, body: ChatCompletionRequest, plan: ToolPlan) -> AsyncGenerator[str, None]:
    created = int(time.time())

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        return sse(
            ChatCompletionChunk(id=work.request_id, created=created, model=body.model, choices=choices, usage=usage)
        )

    with work.held():
        for index in range(body.n):
            yield chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
        produced = 0
        # With tools, text is held back while it may be a tool call; what is sent never has to be taken back.
        held = _HeldText(plan, body.n)
        whole = _WholeText(body.n)
        async for out in work.generate(0):
            for o in out.outputs:
                produced += len(o.token_ids)
                reason = finish_reason(o.finish_reason)
                whole.add(o.index, o.text, reason)
                logprobs = _logprobs(body, o)
                if not plan.parses:
                    # The detokenizer may hold text back (a partial character or stop string): nothing to send yet.
                    if not o.text and reason is None and not body.logprobs:
                        continue
                    delta = Delta(content=o.text)
                    yield chunk([ChunkChoice(index=o.index, delta=delta, logprobs=logprobs, finish_reason=reason)])  # type: ignore[arg-type]
                    continue
                for choice in held.add(o.index, o.text, reason, logprobs):
                    yield chunk([choice])
        usage = work.done(produced)
        _keep(work, body, ChatCompletion(id=work.request_id, created=created, model=body.model,
                                         choices=whole.choices(plan), usage=usage))
        if body.include_usage:
            yield chunk([], usage)
        yield sse("[DONE]")


class _WholeText:
    """A streamed answer's choices gathered whole, for storing it as the answer it was."""

    def __init__(self, n: int):
        self.text: list[str] = [""] * n
        self.reason: list[str | None] = [None] * n

    def add(self, i: int, piece: str, reason: str | None) -> None:
        self.text[i] += piece
        self.reason[i] = reason or self.reason[i]

    def choices(self, plan: ToolPlan) -> list[ChatChoice]:
        choices = []
        for i, text in enumerate(self.text):
            content, calls, reason = plan.answer(text, self.reason[i])
            message = AssistantMessage(content=content, tool_calls=calls)
            choices.append(ChatChoice(index=i, message=message, finish_reason=reason))  # type: ignore[arg-type]
        return choices


class _HeldText:
    """A streamed choice's text while it may hold a tool call: content goes out up to where a call may start;
    at the end, the rest of the content and the whole calls."""

    def __init__(self, plan: ToolPlan, n: int):
        self.plan = plan
        self.text, self.sent = [""] * n, [0] * n

    def add(self, i: int, piece: str, reason: str | None, logprobs: ChoiceLogprobs | None) -> list[ChunkChoice]:
        text, sent = self.text, self.sent
        text[i] += piece
        if reason is None:
            safe = sent[i] if self.plan.forced else _held_back(text[i])
            if safe > sent[i] or logprobs is not None:
                out = [ChunkChoice(index=i, delta=Delta(content=text[i][sent[i] : safe]), logprobs=logprobs)]
                sent[i] = max(sent[i], safe)
                return out
            return []
        content, calls, final_reason = self.plan.answer(text[i], reason)
        out = []
        # Content is a prefix of the text, so what was sent stays valid.
        rest = (text[i] if calls is None else content or "")[sent[i] :]
        if rest or logprobs is not None:
            out.append(ChunkChoice(index=i, delta=Delta(content=rest), logprobs=logprobs))
        deltas = [
            ToolCallDelta(index=k, id=call.id, type="function", function=call.function)
            for k, call in enumerate(calls or [])
        ]
        out.append(ChunkChoice(index=i, delta=Delta(tool_calls=deltas or None), finish_reason=final_reason))  # type: ignore[arg-type]
        return out
