"""The audit log (docs/audit.md), on an in-process management gateway (no engine) over a real file store, and on
both store backends for paging and retention.

Every admin route, called with an admin key and with an inference key, leaves one entry naming the key's id, the
action, the route and how it ended, and nothing else does; the keys themselves never reach the store; a store that
refuses entries, or a queue that is full, costs entries (counted) and never the action; a project's admins page
through its entries newest first, filtered by action, and inference keys get 403; retention deletes by age.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from adapters.errors import StoreUnavailable
from adapters.registry import Registry
from adapters.registry.keys import ORG_AUDIT_LOG
from adapters.schema import DEFAULT_PROJECT, AuditActor, AuditEntry, Manifest, new_audit_id
from adapters.store import FileStore, ObjectStore
from client import cli
from service.api.audit import ACTIONS, CHANGES, NOT_ACTIONS, action_of
from service.api.auth import key_id
from service.app import create_app
from service.management.audit import AuditWriter
from service.metrics import Metrics
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, management_settings

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
INFERENCE = {"Authorization": f"Bearer {API_KEY}"}
ROWS = b"".join(
    json.dumps({"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": w.upper() + "!"}]})
    .encode() + b"\n"
    for w in ("cat", "dog", "sun")
)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(management_settings(tmp_path))) as client:
        yield client


def gateway_of(app: TestClient) -> Any:
    return app.app.state.gateway  # type: ignore[attr-defined]


def entries(app: TestClient, project: str = DEFAULT_PROJECT) -> list[AuditEntry]:
    """Every entry of `project`, newest first, once the writer has written what it was given."""
    gw = gateway_of(app)
    app.portal.call(gw.audit.flushed)  # type: ignore[union-attr]
    found, more = gw.registry.list_audit(project, limit=10_000)
    assert not more
    return found  # type: ignore[no-any-return]


def counted(metrics: Metrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("skillserve_audit_entries_total", {"outcome": outcome}) or 0.0


def action_routes(app: TestClient) -> list[tuple[str, str]]:
    """Every (method, template) of the app that is an action."""
    found = []
    for route in app.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, APIRoute):
            found += [(m, route.path) for m in sorted(route.methods or ()) if action_of(m, route.path) is not None]
    return sorted(found)


def concrete(template: str) -> str:
    path = template.replace("{model_id:path}", "x").replace("{step}", "1")
    for param in ("name", "model", "job_id", "file_id", "eval_id", "run_id", "completion_id", "batch_id", "project_id",
                  "key_id"):
        path = path.replace("{" + param + "}", "x")
    return path


# ------------------------------------------------------------------------------------ every admin route


def test_every_state_changing_route_is_a_named_action_or_changes_nothing(app: TestClient) -> None:
    routes = app.app.routes  # type: ignore[attr-defined]
    changing = {(m, r.path) for r in routes if isinstance(r, APIRoute) for m in (r.methods or ()) if m in CHANGES}
    unnamed = changing - set(ACTIONS) - NOT_ACTIONS
    assert not unnamed, f"state-changing routes without a name in service/api/audit.py's ACTIONS: {unnamed}"
    assert set(ACTIONS) <= changing, "ACTIONS names a route the app no longer has"


def test_every_admin_route_leaves_one_entry_of_who_what_and_how_it_ended(app: TestClient) -> None:
    replies = {}
    for method, template in action_routes(app):
        body = {"alias": "prod", "version": "3"} if template.endswith("/aliases") else {}
        for role, headers in (("admin", ADMIN), ("inference", INFERENCE)):
            replies[(method, template, role)] = app.request(
                method, concrete(template), headers=headers, json=body if method == "POST" else None
            )
    # Reads, generation and graders change nothing: no entry.
    app.get("/v1/files", headers=ADMIN)
    app.post("/v1/fine_tuning/alpha/graders/validate", headers=INFERENCE, json={})
    app.post("/v1/chat/completions", headers=INFERENCE, json={"model": "x", "messages": []})
    app.delete("/v1/files/file-x")  # no key: refused before any action, names nobody

    logged = entries(app) + entries(app, ORG_AUDIT_LOG)  # the operator's routes' in the organisation's log
    found = {(e.method, e.route, e.actor.role): e for e in logged}
    assert len(found) == len(replies) == len(logged), "one entry per action, none for anything else"
    for (method, template, role), reply in replies.items():
        got = found[(method, template, role)]
        assert got.action == ACTIONS[(method, template)]
        assert got.actor == AuditActor(key_id=key_id(ADMIN_KEY if role == "admin" else API_KEY), role=role,
                                         project=DEFAULT_PROJECT)
        assert got.status_code == reply.status_code, (method, template, role)
        failed = reply.status_code >= 400
        assert got.outcome == ("failed" if failed else "succeeded")
        assert got.error_code == (reply.json()["error"]["code"] if failed else None), (method, template, role)
        assert got.params == {k: ("1" if k == "step" else "x") for k in _params(template)}
    refused = found[("DELETE", "/v1/files/{file_id}", "inference")]
    assert (refused.status_code, refused.error_code) == (403, "admin_key_required")
    alias = found[("POST", "/adapters/{name}/aliases", "admin")]
    assert alias.detail == {"alias": "prod", "version": "3"} and alias.status_code == 404  # no such adapter yet


def _params(template: str) -> list[str]:
    return [part.strip("{}").split(":")[0] for part in template.split("/") if part.startswith("{")]


def test_an_upload_and_a_delete_name_the_file_and_the_keys_never_reach_the_store(
    app: TestClient, tmp_path: Path
) -> None:
    uploaded = app.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("rows.jsonl", ROWS)},
                        headers=ADMIN)
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    assert app.delete(f"/v1/files/{file_id}", headers=ADMIN).status_code == 200

    deleted, upload = entries(app)  # newest first
    assert (upload.action, upload.object_id, upload.outcome, upload.status_code) == (
        "file.upload", file_id, "succeeded", 200)
    assert (deleted.action, deleted.object_id, deleted.params) == ("file.delete", file_id, {"file_id": file_id})
    assert upload.actor.key_id == key_id(ADMIN_KEY)

    stored = [path for path in (tmp_path / "store").rglob("*") if path.is_file()]
    assert any(path.parts[-3] == "audit" for path in stored)
    for path in stored:
        data = path.read_bytes()
        assert ADMIN_KEY.encode() not in data and API_KEY.encode() not in data, path


# ------------------------------------------------------------------------------------ never in the action's way


class RefusingAudit(FileStore):
    """A file store that refuses every audit entry (down), or holds them until released."""

    def __init__(self, root: Path, down: bool = False):
        super().__init__(root)
        self.down = down
        self.released = threading.Event()
        if down:
            self.released.set()

    def put_bytes(self, key: str, data: bytes, **kwargs: Any) -> None:
        if key.startswith("audit/"):
            if self.down:
                raise StoreUnavailable("the store is down")
            self.released.wait()
        super().put_bytes(key, data, **kwargs)


def test_a_store_that_refuses_entries_fails_no_action_and_counts_each_lost_entry(app: TestClient,
                                                                                   tmp_path: Path) -> None:
    gw = gateway_of(app)
    gw.registry.store = RefusingAudit(tmp_path / "store", down=True)
    uploaded = app.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("rows.jsonl", ROWS)},
                        headers=ADMIN)
    assert uploaded.status_code == 200, uploaded.text
    assert app.get(f"/v1/files/{uploaded.json()['id']}", headers=ADMIN).status_code == 200
    assert entries(app) == [] and counted(gw.metrics, "failed") == 1 and counted(gw.metrics, "written") == 0


def entry(at: float, action: str = "adapter.delete", project: str = DEFAULT_PROJECT) -> AuditEntry:
    return AuditEntry(id=new_audit_id(at), at=at, actor=AuditActor(key_id="key_x", role="admin", project=project),
                      action=action, outcome="succeeded")


def test_a_slow_store_never_holds_the_action_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    store = RefusingAudit(tmp_path / "store")
    registry, metrics = Registry(store), Metrics()

    async def scenario() -> list[bool]:
        writer = AuditWriter(registry, metrics, queue_size=2)
        writer.start()
        taken = [writer.offer(entry(time.time()))]
        while writer._queue.qsize():  # noqa: SLF001 - until the writer holds the first entry at the store
            await asyncio.sleep(0.01)
        taken += [writer.offer(entry(time.time())) for _ in range(4)]
        store.released.set()
        await writer.flushed()
        await writer.stop()
        return taken

    assert asyncio.run(scenario()) == [True, True, True, False, False]  # one at the store, two queued, two dropped
    assert counted(metrics, "dropped") == 2 and counted(metrics, "written") == 3
    assert len(registry.list_audit(DEFAULT_PROJECT, limit=100)[0]) == 3


# ------------------------------------------------------------------------------------ reading it


def test_admins_page_through_their_projects_entries_newest_first_and_inference_keys_get_403(
    app: TestClient
) -> None:
    registry: Registry = gateway_of(app).registry
    now = time.time()
    written = [entry(now - 60 + i, "alias.set" if i % 2 else "adapter.delete") for i in range(5)]
    for made in (*written, entry(now, project="other")):
        registry.put_audit(made)
    newest_first = [e.id for e in reversed(written)]

    first = app.get("/v1/audit", params={"limit": 2}, headers=ADMIN).json()
    assert [e["id"] for e in first["data"]] == newest_first[:2] and first["has_more"]
    assert first["object"] == "list" and first["data"][0]["object"] == "audit.entry"
    assert (first["first_id"], first["last_id"]) == (newest_first[0], newest_first[1])
    rest = app.get("/v1/audit", params={"after": first["last_id"]}, headers=ADMIN).json()
    assert [e["id"] for e in rest["data"]] == newest_first[2:] and not rest["has_more"]  # not the other project's
    aliases = app.get("/v1/audit", params={"action": "alias.set"}, headers=ADMIN).json()
    assert [e["id"] for e in aliases["data"]] == [written[3].id, written[1].id]

    denied = app.get("/v1/audit", headers=INFERENCE)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "admin_key_required"
    bad = app.get("/v1/audit", params={"after": "../x"}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"
    assert app.get("/v1/audit", params={"limit": 101}, headers=ADMIN).status_code in (400, 422)


def test_admins_filter_entries_by_outcome_object_and_time_and_a_time_range_reads_no_entry_outside_it(
    app: TestClient
) -> None:
    registry: Registry = gateway_of(app).registry
    now = float(int(time.time()))  # whole seconds: the range is read from the ids, to the millisecond

    def made(at: float, action: str, object_id: str, failed: bool = False) -> AuditEntry:
        return AuditEntry(id=new_audit_id(at), at=at, actor=AuditActor(key_id="key_x", role="admin"), action=action,
                          object_id=object_id, status_code=404 if failed else 200,
                          error_code="not_found" if failed else None, outcome="failed" if failed else "succeeded")

    old = made(now - 3600, "file.upload", "file-a")
    deleted = made(now - 120, "file.delete", "file-a")
    missing = made(now - 60, "file.delete", "file-b", failed=True)
    newest = made(now - 1, "adapter.delete", "shout@1")
    for entry_ in (old, deleted, missing, newest):
        registry.put_audit(entry_)

    def ids(**params: Any) -> list[str]:
        reply = app.get("/v1/audit", params=params, headers=ADMIN)
        assert reply.status_code == 200, reply.text
        return [e["id"] for e in reply.json()["data"]]

    assert ids(outcome="failed") == [missing.id]
    assert ids(outcome="succeeded", object_id="file-a") == [deleted.id, old.id]
    assert ids(action="file.delete", outcome="succeeded") == [deleted.id]
    assert ids(start_time=now - 600) == [newest.id, missing.id, deleted.id]
    assert ids(start_time=now - 600, end_time=now - 60) == [deleted.id]  # the end is left out
    assert ids(end_time=now - 60, limit=1) == [deleted.id]
    assert ids(end_time=now - 60, after=deleted.id) == [old.id]
    assert ids(start_time=now + 60) == []

    # The range is read from the ids: an entry outside it is never read, so an unreadable one there costs nothing.
    reads: list[str] = []
    store = registry.store
    real_get = store.get_bytes
    store.get_bytes = lambda key: reads.append(key) or real_get(key)  # type: ignore[method-assign]
    assert ids(start_time=now - 90, end_time=now - 30) == [missing.id]
    assert [key.rpartition("/")[2] for key in reads] == [f"{missing.id}.json"]

    for refused in ({"outcome": "maybe"}, {"start_time": now, "end_time": now - 1}, {"start_time": -1}):
        reply = app.get("/v1/audit", params=refused, headers=ADMIN)
        assert reply.status_code in (400, 422), refused
        assert reply.json()["error"]["param"] in ("outcome", "end_time", "start_time"), reply.json()


def test_admins_filter_entries_by_the_key_that_acted_and_a_malformed_key_id_is_refused(app: TestClient) -> None:
    assert app.delete("/v1/files/file-gone", headers=ADMIN).status_code == 404
    assert app.delete("/v1/files/file-gone", headers=INFERENCE).status_code == 403
    admins, inferences = (key_id(ADMIN_KEY), key_id(API_KEY))
    by_admin, by_inference = ([e.id for e in entries(app) if e.actor.key_id == k] for k in (admins, inferences))
    assert len(by_admin) == len(by_inference) == 1

    def ids(**params: Any) -> list[str]:
        reply = app.get("/v1/audit", params=params, headers=ADMIN)
        assert reply.status_code == 200, reply.text
        return [e["id"] for e in reply.json()["data"]]

    assert ids(actor_key_id=inferences) == by_inference
    assert ids(actor_key_id=admins, outcome="failed") == by_admin
    assert ids(actor_key_id=inferences, outcome="succeeded") == []
    assert ids(actor_key_id="key_" + "0" * 16) == []
    for malformed in ("key_x", admins.upper(), admins + "0", ADMIN_KEY):
        reply = app.get("/v1/audit", params={"actor_key_id": malformed}, headers=ADMIN)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "actor_key_id", malformed
        assert ADMIN_KEY not in reply.text  # a key pasted by mistake is not echoed back


def test_the_cli_shows_the_audit_log(app: TestClient, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    app.headers.update(ADMIN)
    assert app.delete("/adapters/nothing-here").status_code == 404
    entries(app)  # the writer's queue written before the CLI reads the log
    monkeypatch.setattr(cli, "connect", lambda args: _Borrowed(app))
    assert cli.main(["--key", ADMIN_KEY, "audit", "--action", "adapter.delete"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert key_id(ADMIN_KEY) in line and "adapter.delete" in line and "nothing-here" in line and "404 not_found" in line
    assert cli.main(["--key", ADMIN_KEY, "audit", "--outcome", "succeeded", "--object", "nothing-here"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1  # the heading alone: that delete failed

    # By the key that acted, and by time: unix seconds or ISO 8601 (UTC unless it says).
    assert app.delete("/adapters/nothing-here", headers=INFERENCE).status_code == 403
    at = entries(app)[0].at
    assert cli.main(["--key", ADMIN_KEY, "audit", "--key-id", key_id(API_KEY)]) == 0
    shown = capsys.readouterr().out.splitlines()[1:]
    assert len(shown) == 1 and key_id(API_KEY) in shown[0] and "403 admin_key_required" in shown[0]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(at)))
    window = {(str(int(at)), None): 1, (iso, None): 1, (iso + "+00:00", None): 1, (iso + "-01:00", None): 0,
              (str(int(at) + 1), None): 0, (None, iso): 0, (None, str(int(at) + 1)): 1}
    for (since, until), count in window.items():
        flags = [*(["--since", since] if since else []), *(["--until", until] if until else [])]
        assert cli.main(["--key", ADMIN_KEY, "audit", "--key-id", key_id(API_KEY), *flags]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 1 + count, flags
    with pytest.raises(SystemExit):
        cli.main(["--key", ADMIN_KEY, "audit", "--since", "yesterday"])
    assert "neither unix seconds nor an ISO date" in capsys.readouterr().err
    assert cli.main(["--key", ADMIN_KEY, "audit", "--organization", "--key-id", key_id(API_KEY)]) == 2
    assert "--key-id filter a project's log, not the organisation's" in capsys.readouterr().err


class _Borrowed:
    """The in-process client, lent to the CLI for one `with` (which must not start the app a second time)."""

    def __init__(self, client: httpx.Client):
        self.client = client

    def __enter__(self) -> httpx.Client:
        return self.client

    def __exit__(self, *exc: object) -> None:
        return None


def test_retention_deletes_entries_older_than_the_limit_by_their_ids_alone(store: ObjectStore) -> None:
    registry = Registry(store)
    now = time.time()
    old, kept = entry(now - 400 * 86400), entry(now - 86400)
    for made in (old, kept, entry(now - 400 * 86400, project="other")):
        registry.put_audit(made)
    assert registry.prune_audit(now, 365 * 86400) == 2
    assert [e.id for e in registry.list_audit(DEFAULT_PROJECT)[0]] == [kept.id]
    assert registry.list_audit("other") == ([], False)


# ------------------------------------------------------------------------------------ outside a request


def test_a_version_the_trainer_publishes_is_recorded_and_a_refusing_store_costs_the_entry_not_the_job(
    tmp_path: Path,
) -> None:
    from trainer.job import _audit_published  # what trainer/job.py calls right after it publishes

    manifest = Manifest.model_construct(name="shout", version="7")
    registry = Registry(FileStore(tmp_path / "store"))
    _audit_published(registry, "job1", manifest)
    (published,), _ = registry.list_audit(DEFAULT_PROJECT)
    assert (published.action, published.object_id, published.actor.role) == ("adapter.publish", "shout@7", "runner")

    refusing = Registry(RefusingAudit(tmp_path / "down", down=True))
    _audit_published(refusing, "job2", manifest)  # logs, never raises: the version stays published
    assert refusing.list_audit(DEFAULT_PROJECT) == ([], False)


def test_each_operator_action_is_in_the_projects_log_and_the_organisations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Creating and archiving a project, creating, rotating and revoking its keys: one entry each in that project's
    log (its admins see who changed their keys) and in the organisation's (GET /v1/organization/audit_logs),
    naming the operator key's id, never a key; none in the operator's own (default) project's log."""
    operator_key = "test-operator-key"
    operator = {"Authorization": f"Bearer {operator_key}"}
    with TestClient(create_app(management_settings(tmp_path, operator_keys=[operator_key]))) as app:
        project = app.post("/v1/organization/projects", json={"name": "team a"}, headers=operator).json()["id"]
        other = app.post("/v1/organization/projects", json={"name": "team b"}, headers=operator).json()["id"]
        where = f"/v1/organization/projects/{project}"
        made = app.post(f"{where}/api_keys", json={"role": "admin"}, headers=operator).json()
        rotated = app.post(f"{where}/api_keys/{made['id']}/rotate", headers=operator).json()
        assert app.delete(f"{where}/api_keys/{rotated['id']}", headers=operator).status_code == 200
        assert app.delete(f"{where}/api_keys/key_0000000000000000", headers=operator).status_code == 404
        assert app.post(f"{where}/archive", headers=operator).status_code == 200
        assert app.post("/v1/organization/projects/proj_0000000000000000/archive", headers=operator).status_code == 404

        expected = ["project.create", "key.create", "key.rotate", "key.revoke", "key.revoke", "project.archive"]
        own = entries(app, project)
        assert [e.action for e in reversed(own)] == expected
        assert [e.outcome for e in reversed(own)] == ["succeeded"] * 4 + ["failed", "succeeded"]
        assert {e.project for e in own} == {project} and {e.actor.key_id for e in own} == {key_id(operator_key)}
        assert {e.actor.role for e in own} == {"operator"}
        assert own[-1].object_id == project  # project.create: the project made
        assert [e.action for e in entries(app, other)] == ["project.create"]
        assert entries(app, DEFAULT_PROJECT) == []  # the operator's own project's log holds none of them
        assert entries(app, "proj_0000000000000000") == []  # no log for a project that does not exist
        stored = b"".join(p.read_bytes() for p in (tmp_path / "store" / "audit").rglob("*.json"))
        for key in (made["value"], rotated["value"], operator_key):
            assert key.encode() not in stored

        logs = app.get("/v1/organization/audit_logs", params={"limit": 100}, headers=operator).json()
        assert len(logs["data"]) == len(expected) + 2  # team b's creation and the archive of no project
        assert {e["id"] for e in logs["data"]} >= {e.id for e in own}
        mine = app.get("/v1/organization/audit_logs", params={"project_ids[]": project}, headers=operator).json()
        assert [e["id"] for e in mine["data"]] == [e.id for e in own]
        revokes = app.get(
            "/v1/organization/audit_logs", params={"project_ids[]": [project, other], "event_types[]": "key.revoke"},
            headers=operator,
        ).json()
        assert [e["action"] for e in revokes["data"]] == ["key.revoke", "key.revoke"]
        first = app.get("/v1/organization/audit_logs", params={"limit": 2}, headers=operator).json()
        after = app.get("/v1/organization/audit_logs", params={"limit": 100, "after": first["last_id"]},
                        headers=operator).json()
        assert first["has_more"] and [e["id"] for e in first["data"] + after["data"]] == [e["id"] for e in logs["data"]]
        admin = app.post(f"/v1/organization/projects/{other}/api_keys", json={"role": "admin"}, headers=operator)
        project_admin = {"Authorization": f"Bearer {admin.json()['value']}"}
        for headers in (ADMIN, INFERENCE, project_admin):
            reply = app.get("/v1/organization/audit_logs", headers=headers)
            assert reply.status_code == 403 and reply.json()["error"]["code"] == "operator_key_required"
        entries(app, other)  # written
        seen = app.get("/v1/audit", headers=project_admin).json()["data"]  # b's admins read b's own log
        assert [e["action"] for e in seen] == ["key.create", "project.create"] and seen[0]["project"] == other

        monkeypatch.setattr(cli, "connect", lambda args: _Borrowed(app))
        app.headers.update(operator)
        capsys.readouterr()
        assert cli.main(["audit", "--organization", "--project", project, "--action", "key.rotate"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 2 and "key.rotate" in lines[1] and key_id(operator_key) in lines[1]
