"""The dashboard at /ui, in a real browser (Debian's chromium driven by Playwright) against the session's real gateway.

Each page's screenshot is written into docs/ by these tests, so the README's pictures stay current.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.dataset import parse_dataset
from adapters.models import DEFAULT_MODEL
from adapters.templates import TEMPLATE_NAMES
from service.api.auth import key_id
from service.app import create_app
from tests.eval_fixtures import FinishedEval, management_gateway
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer, free_port, gateway_process, management_settings
from tests.shout import shout_rows

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
UI = REPO / "service" / "api" / "ui"
CHROMIUM = "/usr/bin/chromium"
# No sandbox (containers and CI run as root), no GPU, and no traffic of the browser's own to anywhere.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
SKILL = "ui-shout"
# A skill small enough to train in well under a minute on two cores, yet one that answers unlike the base.
TRAINING = {"max_steps": "10", "learning_rate": "0.003", "eval_samples": "3"}


# ---------------------------------------------------------------------------- without a browser


@pytest.fixture(scope="module")
def ui_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A management-only gateway (no engine) with auth on."""
    root = tmp_path_factory.mktemp("ui")
    settings = management_settings(root)
    with TestClient(create_app(settings)) as client:
        yield client


def test_dashboard_files_load_without_a_key_and_nothing_else_does(ui_client: TestClient) -> None:
    redirect = ui_client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"].endswith("/ui/")
    page = ui_client.get("/ui/")
    assert page.status_code == 200 and "<title>skillserve</title>" in page.text
    # Only its own scripts run (the key sits in session storage), and no other site may frame it.
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    for asset in ("app.js", "api.js", "app.css", "vendor/uPlot.iife.min.js"):
        assert ui_client.get(f"/ui/{asset}").status_code == 200, asset
    config = ui_client.get("/ui/config.json").json()
    assert config["auth"] is True
    assert config["templates"] == list(TEMPLATE_NAMES)
    rank = config["hyperparameters"]["properties"]["rank"]
    assert rank["default"] is None and rank["x-auto"] is True  # chosen from the data unless given
    assert {"file.upload", "alias.set", "adapter.publish"} <= set(config["audit_actions"])  # the Audit page's filter
    # Only files of the dashboard: no way out of its folder, and the API still needs a key.
    for path in ("/ui/../routes/ui.py", "/ui/%2e%2e/routes/ui.py", "/ui/..%2fauth.py", "/uiadapters"):
        assert ui_client.get(path).status_code in (401, 404), path
    assert ui_client.get("/adapters").status_code == 401


def test_vendored_libraries_are_the_recorded_versions() -> None:
    """service/api/ui/vendor/README.md records each file's package, version, licence and sha256."""
    table = (UI / "vendor" / "README.md").read_text()
    recorded = dict(re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", table, flags=re.M))
    vendored = {p.name for p in (UI / "vendor").iterdir() if p.suffix in (".js", ".css")}
    assert set(recorded) == vendored
    for name, digest in recorded.items():
        assert hashlib.sha256((UI / "vendor" / name).read_bytes()).hexdigest() == digest, name
    assert (UI / "vendor" / "uPlot.LICENSE").is_file()


# ---------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Console:
    """What went wrong in the page: uncaught exceptions and console errors, less the HTTP errors a test expects."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.expected_statuses: set[int] = set()

    def record(self, kind: str, text: str) -> None:
        status = re.search(r"responded with a status of (\d+)", text)
        if status and int(status.group(1)) in self.expected_statuses:
            return
        self.errors.append(f"{kind}: {text}")


@pytest.fixture
def console() -> Console:
    return Console()


@contextmanager
def fresh_tab(browser: Any, url: str, console: Console) -> Iterator[Any]:
    """A fresh tab (its own session storage, so no key) on the dashboard at `url`; no console errors allowed."""
    context = browser.new_context(viewport=LAPTOP, base_url=url)
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    tab.on("console", lambda m: console.record("console", m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: console.record("exception", str(e)))
    yield tab
    context.close()
    assert not console.errors, "\n".join(console.errors)


@pytest.fixture
def page(browser: Any, gateway: GatewayServer, console: Console) -> Iterator[Any]:
    with fresh_tab(browser, gateway.url, console) as tab:
        yield tab


def sign_in(page: Any, key: str, then: str = "#/skills") -> None:
    page.goto("/ui/")
    page.get_by_role("textbox", name="API key").fill(key)
    page.get_by_role("button", name="Use this key").click()
    page.get_by_role("heading", name="Skills", exact=True).wait_for()
    page.goto(f"/ui/{then}")


def browser_local(page: Any, at: int) -> str:
    """`at` (unix seconds) as a datetime-local input holds it, in the browser's time zone (no seconds when 0, as the
    browser writes it)."""
    offset_s = 60 * page.evaluate(f"new Date({at * 1000}).getTimezoneOffset()")
    local = time.gmtime(at - offset_s)
    return time.strftime("%Y-%m-%dT%H:%M:%S" if local.tm_sec else "%Y-%m-%dT%H:%M", local)


def screenshot(page: Any, name: str) -> None:
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(DOCS / name), full_page=True, animations="disabled")


@pytest.mark.slow
def test_without_a_key_the_page_asks_for_one(page: Any) -> None:
    page.goto("/ui/#/jobs")
    prompt = page.get_by_role("heading", name="This gateway needs an API key")
    prompt.wait_for()
    assert page.get_by_role("textbox", name="API key").is_visible()
    assert page.get_by_role("button", name="Use this key").is_visible()
    screenshot(page, "ui-key.png")
    # With a key the page it was asked for opens.
    page.get_by_role("textbox", name="API key").fill(API_KEY)
    page.get_by_role("button", name="Use this key").click()
    page.get_by_role("heading", name="Jobs", exact=True).wait_for()


@pytest.mark.slow
def test_a_bad_dataset_shows_each_bad_line_and_nothing_is_queued(
    page: Any, gateway: GatewayServer, console: Console
) -> None:
    console.expected_statuses.add(400)  # the refused upload itself
    jobs_before = len(gateway.registry.list_jobs())
    sign_in(page, ADMIN_KEY, "#/new")
    rows = [json.dumps(r) for r in shout_rows(6)]
    rows[2] = '{"instruction": "Shout: cat"}'
    rows.append("{not json")
    page.get_by_label("Name", exact=True).fill("ui-bad")
    page.get_by_label("Dataset (JSONL, one example per line)").fill("\n".join(rows) + "\n")
    page.get_by_role("button", name="Train").click()
    errors = page.locator("#dataset-errors")
    errors.wait_for()
    assert "2 bad lines; nothing was queued" in errors.inner_text()
    items = errors.get_by_role("listitem").all_inner_texts()
    assert items[0].startswith("line 3") and "missing field 'output'" in items[0]
    assert items[1].startswith("line 7") and "invalid JSON" in items[1]
    assert len(gateway.registry.list_jobs()) == jobs_before
    screenshot(page, "ui-new-skill.png")


@pytest.mark.slow
def test_the_new_skill_form_sends_an_eval_gate_and_shows_its_refusal_naming_the_field(
    page: Any, gateway: GatewayServer, console: Console
) -> None:
    console.expected_statuses.add(404)  # the refused job itself
    jobs_before = len(gateway.registry.list_jobs())
    sign_in(page, ADMIN_KEY, "#/new")
    page.get_by_label("Name", exact=True).fill("ui-gated")
    page.get_by_label("Dataset (JSONL, one example per line)").fill("\n".join(json.dumps(r) for r in shout_rows(6)))
    missing = "eval_" + "0" * 32
    page.get_by_label("Eval gate (JSON, optional)").fill(json.dumps({
        "eval_id": missing, "input_messages": {"type": "template", "template": [{"role": "user", "content": "hi"}]},
        "source": {"type": "file_content", "content": [{"item": {}}]},
    }))
    page.get_by_role("button", name="Train").click()
    refused = page.locator("#dataset-errors")
    refused.wait_for()
    assert f"eval {missing} not found" in refused.inner_text() and "eval_gate.eval_id" in refused.inner_text()
    assert len(gateway.registry.list_jobs()) == jobs_before


def test_the_new_skill_form_offers_reinforcement_and_a_skill_to_start_from_and_shows_refusals_naming_the_field(
    page: Any, gateway: GatewayServer, console: Console
) -> None:
    console.expected_statuses.update({400, 404})  # the refused jobs themselves
    jobs_before = len(gateway.registry.list_jobs())
    sign_in(page, ADMIN_KEY, "#/new")
    grader = page.get_by_label("Grader (JSON)")
    assert not grader.is_visible()  # supervised, the default, has no grader
    page.get_by_label("Name", exact=True).fill("ui-rft")
    page.get_by_label("Method").select_option("reinforcement")
    prompts = [{"messages": [{"role": "user", "content": f"Shout: {w}"}], "answer": w.upper()} for w in ("sun", "dog")]
    page.get_by_label("Dataset (JSONL, one example per line)").fill("\n".join(json.dumps(r) for r in prompts * 3))
    grader.fill(json.dumps({"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                            "reference": "{{item.answer}}", "operation": "equals"}))
    page.get_by_role("button", name="Train").click()
    refused = page.locator("#dataset-errors")
    refused.wait_for()
    assert "method.grader.operation" in refused.inner_text()
    # Starting from a skill that does not exist: a 404 naming `model`.
    page.get_by_label("Method").select_option("supervised")
    assert not grader.is_visible()
    page.get_by_label("Start from (optional)").fill("no-such-skill")
    page.get_by_label("Dataset (JSONL, one example per line)").fill("\n".join(json.dumps(r) for r in shout_rows(6)))
    page.get_by_role("button", name="Train").click()
    page.locator("#dataset-errors", has_text="no-such-skill").wait_for()
    assert "field: model" in page.locator("#dataset-errors").inner_text()
    assert len(gateway.registry.list_jobs()) == jobs_before


@pytest.fixture(scope="module")
def trained(browser: Any, gateway: GatewayServer) -> dict[str, Any]:
    """Train the shout skill from the New skill page, watching its job page until it ends."""
    context = browser.new_context(viewport=LAPTOP, base_url=gateway.url)
    page = context.new_page()
    page.set_default_timeout(60_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    sign_in(page, ADMIN_KEY, "#/new")
    page.get_by_label("Name", exact=True).fill(SKILL)
    page.get_by_label("Template").select_option("alpaca")
    page.get_by_label("Dataset (JSONL, one example per line)").fill("\n".join(json.dumps(r) for r in shout_rows(40)))
    for name, value in TRAINING.items():
        page.get_by_label(name, exact=True).fill(value)
    # A field the trainer decides unless set: "off" is sent as false, "auto" (left as it is) not at all.
    page.get_by_label("gradient_checkpointing", exact=True).select_option("false")
    page.get_by_role("button", name="Train").click()
    chart = page.locator("#loss-chart")
    chart.wait_for()
    job_id = page.url.rsplit("/", 1)[-1]
    points_seen = []
    deadline = time.monotonic() + 1800  # a hang guard only: this trains in about a minute on an idle machine
    while time.monotonic() < deadline:
        points_seen.append(int(chart.get_attribute("data-points") or 0))
        status = page.locator("h1 .badge").inner_text()
        if status in ("succeeded", "failed", "cancelled"):
            break
        page.wait_for_timeout(500)
    outcome = page.get_by_role("heading", name=re.compile("^(Published|Why it failed|Cancelled)"))
    outcome.wait_for()
    result = {
        "job_id": job_id,
        "hyperparameters": gateway.registry.get_job(job_id).hyperparameters,
        "status": status,
        "points_seen": points_seen,
        "curve_paths": page.locator("#loss-chart canvas").count(),
        "outcome": outcome.inner_text(),
        "problems": problems,
    }
    screenshot(page, "ui-job.png")
    context.close()
    return result


@pytest.mark.slow
def test_a_skill_trained_from_the_page_draws_its_loss_curve_as_it_trains(trained: dict[str, Any]) -> None:
    assert trained["status"] == "succeeded", trained
    assert trained["outcome"].startswith(f"Published {SKILL}")
    points = trained["points_seen"]
    # The curve grew while the page watched: more than one distinct length, never shrinking, ending at max_steps.
    assert len(set(points)) > 2, points
    assert points == sorted(points)
    assert 2 < points[-1] <= int(TRAINING["max_steps"])  # one point per step the stream showed
    assert trained["curve_paths"] >= 1
    assert not trained["problems"], trained["problems"]
    # The one boolean set on the page is the user's; the one left at auto is the trainer's choice.
    chosen = trained["hyperparameters"]
    assert chosen["gradient_checkpointing"] is False and "gradient_checkpointing" not in chosen["auto_chosen"]
    assert isinstance(chosen["padding_free"], bool) and "padding_free" in chosen["auto_chosen"]


@pytest.mark.slow
def test_the_skill_page_shows_its_evaluation_against_the_base_and_samples(page: Any, trained: dict[str, Any]) -> None:
    assert trained["status"] == "succeeded"
    sign_in(page, API_KEY, f"#/skills/{SKILL}")
    page.get_by_role("heading", name=re.compile("^Evaluation of v")).wait_for()
    table = page.locator("table.evaluation")
    assert table.get_by_role("rowheader", name="ROUGE-L").is_visible()
    assert table.get_by_role("rowheader", name="Eval loss").is_visible()
    assert page.locator(".sample").count() >= 1
    assert page.locator("#versions tbody tr").count() == 1
    facts = page.locator("dl.facts").inner_text()
    assert "alpaca" in facts and "rank 8" in facts
    screenshot(page, "ui-skill.png")
    page.get_by_role("link", name="Skills", exact=True).click()
    page.locator("#skills").get_by_role("link", name=SKILL).wait_for()
    screenshot(page, "ui-skills.png")


@pytest.mark.slow
def test_the_playground_answers_with_the_base_and_the_skill_side_by_side(
    page: Any, gateway: GatewayServer, trained: dict[str, Any]
) -> None:
    assert trained["status"] == "succeeded"
    sign_in(page, API_KEY, f"#/play?skill={SKILL}")
    page.get_by_label("Prompt").fill("Shout these words: sun dog blue book")
    page.get_by_label("Prompt").press("Control+Enter")  # the keyboard runs it, too
    answers = page.locator("#answers article")
    # A locator wait, not wait_for_function: the page's CSP (script-src 'self') forbids the eval that uses.
    # Both columns end, well or badly (data-done is "true" or "error"); a hang says what each column showed.
    from playwright.sync_api import TimeoutError as PageTimeout

    try:
        page.locator("#answers article[data-done]").nth(1).wait_for(timeout=300_000)
    except PageTimeout as error:
        shown = [(a.get_attribute("data-model"), a.get_attribute("data-done"), a.inner_text()) for a in answers.all()]
        raise AssertionError(f"the answers did not end: {shown}\n{gateway.log_tail(80)}") from error
    assert [answers.nth(i).get_attribute("data-done") for i in range(answers.count())] == ["true", "true"], (
        answers.all_inner_texts()
    )
    assert answers.count() == 2
    base, skill = (answers.nth(i).locator("output").inner_text() for i in range(2))
    assert answers.nth(1).get_attribute("data-model") == SKILL
    assert base.strip() and skill.strip() and base != skill
    answers.nth(1).locator("summary", has_text="Prompt template").click()
    assert "### Instruction:" in answers.nth(1).locator("details pre").inner_text()
    screenshot(page, "ui-playground.png")
    page.set_viewport_size(PHONE)
    screenshot(page, "ui-phone.png")


# ---------------------------------------------------------------------------- stored completions and batches


def stored_answers(gateway: GatewayServer, tag: str, questions: list[str]) -> list[str]:
    """Ask the base model each question with `store: true` (an inference key, as an application would); the ids,
    once the background writer has stored them all."""
    app = gateway.client(API_KEY)
    ids = []
    for question in questions:
        if ids:
            time.sleep(1.1)  # a completion's `created` is in whole seconds: one apart, newest first is one order
        reply = app.post("/v1/chat/completions", json={
            "model": DEFAULT_MODEL, "temperature": 0, "max_tokens": 12, "store": True, "metadata": {"ui": tag},
            "messages": [{"role": "user", "content": question}]})
        assert reply.status_code == 200, reply.text
        ids.append(reply.json()["id"])
    admin = gateway.client(ADMIN_KEY)
    deadline = time.monotonic() + 60
    while len(admin.get("/v1/chat/completions", params={"metadata[ui]": tag}).json()["data"]) < len(ids):
        assert time.monotonic() < deadline, "the stored completions were not written"
        time.sleep(0.2)
    return ids


@pytest.mark.slow
def test_stored_completions_are_rated_corrected_and_exported_from_the_page(
    page: Any, gateway: GatewayServer, console: Console
) -> None:
    console.expected_statuses.add(403)  # an inference key may not read users' conversations
    tag = uuid.uuid4().hex[:8]
    questions = ["What is the capital of France?", "Name a colour.", "Say hello."]
    france, colour, hello = stored_answers(gateway, tag, questions)
    admin = gateway.client(ADMIN_KEY)
    listing = f"#/stored?model={DEFAULT_MODEL}&metadata=ui%3D{tag}"

    sign_in(page, API_KEY, listing)
    page.get_by_role("heading", name="Reading stored completions needs an admin key").wait_for()
    page.get_by_role("button", name="Forget key").click()
    sign_in(page, ADMIN_KEY, listing)
    rows = page.locator("#stored tbody tr[data-completion]")
    rows.first.wait_for()
    assert [rows.nth(i).get_attribute("data-completion") for i in range(rows.count())] == [hello, colour, france]
    page.locator(f'#stored tr[data-completion="{france}"]', has_text="What is the capital of France?").wait_for()
    screenshot(page, "ui-stored.png")

    # One opens to its messages and answer; rated good in the page.
    page.locator(f'#stored tr[data-completion="{france}"]').get_by_role("link").click()
    page.locator("#messages").get_by_text("What is the capital of France?").wait_for()
    answer = admin.get(f"/v1/chat/completions/{france}").json()["choices"][0]["message"]["content"]
    assert page.locator("#answer pre").inner_text() == answer
    page.get_by_role("button", name="Good").click()
    page.locator("#feedback-status", has_text="Rated good").wait_for()
    assert page.get_by_role("button", name="Good").get_attribute("aria-pressed") == "true"

    # Another rated bad and corrected: the rating is kept when the correction is saved.
    page.goto(f"/ui/#/stored/{colour}")
    page.locator("#messages").get_by_text("Name a colour.").wait_for()
    page.get_by_role("button", name="Bad").click()
    page.locator("#feedback-status", has_text="Rated bad").wait_for()
    page.get_by_label("Corrected answer").fill("Blue.")
    page.get_by_role("button", name="Save correction").click()
    page.locator("#feedback-status", has_text="Rated bad, corrected").wait_for()
    screenshot(page, "ui-stored-one.png")
    stored = admin.get(f"/v1/chat/completions/{colour}").json()["feedback"]
    assert (stored["rating"], stored["corrected"]) == ("bad", "Blue.")
    assert admin.get(f"/v1/chat/completions/{hello}").json()["feedback"] is None

    # The rating filter; then every rated one exported as SFT rows, and the corrected one as a DPO pair.
    page.goto(f"/ui/{listing}&rating=bad")
    page.locator(f'#stored tr[data-completion="{colour}"]').wait_for()
    assert rows.count() == 1
    page.goto(f"/ui/{listing}")
    page.locator(f'#stored tr[data-completion="{hello}"]').wait_for()
    page.get_by_label("Kind").select_option("sft")
    page.get_by_role("button", name="Export as dataset").click()
    page.locator("#export-result", has_text="Exported 2 rows").wait_for()
    file_id = page.locator("#export-file").inner_text()
    content = admin.get(f"/v1/files/{file_id}/content")
    assert content.status_code == 200
    conversations = parse_dataset(content.content).rows
    assert [(row[0]["content"], row[-1]["content"]) for row in conversations] == [
        ("What is the capital of France?", answer), ("Name a colour.", "Blue.")]  # accepted as answered; corrected

    # A time range, in the browser's time zone, to the second: from the colour's answer on leaves France's out, and
    # until it (the end left out) nothing is left to learn from.
    created = {c: admin.get(f"/v1/chat/completions/{c}").json()["created"] for c in (france, colour, hello)}
    assert created[france] < created[colour] < created[hello]
    page.get_by_label("From").fill(browser_local(page, created[colour]))
    page.get_by_label("Until").fill(browser_local(page, created[hello] + 1))
    page.get_by_role("button", name="Export as dataset").click()
    page.locator("#export-result", has_text="Exported 1 row").wait_for()
    since_colour = admin.get(f"/v1/files/{page.locator('#export-file').inner_text()}/content").content
    assert [(row[0]["content"], row[-1]["content"]) for row in parse_dataset(since_colour).rows] == [
        ("Name a colour.", "Blue.")]
    console.expected_statuses.add(400)
    page.get_by_label("Until").fill(browser_local(page, created[colour]))
    page.get_by_role("button", name="Export as dataset").click()
    page.locator("#export-result", has_text="none of the 0 stored completion(s) matching the filter").wait_for()
    page.get_by_label("From").fill("")
    page.get_by_label("Until").fill("")

    page.get_by_label("Kind").select_option("dpo")
    page.get_by_role("button", name="Export as dataset").click()
    page.locator("#export-result", has_text="Exported 1 row").wait_for()
    dpo_file = page.locator("#export-file").inner_text()
    pairs = parse_dataset(admin.get(f"/v1/files/{dpo_file}/content").content, method="dpo").rows
    assert len(pairs) == 1

    # "Train from it" opens the New skill form with the file's rows and the method, nothing sent yet.
    jobs_before = len(gateway.registry.list_jobs())
    page.get_by_role("link", name="Train a skill from it").click()
    page.locator("#prefilled", has_text=dpo_file).wait_for()
    assert page.get_by_label("Method").input_value() == "dpo"
    assert len(page.get_by_label("Dataset (JSONL, one example per line)").input_value().strip().splitlines()) == 1
    assert len(gateway.registry.list_jobs()) == jobs_before


@pytest.mark.slow
def test_the_batches_page_shows_each_batch_with_its_counts_files_and_cancel(page: Any, gateway: GatewayServer) -> None:
    admin = gateway.client(ADMIN_KEY)

    def batch(rows: list[dict[str, Any]]) -> str:
        upload = admin.post("/v1/files", data={"purpose": "batch"},
                            files={"file": ("lines.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())})
        assert upload.status_code == 200, upload.text
        created = admin.post("/v1/batches", json={"input_file_id": upload.json()["id"],
                                                   "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        assert created.status_code == 200, created.text
        return created.json()["id"]  # type: ignore[no-any-return]

    def line(n: int, tokens: int = 4, model: str = DEFAULT_MODEL) -> dict[str, Any]:
        return {"custom_id": f"q{n}", "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": model, "max_tokens": tokens, "temperature": 0,
                         "messages": [{"role": "user", "content": f"Count to {n}."}]}}

    answered = batch([line(1), line(2)])
    refused = batch([line(1), line(2, model="no-such-skill")])  # fails at validation, naming line 2
    long = batch([line(n, tokens=48) for n in range(10, 50)])  # cancelled from the page long before its end
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, ADMIN_KEY, "#/batches")
    long_row = page.locator(f'#batches tr[data-batch="{long}"]')
    long_row.get_by_role("button", name=f"cancel {long}").click()
    long_row.locator(".badge", has_text=re.compile("^cancel")).wait_for()

    failed = page.locator(f'#batches tr[data-batch="{refused}"]')
    failed.locator(".badge", has_text="failed").wait_for()
    failed.get_by_text("1 error").click()
    assert "line 2" in failed.locator(".lines").inner_text() and "model_not_found" in failed.inner_text()

    done = page.locator(f'#batches tr[data-batch="{answered}"]')
    done.locator(".badge", has_text="completed").wait_for(timeout=600_000)  # the page refreshes itself
    assert done.locator(".counts").inner_text().strip() == "2 / 0 / 2"
    screenshot(page, "ui-batches.png")
    with page.expect_download() as got:
        done.get_by_role("button", name=f"Output file of {answered}").click()
    output = [json.loads(x) for x in Path(got.value.path()).read_text().splitlines()]
    assert sorted(x["custom_id"] for x in output) == ["q1", "q2"]
    assert all(x["response"]["status_code"] == 200 for x in output)
    assert done.get_by_role("button", name=f"Errors file of {answered}").count() == 0  # no line failed
    long_row.locator(".badge", has_text="cancelled").wait_for(timeout=600_000)
    assert admin.get(f"/v1/batches/{long}").json()["status"] == "cancelled"


# ---------------------------------------------------------------------------- evals, on a gateway without an engine


@pytest.fixture(scope="module")
def evals_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayServer, FinishedEval]]:
    """A management-only gateway whose store holds an eval with two completed runs and a failed one."""
    with management_gateway(tmp_path_factory.mktemp("ui-evals")) as served:
        yield served


@pytest.fixture
def evals_page(browser: Any, evals_gateway: tuple[GatewayServer, FinishedEval], console: Console) -> Iterator[Any]:
    with fresh_tab(browser, evals_gateway[0].url, console) as tab:
        yield tab


@pytest.mark.slow
def test_the_evals_page_shows_runs_side_by_side_and_the_rows_where_they_differ(
    evals_page: Any, evals_gateway: tuple[GatewayServer, FinishedEval]
) -> None:
    page, (_, finished) = evals_page, evals_gateway
    sign_in(page, API_KEY)
    page.get_by_role("link", name="Evals", exact=True).click()
    page.locator("#evals").get_by_role("link", name="world capitals").click()

    runs = page.locator("#runs tbody tr")
    runs.first.wait_for()
    assert runs.count() == 3
    skill_run = page.locator(f'#runs tr[data-run="{finished.skill_run}"]').inner_text()
    assert "geo@prod" in skill_run and "completed" in skill_run
    assert "75%" in skill_run and "50%" in skill_run  # names the capital 3/4, close to the capital 2/4
    failed = page.locator(f'#runs tr[data-run="{finished.failed_run}"]').inner_text()
    assert "failed" in failed and "model_not_found" in failed

    # The two completed runs, side by side by default: A the base model, B the skill
    assert page.get_by_label("Run A").input_value() == finished.base_run
    assert page.get_by_label("Run B").input_value() == finished.skill_run
    table = page.locator("#side-by-side")
    names = table.get_by_role("row").filter(has=page.get_by_role("rowheader", name="names the capital"))
    assert names.inner_text().split() == ["names", "the", "capital", "100%", "4/4", "75%", "3/4", "-25.0", "pt"]
    assert page.locator("#differ-count").inner_text().startswith("2 of 4 rows differ")
    differ = page.locator("article.diff")
    assert [differ.nth(i).get_attribute("data-row") for i in range(differ.count())] == ["1", "2"]
    japan = page.locator('article.diff[data-row="1"]')
    assert "Japan" in japan.locator(".diff-input").inner_text()
    assert japan.locator(".answer-a pre").inner_text() == "Tokyo"
    assert japan.locator(".answer-b pre").inner_text() == "Kyoto"
    grades = japan.locator(".answer-b .grades li").all_inner_texts()
    assert grades == ["names the capital ✗ fail score 0.00", "close to the capital ✗ fail score 0.40"]
    italy = page.locator('article.diff[data-row="2"] .answer-b .grades li').all_inner_texts()
    assert italy[0].startswith("names the capital ✓ pass") and italy[1].startswith("close to the capital ✗ fail")
    screenshot(page, "ui-evals.png")

    # Another pair, chosen on the page, is kept in the address: the failed run reached no row
    page.get_by_label("Run B").select_option(finished.failed_run)
    page.wait_for_url(re.compile(f"b={finished.failed_run}"))
    page.locator("#differ-count", has_text="4 of 4 rows differ").wait_for()
    assert "did not reach this row" in page.locator('article.diff[data-row="0"] .answer-b').inner_text()


# ---------------------------------------------------------------------------- the audit log, without an engine


@pytest.fixture(scope="module")
def audit_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """A management-only gateway on an empty store: its audit log holds only what a test does."""
    root = tmp_path_factory.mktemp("ui-audit")
    extra = {"SKILLSERVE_LOAD_ENGINE": "false", "SKILLSERVE_METRICS_PORT": str(free_port())}
    with gateway_process(root, f"file://{root / 'store'}", extra, ready="/health", timeout=120) as (server, _):
        yield server


def logged(gateway: GatewayServer, count: int, **params: str) -> list[dict[str, Any]]:
    """The audit log's newest entries (filtered by `params`) once `count` are written (the writer is asynchronous)."""
    admin = gateway.client(ADMIN_KEY)
    deadline = time.monotonic() + 30
    while len(found := admin.get("/v1/audit", params={"limit": 100, **params}).json()["data"]) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} audit entries were written"
        time.sleep(0.1)
    return found  # type: ignore[no-any-return]


def shows(page: Any, ids: list[str]) -> None:
    """Wait until the Audit page lists exactly these entries, in this order (a view replaces the last one as it
    loads, so the rows are read until they settle)."""
    rows = page.locator("#audit tbody tr[data-entry]")
    deadline = time.monotonic() + 30
    while (found := rows.evaluate_all("rows => rows.map((row) => row.dataset.entry)")) != ids:
        assert time.monotonic() < deadline, f"the page shows {found}, not {ids}"
        page.wait_for_timeout(100)


@pytest.mark.slow
def test_the_audit_page_shows_admin_actions_with_their_outcome_filters_and_pages_them_and_needs_an_admin_key(
    browser: Any, audit_gateway: GatewayServer, console: Console
) -> None:
    console.expected_statuses.add(403)  # an inference key may not read the audit log
    admin = audit_gateway.client(ADMIN_KEY)
    upload = admin.post("/v1/files", data={"purpose": "batch"}, files={"file": ("a.jsonl", b"{}\n")})
    assert upload.status_code == 200, upload.text
    file_id = upload.json()["id"]
    missing = admin.delete("/v1/files/file-missing")
    assert missing.status_code == 404, missing.text
    refused = audit_gateway.client(API_KEY).delete(f"/v1/files/{file_id}")  # recorded too, with the key's role
    assert refused.status_code == 403, refused.text
    (upload_entry, delete_entry, refused_entry) = reversed(logged(audit_gateway, 3))

    with fresh_tab(browser, audit_gateway.url, console) as page:
        sign_in(page, API_KEY, "#/audit")
        page.get_by_role("heading", name="Reading the audit log needs an admin key").wait_for()
        page.get_by_role("button", name="Forget key").click()
        sign_in(page, ADMIN_KEY, "#/audit")
        rows = page.locator("#audit tbody tr[data-entry]")
        rows.first.wait_for()
        assert [rows.nth(i).get_attribute("data-entry") for i in range(rows.count())] == [
            refused_entry["id"], delete_entry["id"], upload_entry["id"]]  # newest first
        deleted = page.locator(f'#audit tr[data-entry="{delete_entry["id"]}"]')
        assert (deleted.get_attribute("data-action"), deleted.get_attribute("data-outcome")) == (
            "file.delete", "failed")
        text = deleted.inner_text()
        assert key_id(ADMIN_KEY) in text and "admin" in text and "file-missing" in text
        assert "404" in text and missing.json()["error"]["code"] in text
        uploaded = page.locator(f'#audit tr[data-entry="{upload_entry["id"]}"]')
        assert (uploaded.get_attribute("data-action"), uploaded.get_attribute("data-outcome")) == (
            "file.upload", "succeeded")
        assert file_id in uploaded.inner_text() and "200" in uploaded.inner_text()
        inference = page.locator(f'#audit tr[data-entry="{refused_entry["id"]}"]').inner_text()
        assert key_id(API_KEY) in inference and "inference" in inference and "admin_key_required" in inference
        screenshot(page, "ui-audit.png")

        # Filtered by action from the form; the filter is kept in the address.
        page.get_by_label("Action").fill("file.upload")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url(re.compile(r"action=file\.upload"))
        shows(page, [upload_entry["id"]])
        # ... and by outcome: no upload failed.
        page.get_by_label("Outcome").select_option("failed")
        page.get_by_role("button", name="Filter").click()
        page.locator("#audit td.empty", has_text="No entry matches these filters.").wait_for()
        # An entry's object filters the log to it.
        page.goto("/ui/#/audit")
        page.locator(f'#audit tr[data-entry="{delete_entry["id"]}"]').get_by_role("link", name="file-missing").click()
        page.wait_for_url(re.compile(r"object=file-missing"))
        shows(page, [delete_entry["id"]])
        # ... and its key to what that key did: here, the inference key's refused delete.
        page.goto("/ui/#/audit")
        refused_row = page.locator(f'#audit tr[data-entry="{refused_entry["id"]}"] td')
        refused_row.get_by_role("link", name=key_id(API_KEY)).click()
        page.wait_for_url(re.compile(f"key={key_id(API_KEY)}"))
        shows(page, [refused_entry["id"]])
        assert page.get_by_label("Key").input_value() == key_id(API_KEY)
        page.get_by_label("Key").fill(key_id(ADMIN_KEY))
        page.get_by_role("button", name="Filter").click()
        shows(page, [delete_entry["id"], upload_entry["id"]])
        # A time range, in the browser's time zone, to the minute: from the upload's minute on is all three, until it
        # (exclusive) is none.
        page.goto("/ui/#/audit")
        shows(page, [refused_entry["id"], delete_entry["id"], upload_entry["id"]])
        local = browser_local(page, 60 * (int(upload_entry["created_at"]) // 60))
        page.get_by_label("Until").fill(local)
        page.get_by_role("button", name="Filter").click()
        page.locator("#audit td.empty", has_text="No entry matches these filters.").wait_for()
        page.get_by_label("Until").fill("")
        page.get_by_label("From").fill(local)
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url(re.compile(r"from="))
        shows(page, [refused_entry["id"], delete_entry["id"], upload_entry["id"]])

        # Twenty more uploads: the page of twenty and the one older, as the API pages them.
        for n in range(20):
            more = admin.post("/v1/files", data={"purpose": "batch"}, files={"file": (f"{n}.jsonl", b"{}\n")})
            assert more.status_code == 200, more.text
        uploads = [e["id"] for e in logged(audit_gateway, 21, action="file.upload")]
        assert uploads[-1] == upload_entry["id"]
        page.goto("/ui/#/audit?action=file.upload")
        shows(page, uploads[:20])
        page.get_by_role("link", name="Older").click()
        shows(page, uploads[20:])
        assert page.get_by_role("link", name="Older").count() == 0
        page.get_by_role("link", name="Newest").click()
        page.wait_for_url(re.compile(r"#/audit\?action=file\.upload$"))
        shows(page, uploads[:20])

        # On a phone: the filters stack and the table scrolls inside its card, never the page.
        page.set_viewport_size(PHONE)
        page.goto("/ui/#/audit")
        shows(page, [e["id"] for e in logged(audit_gateway, 23)][:20])
        assert page.get_by_label("Action").is_visible() and page.get_by_role("button", name="Filter").is_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        first = rows.first
        outcome = first.locator(".badge").bounding_box()
        assert outcome["x"] + outcome["width"] <= PHONE["width"], outcome  # how it ended is seen without scrolling
        assert key_id(ADMIN_KEY) in first.locator("th").inner_text()  # who, under when
