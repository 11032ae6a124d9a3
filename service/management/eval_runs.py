"""The background executor of eval runs: each row's prompt through the serving path, every criterion graded, one
output item written per row, the run's counts kept as a fold of its items.

Live traffic keeps priority: at most `eval_concurrency` rows (all runs of all projects together, shared fairly
between projects) are in the engine at once, they wait in the engine's queue behind live requests
(BACKGROUND_PRIORITY under vLLM's priority policy), and a row refused for load (429) or by an engine not ready (503)
waits and is tried again, as does one over its project's per-minute limit, until the next minute: it does not fail
(service/management/background.py, shared with batches). A run executes in its eval's project: its records there,
its model and judges resolved among that project's adapters only.

Restart: a run of any project left `queued` or `in_progress` is resumed when a gateway starts. Its rows already
written are not redone (each row's item is written only if absent, under a key named by the row), and its counts are
recounted from the items in the store; two executors on one run (two replicas) write each row once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters import graders
from adapters.errors import GraderError, NotFound, SkillserveError
from adapters.eval_rows import criterion_result, item_status, recount, rendered_messages, tally
from adapters.limits import CallerLimits
from adapters.registry import Registry
from adapters.schema import (
    DEFAULT_PROJECT,
    EvalOutputItem,
    EvalRecord,
    EvalRunRecord,
    EvalRunStatus,
    TokenUsage,
    output_item_id,
)
from service.management.background import (
    BACKGROUND_PRIORITY,
    LIVE_PRIORITY,
    BackgroundExecutor,
    FairSlots,
    parsed_request,
    project_caller,
    serve_whole,
    task_key,
)
from service.protocol.chat import ChatCompletion

if TYPE_CHECKING:
    from service.gateway import Gateway

log = logging.getLogger("skillserve.evals")


@dataclass(frozen=True)
class Sampled:
    """A model's answer to one prompt, as a chat completion gives it, and the exact model that answered it (the base
    id or `name@version`: what an alias or `ft:` id resolved to; empty when not known)."""

    text: str
    usage: TokenUsage
    finish_reason: str | None
    served_by: str = ""


Sampler = Callable[[str, str, list[dict[str, Any]], dict[str, Any]], Awaitable[Sampled]]  # (project, model, ...)


class RunFailed(Exception):
    """The whole run cannot go on (its model is unknown, its file is gone): it ends `failed` with this reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- the one way into the serving path


async def sample_chat(
    gw: Gateway, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any], priority: int = LIVE_PRIORITY,
    caller: CallerLimits | None = None,
) -> Sampled:
    """Ask `model` (base, adapter, `name@version`, alias, `ft:` id) as POST /v1/chat/completions would: the same
    admission, target resolution, template, adapter lease and metrics, without HTTP, at `priority` in the engine
    (a grader run for a client is live; an eval run's rows and judges are background). `sampling` holds chat
    request fields (temperature, top_p, seed, max_tokens or max_completion_tokens, response_format, tools).
    `caller`: whose per-minute limits it is charged to (none: a grader run for a client, charged nothing here). Raises
    the domain error a chat request would get."""
    body = parsed_request("/v1/chat/completions", {**sampling, "model": model, "messages": messages})
    served = await serve_whole(gw, body, priority, caller)
    completion = served.body
    assert isinstance(completion, ChatCompletion)
    choice = completion.choices[0]
    text = choice.message.content or ""
    if choice.message.tool_calls:
        calls = [call.model_dump() for call in choice.message.tool_calls]
        text = text or json.dumps(calls)
    usage = completion.usage
    return Sampled(
        text,
        TokenUsage(invocation_count=1, prompt_tokens=usage.prompt_tokens,
                   completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens),
        choice.finish_reason,
        served.served_by,
    )


# ---------------------------------------------------------------- what a run does with a row (pure)


def tally_into(item: EvalOutputItem, run: EvalRunRecord) -> EvalRunRecord | None:
    """`item` counted into the stored run; nothing once the run has finished, whose counts are final (a completed
    run's are made from its items)."""
    return None if run.status.finished else tally(run, item)


def chat_sampling(sampling_params: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's `sampling_params` as chat request fields (reasoning_effort is dropped: nothing here uses it)."""
    keep = ("temperature", "top_p", "seed", "max_completion_tokens", "response_format", "tools")
    return {key: value for key, value in (sampling_params or {}).items() if key in keep and value is not None}


# ---------------------------------------------------------------- the executor


class EvalRunner(BackgroundExecutor):
    """Runs every project's eval runs in the background, `concurrency` rows at a time over all of them (shared fairly
    between projects)."""

    def __init__(
        self,
        registry: Registry,
        sample: Sampler,
        rows: Callable[[str, EvalRunRecord], list[dict[str, Any]]],
        concurrency: int = 1,
        serving: bool = True,
    ):
        super().__init__()
        self.registry = registry  # the org's: each run is executed through its project's view of it
        self.sample = sample
        self.rows = rows  # (project, run) -> its rows from its data source (inline content or a stored file)
        self.serving = serving
        self._slots = FairSlots(concurrency)

    def submit(self, eval_id: str, run_id: str, project: str = DEFAULT_PROJECT) -> None:
        """Start executing a run of `project` (a no-op when it is already executing here)."""
        registry = self.registry.for_project(project)
        self._start(task_key(project, run_id), lambda: self._execute(registry, eval_id, run_id))

    async def resume(self) -> list[str]:
        """Take up every project's runs left queued or in progress (after a restart); their task keys."""
        projects = await asyncio.to_thread(self.registry.list_projects)
        resumed = []
        for project in projects:
            runs = await asyncio.to_thread(self.registry.for_project(project.id).list_eval_runs)
            for run in reversed(runs):  # oldest first
                if not run.status.finished:
                    log.info("resuming eval run %s of %s in %s (%s)", run.id, run.eval_id, project.id,
                             run.status.value)
                    self.submit(run.eval_id, run.id, project.id)
                    resumed.append(task_key(project.id, run.id))
        return resumed

    async def _execute(self, registry: Registry, eval_id: str, run_id: str) -> None:
        try:
            await self._run(registry, eval_id, run_id)
        except asyncio.CancelledError:
            raise
        except RunFailed as exc:
            error = {"code": exc.code, "message": exc.message}
            await self._finish(registry, eval_id, run_id, EvalRunStatus.failed, error)
        except NotFound:  # the run (or its eval) was deleted while it ran: nothing left to write to
            log.info("eval run %s was deleted while it ran", run_id)
        except Exception as exc:  # noqa: BLE001 - the run records why it stopped; the gateway goes on
            log.exception("eval run %s failed", run_id)
            error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            with contextlib.suppress(Exception):
                await self._finish(registry, eval_id, run_id, EvalRunStatus.failed, error)

    async def _run(self, registry: Registry, eval_id: str, run_id: str) -> None:
        run = await asyncio.to_thread(registry.get_eval_run, eval_id, run_id)
        if run.status.finished:
            return
        try:
            evaluation = await asyncio.to_thread(registry.get_eval, eval_id)
        except NotFound:
            raise RunFailed("eval_not_found", f"eval {eval_id} was deleted") from None
        if not self.serving:
            raise RunFailed("no_engine", "this gateway serves no models (load_engine is off): no row can be sampled")
        try:
            rows = await asyncio.to_thread(self.rows, registry.project, run)
        except (NotFound, ValueError) as exc:
            raise RunFailed("invalid_data_source", f"the run's rows cannot be read: {exc}") from None
        criteria = [graders.validate(c, f"testing_criteria[{i}]") for i, c in enumerate(evaluation.testing_criteria)]
        done = await asyncio.to_thread(registry.list_output_items, run_id)

        def start(current: EvalRunRecord) -> EvalRunRecord:
            started = recount(current, done)  # what a crash between an item and its count left uncounted
            return started.model_copy(
                update={"status": EvalRunStatus.in_progress, "started_at": current.started_at or time.time()}
            )

        if await asyncio.to_thread(registry.update_eval_run, eval_id, run_id, start) is None:
            return  # canceled (or finished elsewhere) before it started
        written = {item.index for item in done}
        for index, row in enumerate(rows):
            if index in written:
                continue
            if (await asyncio.to_thread(registry.get_eval_run, eval_id, run_id)).status.finished:
                return  # canceled while it ran
            item = await self._row(registry.project, evaluation, run, criteria, index, row)
            if await asyncio.to_thread(registry.put_output_item, item):
                await asyncio.to_thread(registry.update_eval_run, eval_id, run_id, functools.partial(tally_into, item))
        # Every row has its item now (ours, or another executor's that won the write). The running counts can be
        # off when two executors resumed one run (one's start recounted from a list read before the other's tally),
        # so the completed run's counts are made again from the items themselves.
        items = await asyncio.to_thread(registry.list_output_items, run_id)
        await self._finish(registry, eval_id, run_id, EvalRunStatus.completed, None, items)

    async def _row(
        self, project: str, evaluation: EvalRecord, run: EvalRunRecord, criteria: list[graders.AnyGrader], index: int,
        row: dict[str, Any],
    ) -> EvalOutputItem:
        """Sample one row, grade it with every criterion; the output item (not yet written)."""
        item = row.get("item") or {}
        source = run.data_source
        sampling = chat_sampling(source.get("sampling_params"))
        usage: dict[str, TokenUsage] = {}
        messages: list[dict[str, str]] = []
        sample_error: dict[str, str] | None = None
        answer: Sampled | None = None
        try:
            messages = rendered_messages(source.get("input_messages") or {}, item)
            answer = await self._ask(project, run.model, messages, sampling)
            usage[run.model] = answer.usage
        except graders.TemplateReferenceError as exc:
            sample_error = {"code": "invalid_variable_error", "message": str(exc)}
        except SkillserveError as exc:
            sample_error = {"code": exc.code or "sampling_error", "message": str(exc)}

        async def judge(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
            judged = await self._ask(project, model, messages, params)
            usage[model] = usage.get(model, TokenUsage()).plus(judged.usage)
            return judged.text

        results: list[dict[str, Any]] = []
        if answer is not None:
            for criterion in criteria:
                try:
                    result = await graders.grade(criterion, item, answer.text, judge)
                except GraderError as exc:
                    result = graders.GradeResult(criterion.name, criterion.type, 0.0, False,
                                                 [graders.GradeError("other_error", str(exc))])
                results.append(criterion_result(result))
        sample = {
            "input": messages,
            "output": [{"role": "assistant", "content": answer.text}] if answer is not None else [],
            "model": run.model,
            "finish_reason": answer.finish_reason if answer is not None else None,
            "usage": (answer.usage if answer is not None else TokenUsage()).model_dump(exclude={"invocation_count"}),
            "error": sample_error,
            **{key: sampling.get(key) for key in ("temperature", "top_p", "seed", "max_completion_tokens")},
        }
        return EvalOutputItem(
            id=output_item_id(run.id, index),
            run_id=run.id,
            eval_id=evaluation.id,
            index=index,
            status=item_status(results, sample_error),  # type: ignore[arg-type]
            item=item,
            sample=sample,
            results=results,
            usage=usage,
            served_by=(answer.served_by or None) if answer is not None else None,
        )

    async def _ask(self, project: str, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> Sampled:
        """One call through the serving path in `project`, within the eval's slots; load, a starting engine and the
        project's spent per-minute limit are waited out, an unknown model fails the run."""
        try:
            return await self._slots.call(project, lambda: self.sample(project, model, messages, sampling))
        except SkillserveError as exc:
            if exc.param == "model" or exc.code in ("model_not_found", "invalid_name"):
                raise RunFailed(exc.code or "model_not_found", str(exc)) from None
            raise

    async def _finish(
        self,
        registry: Registry,
        eval_id: str,
        run_id: str,
        status: EvalRunStatus,
        error: dict[str, str] | None,
        items: list[EvalOutputItem] | None = None,
    ) -> None:
        def finish(current: EvalRunRecord) -> EvalRunRecord | None:
            if current.status.finished:
                return None
            counted = current if items is None else recount(current, items)
            return counted.model_copy(update={"status": status, "error": error, "finished_at": time.time()})

        with contextlib.suppress(NotFound):
            await asyncio.to_thread(registry.update_eval_run, eval_id, run_id, finish)


async def start_eval_runs(gw: Gateway) -> EvalRunner:
    """The gateway's executor, on its serving path, with every project's runs left queued or in progress resumed: a
    row (and a judge's call) is served by the gateway as the run's project sees it, and charged to its limits."""
    from service.management.evals import run_rows

    async def sample(project: str, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> Sampled:
        view = gw.for_project(project)
        return await sample_chat(view, model, messages, sampling, BACKGROUND_PRIORITY, project_caller(view))

    runner = EvalRunner(
        gw.registry, sample, lambda project, run: run_rows(gw.for_project(project), run), gw.settings.eval_concurrency,
        gw.settings.load_engine,
    )
    gw.eval_runs = runner
    await runner.resume()
    return runner
