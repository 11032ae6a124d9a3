"""OpenAI's Evals API and grader endpoints: evals, runs, output items, grader validate and run.

An eval is the shape of a dataset's rows (`item_schema`) and the graders (`testing_criteria`, adapters/graders.py)
every run applies. A run sends each row's prompt to a model this gateway serves and grades the answers; it is
checked whole here (400s naming the field), stored, and executed in the background (eval_runs.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from adapters import graders
from adapters.errors import InvalidRequest, NotFound, RunFinished
from adapters.eval_rows import message_text, parse_eval_rows
from adapters.schema import (
    OUTPUT_ITEM_ID_RE,
    EvalOutputItem,
    EvalRecord,
    EvalRunRecord,
    EvalRunStatus,
)
from service.management.background import parsed_request
from service.management.eval_runs import chat_sampling
from service.protocol.common import page
from service.protocol.evals import (
    CreateEval,
    CreateRun,
    CriterionResult,
    CustomDataSourceSchema,
    EvalDeleted,
    EvalList,
    EvalObject,
    GraderResult,
    ModelUsage,
    OutputItemList,
    OutputItemObject,
    OutputSample,
    ResultCounts,
    RunDeleted,
    RunError,
    RunList,
    RunObject,
    UpdateEval,
)

if TYPE_CHECKING:
    from service.gateway import Gateway


T = TypeVar("T")


EVALS_PURPOSE = "evals"  # OpenAI's purpose of a file of eval rows


# What graders find in `sample` when a run generates one (include_sample_schema), as OpenAI's guide lists it.
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
        "output_tools": {"type": "array"},
    },
    "required": ["model", "choices"],
}


def bad(param: str, message: str, code: str = "invalid_parameter") -> InvalidRequest:
    """A 400 naming the field at fault."""
    return InvalidRequest(f"{param}: {message}", param=param, code=code)


async def file_of_purpose(gw: Gateway, file_id: str, purpose: str, param: str) -> bytes:
    """The bytes of a /v1/files file uploaded with `purpose`; a 400 naming `param` for any other."""
    try:
        stored = await asyncio.to_thread(gw.registry.get_file, file_id)
    except NotFound:
        raise bad(param, f"{file_id} does not exist", "invalid_file") from None
    if stored.purpose != purpose:
        raise bad(param, f"{file_id} was not uploaded with purpose {purpose!r}", "invalid_file")
    return await asyncio.to_thread(gw.registry.file_content, file_id)  # type: ignore[no-any-return]


def check_metadata(metadata: Mapping[str, str] | None, param: str = "metadata") -> dict[str, str]:
    """OpenAI's limits: at most 16 pairs, keys up to 64 characters, values up to 512."""
    metadata = dict(metadata or {})
    if len(metadata) > 16:
        raise bad(param, f"has {len(metadata)} pairs; at most 16")
    for key, value in metadata.items():
        if len(key) > 64:
            raise bad(f"{param}.{key[:64]}", "keys are at most 64 characters")
        if len(value) > 512:
            raise bad(f"{param}.{key}", "values are at most 512 characters")
    return metadata


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def check_item_schema(schema: Any, param: str = "data_source_config.item_schema") -> dict[str, Any]:
    """An item schema this gateway can check rows against: an object schema whose `type`s are JSON's."""
    if not isinstance(schema, dict):
        raise bad(param, "must be a JSON schema object")
    if schema.get("type", "object") != "object":
        raise bad(f"{param}.type", "an item is an object: the schema's type must be 'object'")

    def walk(node: Any, where: str) -> None:
        if not isinstance(node, dict):
            raise bad(where, "must be a JSON schema object")
        kinds = node.get("type")
        for kind in kinds if isinstance(kinds, list) else [kinds] if kinds is not None else []:
            if not isinstance(kind, str) or kind not in _TYPES:
                raise bad(f"{where}.type", f"{kind!r} is not a JSON schema type ({', '.join(_TYPES)})")
        for keyword, shape, kind in (("properties", dict, "an object"), ("required", list, "a list"),
                                     ("enum", list, "a list"), ("items", dict, "a schema object")):
            if keyword in node and not isinstance(node[keyword], shape):
                raise bad(f"{where}.{keyword}", f"must be {kind}")
        if not all(isinstance(name, str) for name in node.get("required", [])):
            raise bad(f"{where}.required", "must list property names")
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{where}.properties.{name}")
        if "items" in node:
            walk(node["items"], f"{where}.items")

    walk(schema, param)
    return schema


def item_problem(schema: Mapping[str, Any], value: Any, where: str = "item") -> tuple[str, str] | None:
    """The first place `value` breaks `schema` and why, or None. Checked: type, required, properties,
    additionalProperties: false, items, enum (other keywords are not checked)."""
    kinds = schema.get("type")
    if kinds is not None:
        allowed = kinds if isinstance(kinds, list) else [kinds]
        if not any(_TYPES[kind](value) for kind in allowed if kind in _TYPES):
            return where, f"must be {' or '.join(map(str, allowed))}, not {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return where, f"must be one of {schema['enum']}"
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                return f"{where}.{name}", "is required by the eval's item_schema"
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(properties))
            if extra:
                return f"{where}.{extra[0]}", "is not in the eval's item_schema (additionalProperties is false)"
        for name, sub in properties.items():
            if name in value and isinstance(sub, dict):
                found = item_problem(sub, value[name], f"{where}.{name}")
                if found:
                    return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, element in enumerate(value):
            found = item_problem(schema["items"], element, f"{where}[{index}]")
            if found:
                return found
    return None


def run_rows(gw: Gateway, run: EvalRunRecord) -> list[dict[str, Any]]:
    """A run's rows: inline (`file_content`) or read from the stored file (`file_id`)."""
    source = run.data_source.get("source") or {}
    if source.get("type") == "file_id":
        return parse_eval_rows(gw.registry.file_content(source["id"]), gw.settings.max_dataset_rows)
    return list(source.get("content") or [])


def eval_object(record: EvalRecord) -> EvalObject:
    properties: dict[str, Any] = {"item": record.item_schema}
    required = ["item"]
    if record.include_sample_schema:
        properties["sample"] = SAMPLE_SCHEMA
        required.append("sample")
    return EvalObject(
        id=record.id,
        name=record.name,
        created_at=int(record.created_at),
        metadata=record.metadata,
        data_source_config=CustomDataSourceSchema(
            schema_={"type": "object", "properties": properties, "required": required}
        ),
        testing_criteria=record.testing_criteria,
    )


def check_criteria(criteria: list[dict[str, Any]]) -> None:
    """Every criterion a valid grader (400 naming its field, e.g. testing_criteria[0].operation); names unique,
    since results are reported per name."""
    seen: set[str] = set()
    for index, criterion in enumerate(criteria):
        param = f"testing_criteria[{index}]"
        checked = graders.validate(criterion, param)
        if checked.type == "text_similarity" and checked.pass_threshold is None:  # type: ignore[union-attr]
            raise bad(f"{param}.pass_threshold", "a text_similarity criterion needs a pass_threshold")
        if checked.name in seen:
            raise bad(f"{param}.name", f"{checked.name!r} names another criterion too; names must differ")
        seen.add(checked.name)


async def create_eval(gw: Gateway, body: CreateEval) -> EvalObject:
    config = body.data_source_config
    if config.type != "custom":
        raise bad("data_source_config.type", f"{config.type!r} is not offered: this gateway keeps no logs of "
                  "completions to draw rows from; use 'custom' with an item_schema")
    if config.item_schema is None:
        raise bad("data_source_config.item_schema", "a custom data source needs an item_schema")
    check_criteria(body.testing_criteria)
    record = EvalRecord(
        name=body.name or "",
        metadata=check_metadata(body.metadata),
        item_schema=check_item_schema(config.item_schema),
        include_sample_schema=config.include_sample_schema,
        testing_criteria=body.testing_criteria,
    )
    await asyncio.to_thread(gw.registry.put_eval, record)
    return eval_object(record)


def list_evals(gw: Gateway, after: str | None, limit: int, order: str, order_by: str) -> EvalList:
    records = gw.registry.list_evals()
    field = "updated_at" if order_by == "updated_at" else "created_at"
    records.sort(key=lambda r: (getattr(r, field), r.id), reverse=order == "desc")
    chosen, more = page(records, after, limit, lambda r: r.id)
    data = [eval_object(r) for r in chosen]
    return EvalList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                    has_more=more)


def get_eval(gw: Gateway, eval_id: str) -> EvalObject:
    return eval_object(_eval(gw, eval_id))


def _eval(gw: Gateway, eval_id: str) -> EvalRecord:
    try:
        return gw.registry.get_eval(eval_id)  # type: ignore[no-any-return]
    except NotFound as exc:  # an id of the wrong shape is as unknown as a missing one
        raise NotFound(str(exc), param="eval_id") from None
    except ValueError:
        raise NotFound(f"eval {eval_id} not found", param="eval_id") from None


def update_eval(gw: Gateway, eval_id: str, body: UpdateEval) -> EvalObject:
    _eval(gw, eval_id)
    metadata = check_metadata(body.metadata) if body.metadata is not None else None

    def change(current: EvalRecord) -> EvalRecord:
        update: dict[str, Any] = {"updated_at": time.time()}
        if body.name is not None:
            update["name"] = body.name
        if metadata is not None:
            update["metadata"] = metadata
        return current.model_copy(update=update)

    updated = gw.registry.update_eval(eval_id, change)
    assert updated is not None  # `change` always writes
    return eval_object(updated)


def delete_eval(gw: Gateway, eval_id: str) -> EvalDeleted:
    _eval(gw, eval_id)
    gw.registry.delete_eval(eval_id)
    return EvalDeleted(eval_id=eval_id)


def run_object(run: EvalRunRecord) -> RunObject:
    counts = run.result_counts
    return RunObject(
        id=run.id,
        eval_id=run.eval_id,
        name=run.name,
        model=run.model,
        status=run.status.value,
        created_at=int(run.created_at),
        data_source=run.data_source,
        error=RunError(**run.error) if run.error else None,
        metadata=run.metadata,
        result_counts=ResultCounts(**counts.model_dump()),
        per_testing_criteria_results=[
            CriterionResult(testing_criteria=name, passed=c.passed, failed=c.failed)
            for name, c in run.per_criterion.items()
        ],
        per_model_usage=[ModelUsage(model_name=model, **usage.model_dump()) for model, usage in
                         run.per_model_usage.items()],
        report_url=f"/v1/evals/{run.eval_id}/runs/{run.id}",
        served_by=run.served_by[0] if len(run.served_by) == 1 else None,
    )


def _check_template(messages: list[Any], param: str) -> None:
    for index, message in enumerate(messages):
        where = f"{param}[{index}].content"
        parts = message.content if isinstance(message.content, list) else [message.content]
        for part in parts:
            if isinstance(part, dict) and part.get("type") not in ("input_text", "output_text", None):
                raise bad(where, f"{part.get('type')} parts are not offered: the models served here read text")
        text = message_text(message.content)
        try:
            graders.check_template(text)
        except ValueError as exc:
            raise bad(where, str(exc)) from None
        if "{{" in text and any(ref.strip().startswith("sample") for ref in text.split("{{")[1:]):
            raise bad(where, "a run's prompt is made before there is a sample: use {{item.<field>}} only")


def _check_sampling(sampling: dict[str, Any]) -> None:
    message = {"model": "x", "messages": [{"role": "user", "content": "x"}]}
    parsed_request("/v1/chat/completions", {**sampling, **message}, prefix="data_source.sampling_params.")


async def create_run(gw: Gateway, eval_id: str, body: CreateRun) -> RunObject:
    """Check the run whole (data source, prompt template, every row against the item schema), store it queued,
    and hand it to the executor."""
    evaluation = await asyncio.to_thread(_eval, gw, eval_id)
    source = body.data_source
    if source.type != "completions":
        raise bad("data_source.type", f"{source.type!r} is not offered: runs here sample a served model "
                  "('completions')")
    if not source.model:
        raise bad("data_source.model", "name the model to sample: any name this gateway serves")
    if source.input_messages is None:
        raise bad("data_source.input_messages", "a completions run needs input_messages (a template over item)")
    messages = source.input_messages
    if messages.type == "template":
        if not messages.template:
            raise bad("data_source.input_messages.template", "must hold at least one message")
        _check_template(messages.template, "data_source.input_messages.template")
    elif not (messages.item_reference or "").startswith("item."):
        raise bad("data_source.input_messages.item_reference", "must name a field of the item: item.<field>")
    sampling = chat_sampling(source.sampling_params.model_dump() if source.sampling_params else None)
    _check_sampling(sampling)
    rows = await _rows(gw, body)
    for index, row in enumerate(rows):
        found = item_problem(evaluation.item_schema, row.get("item"), "item")
        if found:
            where, why = found
            param = f"data_source.source.content[{index}].{where}" if source.source.type == "file_content" \
                else f"data_source.source.id: row {index + 1}: {where}"
            raise bad(param, why)
    record = EvalRunRecord(
        eval_id=evaluation.id,
        name=body.name or source.model,
        model=source.model,
        metadata=check_metadata(body.metadata),
        data_source=body.data_source.model_dump(exclude_none=True),
        rows=len(rows),
    )
    await asyncio.to_thread(gw.registry.put_eval_run, record)
    assert gw.eval_runs is not None  # started with the app
    gw.eval_runs.submit(evaluation.id, record.id, gw.project)
    return run_object(record)


async def _rows(gw: Gateway, body: CreateRun) -> list[dict[str, Any]]:
    source = body.data_source.source
    limit = gw.settings.max_dataset_rows
    if source.type == "file_content":
        rows = [row.model_dump(exclude_none=True) for row in source.content or []]
        if not rows:
            raise bad("data_source.source.content", "must hold at least one row")
        if len(rows) > limit:
            raise bad("data_source.source.content", f"has {len(rows)} rows; at most {limit} (max_dataset_rows)")
        return rows
    if source.type == "file_id":
        if not source.id:
            raise bad("data_source.source.id", "name a file uploaded with purpose 'evals'")
        data = await file_of_purpose(gw, source.id, EVALS_PURPOSE, "data_source.source.id")
        try:
            return parse_eval_rows(data, limit)
        except ValueError as exc:
            raise bad("data_source.source.id", str(exc), "invalid_file") from None
    raise bad("data_source.source.type", f"{source.type!r} is not offered: give rows as file_content or file_id")


def _run(gw: Gateway, eval_id: str, run_id: str) -> EvalRunRecord:
    try:
        return gw.registry.get_eval_run(eval_id, run_id)  # type: ignore[no-any-return]
    except NotFound as exc:
        raise NotFound(str(exc), param="run_id") from None
    except ValueError:
        raise NotFound(f"run {run_id} of eval {eval_id} not found", param="run_id") from None


def list_runs(gw: Gateway, eval_id: str, after: str | None, limit: int, order: str, status: str | None) -> RunList:
    _eval(gw, eval_id)
    runs = [run for run in gw.registry.list_eval_runs(eval_id) if status is None or run.status.value == status]
    if order == "asc":
        runs.reverse()
    chosen, more = page(runs, after, limit, lambda r: r.id)
    data = [run_object(r) for r in chosen]
    return RunList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                   has_more=more)


def get_run(gw: Gateway, eval_id: str, run_id: str) -> RunObject:
    return run_object(_run(gw, eval_id, run_id))


def cancel_run(gw: Gateway, eval_id: str, run_id: str) -> RunObject:
    """Cancel a queued or running run: its executor stops before its next row. A finished run is a 409."""
    _run(gw, eval_id, run_id)

    def cancel(run: EvalRunRecord) -> EvalRunRecord:
        return run.model_copy(update={"status": EvalRunStatus.canceled, "finished_at": time.time()})

    written = gw.registry.update_eval_run(eval_id, run_id, cancel)
    if written is None:
        latest = _run(gw, eval_id, run_id)
        raise RunFinished(f"run {run_id} is {latest.status.value}: only a queued or running run can be canceled")
    return run_object(written)


def delete_run(gw: Gateway, eval_id: str, run_id: str) -> RunDeleted:
    _run(gw, eval_id, run_id)
    gw.registry.delete_eval_run(eval_id, run_id)
    return RunDeleted(run_id=run_id)


def output_item_object(item: EvalOutputItem) -> OutputItemObject:
    return OutputItemObject(
        id=item.id,
        run_id=item.run_id,
        eval_id=item.eval_id,
        created_at=int(item.created_at),
        status=item.status,
        datasource_item_id=item.index,
        datasource_item=item.item,
        results=[GraderResult(**result) for result in item.results],
        sample=OutputSample.model_validate({**item.sample, "served_by": item.served_by}),
    )


def list_output_items(
    gw: Gateway, eval_id: str, run_id: str, after: str | None, limit: int, order: str, status: str | None
) -> OutputItemList:
    _run(gw, eval_id, run_id)
    items = [item for item in gw.registry.list_output_items(run_id) if status is None or item.status == status]
    if order == "desc":
        items.reverse()
    chosen, more = page(items, after, limit, lambda i: i.id)
    data = [output_item_object(i) for i in chosen]
    return OutputItemList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                          has_more=more)


def get_output_item(gw: Gateway, eval_id: str, run_id: str, output_item_id: str) -> OutputItemObject:
    run = _run(gw, eval_id, run_id)
    match = OUTPUT_ITEM_ID_RE.fullmatch(output_item_id)
    missing = NotFound(f"output item {output_item_id} of run {run_id} not found", param="output_item_id")
    if match is None or f"evalrun_{match.group(1)}" != run.id:
        raise missing
    try:
        return output_item_object(gw.registry.get_output_item(run_id, int(match.group(2))))
    except NotFound:
        raise missing from None
