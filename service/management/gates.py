"""A training request's eval gate, checked whole when the job is submitted (the trainer runs it before publishing:
trainer/gate.py): its eval, its per-criterion minimums, graders the trainer can run without a served judge, the
prompt template and every row against the eval's item schema. Each refusal is a 400 (404 for an unknown eval)
whose `param` names the field under `eval_gate`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from adapters import graders
from adapters.errors import InvalidRequest, NotFound
from adapters.eval_rows import message_text, parse_eval_rows
from adapters.gates import criterion_names, unknown_criteria
from adapters.schema import EvalRecord, TrainingEvalGate
from service.gateway import Gateway
from service.management.evals import EVALS_PURPOSE, item_problem

MODEL_GRADERS = ("score_model", "label_model")


def bad(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param, code="invalid_eval_gate")


def judged_by_a_model(criterion: Mapping[str, Any]) -> bool:
    """A criterion that needs a served judge: a model grader, or a multi grader with one among its graders."""
    if criterion.get("type") in MODEL_GRADERS:
        return True
    subs = criterion.get("graders")
    if isinstance(subs, Mapping):
        subs = [subs] if isinstance(subs.get("type"), str) else list(subs.values())
    return any(judged_by_a_model(sub) for sub in subs or [] if isinstance(sub, Mapping))


def check_criteria(gate: TrainingEvalGate, evaluation: EvalRecord) -> None:
    for criterion in evaluation.testing_criteria:
        if judged_by_a_model(criterion):
            raise bad("eval_gate.eval_id", f"criterion {criterion.get('name')!r} of eval {evaluation.id} is judged by "
                      "a model: a training gate runs in the trainer, which serves no judge. Gate an alias on this "
                      "eval instead (its runs go through the gateway), or use an eval of string_check and "
                      "text_similarity graders")
    for unknown in unknown_criteria(gate, criterion_names(evaluation.testing_criteria)):
        raise bad(f"eval_gate.criteria.{unknown}", f"eval {evaluation.id} has no criterion {unknown!r}")


def check_prompt(input_messages: Mapping[str, Any]) -> None:
    where = "eval_gate.input_messages"
    if input_messages.get("type") == "item_reference":
        if not str(input_messages.get("item_reference") or "").startswith("item."):
            raise bad(f"{where}.item_reference", "must name a field of the item: item.<field>")
        return
    template = input_messages.get("template")
    if input_messages.get("type") != "template" or not isinstance(template, list) or not template:
        raise bad(where, "a template (type 'template', a list of {role, content}) or an item_reference")
    for index, message in enumerate(template):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise bad(f"{where}.template[{index}]", "each message is {role, content}")
        text = message_text(message.get("content"))
        try:
            graders.check_template(text)
        except ValueError as exc:
            raise bad(f"{where}.template[{index}].content", str(exc)) from None
        if any(ref.strip().startswith("sample") for ref in text.split("{{")[1:]):
            raise bad(f"{where}.template[{index}].content", "the prompt is made before there is a sample: "
                      "use {{item.<field>}} only")


def gate_rows(gw: Gateway, source: Mapping[str, Any]) -> list[dict[str, Any]]:
    limit = gw.settings.max_dataset_rows
    if source.get("type") == "file_content":
        rows = source.get("content")
        if not isinstance(rows, list) or not rows:
            raise bad("eval_gate.source.content", "must hold at least one row")
        if len(rows) > limit:
            raise bad("eval_gate.source.content", f"has {len(rows)} rows; at most {limit} (max_dataset_rows)")
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping) or not isinstance(row.get("item"), Mapping):
                raise bad(f"eval_gate.source.content[{index}]", 'each row is {"item": {...}}')
        return rows
    if source.get("type") == "file_id":
        try:
            stored = gw.registry.get_file(str(source.get("id")))
        except (NotFound, ValueError):
            raise bad("eval_gate.source.id", f"{source.get('id')} does not exist") from None
        if stored.purpose != EVALS_PURPOSE:
            raise bad("eval_gate.source.id", f"{stored.id} was not uploaded with purpose 'evals'")
        try:
            return parse_eval_rows(gw.registry.file_content(stored.id), limit)
        except ValueError as exc:
            raise bad("eval_gate.source.id", str(exc)) from None
    raise bad("eval_gate.source.type", "give rows as file_content or file_id")


def _check(gw: Gateway, gate: TrainingEvalGate) -> None:
    try:
        evaluation = gw.registry.get_eval(gate.eval_id)
    except NotFound:
        raise NotFound(f"eval_gate.eval_id: eval {gate.eval_id} not found", param="eval_gate.eval_id") from None
    check_criteria(gate, evaluation)
    check_prompt(gate.input_messages)
    rows = gate_rows(gw, gate.source)
    if gate.file_id is not None and (gate.source.get("type"), gate.source.get("id")) != ("file_id", gate.file_id):
        raise bad("eval_gate.file_id", f"the gate requires a run on file {gate.file_id}, and the trainer's run takes "
                  f"its rows from eval_gate.source: give source {{'type': 'file_id', 'id': '{gate.file_id}'}}")
    if gate.min_rows is not None and len(rows) < gate.min_rows:
        raise bad("eval_gate.min_rows", f"the gate requires at least {gate.min_rows} rows; eval_gate.source holds "
                  f"{len(rows)}")
    for index, row in enumerate(rows):
        found = item_problem(evaluation.item_schema, row.get("item"), "item")
        if found:
            where, why = found
            raise bad(f"eval_gate.source.content[{index}].{where}" if gate.source.get("type") == "file_content"
                      else f"eval_gate.source.id: row {index + 1}: {where}", why)


async def check_eval_gate(gw: Gateway, gate: TrainingEvalGate) -> None:
    """The gate can run in the trainer, or the field at fault named (off the event loop: it reads the store)."""
    await asyncio.to_thread(_check, gw, gate)
