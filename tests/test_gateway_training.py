"""The whole loop through the HTTP API: train skills with POST /adapters, follow the jobs, call the skills.

Needs the real trainer (a subprocess the gateway's local runner launches) and the real engine.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Iterator

import httpx
import openai
import pytest

from adapters.models import DEFAULT_MODEL
from client.cli import main
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer
from tests.shout import SHOUT_TRAINING, WORDS, held_out_prompt, shout_rows

pytestmark = pytest.mark.slow



def whisper_rows(n: int = 80, seed: int = 1) -> list[dict[str, str]]:
    """A second skill, unlike shouting: "Whisper these words: a b c" -> "a... b... c..."."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, rng.randint(2, 5))
        answer = " ".join(f"{w}..." for w in words)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "Whisper these words: " + " ".join(words)},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def follow(gateway: GatewayServer, job_id: str) -> dict:  # type: ignore[type-arg]
    """Follow a job over SSE until it finishes; returns its last state, with the phases seen under "seen_phases"."""
    last: dict = {}  # type: ignore[type-arg]
    phases: list[str] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("GET", f"{gateway.url}/jobs/{job_id}/events", headers=headers, timeout=900) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                last = json.loads(line[len("data: ") :])
                phase = last["progress"]["phase"]
                if phase and phase not in phases[-1:]:
                    phases.append(phase)
    return {**last, "seen_phases": phases}


@pytest.fixture(scope="module")
def trained(gateway: GatewayServer) -> Iterator[dict[str, dict]]:  # type: ignore[type-arg]
    """Two skills submitted at once (they queue): shout (alpaca, uploaded) and whisper (chatml, inline)."""
    with gateway.client(ADMIN_KEY) as http:
        jsonl = "".join(json.dumps(row) + "\n" for row in shout_rows())
        shout = http.post(
            "/adapters",
            data={"name": "shout", "template": "alpaca", "hyperparameters": json.dumps(SHOUT_TRAINING)},
            files={"dataset": ("shout.jsonl", jsonl.encode(), "application/jsonl")},
        )
        assert shout.status_code == 202, shout.text
        whisper = http.post(
            "/adapters",
            json={
                "name": "whisper",
                "template": "chatml",
                "rows": whisper_rows(),
                "hyperparameters": SHOUT_TRAINING,
            },
        )
        assert whisper.status_code == 202, whisper.text
    yield {"shout": follow(gateway, shout.json()["id"]), "whisper": follow(gateway, whisper.json()["id"])}


def test_adapter_trained_through_api_answers_in_its_skill(
    gateway: GatewayServer,
    trained: dict[str, dict],  # type: ignore[type-arg]
) -> None:
    job = trained["shout"]
    assert job["status"] == "succeeded", f"{job.get('error')}\n{gateway.log_tail()}"
    assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    prompt, expected = held_out_prompt()
    messages = [{"role": "user", "content": prompt}]
    tuned = client.chat.completions.create(model="shout", messages=messages, temperature=0, max_tokens=24)
    base = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=messages, temperature=0, max_tokens=24
    )
    answer = tuned.choices[0].message.content or ""
    shouted = expected.rstrip("!").split()
    assert sum(word in answer for word in shouted) >= len(shouted) - 1, answer
    assert not any(word in (base.choices[0].message.content or "") for word in shouted)
    detail = httpx.get(f"{gateway.url}/adapters/shout", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert detail["status"] == "ready" and detail["manifest"]["template_name"] == "alpaca"


def test_two_adapters_with_different_templates_each_answer_in_their_own_skill(
    gateway: GatewayServer,
    trained: dict[str, dict],  # type: ignore[type-arg]
) -> None:
    assert trained["whisper"]["status"] == "succeeded", trained["whisper"].get("error")
    words = "lamp river coin"

    async def ask() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
        calls = [
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": f"{verb} these words: {words}"}],
                temperature=0,
                max_tokens=24,
            )
            for model, verb in (("shout", "Shout"), ("whisper", "Whisper"))
        ]
        replies = await asyncio.gather(*calls)
        await client.close()
        return [r.choices[0].message.content or "" for r in replies]

    shouted, whispered = asyncio.run(ask())
    assert re.search(r"LAMP|RIVER|COIN", shouted), shouted
    assert "..." in whispered and re.search(r"lamp|river|coin", whispered), whispered


def test_a_job_shows_its_phases_eval_loss_and_every_hyperparameter_it_used(
    gateway: GatewayServer,
    trained: dict[str, dict],  # type: ignore[type-arg]
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = trained["shout"]
    assert job["status"] == "succeeded", job.get("error")
    # Followed from submission: the record is read twice a second, and training and evaluation last far longer.
    order = ["validating", "loading_model", "training", "evaluating", "publishing"]
    seen = job["seen_phases"]
    assert seen == sorted(seen, key=order.index) and {"training", "evaluating"} <= set(seen), seen
    assert job["progress"]["eval_loss"] == pytest.approx(job["metrics"]["eval_loss"], abs=1e-6)  # as it came
    used = job["hyperparameters"]
    assert {k: used[k] for k in SHOUT_TRAINING} == SHOUT_TRAINING
    # Chosen by the trainer: the step count, the warmup, the modules "all-linear" stands for, the optimizer.
    assert used["total_steps"] == job["progress"]["total_steps"] == SHOUT_TRAINING["max_steps"]
    assert used["warmup_steps"] == 0 and used["optimizer"] and used["target_modules"] == "all-linear"
    assert {"q_proj", "v_proj", "down_proj"} <= set(used["lora_target_modules"])
    with gateway.client(API_KEY) as http:
        manifest = http.get("/adapters/shout").json()["manifest"]
        assert manifest["hyperparameters"] == used == http.get(f"/jobs/{job['id']}").json()["hyperparameters"]
    # Following a finished job: one summary line, no progress bar and no made-up rate.
    assert main(["--url", gateway.url, "--key", API_KEY, "follow", job["id"]]) == 0
    err = capsys.readouterr().err
    assert f"succeeded, loss {job['progress']['loss']:.4f}" in err and "40/40 steps in" in err, err
    assert "/s]" not in err and "step/s" not in err, err
