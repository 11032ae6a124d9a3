"""Stored chat completions and feedback, driven by the official openai SDK.

Fast tests: the background writer on a real file store (a store that blocks or fails costs records, counted, never
the caller; retention by age and count); the stored-completions API in-process without the engine (management mode)
over records as the writer writes them: list by model and metadata, retrieve, update, messages, delete; feedback and
its export as SFT rows, DPO pairs and eval items that pass the same parsers as an upload. The slow one stores
answers of the session's real gateway (real vLLM, real model) and walks the SDK's flow over them.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from adapters.dataset import parse_dataset
from adapters.errors import StoreUnavailable
from adapters.eval_rows import parse_eval_rows
from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import StoredCompletion
from adapters.store import FileStore
from service.app import create_app
from service.inference.stored import CompletionWriter
from service.metrics import Metrics
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer, in_process_sdk, management_settings


def record(question: str, answer: str, model: str = "shout", created: float | None = None,
           **metadata: str) -> StoredCompletion:
    """A stored completion as the gateway's writer writes it."""
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = time.time() if created is None else created
    return StoredCompletion(
        id=completion_id,
        created=created,
        model=model,
        answered_by=f"{model}@3" if model != DEFAULT_MODEL else model,
        messages=[{"role": "system", "content": "Shout."}, {"role": "user", "content": question}],
        response={
            "id": completion_id, "object": "chat.completion", "created": int(created), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        },
        metadata=metadata,
    )


def counted(metrics: Metrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("skillserve_stored_completions_total", {"outcome": outcome}) or 0.0


# ------------------------------------------------------------------------------------ the writer


class HeldStore(FileStore):
    """A file store whose writes of stored completions wait until released, or fail while `down`."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.released = threading.Event()
        self.down = False

    def put_bytes(self, key: str, data: bytes, **kwargs: Any) -> None:
        if key.startswith("completions/"):
            if self.down:
                raise StoreUnavailable("the store is down")
            self.released.wait()
        super().put_bytes(key, data, **kwargs)


def test_a_slow_store_never_holds_the_caller_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "store")
    registry, metrics = Registry(store), Metrics()

    async def scenario() -> list[bool]:
        writer = CompletionWriter(registry, metrics, queue_size=2)
        writer.start()
        first = writer.offer(record("a", "A"))
        await asyncio.sleep(0)  # the writer takes the first and waits on the store with it
        while writer._queue.qsize():  # noqa: SLF001 - until the writer holds the first record
            await asyncio.sleep(0.01)
        taken = [first] + [writer.offer(record(q, q.upper())) for q in ("b", "c", "d", "e")]
        store.released.set()
        await writer.flushed()
        await writer.stop()
        return taken

    taken = asyncio.run(scenario())
    assert taken == [True, True, True, False, False]  # one at the store, two queued, two dropped
    assert counted(metrics, "dropped") == 2 and counted(metrics, "written") == 3
    assert len(registry.list_completions()) == 3


def test_a_store_that_refuses_costs_that_record_and_the_writer_goes_on(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "store")
    store.released.set()
    store.down = True
    registry, metrics = Registry(store), Metrics()
    kept = record("b", "B")

    async def scenario() -> None:
        writer = CompletionWriter(registry, metrics, queue_size=8)
        writer.start()
        writer.offer(record("a", "A"))
        await writer.flushed()
        store.down = False
        writer.offer(kept)
        await writer.flushed()
        await writer.stop()

    asyncio.run(scenario())
    assert counted(metrics, "failed") == 1 and counted(metrics, "written") == 1
    assert [r.id for r in registry.list_completions()] == [kept.id]


def test_the_writer_enforces_retention_by_age_then_by_count(tmp_path: Path) -> None:
    registry, metrics = Registry(FileStore(tmp_path / "store")), Metrics()
    now = time.time()
    old = record("old", "OLD", created=now - 3 * 86400)
    older = [record(f"q{i}", f"A{i}", created=now - 600 + i) for i in range(4)]
    for stored in (old, *older):
        registry.put_completion(stored)
    newest = record("new", "NEW")

    async def scenario() -> None:
        writer = CompletionWriter(registry, metrics, queue_size=8, max_age_s=86400, max_count=3, prune_every_s=0)
        writer.start()
        writer.offer(newest)
        await writer.flushed()
        await writer.stop()

    asyncio.run(scenario())
    assert [r.id for r in registry.list_completions()] == [older[2].id, older[3].id, newest.id]
    assert counted(metrics, "pruned") == 3


# ------------------------------------------------------------------------------------ in-process, no engine


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(management_settings(tmp_path_factory.mktemp("stored")))) as client:
        yield client


@pytest.fixture(scope="module")
def registry(app: TestClient) -> Registry:
    return app.app.state.gateway.registry  # type: ignore[attr-defined,no-any-return]


@pytest.fixture(scope="module")
def reader(app: TestClient) -> openai.OpenAI:
    return in_process_sdk(app, API_KEY)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def admin(app: TestClient) -> openai.OpenAI:
    return in_process_sdk(app, ADMIN_KEY)  # type: ignore[no-any-return]


def test_stored_completions_are_listed_retrieved_updated_and_deleted_through_the_sdk(
    registry: Registry, admin: openai.OpenAI, reader: openai.OpenAI
) -> None:
    tag = uuid.uuid4().hex[:8]
    now = time.time()
    first, second = record("cat", "CAT!", created=now - 2, run=tag), record("dog", "DOG!", created=now - 1, run=tag)
    other = record("sun", "sun", model=DEFAULT_MODEL, run=tag)
    for stored in (first, second, other):
        registry.put_completion(stored)

    page = admin.chat.completions.list(model="shout", metadata={"run": tag}, limit=1)
    assert [c.id for c in page.data] == [first.id] and page.has_more  # oldest first, as OpenAI's default
    assert [c.id for c in admin.chat.completions.list(model="shout", metadata={"run": tag}, after=first.id)] == [
        second.id]
    assert [c.id for c in admin.chat.completions.list(metadata={"run": tag}, order="desc")] == [
        other.id, second.id, first.id]
    assert [c.id for c in admin.chat.completions.list(model="shout@3", metadata={"run": tag})] == [
        first.id, second.id]  # the version that answered finds them too
    by_alias = record("sky", "SKY!", created=now, run=tag).model_copy(update={"model": "shout@prod"})
    registry.put_completion(by_alias)
    assert [c.id for c in admin.chat.completions.list(model="shout", metadata={"run": tag})] == [
        first.id, second.id, by_alias.id]  # the skill's name finds what any alias or version of it answered
    assert [c.id for c in admin.chat.completions.list(model="shout@prod", metadata={"run": tag})] == [by_alias.id]
    registry.delete_completion(by_alias.id)

    got = admin.chat.completions.retrieve(first.id)
    assert got.choices[0].message.content == "CAT!" and got.model == "shout" and got.usage.total_tokens == 12
    assert got.metadata == {"run": tag} and got.answered_by == "shout@3"  # type: ignore[attr-defined]

    messages = admin.chat.completions.messages.list(first.id)
    assert [(m.id, m.role, m.content) for m in messages.data] == [
        (f"{first.id}-0", "system", "Shout."), (f"{first.id}-1", "user", "cat")]

    updated = admin.chat.completions.update(first.id, metadata={"run": tag, "reviewed": "yes"})
    assert updated.metadata == {"run": tag, "reviewed": "yes"}  # type: ignore[attr-defined]
    assert [c.id for c in admin.chat.completions.list(metadata={"reviewed": "yes"})] == [first.id]

    deleted = admin.chat.completions.delete(first.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (first.id, True, "chat.completion.deleted")
    with pytest.raises(openai.NotFoundError):
        admin.chat.completions.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        admin.chat.completions.messages.list(first.id)
    with pytest.raises(openai.NotFoundError):
        admin.chat.completions.update("chatcmpl-nothing", metadata={})
    with pytest.raises(openai.PermissionDeniedError):  # users' conversations: an admin key reads them
        reader.chat.completions.list()


def test_store_and_metadata_are_checked_on_chat_and_refused_on_text_completions(app: TestClient) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    chat = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "store": True}
    too_many = app.post("/v1/chat/completions", headers=headers,
                        json={**chat, "metadata": {f"k{i}": "v" for i in range(17)}})
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "metadata"
    for field, value in (("store", True), ("metadata", {"a": "b"})):
        refused = app.post("/v1/completions", headers=headers,
                           json={"model": DEFAULT_MODEL, "prompt": "hi", field: value})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == field


def feedback(app: TestClient, completion_id: str, **body: Any) -> httpx.Response:
    return app.post(f"/v1/chat/completions/{completion_id}/feedback", json=body,
                    headers={"Authorization": f"Bearer {API_KEY}"})


def test_feedback_is_kept_and_exported_as_rows_the_dataset_parsers_accept(
    app: TestClient, registry: Registry, admin: openai.OpenAI, reader: openai.OpenAI
) -> None:
    tag = uuid.uuid4().hex[:8]
    good, fixed, bad, unrated = (record(q, a, review=tag) for q, a in
                                 (("cat", "CAT!"), ("dog", "dog"), ("sun", "moon"), ("sky", "SKY!")))
    for stored in (good, fixed, bad, unrated):
        registry.put_completion(stored)
    assert feedback(app, good.id, rating="good").status_code == 200
    rated = feedback(app, fixed.id, rating="bad", corrected="DOG!", note="not shouted")
    assert rated.status_code == 200 and rated.json()["feedback"]["corrected"] == "DOG!"
    assert feedback(app, bad.id, rating="bad").status_code == 200
    assert admin.chat.completions.retrieve(good.id).feedback["rating"] == "good"  # type: ignore[attr-defined]
    nothing = feedback(app, unrated.id)
    assert nothing.status_code == 400
    assert feedback(app, "chatcmpl-" + "0" * 32, rating="good").status_code == 404

    def export(**body: Any) -> Any:
        return admin.post("/chat/completions/exports", body={"metadata": {"review": tag}, **body},
                          cast_to=httpx.Response).json()

    sft = export(kind="sft")
    assert sft["purpose"] == "fine-tune" and sft["object"] == "file"
    data = admin.files.content(sft["id"]).content
    rows = parse_dataset(data).rows
    assert [row[-1]["content"] for row in rows] == ["CAT!", "DOG!"]  # accepted as answered; corrected as corrected

    dpo = export(kind="dpo")
    pairs = parse_dataset(admin.files.content(dpo["id"]).content, method="dpo").rows
    assert len(pairs) == 1
    evals = export(kind="evals")
    assert evals["purpose"] == "evals"
    items = parse_eval_rows(admin.files.content(evals["id"]).content, 100)
    assert [(item["item"]["input"], item["item"]["ideal"]) for item in items] == [("cat", "CAT!"), ("dog", "DOG!")]

    only_bad = export(kind="sft", rating="bad")
    assert len(parse_dataset(admin.files.content(only_bad["id"]).content).rows) == 1  # the corrected one
    with pytest.raises(openai.BadRequestError) as none:
        admin.post("/chat/completions/exports", body={"kind": "dpo", "metadata": {"review": "nobody"}},
                   cast_to=httpx.Response)
    assert none.value.body["param"] == "kind"  # type: ignore[index]
    with pytest.raises(openai.PermissionDeniedError):  # exporting writes a training file: an admin key
        reader.post("/chat/completions/exports", body={"kind": "sft"}, cast_to=httpx.Response)


def test_stored_completions_are_listed_by_rating_for_a_reviewer(
    app: TestClient, registry: Registry, admin: openai.OpenAI
) -> None:
    """Ours: `rating` on the list (good, bad, or unrated: none yet), beside OpenAI's model and metadata filters."""
    tag = uuid.uuid4().hex[:8]
    good, bad, corrected, unrated = (record(q, a, queue=tag) for q, a in
                                     (("cat", "CAT!"), ("sun", "moon"), ("dog", "dog"), ("sky", "SKY!")))
    for stored in (good, bad, corrected, unrated):
        registry.put_completion(stored)
    assert feedback(app, good.id, rating="good").status_code == 200
    assert feedback(app, bad.id, rating="bad").status_code == 200
    assert feedback(app, corrected.id, corrected="DOG!").status_code == 200  # corrected, not rated

    def listed(rating: str) -> list[str]:
        page = admin.chat.completions.list(metadata={"queue": tag}, extra_query={"rating": rating})
        return [c.id for c in page.data]

    assert listed("good") == [good.id]
    assert listed("bad") == [bad.id]
    assert listed("unrated") == [corrected.id, unrated.id]
    refused = app.get("/v1/chat/completions", params={"rating": "fine"},
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "rating"


# ------------------------------------------------------------------------------------ the real gateway


@pytest.mark.slow
def test_the_sdks_stored_completions_flow_on_the_real_gateway(gateway: GatewayServer) -> None:
    """OpenAI's stored completions guide, unchanged but for base_url: store answers (whole and streamed), list them
    by metadata, retrieve, read the messages, update the metadata, delete."""
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)
    tag = uuid.uuid4().hex[:8]
    ask = {"model": DEFAULT_MODEL, "temperature": 0, "max_tokens": 12,
           "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    answered = client.chat.completions.create(**ask, store=True, metadata={"run": tag})  # type: ignore[call-overload]
    client.chat.completions.create(**ask, metadata={"run": tag})  # type: ignore[call-overload]  # not stored
    stream = client.chat.completions.create(**ask, store=True, metadata={"run": tag, "how": "stream"}, stream=True)  # type: ignore[call-overload]
    streamed_id, streamed_text = None, ""
    for chunk in stream:
        streamed_id = chunk.id
        streamed_text += "".join(c.delta.content or "" for c in chunk.choices)

    deadline = time.monotonic() + 60
    while len(stored := list(client.chat.completions.list(metadata={"run": tag}))) < 2:
        assert time.monotonic() < deadline, "stored completions not written"
        time.sleep(0.2)
    assert [c.id for c in stored] == [answered.id, streamed_id]  # the one without store is not kept
    got = client.chat.completions.retrieve(answered.id)
    assert got.choices[0].message.content == answered.choices[0].message.content
    assert "Paris" in (got.choices[0].message.content or "") and got.usage == answered.usage
    assert got.answered_by == DEFAULT_MODEL  # type: ignore[attr-defined]
    assert client.chat.completions.retrieve(streamed_id).choices[0].message.content == streamed_text  # type: ignore[arg-type]
    [message] = client.chat.completions.messages.list(answered.id).data
    assert (message.role, message.content) == ("user", "What is the capital of France?")

    client.chat.completions.update(answered.id, metadata={"run": tag, "reviewed": "yes"})
    assert [c.id for c in client.chat.completions.list(model=DEFAULT_MODEL, metadata={"reviewed": "yes"})] == [
        answered.id]
    assert client.chat.completions.delete(answered.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve(answered.id)
    metrics = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    assert 'skillserve_stored_completions_total{outcome="written"}' in metrics
