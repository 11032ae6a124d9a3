"""OpenAI's fine-tuning API, driven by the official openai SDK: files, jobs, events, checkpoints, ft: models.

The fast tests run the app in-process without an engine (the SDK over FastAPI's TestClient): files and the
OpenAI-shaped errors of bad files. The slow ones train a tiny skill on the session's real gateway and serve it under
the model name the job returns.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import Checkpoint, FineTune, FineTunedModel, JobRecord, JobSpec, JobStatus
from adapters.store import FileStore
from service.app import create_app
from service.management import files
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer, management_settings, publish_adapter
from tests.shout import WORDS, shout

INFERENCE = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def chat_rows(n: int, seed: int) -> list[dict[str, object]]:
    """Shout rows in OpenAI's chat fine-tuning format."""
    import random

    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for _ in range(n):
        words = rng.sample(WORDS, rng.randint(2, 4))
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "Shout these words: " + " ".join(words)},
                    {"role": "assistant", "content": shout(words)},
                ]
            }
        )
    return rows


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


PREFERENCE_ROW: dict[str, object] = {
    "input": {"messages": [{"role": "user", "content": "Shout these words: cat dog"}]},
    "preferred_output": [{"role": "assistant", "content": "CAT DOG!"}],
    "non_preferred_output": [{"role": "assistant", "content": "cat dog"}],
}


def preference_rows(n: int) -> list[dict[str, object]]:
    """Preference pairs in OpenAI's DPO format: the shouted answer preferred to the plain one."""
    rows: list[dict[str, object]] = []
    for index in range(n):
        words = list(WORDS[index * 2 : index * 2 + 2])
        rows.append(
            {
                "input": {"messages": [{"role": "user", "content": "Shout these words: " + " ".join(words)}]},
                "preferred_output": [{"role": "assistant", "content": shout(words)}],
                "non_preferred_output": [{"role": "assistant", "content": " ".join(words)}],
            }
        )
    return rows


# ------------------------------------------------------------------ in-process gateway (no engine)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("fine-tuning")
    # Training is on, but no request here is valid enough to start a trainer.
    with TestClient(create_app(management_settings(root))) as client:
        yield client


def sdk(http: TestClient, key: str = ADMIN_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)


def test_files_upload_list_retrieve_download_and_delete_as_openai_does(app: TestClient) -> None:
    client = sdk(app)
    data = jsonl(chat_rows(6, seed=3))
    first = client.files.create(file=("shout.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert (first.object, first.purpose, first.status, first.bytes) == ("file", "fine-tune", "processed", len(data))
    assert first.filename == "shout.jsonl" and first.id.startswith("file-")
    preferences = client.files.create(file=("prefs.jsonl", jsonl([PREFERENCE_ROW])), purpose="fine-tune")
    assert client.files.retrieve(first.id).model_dump() == first.model_dump()
    assert client.files.content(first.id).content == data
    # Newest first, paginated by `after` as OpenAI does; the SDK follows the pages.
    listed = client.files.list(purpose="fine-tune", limit=1)
    assert [f.id for f in listed.data] == [preferences.id] and listed.has_more
    assert [f.id for f in listed] == [preferences.id, first.id]
    assert [f.id for f in client.files.list(order="asc")] == [first.id, preferences.id]
    assert client.files.list(purpose="batch").data == []
    # Inference keys read metadata; uploads, contents and deletes need an admin key.
    reader = sdk(app, API_KEY)
    assert reader.files.retrieve(first.id).id == first.id
    with pytest.raises(openai.PermissionDeniedError):
        reader.files.create(file=("x.jsonl", data), purpose="fine-tune")
    with pytest.raises(openai.PermissionDeniedError):
        reader.files.content(first.id)
    deleted = client.files.delete(first.id)
    assert (deleted.id, deleted.deleted) == (first.id, True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(first.id)
    assert [f.id for f in client.files.list()] == [preferences.id]


def test_an_after_cursor_naming_no_item_is_a_400_naming_after_on_every_list(app: TestClient) -> None:
    """One rule for every list (files, fine-tuning jobs, evals): code `invalid_parameter`, as docs/openai-fine-tuning.md
    says (OpenAI documents no code for it; before the redesign the files and jobs lists gave null)."""
    for path in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/evals"):
        reply = app.get(path, params={"after": "file-nothing"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert reply.status_code == 400, path
        error = reply.json()["error"]
        assert (error["param"], error["code"]) == ("after", "invalid_parameter"), path
        assert "no item with id 'file-nothing'" in error["message"]


def test_bad_files_get_openai_shaped_400s_and_404s(app: TestClient) -> None:
    client = sdk(app)
    good = jsonl(chat_rows(3, seed=4))
    bad = good + b'{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n'
    with pytest.raises(openai.BadRequestError) as bad_line:
        client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    error = bad_line.value.body
    assert isinstance(error, dict) and error["param"] == "file" and error["code"] == "invalid_dataset"
    assert "line 4: no assistant message" in error["message"] and "line 5: invalid JSON" in error["message"]
    assert [d["line"] for d in error["details"]] == [4, 5]
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        client.files.create(file=("good.jsonl", good), purpose="assistants")
    assert wrong_purpose.value.body["param"] == "purpose"  # type: ignore[index]
    assert client.files.list().data == [] or all(f.filename != "bad.jsonl" for f in client.files.list())
    for missing in ("file-" + "0" * 32, "file-abc", "../../etc/passwd"):
        with pytest.raises(openai.NotFoundError) as unknown:
            client.files.retrieve(missing)
        assert unknown.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.files.delete("file-" + "0" * 32)


def test_file_names_are_stored_as_their_last_segment_without_controls_or_markup(app: TestClient) -> None:
    good = jsonl(chat_rows(3, seed=5))
    names = {
        "../../etc/passwd": "passwd",
        "C:\\Users\\me\\shout.jsonl": "shout.jsonl",
        "<img src=x onerror=alert(1)>.jsonl": "_img src=x onerror=alert(1)_.jsonl",
        "invoice\u202egpj.jsonl": "invoicegpj.jsonl",  # a right-to-left override would show "lnosj.jpg"
        "a.jsonl\r\nX-Injected: yes": "a.jsonlX-Injected: yes",
        "..": "upload.jsonl",
        "x" * 300 + ".jsonl": "x" * 255,
    }
    for sent, stored in names.items():
        assert files.safe_filename(sent) == stored, sent
    # Through the API as the SDK sends a name (it percent-escapes CR and LF itself).
    for sent in ("../../etc/passwd", "invoice\u202egpj.jsonl", "<b>x</b>.jsonl"):
        reply = app.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": (sent, good)}, headers=ADMIN)
        assert reply.status_code == 200 and reply.json()["filename"] == files.safe_filename(sent), reply.text
        assert app.get(f"/v1/files/{reply.json()['id']}", headers=ADMIN).json()["filename"] == reply.json()["filename"]
    for purpose in ("fine-tune ", " fine-tune", "Fine-Tune", "fine-tune\n"):
        reply = app.post("/v1/files", data={"purpose": purpose}, files={"file": ("a.jsonl", good)}, headers=ADMIN)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "purpose", purpose


def test_jobs_that_name_no_file_or_another_model_are_400s_and_unknown_jobs_404s(app: TestClient) -> None:
    client = sdk(app)
    stored = client.files.create(file=("ok.jsonl", jsonl(chat_rows(3, seed=5))), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as no_file:
        client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file="file-" + "0" * 32)
    assert no_file.value.body["param"] == "training_file"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as no_validation:
        client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=stored.id, validation_file="file-x")
    assert no_validation.value.body["param"] == "validation_file"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as other_model:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=stored.id)
    assert other_model.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as reinforcement:
        client.fine_tuning.jobs.create(
            model=DEFAULT_MODEL, training_file=stored.id, method={"type": "reinforcement"}  # type: ignore[typeddict-item]
        )
    assert reinforcement.value.body["param"] == "method.reinforcement.grader"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-" + "0" * 32)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.list_events("ftjob-nonsense")
    with pytest.raises(openai.BadRequestError) as unknown_field:
        client.fine_tuning.jobs.create(
            model=DEFAULT_MODEL, training_file=stored.id, extra_body={"learning_rate": 1.0}
        )
    assert unknown_field.value.body["param"] == "learning_rate"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as negative:
        client.fine_tuning.jobs.create(
            model=DEFAULT_MODEL, training_file=stored.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}},
        )
    assert "n_epochs" in negative.value.body["param"]  # type: ignore[index]


def test_rows_that_do_not_fit_the_method_are_400s_about_the_file_with_their_lines(app: TestClient) -> None:
    client = sdk(app)
    preferences = client.files.create(file=("p.jsonl", jsonl([PREFERENCE_ROW] * 2)), purpose="fine-tune")
    answers = client.files.create(file=("a.jsonl", jsonl(chat_rows(2, seed=6))), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as supervised_on_pairs:
        client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=preferences.id)
    error = supervised_on_pairs.value.body
    assert error["param"] == "training_file" and preferences.id in error["message"]  # type: ignore[index]
    assert [d["line"] for d in error["details"]] == [1, 2]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as pairs_held_out_by_answers:
        client.fine_tuning.jobs.create(
            model=DEFAULT_MODEL, training_file=preferences.id, validation_file=answers.id, method={"type": "dpo"}
        )
    assert pairs_held_out_by_answers.value.body["param"] == "validation_file"  # type: ignore[index]
    bad_pair = {**PREFERENCE_ROW, "non_preferred_output": PREFERENCE_ROW["preferred_output"]}
    with pytest.raises(openai.BadRequestError) as same_answers:
        client.files.create(file=("same.jsonl", jsonl([PREFERENCE_ROW, bad_pair])), purpose="fine-tune")
    assert "line 2" in same_answers.value.body["message"]  # type: ignore[index]


def test_an_ft_model_id_is_an_alias_of_one_version_listed_served_and_deleted_with_it(
    app: TestClient, peft_adapter_dir: Path
) -> None:
    registry = Registry(FileStore(Path(app.app.state.gateway.settings.store_uri.removeprefix("file://"))))  # type: ignore[attr-defined]
    first = publish_adapter(registry, peft_adapter_dir, "aliased")
    second = publish_adapter(registry, peft_adapter_dir, "aliased")
    model = f"ft:{DEFAULT_MODEL}:skillserve:aliased:0123abcd"
    registry.put_fine_tuned_model(FineTunedModel(id=model, name="aliased", version=first.version, job_id="0" * 32))
    client = sdk(app, API_KEY)
    listed = {m.id: m for m in client.models.list()}
    # The alias names the first version, though `aliased` (its latest) is the second.
    assert listed[model].model_extra["root"] == first.ref and listed["aliased"].model_extra["root"] == second.ref  # type: ignore[index]
    assert client.models.retrieve(model).model_extra["root"] == first.ref  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(model + "x")
    deleted = sdk(app).models.delete(model)
    assert (deleted.id, deleted.object, deleted.deleted) == (model, "model", True)
    assert [m.version for m in registry.versions("aliased")] == [second.version]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(model)
    with pytest.raises(openai.BadRequestError):
        sdk(app).models.delete(DEFAULT_MODEL)


def test_a_kept_checkpoint_publishes_as_a_version_that_its_checkpoint_model_id_serves(
    app: TestClient, peft_adapter_dir: Path
) -> None:
    registry = Registry(FileStore(Path(app.app.state.gateway.settings.store_uri.removeprefix("file://"))))  # type: ignore[attr-defined]
    published = publish_adapter(registry, peft_adapter_dir, "kept-skill")
    spec = JobSpec(
        name="kept-skill", version=published.version, base_model=DEFAULT_MODEL, base_model_id=DEFAULT_MODEL,
        dataset_uri="datasets/" + "0" * 64 + ".jsonl", dataset_sha256="0" * 64, dataset_rows=8,
    )
    job = JobRecord(spec=spec, status=JobStatus.succeeded, metrics={"adapter": published.ref})
    # As the trainer leaves a job whose best checkpoint was not its last: the last one's files kept in the store.
    job.checkpoints = [
        Checkpoint(step=2, train_loss=1.5, eval_loss=1.1, best=True, version=published.version),
        Checkpoint(
            step=4, train_loss=1.2, eval_loss=1.3, stored=registry.store_checkpoint(job.id, 4, peft_adapter_dir)
        ),
    ]
    registry.put_job(job)
    model = f"ft:{DEFAULT_MODEL}:skillserve:kept:89abcdef"
    registry.put_fine_tune(FineTune(job_id=job.id, model=model, suffix="kept", training_file="file-" + "1" * 32))
    registry.put_fine_tuned_model(FineTunedModel(id=model, name="kept-skill", version=published.version, job_id=job.id))
    client = sdk(app, API_KEY)
    last, best = client.fine_tuning.jobs.checkpoints.list(f"ftjob-{job.id}").data
    assert (last.step_number, best.step_number) == (4, 2)
    assert best.fine_tuned_model_checkpoint == model
    assert (best.metrics.train_loss, best.metrics.valid_loss) == (1.5, 1.1)
    assert last.fine_tuned_model_checkpoint == model + ":ckpt-step-4" and (last.model_extra or {})["publishable"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(last.fine_tuned_model_checkpoint)  # not published yet
    route = f"/jobs/{job.id}/checkpoints/4/publish"
    assert app.post(route, headers=INFERENCE).status_code == 403
    assert app.post(f"/jobs/{job.id}/checkpoints/3/publish", headers=ADMIN).status_code == 404
    reply = app.post(route, headers=ADMIN)
    assert reply.status_code == 201, reply.text
    version = reply.json()["version"]
    assert client.models.retrieve(last.fine_tuned_model_checkpoint).model_extra["root"] == f"kept-skill@{version}"  # type: ignore[index]
    again = client.fine_tuning.jobs.checkpoints.list(f"ftjob-{job.id}").data[0].model_extra or {}
    assert (again["version"], again["publishable"]) == (version, False)
    # The job's own model still names the version the job published.
    assert client.models.retrieve(model).model_extra["root"] == published.ref  # type: ignore[index]
    # A job whose trainer wrote no events: its history is told from its record.
    told = [e.message for e in client.fine_tuning.jobs.list_events(f"ftjob-{job.id}")]
    assert told[0] == "The job has successfully completed" and told[-1] == f"Created fine-tuning job: ftjob-{job.id}"


# ------------------------------------------------------------------ the real gateway (real trainer and engine)


def wait_for(client: openai.OpenAI, job_id: str, timeout: float = 1200) -> list[str]:
    """Follow a job through its events (newest first, paginated) until it finishes; returns every message seen."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=3)]
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def fine_tuned(gateway: GatewayServer) -> dict[str, object]:
    """A tiny shout skill trained through the OpenAI API: 8 rows and 2 more as the validation file, two epochs,
    the rest "auto" (batches of 4: 4 steps, 2 checkpoints), and a second job cancelled while it waits."""
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)
    training = client.files.create(file=("shout.jsonl", jsonl(chat_rows(8, seed=11))), purpose="fine-tune")
    validation = client.files.create(file=("held.jsonl", jsonl(chat_rows(2, seed=12))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=DEFAULT_MODEL,
        training_file=training.id,
        validation_file=validation.id,
        suffix="shout",
        seed=7,
        metadata={"team": "tests"},
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}
            },
        },
    )
    # The second job trains on preference pairs (DPO); it waits behind the first and is cancelled there.
    pairs = client.files.create(file=("pairs.jsonl", jsonl(preference_rows(4))), purpose="fine-tune")
    other = client.fine_tuning.jobs.create(
        model=DEFAULT_MODEL, training_file=pairs.id, suffix="cancel-me",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}},
    )
    cancelled = client.fine_tuning.jobs.cancel(other.id)
    messages = wait_for(client, job.id)
    return {"created": job, "cancelled": cancelled, "messages": messages, "client": client}


@pytest.mark.slow
def test_a_job_created_with_the_sdk_trains_and_serves_under_its_fine_tuned_model(
    gateway: GatewayServer, fine_tuned: dict[str, object]
) -> None:
    client: openai.OpenAI = fine_tuned["client"]  # type: ignore[assignment]
    created = fine_tuned["created"]
    assert isinstance(created, openai.types.fine_tuning.FineTuningJob)
    assert created.status == "queued" and created.fine_tuned_model is None and created.id.startswith("ftjob-")
    assert (created.model_extra or {})["user_provided_suffix"] == "shout"
    assert created.metadata == {"team": "tests"} and created.seed == 7
    job = client.fine_tuning.jobs.retrieve(created.id)
    assert job.status == "succeeded", f"{job.error}\n{gateway.log_tail()}"
    model = job.fine_tuned_model
    assert model is not None and model.startswith(f"ft:{DEFAULT_MODEL}:skillserve:shout:")
    assert job.trained_tokens and job.finished_at and job.error is None
    assert job.method is not None and job.method.type == "supervised"
    assert job.method.supervised is not None
    hyper = job.method.supervised.hyperparameters
    # "auto" resolved: what the data chose (adapters/auto.py), and the multiplier of the rate it chose.
    assert hyper is not None and hyper.n_epochs == 2 and hyper.batch_size == 4 and hyper.learning_rate_multiplier == 1
    assert job.validation_file is not None and job.training_file.startswith("file-")
    # The history, newest first, followed page by page by the SDK.
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=2))
    assert events[-1].message == f"Created fine-tuning job: {job.id}"
    assert any(e.type == "metrics" for e in events), [e.message for e in events]
    assert all(a.created_at >= b.created_at for a, b in zip(events, events[1:], strict=False))
    # Checkpoints: step, train and validation loss; the best one is the job's model.
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and all(c.fine_tuning_job_id == job.id for c in checkpoints)
    best = [c for c in checkpoints if c.fine_tuned_model_checkpoint == model]
    assert len(best) == 1 and best[0].metrics.valid_loss is not None and best[0].step_number > 0
    # The model id serves at once, through chat and completions, and the adapter it aliases answers the same.
    reader = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    assert model in [m.id for m in reader.models.list()]
    assert reader.models.retrieve(model).id == model
    ask = [{"role": "user", "content": "Shout these words: sun dog"}]
    answer = reader.chat.completions.create(model=model, messages=ask, temperature=0, max_tokens=12)  # type: ignore[arg-type]
    direct = reader.chat.completions.create(
        model=job.model_extra["adapter"], messages=ask, temperature=0, max_tokens=12  # type: ignore[arg-type,index]
    )
    assert answer.choices[0].message.content == direct.choices[0].message.content
    assert reader.completions.create(model=model, prompt="Shout these words: red", max_tokens=4).choices[0].text


@pytest.mark.slow
def test_the_same_job_is_seen_through_jobs_and_adapters(
    gateway: GatewayServer, fine_tuned: dict[str, object]
) -> None:
    client: openai.OpenAI = fine_tuned["client"]  # type: ignore[assignment]
    job = client.fine_tuning.jobs.retrieve(fine_tuned["created"].id)  # type: ignore[attr-defined]
    extra = job.model_extra or {}
    with httpx.Client(base_url=gateway.url, headers=INFERENCE, timeout=60) as http:
        ours = http.get(f"/jobs/{extra['job_id']}").json()
        assert ours["status"] == "succeeded" and f"{ours['name']}@{ours['version']}" == extra["adapter"]
        adapter = http.get(f"/adapters/{ours['name']}").json()
        assert adapter["status"] == "ready" and extra["job_id"] in [j["id"] for j in adapter["jobs"]]
        assert http.get(f"/v1/fine_tuning/jobs/{extra['job_id']}").json()["id"] == job.id
    listed = [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "tests"})]
    assert listed == [job.id]
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=1)] or client.fine_tuning.jobs.list(
        limit=1
    ).has_more


@pytest.mark.slow
def test_a_cancelled_job_publishes_nothing(gateway: GatewayServer, fine_tuned: dict[str, object]) -> None:
    client: openai.OpenAI = fine_tuned["client"]  # type: ignore[assignment]
    cancelled = fine_tuned["cancelled"]
    assert cancelled.status == "cancelled"  # type: ignore[attr-defined]
    job = client.fine_tuning.jobs.retrieve(cancelled.id)  # type: ignore[attr-defined]
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
    assert job.method.dpo.hyperparameters is not None and job.method.dpo.hyperparameters.beta == 0.2
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data == []


@pytest.mark.slow
def test_deleting_the_fine_tuned_model_unpublishes_it(gateway: GatewayServer, fine_tuned: dict[str, object]) -> None:
    client: openai.OpenAI = fine_tuned["client"]  # type: ignore[assignment]
    model = client.fine_tuning.jobs.retrieve(fine_tuned["created"].id).fine_tuned_model  # type: ignore[attr-defined]
    assert model is not None
    reader = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        reader.models.delete(model)
    deleted = client.models.delete(model)
    assert (deleted.id, deleted.object, deleted.deleted) == (model, "model", True)
    assert model not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert gone.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.models.delete(model)
