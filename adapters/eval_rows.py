"""What an eval run does with its rows, as pure functions both the gateway's executor (service/management/
eval_runs.py) and the trainer's training gate (trainer/gate.py) use: rows read from a file, a row's prompt from the
run's template, each criterion's result, a row's status, and a run's counts as a fold of its output items."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from adapters import graders
from adapters.schema import CriterionCounts, EvalOutputItem, EvalRunRecord, ResultCounts, TokenUsage

# A criterion whose grader sets no pass mark of its own (score_model without pass_threshold, multi) passes at this.
DEFAULT_PASS_SCORE = 0.5


def parse_eval_rows(data: bytes, max_rows: int) -> list[dict[str, Any]]:
    """A file of eval rows (JSONL, each `{"item": {...}}` with an optional `sample`); ValueError naming the line."""
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise ValueError(f"line {number}: not JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("item"), dict):
            raise ValueError(f'line {number}: each line is {{"item": {{...}}}} (an object under "item")')
        rows.append(row)
        if len(rows) > max_rows:
            raise ValueError(f"more than {max_rows} rows (max_dataset_rows)")
    if not rows:
        raise ValueError("no rows")
    return rows


def rendered_messages(input_messages: Mapping[str, Any], item: Mapping[str, Any]) -> list[dict[str, str]]:
    """A row's prompt: the template's messages with `{{item.*}}` filled (`developer` sent as `system`), or the
    messages the row holds at `item_reference`."""
    if input_messages.get("type") == "item_reference":
        value: Any = {"item": item}
        for step in str(input_messages["item_reference"]).split("."):
            if not isinstance(value, Mapping) or step not in value:
                raise graders.TemplateReferenceError(
                    f"item_reference {input_messages['item_reference']!r} names nothing in this row"
                )
            value = value[step]
        if not isinstance(value, list) or not all(isinstance(m, Mapping) and "role" in m for m in value):
            raise graders.TemplateReferenceError(
                f"item_reference {input_messages['item_reference']!r} is not a list of messages"
            )
        return [{"role": str(m["role"]), "content": message_text(m.get("content"))} for m in value]
    return [
        {
            "role": "system" if message["role"] == "developer" else message["role"],
            "content": graders.render(message_text(message["content"]), item, None),
        }
        for message in input_messages.get("template") or []
    ]


def message_text(content: Any) -> str:
    """The text of a message's content: a string, a text part, or a list of them joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        return str(content.get("text", ""))
    if isinstance(content, list):
        return "\n".join(message_text(part) for part in content)
    return ""


def criterion_result(result: graders.GradeResult) -> dict[str, Any]:
    """A grade as an output item's result: OpenAI's name, type, score, passed (a grader without a pass mark
    passes at DEFAULT_PASS_SCORE), and the grader's errors and details beside them."""
    passed = result.passed if result.passed is not None else result.score >= DEFAULT_PASS_SCORE
    return {**result.as_dict(), "passed": bool(passed) and not result.errors}


def item_status(results: list[dict[str, Any]], sample_error: dict[str, str] | None) -> str:
    if sample_error is not None or any(result["errors"] for result in results):
        return "error"
    return "pass" if all(result["passed"] for result in results) else "fail"


def tally(run: EvalRunRecord, item: EvalOutputItem) -> EvalRunRecord:
    """`run` with one more row counted: its status, each criterion's verdict, each model's tokens, the version that
    answered it."""
    counts = run.result_counts.model_copy()
    counts.total += 1
    field = {"pass": "passed", "fail": "failed", "error": "errored"}[item.status]
    setattr(counts, field, getattr(counts, field) + 1)
    criteria = {name: value.model_copy() for name, value in run.per_criterion.items()}
    for result in item.results:
        entry = criteria.setdefault(result["name"], CriterionCounts())
        if result["passed"]:
            entry.passed += 1
        else:
            entry.failed += 1
    usage = dict(run.per_model_usage)
    for model, used in item.usage.items():
        usage[model] = usage.get(model, TokenUsage()).plus(used)
    served_by = sorted({*run.served_by, item.served_by}) if item.served_by else run.served_by
    return run.model_copy(update={"result_counts": counts, "per_criterion": criteria, "per_model_usage": usage,
                                  "served_by": served_by})


def recount(run: EvalRunRecord, items: list[EvalOutputItem]) -> EvalRunRecord:
    """`run`'s counts made again from its items (what a resumed run starts from)."""
    fresh = run.model_copy(update={"result_counts": ResultCounts(), "per_criterion": {}, "per_model_usage": {},
                                    "served_by": []})
    for item in items:
        fresh = tally(fresh, item)
    return fresh
