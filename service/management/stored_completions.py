"""Stored chat completions: OpenAI's list, retrieve, update (metadata), delete and messages over the records the
gateway's writer keeps (service/inference/stored.py); and ours: feedback on one, and an export of a filtered set as a
/v1/files file (SFT rows, DPO pairs or eval items) checked by the same parsers as an upload."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from adapters.errors import InvalidName, InvalidRequest, NotFound
from adapters.schema import CompletionFeedback, StoredCompletion
from service.management.evals import EVALS_PURPOSE
from service.management.files import PURPOSE as FINE_TUNE_PURPOSE
from service.management.files import upload_file
from service.protocol.common import page
from service.protocol.files import FileObject
from service.protocol.stored_completions import (
    ExportStoredCompletions,
    Feedback,
    GiveFeedback,
    StoredChatCompletion,
    StoredCompletionDeleted,
    StoredCompletionList,
    StoreMessage,
    StoreMessageList,
)

if TYPE_CHECKING:
    from service.gateway import Gateway

# What a message of a stored request keeps in a dataset row: the dataset parser's fields.
ROW_FIELDS = ("role", "content", "tool_calls", "tool_call_id")


def stored_object(record: StoredCompletion) -> StoredChatCompletion:
    feedback = record.feedback
    return StoredChatCompletion.model_validate({
        **record.response,
        "metadata": record.metadata,
        "answered_by": record.answered_by,
        "feedback": Feedback(rating=feedback.rating, corrected=feedback.corrected, note=feedback.note,
                             at=int(feedback.at)) if feedback else None,
    })


def _record(gw: Gateway, completion_id: str) -> StoredCompletion:
    try:
        return gw.registry.get_completion(completion_id)  # type: ignore[no-any-return]
    except (NotFound, InvalidName):
        raise NotFound(f"No chat completion found with id '{completion_id}'.", param="completion_id") from None


def _matches(record: StoredCompletion, model: str | None, metadata: Mapping[str, str] | None) -> bool:
    """`model` as the request named it (`shout@prod`), as it was answered (`shout@3`), or the skill's name (`shout`:
    every version and alias of it)."""
    answered_by_skill = record.answered_by.split("@", 1)[0]
    if model is not None and model not in (record.model, record.answered_by, answered_by_skill):
        return False
    return all(record.metadata.get(key) == value for key, value in (metadata or {}).items())


def _rated(record: StoredCompletion, rating: str | None) -> bool:
    """Whether the record carries `rating` (`unrated`: none yet); any record when `rating` is None."""
    given = record.feedback.rating if record.feedback else None
    return rating is None or given == (None if rating == "unrated" else rating)


def list_stored(
    gw: Gateway, model: str | None, metadata: Mapping[str, str], after: str | None, limit: int, order: str,
    rating: str | None = None,
) -> StoredCompletionList:
    """Stored completions of `model` carrying every `metadata` pair (and `rating`, ours), oldest first (OpenAI's
    default) or newest."""
    records = [r for r in gw.registry.list_completions() if _matches(r, model, metadata) and _rated(r, rating)]
    if order == "desc":
        records.reverse()
    chosen, more = page(records, after, limit, lambda r: r.id)
    data = [stored_object(r) for r in chosen]
    return StoredCompletionList(data=data, first_id=data[0].id if data else None,
                                last_id=data[-1].id if data else None, has_more=more)


def get_stored(gw: Gateway, completion_id: str) -> StoredChatCompletion:
    return stored_object(_record(gw, completion_id))


def _changed(gw: Gateway, completion_id: str, update: dict[str, Any]) -> StoredChatCompletion:
    _record(gw, completion_id)
    try:
        written = gw.registry.update_completion(completion_id, lambda r: r.model_copy(update=update))
    except NotFound:  # deleted meanwhile
        raise NotFound(f"No chat completion found with id '{completion_id}'.", param="completion_id") from None
    assert written is not None  # the change never declines
    return stored_object(written)


def update_stored(gw: Gateway, completion_id: str, metadata: dict[str, str] | None) -> StoredChatCompletion:
    """OpenAI's update: the metadata replaced (null clears it)."""
    return _changed(gw, completion_id, {"metadata": dict(metadata or {})})


def delete_stored(gw: Gateway, completion_id: str) -> StoredCompletionDeleted:
    _record(gw, completion_id)
    gw.registry.delete_completion(completion_id)
    return StoredCompletionDeleted(id=completion_id)


def stored_messages(gw: Gateway, completion_id: str, after: str | None, limit: int, order: str) -> StoreMessageList:
    """The request's messages, each with an id of its place (`<completion id>-<n>`), in order or reversed."""
    record = _record(gw, completion_id)
    messages = []
    for index, message in enumerate(record.messages):
        content = message.get("content")
        parts = content if isinstance(content, list) else None
        text = "".join(part.get("text", "") for part in parts) if parts is not None else content
        messages.append(StoreMessage(id=f"{completion_id}-{index}", role=message["role"], content=text,
                                     name=message.get("name"), tool_calls=message.get("tool_calls"),
                                     tool_call_id=message.get("tool_call_id"), content_parts=parts))
    if order == "desc":
        messages.reverse()
    chosen, more = page(messages, after, limit, lambda m: m.id)
    return StoreMessageList(data=chosen, first_id=chosen[0].id if chosen else None,
                            last_id=chosen[-1].id if chosen else None, has_more=more)


def give_feedback(gw: Gateway, completion_id: str, body: GiveFeedback) -> StoredChatCompletion:
    """Ours: the completion's feedback replaced by this rating and correction."""
    feedback = CompletionFeedback(rating=body.rating, corrected=body.corrected, note=body.note)
    return _changed(gw, completion_id, {"feedback": feedback})


# ------------------------------------------------------------------------------------------------- export


def _selected(records: list[StoredCompletion], body: ExportStoredCompletions) -> list[StoredCompletion]:
    def wanted(record: StoredCompletion) -> bool:
        return (
            _matches(record, body.model, body.metadata)
            and _rated(record, body.rating)
            and (body.created_after is None or record.created >= body.created_after)
            and (body.created_before is None or record.created < body.created_before)
        )

    return [record for record in records if wanted(record)]


def _conversation(record: StoredCompletion) -> list[dict[str, Any]]:
    """The request's messages as dataset rows take them (a developer message plays the system's part)."""
    turns = []
    for message in record.messages:
        turn = {key: message[key] for key in ROW_FIELDS if message.get(key) is not None}
        turn["role"] = "system" if turn["role"] == "developer" else turn["role"]
        turns.append(turn)
    return turns


def _original(record: StoredCompletion) -> dict[str, Any]:
    """The first choice's answer as an assistant message."""
    message = record.response["choices"][0]["message"]
    return {key: message[key] for key in ("role", "content", "tool_calls") if message.get(key) is not None}


def _accepted(record: StoredCompletion) -> dict[str, Any] | None:
    """The answer to learn from: the corrected one, else the original if it was rated good, else none."""
    feedback = record.feedback
    if feedback is not None and feedback.corrected is not None:
        return {"role": "assistant", "content": feedback.corrected}
    if feedback is not None and feedback.rating == "good":
        return _original(record)
    return None


def export_row(record: StoredCompletion, kind: str) -> dict[str, Any] | None:
    """One stored completion as a row of `kind`; None when it has nothing to give that kind."""
    tools = {"tools": record.tools} if record.tools else {}
    answer = _accepted(record)
    if kind == "sft":
        return {"messages": [*_conversation(record), answer], **tools} if answer is not None else None
    if kind == "dpo":
        corrected = record.feedback.corrected if record.feedback else None
        original = _original(record)
        if corrected is None or corrected == original.get("content"):
            return None
        return {"input": {"messages": _conversation(record), **tools},
                "preferred_output": [{"role": "assistant", "content": corrected}],
                "non_preferred_output": [original]}
    if answer is None:
        return None
    conversation = _conversation(record)
    last_user = next((m.get("content") for m in reversed(conversation) if m["role"] == "user"), "")
    return {"item": {"input": last_user, "messages": conversation, "ideal": answer.get("content") or "",
                     "model": record.model, "completion_id": record.id}}


async def export_stored(gw: Gateway, body: ExportStoredCompletions) -> FileObject:
    """The filtered stored completions as one /v1/files file of `kind`, stored through the same upload path (and
    its parsers) as a client's file; a 400 naming `kind` when none of them gives a row."""
    records = _selected(await asyncio.to_thread(gw.registry.list_completions), body)
    rows = [row for row in (export_row(record, body.kind) for record in records) if row is not None]
    if not rows:
        need = {"sft": "rated good or corrected", "dpo": "corrected", "evals": "rated good or corrected"}[body.kind]
        raise InvalidRequest(
            f"kind: none of the {len(records)} stored completion(s) matching the filter is {need}",
            param="kind", code="no_rows",
        )
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    purpose = EVALS_PURPOSE if body.kind == "evals" else FINE_TUNE_PURPOSE
    filename = body.filename or f"stored-{body.kind}-{int(time.time())}.jsonl"
    return await upload_file(gw, filename, purpose, data)
