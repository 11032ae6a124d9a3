"""An eval with finished runs in a real store, and a management-only gateway serving it (no engine).

The runs are executed by the gateway's own executor (service/management/eval_runs.EvalRunner) and graded by the
real graders; only the serving path is a test double (`scripted_serving`), answering each question as a script
says, so the records are exactly those a real run writes and the pages and commands that read them need no engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import EvalRecord, EvalRunRecord, TokenUsage
from adapters.store import open_store
from service.management.eval_runs import EvalRunner, RunFailed, Sampled
from tests.gateway_fixtures import GatewayServer, free_port, gateway_process

ROWS = [
    {"item": {"country": "France", "capital": "Paris"}},
    {"item": {"country": "Japan", "capital": "Tokyo"}},
    {"item": {"country": "Italy", "capital": "Rome"}},
    {"item": {"country": "Spain", "capital": "Madrid"}},
]
ITEM_SCHEMA = {
    "type": "object",
    "properties": {"country": {"type": "string"}, "capital": {"type": "string"}},
    "required": ["country", "capital"],
}
CRITERIA: list[dict[str, Any]] = [
    {"type": "string_check", "name": "names the capital", "operation": "ilike",
     "input": "{{sample.output_text}}", "reference": "{{item.capital}}"},
    {"type": "text_similarity", "name": "close to the capital", "evaluation_metric": "fuzzy_match",
     "pass_threshold": 0.8, "input": "{{sample.output_text}}", "reference": "{{item.capital}}"},
]
TEMPLATE = [
    {"role": "system", "content": "Answer with the city's name only."},
    {"role": "user", "content": "What is the capital of {{item.country}}?"},
]
SKILL = "geo@prod"
UNSERVED = "no-such-skill"
# What each model answers, by country. The skill misses Japan (both criteria fail) and answers Italy in a sentence
# (it names Rome, but is not close to the one word): rows 1 and 2 differ between the two runs, rows 0 and 3 do not.
ANSWERS = {
    DEFAULT_MODEL: {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid"},
    SKILL: {"France": "Paris", "Japan": "Kyoto", "Italy": "The capital of Italy is Rome.", "Spain": "Madrid"},
}


def scripted_serving(answers: dict[str, dict[str, str]], served: dict[str, list[str]] | None = None) -> Any:
    """A test double for the serving path (eval_runs.sample_chat): each model answers each country as scripted; a
    model not in the script is unknown, as the gateway would say. `served` names, per model, the version that
    answers each call in turn (what an alias resolved to); without it, the version is not known."""
    versions = {model: iter(order) for model, order in (served or {}).items()}

    async def sample(project: str, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> Sampled:
        if model not in answers:
            raise RunFailed("model_not_found", f"The model `{model}` does not exist.")
        question = messages[-1]["content"]
        text = next(answer for country, answer in answers[model].items() if country in question)
        usage = TokenUsage(invocation_count=1, prompt_tokens=24, completion_tokens=len(text.split()) + 1,
                           total_tokens=25 + len(text.split()))
        return Sampled(text, usage, "stop", next(versions[model]) if model in versions else "")

    return sample


def data_source(model: str) -> dict[str, Any]:
    return {
        "type": "completions",
        "model": model,
        "input_messages": {"type": "template", "template": TEMPLATE},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 16},
        "source": {"type": "file_content", "content": ROWS},
    }


@dataclass
class FinishedEval:
    """An eval with a completed run on the base model, one on the skill, and one that failed."""

    eval_id: str
    base_run: str
    skill_run: str
    failed_run: str


def write_finished_eval(registry: Registry, name: str = "world capitals") -> FinishedEval:
    """Create the eval and execute its three runs to the end through EvalRunner with `scripted_serving`."""
    evaluation = registry.put_eval(EvalRecord(name=name, item_schema=ITEM_SCHEMA, include_sample_schema=True,
                                              testing_criteria=CRITERIA))
    runs = [registry.put_eval_run(EvalRunRecord(eval_id=evaluation.id, name=f"on {model}", model=model,
                                                data_source=data_source(model), rows=len(ROWS)))
            for model in (DEFAULT_MODEL, SKILL, UNSERVED)]

    async def execute() -> None:
        runner = EvalRunner(registry, scripted_serving(ANSWERS), lambda _, r: r.data_source["source"]["content"])
        for run in runs:
            runner.submit(evaluation.id, run.id)
        for run in runs:
            await runner.wait(run.id)

    # On a thread of its own: the caller may be inside an event loop (Playwright's sync API runs one).
    with ThreadPoolExecutor(1) as thread:
        thread.submit(lambda: asyncio.run(execute())).result()
    return FinishedEval(evaluation.id, runs[0].id, runs[1].id, runs[2].id)


@contextmanager
def management_gateway(root: Path) -> Iterator[tuple[GatewayServer, FinishedEval]]:
    """`python -m service` without an engine, on a store that already holds the finished eval."""
    store_uri = f"file://{root / 'store'}"
    finished = write_finished_eval(Registry(open_store(store_uri)))
    extra = {"SKILLSERVE_LOAD_ENGINE": "false", "SKILLSERVE_METRICS_PORT": str(free_port())}
    with gateway_process(root, store_uri, extra, ready="/health", timeout=120) as (server, _):
        yield server, finished
