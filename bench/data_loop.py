"""The data loop end to end (issue 32): a skill's own traffic, reviewed, becomes its next version.

One gateway with the engine and the local trainer. A weak first version of the shout skill ("Shout these words:
a b" -> "A B!") is trained on a few rows; then, as an application would, `store: true` conversations are sent to it;
a reviewer rates each stored answer through the feedback endpoint the dashboard uses (good when it is the right
shout, else the right answer given as the correction, up to the size's number of corrections); the rated ones are
exported as SFT rows (POST /v1/chat/completions/exports), the next version is trained from the current one on them
(POST /adapters with `model` = the skill), and both versions are graded on held-out prompts with the Evals API
(string_check, the exact shout). `python -m bench.data_loop [--size tiny|full]` prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.servers import API_KEY, EngineShape, start_gateway

SKILL = "loop-shout"
WORDS = (  # noqa: SIM905  (a paragraph of words reads better than a list of 54)
    "cat house tree river cloud apple stone green music paper chair light window orange table garden bread horse "
    "winter summer candle mirror bottle pencil rocket forest silver yellow dragon castle pillow basket jacket planet "
    "bridge island carpet market door road fish bird milk rain snow wind fire water ship car train plane boat hat"
).split()
SIZES = {
    # first version's rows and steps, conversations stored, corrections at most, next version's steps, held-out prompts
    "tiny": {"seed_rows": 8, "seed_steps": 4, "conversations": 12, "corrections": 4, "steps": 8, "held_out": 8},
    "full": {"seed_rows": 16, "seed_steps": 8, "conversations": 40, "corrections": 10, "steps": 30, "held_out": 24},
}
TRAINING = {"learning_rate": 3e-3, "eval_fraction": 0, "eval_samples": 0, "keep": "last", "batch_size": 4}


def shout(words: list[str]) -> str:
    return " ".join(w.upper() for w in words) + "!"


def prompts(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(WORDS, rng.randint(2, 4)) for _ in range(n)]


def ask(words: list[str]) -> str:
    return f"Shout these words: {' '.join(words)}"


def train(client: httpx.Client, rows: list[dict[str, Any]], steps: int, parent: str | None) -> dict[str, Any]:
    """POST /adapters (a new version of the skill; from `parent` when given) and wait for the job to end."""
    body: dict[str, Any] = {"name": SKILL, "rows": rows, "hyperparameters": {**TRAINING, "max_steps": steps}}
    body.update({"model": parent} if parent else {"template": "alpaca"})
    r = client.post("/adapters", json=body)
    r.raise_for_status()
    job = r.json()
    started = time.monotonic()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.5)
        job = client.get(f"/jobs/{job['id']}").json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"training job {job['id']} {job['status']}: {job.get('error')}")
    return {"job_id": job["id"], "version": job["version"], "seconds": round(time.monotonic() - started, 1)}


def store_conversations(client: httpx.Client, tag: str, asked: list[list[str]]) -> list[tuple[str, str, str]]:
    """Each prompt asked of the skill with `store: true`; (completion id, answer, right answer) once all are stored."""
    sent = []
    for words in asked:
        r = client.post("/v1/chat/completions", json={
            "model": SKILL, "temperature": 0, "max_tokens": 24, "store": True, "metadata": {"loop": tag},
            "messages": [{"role": "user", "content": ask(words)}]})  # fmt: skip
        r.raise_for_status()
        reply = r.json()
        sent.append((reply["id"], reply["choices"][0]["message"]["content"] or "", shout(words)))
    deadline = time.monotonic() + 120
    query: dict[str, str | int] = {"metadata[loop]": tag, "limit": 100}
    while len(client.get("/v1/chat/completions", params=query).json()["data"]) < len(sent):
        if time.monotonic() > deadline:
            raise TimeoutError("the stored completions were not written within 120 s")
        time.sleep(0.5)
    return sent


def review(client: httpx.Client, sent: list[tuple[str, str, str]], corrections: int) -> dict[str, int]:
    """Through the feedback endpoint: right answers rated good; wrong ones rated bad, the first `corrections`
    of them with the right answer given."""
    counts = {"good": 0, "corrected": 0, "bad": 0}
    for completion_id, answer, right in sent:
        if answer.strip() == right:
            body: dict[str, Any] = {"rating": "good"}
            counts["good"] += 1
        elif counts["corrected"] < corrections:
            body = {"rating": "bad", "corrected": right}
            counts["corrected"] += 1
        else:
            body = {"rating": "bad"}
            counts["bad"] += 1
        client.post(f"/v1/chat/completions/{completion_id}/feedback", json=body).raise_for_status()
    return counts


def evaluate(client: httpx.Client, models: list[str], held_out: list[list[str]]) -> dict[str, Any]:
    """One eval (the exact shout), a run per model on the same held-out prompts; each run's pass rate."""
    r = client.post("/v1/evals", json={
        "name": "shout, held out",
        "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
        "testing_criteria": [{"type": "string_check", "name": "exact shout", "operation": "eq",
                              "input": "{{sample.output_text}}", "reference": "{{item.ideal}}"}],
    })  # fmt: skip
    r.raise_for_status()
    eval_id = r.json()["id"]
    items = [{"item": {"input": ask(words), "ideal": shout(words)}} for words in held_out]
    runs = {}
    for model in models:
        r = client.post(f"/v1/evals/{eval_id}/runs", json={"name": model, "data_source": {
            "type": "completions", "model": model,
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.input}}"}]},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 24},
            "source": {"type": "file_content", "content": items}}})  # fmt: skip
        r.raise_for_status()
        runs[model] = r.json()["id"]
    scores = {}
    for model, run_id in runs.items():
        while (run := client.get(f"/v1/evals/{eval_id}/runs/{run_id}").json())["status"] in ("queued", "in_progress"):
            time.sleep(1)
        counts = run["result_counts"]
        scores[model] = {"status": run["status"], "passed": counts["passed"], "total": counts["total"],
                         "pass_rate": round(counts["passed"] / counts["total"], 3) if counts["total"] else None}
    return {"eval_id": eval_id, "runs": runs, "scores": scores}


def run(size_name: str, workdir: Path) -> dict[str, Any]:
    size = SIZES[size_name]
    shape = EngineShape(max_num_seqs=4, max_loras=2, max_cpu_loras=2, max_model_len=1024)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # The bench's key is an admin key here: training, reading stored completions and exporting take one.
    env = {"SKILLSERVE_ADMIN_KEYS": json.dumps([API_KEY]), "SKILLSERVE_TRAINING_ENABLED": "true"}
    with start_gateway(shape, f"file://{workdir / 'store'}", workdir, extra_env=env, ready_timeout_s=900) as server:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=600) as client:
            seed_rows = [{"instruction": ask(w), "output": shout(w)} for w in prompts(size["seed_rows"], seed=1)]
            first = train(client, seed_rows, size["seed_steps"], parent=None)
            tag = f"loop-{int(time.time())}"
            sent = store_conversations(client, tag, prompts(size["conversations"], seed=2))
            reviewed = review(client, sent, size["corrections"])
            r = client.post("/v1/chat/completions/exports",
                            json={"kind": "sft", "model": SKILL, "metadata": {"loop": tag}})
            r.raise_for_status()
            exported = r.json()
            rows = [json.loads(line) for line in client.get(f"/v1/files/{exported['id']}/content").text.splitlines()]
            # The exported file's own rows, sent as the next version's dataset, starting from the current version.
            second = train(client, rows, size["steps"], parent=f"{SKILL}@{first['version']}")
            held_out = prompts(size["held_out"], seed=3)
            graded = evaluate(client, [f"{SKILL}@{first['version']}", f"{SKILL}@{second['version']}"], held_out)
    return {
        "benchmark": "data_loop",
        "size": size_name,
        "skill": SKILL,
        "first_version": first,
        "stored_conversations": len(sent),
        "reviewed": reviewed,
        "export": {"file_id": exported["id"], "rows": len(rows), "bytes": exported["bytes"]},
        "next_version": second,
        "eval": graded,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data_loop", description=__doc__)
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch space (default: a temporary directory)")
    args = parser.parse_args(argv)
    from bench import environment

    machine = environment.machine()  # the load average before the loop's own work
    if args.workdir is not None:
        report = run(args.size, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="skillserve-data-loop-") as scratch:
            report = run(args.size, Path(scratch))
    json.dump(report | {"machine": machine}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
