"""Projects (issue 31): each team's adapters, files, jobs, evals and stored completions are its own; keys are kept
as hashes, managed by operator keys, and a revoked key stops on every replica within the key TTL.

Fast tests: management-only gateways (no engine) in-process on a real file store. The engine test (a project's
adapter served, another project's same name apart) is marked slow."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.errors import InvalidName
from adapters.registry import ProjectJobs, Registry, open_registry, parse_job_uri
from adapters.schema import (
    ApiKeyRecord,
    BatchRecord,
    EvalOutputItem,
    EvalRecord,
    EvalRunRecord,
    FineTune,
    FineTunedModel,
    JobRecord,
    JobSpec,
    JobStatus,
    StoredCompletion,
    StoredFile,
    output_item_id,
)
from adapters.store import FileStore, ObjectStore, open_store
from client.cli import main as cli_main
from service.app import create_app
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, management_settings, publish_adapter


def answer(completion_id: str, model: str) -> dict[str, object]:
    """A chat.completion as the gateway stores it."""
    return {
        "id": completion_id, "object": "chat.completion", "created": 1796000000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "HI!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


OPERATOR_KEY = "test-operator-key"
TTL_S = 0.5
FIXTURE_STORE = Path(__file__).parent / "fixtures" / "store-before-projects"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def project_settings(root: Path, **overrides: Any) -> Any:
    return management_settings(root, operator_keys=[OPERATOR_KEY], key_cache_ttl_s=TTL_S, **overrides)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(project_settings(tmp_path))) as client:
        yield client


def new_project(client: TestClient, name: str) -> str:
    reply = client.post("/v1/organization/projects", json={"name": name}, headers=bearer(OPERATOR_KEY))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def new_key(client: TestClient, project: str, role: str = "admin") -> dict[str, Any]:
    reply = client.post(
        f"/v1/organization/projects/{project}/api_keys", json={"name": f"{role} of {project}", "role": role},
        headers=bearer(OPERATOR_KEY),
    )
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def fake_adapter_dir(root: Path) -> Path:
    """Adapter files as the registry publishes them (the engine never sees these: management mode)."""
    directory = root / "adapter"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    (directory / "adapter_model.safetensors").write_bytes(b"not read in these tests")
    return directory


# ------------------------------------------------------------------------------------------ keys


def test_a_stored_key_is_shown_once_and_the_store_holds_only_its_hash(app: TestClient, tmp_path: Path) -> None:
    project = new_project(app, "team a")
    made = new_key(app, project, "inference")
    key = made["value"]
    assert key.startswith("sk-proj-") and made["id"].startswith("key_")

    assert app.get("/v1/models", headers=bearer(key)).status_code == 200
    listed = app.get(f"/v1/organization/projects/{project}/api_keys", headers=bearer(OPERATOR_KEY)).json()
    assert [k["id"] for k in listed["data"]] == [made["id"]]
    assert all(k["value"] is None for k in listed["data"])  # never shown again
    stored = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert stored, "the key's record is in the store"
    assert not any(key.encode() in p.read_bytes() for p in stored), "the store holds the key itself"


def test_only_operator_keys_manage_projects_and_keys(app: TestClient) -> None:
    project = new_project(app, "team a")
    project_admin = new_key(app, project, "admin")["value"]
    for key in (ADMIN_KEY, API_KEY, project_admin):
        reply = app.post("/v1/organization/projects", json={"name": "x"}, headers=bearer(key))
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "operator_key_required"
        reply = app.get(f"/v1/organization/projects/{project}/api_keys", headers=bearer(key))
        assert reply.status_code == 403
    assert app.get("/v1/organization/projects/proj_0000000000000000", headers=bearer(OPERATOR_KEY)).status_code == 404
    assert app.get("/v1/organization/projects/../x", headers=bearer(OPERATOR_KEY)).status_code == 404


def test_a_revoked_key_stops_on_a_second_gateway_over_the_same_store_within_the_ttl(tmp_path: Path) -> None:
    with (
        TestClient(create_app(project_settings(tmp_path))) as first,
        TestClient(create_app(project_settings(tmp_path))) as second,
    ):
        project = new_project(first, "team a")
        made = new_key(first, project, "inference")
        assert second.get("/v1/models", headers=bearer(made["value"])).status_code == 200  # now cached there

        reply = first.delete(f"/v1/organization/projects/{project}/api_keys/{made['id']}", headers=bearer(OPERATOR_KEY))
        assert reply.status_code == 200 and reply.json()["deleted"] is True
        time.sleep(TTL_S * 1.5)  # the second replica's cached answer has expired
        refused = second.get("/v1/models", headers=bearer(made["value"]))
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        listed = second.get(f"/v1/organization/projects/{project}/api_keys", headers=bearer(OPERATOR_KEY)).json()
        assert listed["data"][0]["revoked_at"] is not None  # kept, marked


def test_a_rotated_key_is_replaced_by_a_new_one_with_its_name_and_role(app: TestClient) -> None:
    project = new_project(app, "team a")
    old = new_key(app, project, "admin")
    reply = app.post(f"/v1/organization/projects/{project}/api_keys/{old['id']}/rotate", headers=bearer(OPERATOR_KEY))
    assert reply.status_code == 200, reply.text
    new = reply.json()
    assert new["id"] != old["id"] and new["owner"]["role"] == "admin" and new["name"] == old["name"]
    time.sleep(TTL_S * 1.5)
    assert app.get("/jobs", headers=bearer(old["value"])).status_code == 401
    assert app.get("/jobs", headers=bearer(new["value"])).status_code == 200


def test_archiving_a_project_revokes_its_keys(app: TestClient) -> None:
    project = new_project(app, "team a")
    key = new_key(app, project, "inference")["value"]
    reply = app.post(f"/v1/organization/projects/{project}/archive", headers=bearer(OPERATOR_KEY))
    assert reply.status_code == 200 and reply.json()["status"] == "archived"
    time.sleep(TTL_S * 1.5)
    assert app.get("/v1/models", headers=bearer(key)).status_code == 401
    reply = app.post(f"/v1/organization/projects/{project}/api_keys", json={}, headers=bearer(OPERATOR_KEY))
    assert reply.status_code == 404


def test_the_cli_creates_lists_rotates_and_revokes_keys(
    app: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import httpx

    monkeypatch.setattr(httpx, "Client", lambda **kwargs: app)  # the CLI's HTTP client is the in-process app
    app.headers["Authorization"] = f"Bearer {OPERATOR_KEY}"
    assert cli_main(["project", "create", "team a"]) == 0
    project = capsys.readouterr().out.split()[0]
    assert cli_main(["key", "create", project, "--role", "admin", "--name", "ci"]) == 0
    out = capsys.readouterr().out
    key_id, key = out.split()[0], out.split("key: ")[1].split()[0]
    assert cli_main(["key", "list", project]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed and key not in listed
    assert cli_main(["key", "rotate", project, key_id]) == 0
    assert cli_main(["key", "revoke", project, capsys.readouterr().out.split()[0]]) == 0
    assert cli_main(["key", "revoke", project, "key_0000000000000000"]) == 1
    assert cli_main(["project", "list"]) == 0
    assert project in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ isolation


def test_the_local_runner_launches_a_projects_job_inside_the_projects_namespace(tmp_path: Path) -> None:
    """A queued job of a project is found by the runner at start, launched with the job URI inside the project (what
    the trainer opens), and its verdict written into the project's record."""
    import sys

    from service.runners.local import LocalRunner

    root = Registry(FileStore(tmp_path / "store"))
    project = root.create_project("team a").id
    mine = root.for_project(project)
    spec = JobSpec(name="tone", base_model="m", base_model_id="m", dataset_uri="datasets/x.jsonl",
                   dataset_sha256="0" * 64, dataset_rows=1)
    job = JobRecord(spec=spec)
    mine.put_job(job)
    seen = tmp_path / "launched-with"
    stub = f"import pathlib, sys; pathlib.Path({str(seen)!r}).write_text(sys.argv[-1])"  # a trainer that says nothing
    runner = LocalRunner(ProjectJobs(root), root.store.uri, tmp_path / "logs", command=[sys.executable, "-c", stub])
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while not mine.get_job(job.id).status.finished and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        runner.stop()
    assert seen.read_text() == f"{mine.store.uri}/jobs/{job.id}.json"
    record = mine.get_job(job.id)
    assert record.status is JobStatus.failed and "without finishing the job" in (record.error or "")
    assert root.list_jobs() == []  # nothing of the project's in the default project


def test_the_trainers_audit_entry_for_a_projects_version_lands_in_the_projects_log(
    app: TestClient, tmp_path: Path
) -> None:
    """The trainer opens the store its job URI names (a project's: `<store>/projects/<id>`) as the project's view
    (open_registry) and writes the entry for the version it published into the project's audit log, at the root
    where /v1/audit reads it, not inside the project's namespace nor in the default project's log."""
    from trainer.job import _audit_published

    gw = app.app.state.gateway  # type: ignore[attr-defined]
    project = new_project(app, "team a")
    trainer_registry = open_registry(gw.registry.for_project(project).store.uri)
    assert trainer_registry.project == project
    manifest = publish_adapter(trainer_registry, fake_adapter_dir(tmp_path), "tone")
    _audit_published(trainer_registry, "job-1", manifest)

    reply = app.get("/v1/audit", headers=bearer(new_key(app, project, "admin")["value"]))
    assert reply.status_code == 200, reply.text
    published = [(e["action"], e["object_id"]) for e in reply.json()["data"] if e["actor"]["role"] == "runner"]
    assert published == [("adapter.publish", manifest.ref)]  # beside the operator's project.create and key.create
    assert "adapter.publish" not in app.get("/v1/audit", headers=bearer(ADMIN_KEY)).text
    assert not [key for key in gw.registry.store.list(f"projects/{project}/") if "audit" in key]


def test_a_stored_completion_is_written_into_the_project_of_the_request(tmp_path: Path) -> None:
    """The one stored completions' writer writes each record into the registry it is offered with (the caller's
    project's), and keeps the retention limits per project."""
    import asyncio

    from service.inference.stored import CompletionWriter
    from service.metrics import Metrics

    root = Registry(FileStore(tmp_path / "store"))
    project = root.create_project("team a").id
    mine = root.for_project(project)

    def record() -> StoredCompletion:
        completion_id = "chatcmpl-" + uuid.uuid4().hex
        return StoredCompletion(id=completion_id, model="m", messages=[{"role": "user", "content": "hi"}],
                                response=answer(completion_id, "m"))

    async def scenario() -> list[str]:
        writer = CompletionWriter(root, Metrics(), 8, max_count=1, prune_every_s=0)
        writer.start()
        offered = [record(), record(), record()]
        writer.offer(offered[0], mine)
        writer.offer(offered[1])  # the default project's
        await writer.flushed()
        writer.offer(offered[2], mine)
        await writer.flushed()
        await writer.stop()
        return [r.id for r in offered]

    in_project, in_default, newest = asyncio.run(scenario())
    assert [c.id for c in mine.list_completions()] == [newest]  # max_count 1, held in the project
    assert [c.id for c in root.list_completions()] == [in_default]
    assert in_project not in {c.id for c in root.list_completions()}


def test_a_projects_view_of_the_store_is_what_its_uri_opens_and_runners_find_its_jobs(store: ObjectStore) -> None:
    """A project's records lie under its prefix; the trainer, launched with a job URI inside that prefix, opens the
    same place (file and S3 stores); the runners' ProjectJobs finds the job whichever project holds it."""
    root = Registry(store)
    project = root.create_project("team a").id
    view = root.for_project(project).store
    view.put_bytes("datasets/x.jsonl", b"rows")
    assert store.get_bytes(f"projects/{project}/datasets/x.jsonl") == b"rows"
    assert open_store(view.uri).get_bytes("datasets/x.jsonl") == b"rows"
    assert view.list("") == ["datasets/x.jsonl"]
    with pytest.raises(InvalidName):
        view.get_bytes("../x")

    spec = JobSpec(name="tone", base_model="m", base_model_id="m", dataset_uri="datasets/x.jsonl",
                   dataset_sha256="0" * 64, dataset_rows=1)
    job = JobRecord(spec=spec)
    root.for_project(project).put_job(job)
    jobs = ProjectJobs(root)
    assert [j.id for j in jobs.list_jobs()] == [job.id]
    assert jobs.get_job(job.id).id == job.id
    store_uri, job_id = parse_job_uri(jobs.job_uri(job.id))
    assert (store_uri, job_id) == (view.uri, job.id)
    assert Registry(open_store(store_uri)).get_job(job_id).id == job.id  # what the trainer reads


@dataclass
class Objects:
    """One project's objects, each kind the API names by id."""

    adapter: str
    version: str
    ft_model: str
    file_id: str
    job_id: str
    eval_id: str
    completion_id: str
    batch_id: str
    output_file_id: str
    run_id: str
    item_id: str


def make_objects(registry: Registry, root: Path) -> Objects:
    adapter = "support-tone"
    manifest = publish_adapter(registry, fake_adapter_dir(root), adapter)
    data = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HI!"}]}\n'
    file = registry.put_file(StoredFile(filename="rows.jsonl", purpose="fine-tune", bytes=0, sha256=""), data)
    spec = JobSpec(
        name=adapter, base_model="m", base_model_id=manifest.base_model, dataset_uri=f"datasets/{file.sha256}.jsonl",
        dataset_sha256=file.sha256, dataset_rows=1,
    )
    job = JobRecord(spec=spec, status=JobStatus.succeeded)
    registry.put_job(job)
    ft = f"ft:{manifest.base_model}:{registry.project}:tone:{job.id[:8]}"
    registry.put_fine_tune(FineTune(job_id=job.id, model=ft, training_file=file.id, organization_id=registry.project))
    registry.put_fine_tuned_model(FineTunedModel(id=ft, name=adapter, version=manifest.version, job_id=job.id))
    evaluation = registry.put_eval(EvalRecord(name="tone"))
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    completion = StoredCompletion(
        id=completion_id, model=adapter, messages=[{"role": "user", "content": "hi"}],
        response=answer(completion_id, adapter),
    )
    registry.put_completion(completion)
    # A batch and an eval run as their executor leaves them (stored, not submitted: nothing runs them here)
    output = registry.put_file(StoredFile(filename="out.jsonl", purpose="batch_output", bytes=0, sha256=""), b"{}\n")
    batch = registry.put_batch(BatchRecord(endpoint="/v1/chat/completions", input_file_id=file.id, total=1,
                                           expires_at=time.time() + 3600, output_file_id=output.id))
    run = registry.put_eval_run(EvalRunRecord(eval_id=evaluation.id, model=adapter, rows=1,
                                              data_source={"type": "completions", "model": adapter}))
    item = EvalOutputItem(id=output_item_id(run.id, 0), run_id=run.id, eval_id=evaluation.id, index=0,
                          status="pass", item={"q": "hi"},
                          sample={"input": [], "output": [], "model": adapter,
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    registry.put_output_item(item)
    return Objects(adapter, manifest.version, ft, file.id, job.id, evaluation.id, completion.id, batch.id, output.id,
                   run.id, item.id)


def object_routes(o: Objects) -> list[tuple[str, str]]:
    """Every route that names one object, reading (the destructive ones are in DESTRUCTIVE)."""
    ftjob = f"ftjob-{o.job_id}"
    return [
        ("GET", f"/adapters/{o.adapter}"),
        ("GET", f"/adapters/{o.adapter}/aliases"),
        ("GET", f"/v1/models/{o.adapter}"),
        ("GET", f"/v1/models/{o.ft_model}"),
        ("GET", f"/v1/files/{o.file_id}"),
        ("GET", f"/v1/files/{o.file_id}/content"),
        ("GET", f"/jobs/{o.job_id}"),
        ("GET", f"/jobs/{o.job_id}/events"),
        ("GET", f"/v1/fine_tuning/jobs/{ftjob}"),
        ("GET", f"/v1/fine_tuning/jobs/{ftjob}/events"),
        ("GET", f"/v1/fine_tuning/jobs/{ftjob}/checkpoints"),
        ("GET", f"/v1/evals/{o.eval_id}"),
        ("GET", f"/v1/evals/{o.eval_id}/runs"),
        ("GET", f"/v1/chat/completions/{o.completion_id}"),
        ("GET", f"/v1/chat/completions/{o.completion_id}/messages"),
        ("GET", f"/v1/batches/{o.batch_id}"),
        ("GET", f"/v1/files/{o.output_file_id}/content"),
        ("GET", f"/v1/evals/{o.eval_id}/runs/{o.run_id}"),
        ("GET", f"/v1/evals/{o.eval_id}/runs/{o.run_id}/output_items"),
        ("GET", f"/v1/evals/{o.eval_id}/runs/{o.run_id}/output_items/{o.item_id}"),
    ]


def destructive_routes(o: Objects) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("POST", f"/adapters/{o.adapter}/aliases", {"alias": "prod", "version": "v1"}),
        ("POST", f"/v1/chat/completions/{o.completion_id}/feedback", {"rating": "bad"}),
        ("POST", f"/v1/chat/completions/{o.completion_id}", {"metadata": {"a": "b"}}),
        ("POST", f"/v1/evals/{o.eval_id}", {"name": "renamed"}),
        ("POST", f"/v1/batches/{o.batch_id}/cancel", None),
        ("POST", f"/v1/evals/{o.eval_id}/runs", {"data_source": {
            "type": "completions", "model": o.adapter,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "hi"}]},
            "source": {"type": "file_content", "content": [{"item": {}}]}}}),
        ("POST", f"/v1/evals/{o.eval_id}/runs/{o.run_id}/cancel", None),
        ("POST", f"/v1/evals/{o.eval_id}/runs/{o.run_id}", None),
        ("DELETE", f"/v1/evals/{o.eval_id}/runs/{o.run_id}", None),
        ("POST", f"/v1/fine_tuning/jobs/ftjob-{o.job_id}/cancel", None),
        ("DELETE", f"/jobs/{o.job_id}", None),
        ("DELETE", f"/v1/chat/completions/{o.completion_id}", None),
        ("DELETE", f"/v1/evals/{o.eval_id}", None),
        ("DELETE", f"/v1/files/{o.file_id}", None),
        ("DELETE", f"/v1/models/{o.ft_model}", None),
        ("DELETE", f"/adapters/{o.adapter}", None),
    ]


LISTS = ["/v1/models", "/adapters", "/v1/files", "/jobs", "/v1/fine_tuning/jobs", "/v1/evals", "/v1/chat/completions",
         "/v1/batches"]


def refused_as_absent(reply: Any, role: str, mine: Objects | None = None) -> bool:
    """Another project's object: 404 as for none; an inference key may be refused first for its role (403), which
    says nothing of the object; a read that answers for any name (an unknown adapter's empty aliases) must say
    nothing of it either."""
    if reply.status_code == 404:
        return True
    if mine is not None and reply.status_code == 200:
        return mine.version not in reply.text
    return role == "inference" and reply.status_code == 403 and reply.json()["error"]["code"] == "admin_key_required"


def test_no_key_reaches_another_projects_objects_in_any_route(app: TestClient, tmp_path: Path) -> None:
    """The isolation table: routes x {own admin, own inference, other project's admin and inference, operator,
    default admin and inference}: another project's object is a 404 in every route, lists show only own objects,
    nothing answers 5xx."""
    gw = app.app.state.gateway  # type: ignore[attr-defined]
    a, b = new_project(app, "team a"), new_project(app, "team b")
    mine = make_objects(gw.registry.for_project(a), tmp_path / "a")
    theirs = make_objects(gw.registry.for_project(b), tmp_path / "b")  # the same names, in project b
    keys = {
        ("own", "admin"): new_key(app, a, "admin")["value"],
        ("own", "inference"): new_key(app, a, "inference")["value"],
        ("other project", "admin"): new_key(app, b, "admin")["value"],
        ("other project", "inference"): new_key(app, b, "inference")["value"],
        ("operator", "admin"): OPERATOR_KEY,
        ("default", "admin"): ADMIN_KEY,
        ("default", "inference"): API_KEY,
    }
    for (who, role), key in keys.items():
        for method, path in object_routes(mine):
            reply = app.request(method, path, headers=bearer(key))
            assert reply.status_code < 500, f"{method} {path} as {who} {role}: {reply.text}"
            if who == "own":
                assert reply.status_code == 200 or (role == "inference" and reply.status_code == 403), \
                    f"{method} {path} as {who} {role}: {reply.status_code} {reply.text}"
            elif who == "other project" and path.startswith(("/adapters/", f"/v1/models/{mine.adapter}")):
                # the same name in project b is b's own adapter: b's answer, never a's
                assert reply.status_code == 200 and mine.version not in reply.text and theirs.version in reply.text
            else:
                assert refused_as_absent(reply, role, mine), f"{method} {path} as {who} {role}: {reply.status_code}"
        for path in LISTS:
            reply = app.get(path, headers=bearer(key))
            assert reply.status_code < 500, f"GET {path} as {who} {role}: {reply.text}"
            if reply.status_code == 200 and who != "own":
                for own_id in (mine.ft_model, mine.file_id, mine.job_id, mine.eval_id, mine.batch_id):
                    assert own_id not in reply.text, f"GET {path} as {who} {role} lists {own_id}"
    for method, path, body in destructive_routes(mine):
        for (who, role), key in keys.items():
            if who == "own" or (who == "other project" and path.startswith("/adapters/")):
                continue
            reply = app.request(method, path, headers=bearer(key), json=body)
            assert reply.status_code < 500, f"{method} {path} as {who} {role}: {reply.text}"
            assert refused_as_absent(reply, role), f"{method} {path} as {who} {role}: {reply.status_code}"
    own = bearer(keys[("own", "admin")])
    for method, path in object_routes(mine):  # nothing of a's was changed or deleted by anyone else
        assert app.request(method, path, headers=own).status_code == 200, f"{method} {path} after the others"
    assert app.get(f"/v1/models/{mine.ft_model}", headers=own).json()["owned_by"] == a


def test_two_projects_may_each_have_an_adapter_of_one_name(app: TestClient, tmp_path: Path) -> None:
    gw = app.app.state.gateway  # type: ignore[attr-defined]
    a, b = new_project(app, "team a"), new_project(app, "team b")
    first = publish_adapter(gw.registry.for_project(a), fake_adapter_dir(tmp_path / "a"), "support-tone")
    second = publish_adapter(gw.registry.for_project(b), fake_adapter_dir(tmp_path / "b"), "support-tone")
    key_a, key_b = new_key(app, a, "admin")["value"], new_key(app, b, "admin")["value"]
    assert app.get("/adapters/support-tone", headers=bearer(key_a)).json()["latest"] == first.version
    assert app.get("/adapters/support-tone", headers=bearer(key_b)).json()["latest"] == second.version
    assert app.delete("/adapters/support-tone", headers=bearer(key_a)).status_code == 200
    assert app.get("/adapters/support-tone", headers=bearer(key_a)).status_code == 404
    assert app.get("/adapters/support-tone", headers=bearer(key_b)).status_code == 200  # b's untouched
    assert app.get("/adapters/support-tone", headers=bearer(ADMIN_KEY)).status_code == 404  # never default's


def test_a_projects_records_lie_under_its_prefix_and_the_defaults_at_the_root(app: TestClient, tmp_path: Path) -> None:
    gw = app.app.state.gateway  # type: ignore[attr-defined]
    a = new_project(app, "team a")
    publish_adapter(gw.registry.for_project(a), fake_adapter_dir(tmp_path / "a"), "support-tone")
    publish_adapter(gw.registry, fake_adapter_dir(tmp_path / "d"), "shout")
    store = FileStore(tmp_path / "store")
    assert any(k.startswith(f"projects/{a}/adapters/support-tone/") for k in store.list("projects/"))
    assert [k.split("/")[1] for k in store.list("adapters/")] == ["shout"] * len(store.list("adapters/"))


def test_a_store_written_before_projects_is_read_with_everything_in_the_default_project(tmp_path: Path) -> None:
    """The upgrade: tests/fixtures/store-before-projects was written by the code before projects (commit 0346464,
    tests/fixtures/make_store_before_projects.py); the new code reads it whole as the default project's."""
    import shutil

    shutil.copytree(FIXTURE_STORE, tmp_path / "store")
    expected = json.loads((FIXTURE_STORE.parent / "store-before-projects.json").read_text())
    with TestClient(create_app(project_settings(tmp_path))) as client:
        admin = bearer(ADMIN_KEY)
        assert client.get(f"/adapters/{expected['adapter']}", headers=admin).status_code == 200
        models = [m["id"] for m in client.get("/v1/models", headers=admin).json()["data"]]
        assert expected["adapter"] in models and expected["ft_model"] in models
        assert client.get(f"/v1/files/{expected['file_id']}", headers=admin).status_code == 200
        assert client.get(f"/jobs/{expected['job_id']}", headers=admin).status_code == 200
        assert client.get(f"/v1/evals/{expected['eval_id']}", headers=admin).status_code == 200
        assert client.get(f"/v1/chat/completions/{expected['completion_id']}", headers=admin).status_code == 200
        project = new_project(client, "new team")
        newcomer = bearer(new_key(client, project, "admin")["value"])
        assert client.get(f"/adapters/{expected['adapter']}", headers=newcomer).status_code == 404
        assert expected["ft_model"] not in client.get("/v1/models", headers=newcomer).text


@pytest.mark.slow
def test_a_projects_adapter_is_served_to_its_keys_only_and_another_projects_namesake_apart(
    tmp_path: Path, peft_adapter_dir: Path
) -> None:
    """The real engine: project a's `support-tone` answers a's keys through chat and completions and is a 404
    (model_not_found) to b's and the default project's; b's own `support-tone` is another LoRA, still served after
    a deletes theirs."""
    from tests.gateway_fixtures import gateway_process

    extra = {"SKILLSERVE_OPERATOR_KEYS": json.dumps([OPERATOR_KEY])}
    with gateway_process(tmp_path, f"file://{tmp_path / 'store'}", extra) as (server, _):
        with server.client(OPERATOR_KEY) as operator:
            made = {}
            for name in ("a", "b"):
                project = operator.post("/v1/organization/projects", json={"name": name}).json()["id"]
                reply = operator.post(f"/v1/organization/projects/{project}/api_keys", json={"role": "admin"})
                made[name] = (project, reply.json()["value"])
        (a, key_a), (b, key_b) = made["a"], made["b"]
        published = publish_adapter(server.registry.for_project(a), peft_adapter_dir, "support-tone")
        ft = f"ft:{published.base_model}:{a}:tone:{uuid.uuid4().hex[:8]}"
        server.registry.for_project(a).put_fine_tuned_model(
            FineTunedModel(id=ft, name="support-tone", version=published.version, job_id=uuid.uuid4().hex)
        )
        chat = {"model": "support-tone", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4,
                "temperature": 0}
        text = {"model": "support-tone", "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        with server.client(key_a) as client:
            stored = client.post("/v1/chat/completions", json={**chat, "store": True})
            assert stored.status_code == 200
            assert client.post("/v1/completions", json=text).status_code == 200
            assert client.post("/v1/chat/completions", json={**chat, "model": ft}).status_code == 200
            assert "support-tone" in [m["id"] for m in client.get("/v1/models").json()["data"]]
        for key in (key_b, ADMIN_KEY, API_KEY):
            with server.client(key) as client:
                for path, body in (("/v1/chat/completions", chat), ("/v1/completions", text),
                                   ("/v1/chat/completions", {**chat, "model": ft}),
                                   ("/v1/completions", {**text, "model": f"support-tone@{published.version}"})):
                    reply = client.post(path, json=body)
                    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
                assert "support-tone" not in [m["id"] for m in client.get("/v1/models").json()["data"]]
        deadline = time.monotonic() + 60  # written by the background writer, soon after the answer
        while not server.registry.for_project(a).list_completions() and time.monotonic() < deadline:
            time.sleep(0.2)
        with server.client(key_a) as client:
            assert stored.json()["id"] in client.get("/v1/chat/completions").text
        for key in (key_b, ADMIN_KEY):
            with server.client(key) as client:
                assert stored.json()["id"] not in client.get("/v1/chat/completions").text
                assert client.get(f"/v1/chat/completions/{stored.json()['id']}").status_code == 404
        publish_adapter(server.registry.for_project(b), peft_adapter_dir, "support-tone")
        with server.client(key_b) as client:
            assert client.post("/v1/chat/completions", json=chat).status_code == 200
        with server.client(key_a) as client:
            assert client.delete("/adapters/support-tone").status_code == 200
            assert client.post("/v1/chat/completions", json=chat).status_code == 404
        with server.client(key_b) as client:
            reply = client.post("/v1/chat/completions", json=chat)
            assert reply.status_code == 200, reply.text


# ------------------------------------------------------------------------------------------ every route

SECRET = "only project a knows this"


@dataclass
class OnlyInA:
    """Objects project a has and project b has no namesake of: what b may try to name as a parent, a dataset, a
    base model or a source."""

    adapter: str
    version: str
    dataset_key: str
    file_id: str
    completion_id: str


def make_only_in_a(registry: Registry, root: Path) -> OnlyInA:
    manifest = publish_adapter(registry, fake_adapter_dir(root / "only"), "a-only")
    data = json.dumps({"messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": SECRET}]})
    file = registry.put_file(
        StoredFile(filename="a.jsonl", purpose="fine-tune", bytes=0, sha256=""), (data + "\n").encode()
    )
    completion_id = "chatcmpl-" + uuid.uuid4().hex
    registry.put_completion(
        StoredCompletion(
            id=completion_id,
            model="a-only",
            messages=[{"role": "user", "content": SECRET}],
            response=answer(completion_id, "a-only"),
        )
    )
    return OnlyInA(manifest.name, manifest.version, f"datasets/{file.sha256}.jsonl", file.id, completion_id)


def training_routes(
    o: Objects, only: OnlyInA, store_uri: str, project: str, base: str
) -> list[tuple[str, str, dict[str, Any] | None]]:
    """The POSTs that name another object as their input (a parent, a dataset, a base model, a source, a job's
    checkpoint, a stored completion): named from another project, each is a 404 (or refused for the key's role)."""
    rows = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HI!"}]
    inside_a = f"{store_uri}/projects/{project}"
    return [
        ("POST", f"/jobs/{o.job_id}/checkpoints/1/publish", None),
        ("POST", "/adapters", {"name": "stolen", "model": only.adapter, "rows": [{"messages": rows}]}),
        (
            "POST",
            "/adapters",
            {"name": "stolen", "model": f"{only.adapter}@{only.version}", "rows": [{"messages": rows}]},
        ),
        ("POST", "/adapters", {"name": "stolen", "model": o.ft_model, "rows": [{"messages": rows}]}),
        ("POST", "/adapters", {"name": "stolen", "dataset_uri": only.dataset_key}),
        ("POST", "/adapters", {"name": "stolen", "dataset_uri": f"{inside_a}/{only.dataset_key}"}),
        ("POST", "/adapters", {"name": "stolen", "dataset_uri": f"../../{only.dataset_key}"}),
        ("POST", "/adapters/import", {"name": "stolen", "uri": f"adapters/{only.adapter}/{only.version}/"}),
        ("POST", "/adapters/import", {"name": "stolen", "uri": f"{inside_a}/adapters/{only.adapter}/{only.version}/"}),
        (
            "POST",
            "/adapters/import",
            {"name": only.adapter, "uri": f"{inside_a}/adapters/{only.adapter}/{only.version}"},
        ),
        ("POST", "/v1/fine_tuning/jobs", {"model": base, "training_file": only.file_id}),
        ("POST", "/v1/fine_tuning/jobs", {"model": o.ft_model, "training_file": o.file_id}),
        ("POST", "/v1/chat/completions/exports", {"kind": "sft"}),
        ("POST", "/v1/batches", {"input_file_id": only.file_id, "endpoint": "/v1/chat/completions",
                                 "completion_window": "24h"}),  # fmt: skip
    ]


def creating_routes() -> list[tuple[str, str, dict[str, Any]]]:
    """The POSTs that make an object in the caller's own project, naming nothing of another's (with the request's
    arguments: a JSON body or a multipart upload)."""
    rows = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
    grader = {"type": "string_check", "name": "same", "input": "{{item.q}}", "reference": "a", "operation": "eq"}
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    return [
        (
            "POST",
            "/v1/evals",
            {
                "json": {
                    "name": "mine",
                    "testing_criteria": [grader],
                    "data_source_config": {"type": "custom", "item_schema": schema},
                }
            },
        ),
        ("POST", "/v1/files", {"files": {"file": ("mine.jsonl", rows)}, "data": {"purpose": "fine-tune"}}),
    ]


def organization_routes(project: str, key_id: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """The operator's routes: every other key is refused for its role (403), whatever project it names."""
    where = f"/v1/organization/projects/{project}"
    return [
        ("GET", "/v1/organization/audit_logs", None),
        ("GET", f"/v1/organization/audit_logs?project_ids[]={project}", None),
        ("GET", "/v1/organization/projects", None),
        ("POST", "/v1/organization/projects", {"name": "x"}),
        ("GET", where, None),
        ("POST", f"{where}/archive", None),
        ("GET", f"{where}/api_keys", None),
        ("POST", f"{where}/api_keys", {"role": "admin"}),
        ("GET", f"{where}/api_keys/{key_id}", None),
        ("DELETE", f"{where}/api_keys/{key_id}", None),
        ("POST", f"{where}/api_keys/{key_id}/rotate", None),
    ]


OWN_LISTS = ["/v1/audit"]  # lists of the caller's project beyond LISTS, read with their own checks

# Routes no row of the table calls, each with why. A route in neither the table nor here fails
# test_every_route_is_in_the_isolation_table: a route added later joins one or the other.
EXEMPT = {
    ("GET", "/health"): "a probe: names nothing, answers without a key",
    ("GET", "/ready"): "a probe",
    ("GET", "/metrics"): "counts, no objects; the operator's (docs/gateway.md#metrics)",
    ("GET", "/openapi.json"): "the API's description",
    ("GET", "/docs"): "the API's description",
    ("GET", "/docs/oauth2-redirect"): "the API's description",
    ("GET", "/redoc"): "the API's description",
    ("GET", "/ui/config.json"): "the dashboard's static settings; the page's API calls are the table's routes",
    ("POST", "/v1/fine_tuning/alpha/graders/validate"): "grades the sample in the request; names no stored object",
    ("POST", "/v1/fine_tuning/alpha/graders/run"): "grades the sample in the request; names no stored object",
    # Generation needs the engine, which the table's management-only gateway has not: the resolution both routes
    # go through is checked in test_generation_resolves_no_other_projects_model, the routes themselves in the slow
    # test_a_projects_adapter_is_served_to_its_keys_only_and_another_projects_namesake_apart.
    ("POST", "/v1/chat/completions"): "needs the engine; see above",
    ("POST", "/v1/completions"): "needs the engine; see above",
}
def table_rows(o: Objects, only: OnlyInA, project: str, key_id: str) -> list[tuple[str, str]]:
    """Every (method, path) a row of the isolation table calls."""
    rows = [(method, path) for method, path in object_routes(o)]
    rows += [(method, path) for method, path, _ in destructive_routes(o)]
    rows += [("GET", path) for path in LISTS + OWN_LISTS]
    rows += [(method, path) for method, path, _ in training_routes(o, only, "file:///s", project, "m")]
    rows += [(method, path) for method, path, _ in creating_routes()]
    rows += [(method, path) for method, path, _ in organization_routes(project, key_id)]
    return rows


def test_every_route_is_in_the_isolation_table(app: TestClient) -> None:
    """Each route of the app is called by a row of the isolation table or exempted with a reason."""
    from starlette.routing import Match

    o = Objects(
        "support-tone",
        "1",
        "ft:m:proj_0000000000000000:tone:abcdef12",
        "file-abc",
        "a" * 32,
        "eval_abc",
        "chatcmpl-" + "0" * 32,
        "batch_abc",
        "file-ghi",
        "evalrun_abc",
        "outputitem_abc",
    )
    only = OnlyInA("a-only", "1", "datasets/" + "0" * 64 + ".jsonl", "file-def", "chatcmpl-" + "1" * 32)
    rows = table_rows(o, only, "proj_0000000000000000", "key_0000000000000000")
    routes = {
        (method, route.path): route
        for route in app.app.routes  # type: ignore[attr-defined]
        for method in (getattr(route, "methods", None) or ())
        if method != "HEAD"
    }
    called = set()
    for method, path in rows:
        scope = {"type": "http", "method": method, "path": path.partition("?")[0], "root_path": ""}
        found = [key for key, route in routes.items() if key[0] == method and route.matches(scope)[0] is Match.FULL]
        assert found, f"no route answers the table's row {method} {path}"
        called.add(found[0])
    missing = sorted(set(routes) - called - set(EXEMPT))
    assert not missing, f"routes in neither the isolation table nor EXEMPT: {missing}"
    assert not (called & set(EXEMPT)), "a route in the table is still exempted"
    assert not set(EXEMPT) - set(routes), "an exempted route no longer exists"


def test_no_key_reaches_another_projects_objects_through_training_exports_or_the_operators_routes(
    app: TestClient, tmp_path: Path
) -> None:
    """The isolation table's POSTs that name an input (a parent, a dataset, a base model, an import's source, a
    checkpoint, stored completions), its creating routes and the operator's routes: from another project each is a
    404 (or a 403 for the key's role), nothing answers 5xx, and project a's objects are as they were."""
    gw = app.app.state.gateway  # type: ignore[attr-defined]
    a, b = new_project(app, "team a"), new_project(app, "team b")
    mine = make_objects(gw.registry.for_project(a), tmp_path / "a")
    theirs = make_objects(gw.registry.for_project(b), tmp_path / "b")
    only = make_only_in_a(gw.registry.for_project(a), tmp_path / "a")
    own_admin = new_key(app, a, "admin")
    own = bearer(own_admin["value"])
    other_admin = new_key(app, b, "admin")["value"]
    for completion_id, key in ((only.completion_id, own_admin["value"]), (theirs.completion_id, other_admin)):
        reply = app.post(
            f"/v1/chat/completions/{completion_id}/feedback", json={"rating": "good"}, headers=bearer(key)
        )  # so that an export of either project has rows
        assert reply.status_code == 200, reply.text
    keys = {
        ("other project", "admin"): other_admin,
        ("other project", "inference"): new_key(app, b, "inference")["value"],
        ("operator", "admin"): OPERATOR_KEY,
        ("default", "admin"): ADMIN_KEY,
        ("default", "inference"): API_KEY,
    }
    store_uri = gw.registry.store.uri.rstrip("/")
    base = gw.settings.base_model_id
    before = {path: app.get(path, headers=own).text for path in LISTS}
    exported = 0
    for method, path, body in training_routes(mine, only, store_uri, a, base):
        for (who, role), key in keys.items():
            reply = app.request(method, path, headers=bearer(key), json=body)
            where = f"{method} {path} {body} as {who} {role}"
            assert reply.status_code < 500, f"{where}: {reply.text}"
            assert reply.status_code not in (200, 201) or path.endswith("/exports"), f"{where}: {reply.text}"
            if reply.status_code == 200:  # an export of the caller's own completions: none of a's in it
                exported += 1
                content = app.get(f"/v1/files/{reply.json()['id']}/content", headers=bearer(key))
                assert content.status_code == 200 and SECRET not in content.text, where
            elif role == "inference":
                assert reply.status_code in (403, 404), f"{where}: {reply.status_code} {reply.text}"
            else:
                assert reply.status_code in (400, 404), f"{where}: {reply.status_code} {reply.text}"
                if path != "/v1/chat/completions/exports" and body and ("model" in body or "training_file" in body):
                    # as for a name no project has: 404, or OpenAI's 400 (invalid_file, model_not_available)
                    code = reply.json()["error"]["code"]
                    assert code in ("model_not_found", "not_found", "invalid_file", "model_not_available"), (
                        f"{where}: {reply.text}"
                    )
    assert exported, "no export answered: the check of its content never ran"
    assert only.completion_id in app.get("/v1/audit", headers=own).text  # what OWN_LISTS must not show the others
    for method, path, arguments in creating_routes():
        for (who, role), key in keys.items():
            reply = app.request(method, path, headers=bearer(key), **arguments)
            assert reply.status_code < 500 and reply.status_code != 404, f"{method} {path} as {who} {role}"
    for method, path, body in organization_routes(a, own_admin["id"]):
        for (who, role), key in keys.items():
            if who == "operator":
                continue
            reply = app.request(method, path, headers=bearer(key), json=body)
            assert reply.status_code == 403, f"{method} {path} as {who} {role}: {reply.status_code}"
            assert reply.json()["error"]["code"] == "operator_key_required"
    for path in OWN_LISTS:
        for (who, role), key in keys.items():
            reply = app.get(path, headers=bearer(key))
            assert reply.status_code < 500, f"GET {path} as {who} {role}: {reply.text}"
            assert only.completion_id not in reply.text, f"GET {path} as {who} {role} shows a's entries"
    assert {path: app.get(path, headers=own).text for path in LISTS} == before  # nothing of a's changed or added
    assert app.get(f"/adapters/{only.adapter}", headers=own).json()["latest"] == only.version
    for (who, role), key in keys.items():
        assert app.get(f"/adapters/{only.adapter}", headers=bearer(key)).status_code == 404, f"{who} {role}"


def test_generation_resolves_no_other_projects_model(app: TestClient, tmp_path: Path) -> None:
    """What chat and completions resolve a `model` through (the project's adapter cache): another project's skill,
    version or ft: model is model_not_found, as a name no project has."""
    import asyncio

    from adapters.errors import NotFound

    gw = app.app.state.gateway  # type: ignore[attr-defined]
    a, b = new_project(app, "team a"), new_project(app, "team b")
    mine = make_objects(gw.registry.for_project(a), tmp_path / "a")
    only = make_only_in_a(gw.registry.for_project(a), tmp_path / "a")
    assert asyncio.run(gw.for_project(a).cache.manifest(only.adapter, None)).version == only.version
    for project in (b, "default"):
        for model in (only.adapter, f"{only.adapter}@{only.version}", mine.ft_model):
            with pytest.raises(NotFound) as refused:
                asyncio.run(gw.for_project(project).cache.manifest(model, None))
            assert refused.value.code == "model_not_found", (project, model)


# ------------------------------------------------------------------------------------------ the keys' index


class CountedReads(FileStore):
    """A file store that remembers which keys were read."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.read: list[str] = []

    def get_bytes(self, key: str) -> bytes:
        self.read.append(key)
        return super().get_bytes(key)


def test_listing_a_projects_keys_reads_its_own_keys_only_revoked_ones_included(tmp_path: Path) -> None:
    store = CountedReads(tmp_path / "store")
    registry = Registry(store)
    a, b = registry.create_project("team a").id, registry.create_project("team b").id
    first, _ = registry.create_api_key(a, "admin", "ci")
    second, _ = registry.create_api_key(a, "inference")
    theirs = [registry.create_api_key(b, "admin")[0] for _ in range(3)]
    registry.revoke_api_key(a, first.id)
    registry.list_api_keys(a)  # the first listing of a store makes sure its index is whole (one scan)

    store.read.clear()
    listed = registry.list_api_keys(a)
    assert [k.id for k in listed] == [first.id, second.id] and listed[0].revoked_at is not None
    assert {k.rpartition("/")[2] for k in store.read if k.startswith("org/keys/")} == {
        f"{first.sha256}.json", f"{second.sha256}.json"
    }
    assert not any(k.sha256 in " ".join(store.read) for k in theirs)
    assert [k.id for k in registry.list_api_keys(b)] == [k.id for k in theirs]


def test_keys_made_before_the_index_are_listed_and_indexed_by_the_first_listing(tmp_path: Path) -> None:
    """A store written before the per-project index (each key only at org/keys/<sha256>.json, as the code before it
    wrote them): the first listing finds them by a scan and writes their index; later listings read the index, and
    keys made since are in it."""
    from adapters.registry.projects import KEY_PREFIX, key_hash, key_id_of

    store = CountedReads(tmp_path / "store")
    registry = Registry(store)
    a, b = registry.create_project("team a").id, registry.create_project("team b").id
    old = {}
    for project in (a, a, b):  # written as the code before the index wrote them
        token = KEY_PREFIX + uuid.uuid4().hex
        sha = key_hash(token)
        record = ApiKeyRecord(id=key_id_of(sha), sha256=sha, project=project, role="admin", created_at=time.time())
        store.put_bytes(f"org/keys/{sha}.json", record.model_dump_json().encode())
        old.setdefault(project, []).append((record.id, token))
    assert not store.list(f"org/projects/{a}/keys/")

    assert [k.id for k in registry.list_api_keys(a)] == [key for key, _ in old[a]]
    assert len(store.list(f"org/projects/{a}/keys/")) == 2 and len(store.list(f"org/projects/{b}/keys/")) == 1
    new, _ = registry.create_api_key(a, "inference")
    registry.revoke_api_key(a, old[a][0][0])
    store.read.clear()
    listed = registry.list_api_keys(a)
    assert [k.id for k in listed] == [*(key for key, _ in old[a]), new.id] and listed[0].revoked_at is not None
    assert not any(sha in " ".join(store.read) for sha in (key_hash(t) for _, t in old[b]))  # the index, no scan
    assert registry.find_api_key(old[b][0][1]) is not None  # the lookup by hash: one read, unchanged
    assert [k.id for k in registry.list_api_keys(b)] == [old[b][0][0]]
    registry.archive_project(b)
    assert registry.find_api_key(old[b][0][1]).revoked_at is not None  # type: ignore[union-attr]


def test_an_index_entry_without_its_key_is_skipped_and_a_key_without_an_entry_is_still_revoked_by_archiving(
    tmp_path: Path,
) -> None:
    """A gateway stopped between a key's index entry and its record leaves an entry the listing skips; a key made
    after the index by a replica of an older version (no entry) is not listed, and archiving, which scans, revokes
    it all the same."""
    from adapters.registry.projects import KEY_PREFIX, key_hash, key_id_of
    from adapters.schema import KeyIndexEntry

    store = FileStore(tmp_path / "store")
    registry = Registry(store)
    a = registry.create_project("team a").id
    kept, _ = registry.create_api_key(a, "admin")
    assert [k.id for k in registry.list_api_keys(a)] == [kept.id]  # the index is whole from here on
    lost = key_hash(KEY_PREFIX + "never written")
    store.put_bytes(f"org/projects/{a}/keys/{lost}.json",
                    KeyIndexEntry(id=key_id_of(lost), sha256=lost).model_dump_json().encode())
    token = KEY_PREFIX + uuid.uuid4().hex
    unindexed = ApiKeyRecord(id=key_id_of(key_hash(token)), sha256=key_hash(token), project=a, role="admin")
    store.put_bytes(f"org/keys/{unindexed.sha256}.json", unindexed.model_dump_json().encode())

    assert [k.id for k in registry.list_api_keys(a)] == [kept.id]
    assert registry.get_api_key(a, unindexed.id).revoked_at is None  # found by its id all the same
    registry.archive_project(a)
    assert registry.find_api_key(token).revoked_at is not None  # type: ignore[union-attr]
