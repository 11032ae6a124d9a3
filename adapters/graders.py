"""Graders: OpenAI's grader schema in, a score in [0, 1] out, the same code in the gateway and the trainer.

The Evals API, reinforcement fine-tuning's reward and the publish and promotion gates all call `validate`
(a grader's JSON to a checked model, or a GraderError naming the field) and `grade` (a grader, a dataset
item and a model's sample to a GradeResult). Model graders (`score_model`, `label_model`) ask their judge
through a `ModelCaller` given by the caller, so this module knows nothing of HTTP or the engine.

What each grader computes, and what is not offered here, is in docs/graders.md.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, field_validator

from adapters import formulas, similarity
from adapters.errors import GraderError

# ---------------------------------------------------------------------------------------------------------
# Templates: `{{ item.x.y }}`, `{{ sample.output_text }}`, `{{ sample.output_json.x }}`, `{{ item.rows[0] }}`
# ---------------------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")  # no braces inside: linear, whatever the text
_REFERENCE = re.compile(r"(item|sample)((?:\.[^.\[\]\s{}]+|\[\d+\])+)")
_STEP = re.compile(r"\.([^.\[\]\s{}]+)|\[(\d+)\]")
# What OpenAI's guide puts in the sample namespace (output_audio is not: no model here speaks)
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices")


class TemplateReferenceError(LookupError):
    """A `{{ ... }}` reference that names nothing in this item or sample."""


def check_template(text: str) -> str:
    """Return `text` if every `{{ ... }}` in it is `item.<path>` or `sample.<field>[.<path>]`, else raise ValueError."""
    for match in _PLACEHOLDER.finditer(text):
        _parse_reference(match.group(1).strip())
    return text


def render(text: str, item: Mapping[str, Any], sample: Sample | None) -> str:
    """Fill each `{{ ... }}` of `text`: strings as they are, other values as JSON (5, true, {"a": 1}).

    Raises TemplateReferenceError naming the reference and what was there instead when one does not resolve.
    """

    def fill(match: re.Match[str]) -> str:
        reference = match.group(1).strip()
        namespace, steps = _parse_reference(reference)
        if namespace == "sample" and sample is None:
            raise TemplateReferenceError(f"{{{{{reference}}}}} does not resolve: there is no sample here")
        value: Any = item if namespace == "item" else sample.namespace()  # type: ignore[union-attr]
        walked = namespace
        for step in steps:
            value = _step(value, step, walked, reference)
            walked += f"[{step}]" if isinstance(step, int) else f".{step}"
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _PLACEHOLDER.sub(fill, text)


def _parse_reference(reference: str) -> tuple[str, list[str | int]]:
    match = _REFERENCE.fullmatch(reference)
    if not match:
        raise ValueError(
            f"{{{{{reference}}}}} is not a reference: write {{{{item.<field>}}}} or {{{{sample.<field>}}}} "
            f"(sample fields: {', '.join(SAMPLE_FIELDS)})"
        )
    namespace = match.group(1)
    steps: list[str | int] = [key if key else int(index) for key, index in _STEP.findall(match.group(2))]
    if namespace == "sample":
        if steps[0] not in SAMPLE_FIELDS:
            raise ValueError(f"{{{{{reference}}}}}: the sample has no field {steps[0]!r} "
                             f"(it has {', '.join(SAMPLE_FIELDS)})")
        if steps[0] == "output_text" and len(steps) > 1:
            raise ValueError(f"{{{{{reference}}}}}: sample.output_text is a string, it has no fields")
    return namespace, steps


def _step(value: Any, step: str | int, walked: str, reference: str) -> Any:
    where = f"{{{{{reference}}}}} does not resolve"
    if isinstance(step, int):
        if not isinstance(value, list):
            raise TemplateReferenceError(f"{where}: {walked} is not a list")
        if step >= len(value):
            raise TemplateReferenceError(f"{where}: {walked} has {len(value)} element(s)")
        return value[step]
    if isinstance(value, list) and step.isdigit() and int(step) < len(value):
        return value[int(step)]
    if not isinstance(value, Mapping):
        got = f"a {type(value).__name__}, not an object"
        if value is None:
            got = "not set (the sample is not JSON)" if walked == "sample.output_json" else "null, not an object"
        raise TemplateReferenceError(f"{where}: {walked} is {got}")
    if step not in value:
        keys = ", ".join(sorted(map(str, value))[:20]) or "no fields"
        raise TemplateReferenceError(f"{where}: {walked} has no {step!r} (it has {keys})")
    return value[step]


@dataclass(frozen=True)
class Sample:
    """A model's answer as graders see it (OpenAI's `sample` namespace)."""

    output_text: str
    output_json: Any = None
    output_tools: tuple[Any, ...] = ()
    choices: tuple[Any, ...] = ()

    @classmethod
    def of(cls, value: str | Mapping[str, Any] | Sample) -> Sample:
        """From a plain text (output_json filled when it is valid JSON, as OpenAI does) or a namespace dict."""
        if isinstance(value, Sample):
            return value
        if isinstance(value, str):
            return cls(output_text=value, output_json=_json_or_none(value))
        text = value.get("output_text") or ""
        output_json = value["output_json"] if "output_json" in value else _json_or_none(text)
        return cls(text, output_json, tuple(value.get("output_tools") or ()), tuple(value.get("choices") or ()))

    def namespace(self) -> dict[str, Any]:
        return {
            "output_text": self.output_text,
            "output_json": self.output_json,
            "output_tools": list(self.output_tools),
            "choices": list(self.choices),
        }


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # a deeply nested answer is as unreadable as a malformed one
        return None


# ---------------------------------------------------------------------------------------------------------
# The schema: OpenAI's grader objects (openai/types/graders/ in the SDK), unknown fields refused
# ---------------------------------------------------------------------------------------------------------


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _template(value: str) -> str:
    return check_template(value)


class StringCheckGrader(_Schema):
    """1 when `operation` holds between the rendered input and reference, else 0."""

    type: Literal["string_check"]
    name: str
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]

    check_templates = field_validator("input", "reference")(_template)


class TextSimilarityGrader(_Schema):
    """A similarity metric of the rendered input against the rendered reference (adapters/similarity.py)."""

    type: Literal["text_similarity"]
    name: str
    input: str
    reference: str
    evaluation_metric: Literal[
        "cosine", "fuzzy_match", "bleu", "gleu", "meteor",
        "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l",
    ]
    pass_threshold: float | None = Field(default=None, ge=0, le=1)

    check_templates = field_validator("input", "reference")(_template)

    @field_validator("evaluation_metric")
    @classmethod
    def _computable_here(cls, metric: str) -> str:
        if metric in similarity.UNAVAILABLE:
            raise ValueError(f"{metric} is not offered here: it {similarity.UNAVAILABLE[metric]}")
        return metric


class InputText(_Schema):
    type: Literal["input_text"]
    text: str


class OutputText(_Schema):
    type: Literal["output_text"]
    text: str


class InputImage(_Schema):
    type: Literal["input_image"]
    image_url: str
    detail: str | None = None


class InputAudio(_Schema):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


ContentPart = Annotated[InputText | OutputText | InputImage | InputAudio, Field(discriminator="type")]


class JudgeMessage(_Schema):
    """One message of a model grader's prompt; its text may hold templates."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | ContentPart | list[str | ContentPart]
    type: Literal["message"] | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        for part in content if isinstance(content, list) else [content]:
            if isinstance(part, InputImage | InputAudio):
                raise ValueError(f"{part.type} is not offered here: the judge models served here read text")
            check_template(part if isinstance(part, str) else part.text)
        return content

    def text(self) -> str:
        parts = self.content if isinstance(self.content, list) else [self.content]
        return "\n".join(part if isinstance(part, str) else part.text for part in parts)  # type: ignore[union-attr]


class SamplingParams(_Schema):
    max_completions_tokens: int | None = Field(default=None, ge=1)
    reasoning_effort: str | None = None  # accepted, not used: the judges here do not reason apart
    seed: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)


class ScoreModelGrader(_Schema):
    """A judge model's number in `range` (default [0, 1]), normalised to [0, 1]."""

    type: Literal["score_model"]
    name: str
    model: str = Field(min_length=1)
    input: list[JudgeMessage] = Field(min_length=1)
    range: list[float] | None = None
    sampling_params: SamplingParams | None = None
    pass_threshold: float | None = None

    @field_validator("range")
    @classmethod
    def _two_numbers(cls, bounds: list[float] | None) -> list[float] | None:
        if bounds is not None and (len(bounds) != 2 or not bounds[0] < bounds[1]):
            raise ValueError(f"must be two numbers [low, high] with low < high, not {bounds}")
        if bounds is not None and not all(math.isfinite(bound) for bound in bounds):
            raise ValueError("must be finite numbers")
        return bounds

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.range[0], self.range[1]) if self.range else (0.0, 1.0)


class LabelModelGrader(_Schema):
    """A judge model's label, one of `labels`; passes (score 1) when it is one of `passing_labels`."""

    type: Literal["label_model"]
    name: str
    model: str = Field(min_length=1)
    input: list[JudgeMessage] = Field(min_length=1)
    labels: list[str] = Field(min_length=1)
    passing_labels: list[str] = Field(min_length=1)

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels) or not all(label.strip() for label in labels):
            raise ValueError("labels must be distinct and not blank")
        return labels

    @field_validator("passing_labels")
    @classmethod
    def _subset(cls, passing: list[str], info: ValidationInfo) -> list[str]:
        labels = info.data.get("labels")
        if labels is not None and not set(passing) <= set(labels):
            raise ValueError(f"must be a subset of labels; {sorted(set(passing) - set(labels))} are not labels")
        return passing


PYTHON_NOT_OFFERED = (
    "the python grader is not offered: running a user's code safely needs a sandbox with its own filesystem "
    "view (the store's files, cloud credentials and the service account's token are readable otherwise), "
    "which this deployment does not provide; use string_check, text_similarity, a model grader or multi"
)


class PythonGrader(_Schema):
    """OpenAI's schema, so a request naming it gets a clear refusal rather than a schema error."""

    type: Literal["python"]
    name: str
    source: str
    image_tag: str | None = None
    pass_threshold: float | None = None

    @field_validator("type")
    @classmethod
    def _not_offered(cls, kind: str) -> str:
        raise ValueError(PYTHON_NOT_OFFERED)


SubGrader = Annotated[
    StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | LabelModelGrader | PythonGrader,
    Field(discriminator="type"),
]


class MultiGrader(_Schema):
    """A formula (adapters/formulas.py) over named sub-graders' scores, clipped to [0, 1].

    `graders` maps each name the formula uses to a grader, as OpenAI's graders guide shows; a single grader
    (the SDK's type) is taken too and is named by its `name`.
    """

    type: Literal["multi"]
    name: str
    graders: dict[str, SubGrader]
    calculate_output: str

    @field_validator("graders", mode="before")
    @classmethod
    def _one_grader_named_by_its_name(cls, graders: Any) -> Any:
        if isinstance(graders, Mapping) and isinstance(graders.get("type"), str):
            return {str(graders.get("name")): graders}
        return graders

    @field_validator("graders")
    @classmethod
    def _names_usable_in_a_formula(cls, named: dict[str, Any]) -> dict[str, Any]:
        if not named:
            raise ValueError("must name at least one grader")
        for key in named:
            if not key.isidentifier() or key in formulas.FUNCTIONS:
                raise ValueError(f"{key!r} cannot be used in a formula: name graders with letters, digits and _, "
                                 f"not starting with a digit, and not {', '.join(formulas.FUNCTIONS)}")
        return named

    @field_validator("calculate_output")
    @classmethod
    def _formula(cls, text: str, info: ValidationInfo) -> str:
        graders = info.data.get("graders")
        if graders is None:  # the graders failed validation; that error is the one to report
            return text
        try:
            formulas.parse(text, set(graders))
        except formulas.FormulaError as exc:
            raise ValueError(str(exc)) from None
        return text



Grader = Annotated[
    StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | LabelModelGrader | PythonGrader | MultiGrader,
    Field(discriminator="type"),
]
AnyGrader = StringCheckGrader | TextSimilarityGrader | ScoreModelGrader | LabelModelGrader | PythonGrader | MultiGrader
_GRADER = TypeAdapter(Grader)
GRADER_TYPES = ("string_check", "text_similarity", "score_model", "label_model", "python", "multi")


def validate(grader: Any, param: str = "grader") -> AnyGrader:
    """A grader's JSON to its checked model; a GraderError whose `param` names the first bad field."""
    if not isinstance(grader, Mapping):
        raise GraderError(f"must be an object with a type, one of {', '.join(GRADER_TYPES)}", param)
    try:
        return _GRADER.validate_python(dict(grader))
    except ValidationError as exc:
        error = exc.errors()[0]
        path = _param(param, error["loc"], grader)
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path += ".type"
            message = f"must be one of {', '.join(GRADER_TYPES)}, not {error.get('input', {}).get('type')!r}" \
                if isinstance(error.get("input"), Mapping) else f"must be one of {', '.join(GRADER_TYPES)}"
        else:
            message = error["msg"].removeprefix("Value error, ")
        more = len(exc.errors()) - 1
        raise GraderError(message + (f" (and {more} more error(s))" if more else ""), path) from None


def _param(prefix: str, loc: tuple[int | str, ...], data: Any) -> str:
    """Pydantic's error location as a field path, without the union tags pydantic puts in it."""
    path = prefix
    for step in loc:
        if isinstance(data, Mapping) and step not in data and step in (data.get("type"), data.get("name")):
            continue  # the discriminated union's tag, or the name a lone multi sub-grader is filed under
        if isinstance(step, int):
            path += f"[{step}]"
            data = data[step] if isinstance(data, list) and step < len(data) else None
        else:
            path += f".{step}"
            data = data.get(step) if isinstance(data, Mapping) else None
    return path


def _texts(grader: AnyGrader) -> list[str]:
    """Every template text of a grader, its sub-graders' included."""
    if isinstance(grader, StringCheckGrader | TextSimilarityGrader):
        return [grader.input, grader.reference]
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        return [message.text() for message in grader.input]
    if isinstance(grader, MultiGrader):
        return [text for sub in grader.graders.values() for text in _texts(sub)]
    return []


def check_item(grader: AnyGrader, item: Mapping[str, Any]) -> None:
    """Raise TemplateReferenceError when a `{{item.*}}` of the grader does not resolve in `item` (a dataset row
    checked before training, so a row the grader cannot read is a line-numbered error, not a reward of 0)."""
    for text in _texts(grader):
        for match in _PLACEHOLDER.finditer(text):
            reference = match.group(1).strip()
            if reference.startswith("item"):
                render(match.group(0), item, None)


MODEL_GRADERS_REFUSED = (
    "cannot be a reward here: a model grader asks a judge through the gateway's serving path, and the trainer runs "
    "apart from the gateway (a subprocess or a cluster Job) with no judge to ask; use string_check, text_similarity "
    "or a multi grader over them"
)


def check_local(grader: AnyGrader, param: str = "grader") -> AnyGrader:
    """`grader` if every grader in it runs without a judge model (the trainer's reward), else a GraderError naming
    the model grader."""
    if isinstance(grader, ScoreModelGrader | LabelModelGrader):
        raise GraderError(f"{grader.type} {MODEL_GRADERS_REFUSED}", f"{param}.type")
    if isinstance(grader, MultiGrader):
        for name, sub in grader.graders.items():
            check_local(sub, f"{param}.graders.{name}")
    return grader


# ---------------------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------------------

# OpenAI's names for what went wrong in a grader run (the `metadata.errors` of /fine_tuning/alpha/graders/run)
ErrorKind = Literal[
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_server_error",
    "other_error",
]


@dataclass(frozen=True)
class GradeError:
    kind: ErrorKind
    message: str


@dataclass
class GradeResult:
    """A grader's verdict on one sample: `score` in [0, 1]; `passed` None where the grader sets no pass mark."""

    name: str
    type: str
    score: float
    passed: bool | None
    errors: list[GradeError] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    sub_results: dict[str, GradeResult] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "score": self.score,
            "passed": self.passed,
            "errors": [{"kind": error.kind, "message": error.message} for error in self.errors],
            "details": self.details,
            "sub_results": {name: result.as_dict() for name, result in self.sub_results.items()},
        }


class ModelCaller(Protocol):
    """Asks `model` to answer `messages` (OpenAI chat messages) with `params` (sampling, response_format).

    Sync or async; the gateway's serving path in production, a test double in unit tests.
    """

    def __call__(
        self, model: str, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> str | Awaitable[str]: ...


async def grade(
    grader: AnyGrader | Mapping[str, Any] | BaseModel,
    item: Mapping[str, Any] | None,
    sample: str | Mapping[str, Any] | Sample,
    caller: ModelCaller | None = None,
) -> GradeResult:
    """Grade one sample of one item. A judge's unusable answer or a reference that does not resolve gives
    score 0 with the error recorded; only a grader that is itself invalid raises (GraderError)."""
    if isinstance(grader, BaseModel) and not isinstance(grader, _Schema):  # the openai SDK's own grader types
        grader = grader.model_dump(exclude_none=True)
    checked = grader if isinstance(grader, AnyGrader) else validate(grader)
    return await _grade(checked, item if item is not None else {}, Sample.of(sample), caller)


def grade_sync(
    grader: AnyGrader | Mapping[str, Any] | BaseModel,
    item: Mapping[str, Any] | None,
    sample: str | Mapping[str, Any] | Sample,
    caller: ModelCaller | None = None,
) -> GradeResult:
    """`grade` for code with no event loop (the trainer's reward function)."""
    return asyncio.run(grade(grader, item, sample, caller))


async def _grade(grader: AnyGrader, item: Mapping[str, Any], sample: Sample, caller: ModelCaller | None) -> GradeResult:
    try:
        if isinstance(grader, StringCheckGrader):
            return _string_check(grader, item, sample)
        if isinstance(grader, TextSimilarityGrader):
            return await _text_similarity(grader, item, sample)
        if isinstance(grader, ScoreModelGrader | LabelModelGrader):
            return await _model_grader(grader, item, sample, caller)
        if isinstance(grader, MultiGrader):
            return await _multi(grader, item, sample, caller)
    except TemplateReferenceError as exc:
        return _failed(grader, "invalid_variable_error", str(exc))
    raise GraderError(PYTHON_NOT_OFFERED, "grader.type")


def _failed(grader: AnyGrader, kind: ErrorKind, message: str, **details: Any) -> GradeResult:
    return GradeResult(grader.name, grader.type, 0.0, False, [GradeError(kind, message)], details)


def _string_check(grader: StringCheckGrader, item: Mapping[str, Any], sample: Sample) -> GradeResult:
    """OpenAI's guide: eq and ne compare exactly (case-sensitive); like is "contains" (case-sensitive), ilike
    "contains" ignoring case. No wildcards: `%` and `_` are plain characters."""
    text, reference = render(grader.input, item, sample), render(grader.reference, item, sample)
    if grader.operation == "eq":
        ok = text == reference
    elif grader.operation == "ne":
        ok = text != reference
    elif grader.operation == "like":
        ok = reference in text
    else:
        ok = reference.casefold() in text.casefold()
    details = {"input": text, "reference": reference}
    return GradeResult(grader.name, grader.type, 1.0 if ok else 0.0, ok, details=details)


async def _text_similarity(grader: TextSimilarityGrader, item: Mapping[str, Any], sample: Sample) -> GradeResult:
    """The metric's score; passes when it is at least `pass_threshold` (no threshold: `passed` is None)."""
    text, reference = render(grader.input, item, sample), render(grader.reference, item, sample)
    metric = similarity.METRICS[grader.evaluation_metric]
    score = await asyncio.to_thread(metric, text, reference)  # BLEU or LCS of long texts: off the event loop
    passed = None if grader.pass_threshold is None else score >= grader.pass_threshold
    return GradeResult(grader.name, grader.type, score, passed, details={"metric": grader.evaluation_metric})


def judge_messages(
    grader: ScoreModelGrader | LabelModelGrader, item: Mapping[str, Any], sample: Sample
) -> list[dict[str, str]]:
    """The judge's chat messages: each input message's text rendered; `developer` sent as `system`."""
    return [
        {
            "role": "system" if message.role == "developer" else message.role,
            "content": render(message.text(), item, sample),
        }
        for message in grader.input
    ]


def judge_params(grader: ScoreModelGrader | LabelModelGrader) -> dict[str, Any]:
    """Sampling params and the answer's JSON schema (OpenAI asks its judges for structured output too)."""
    params: dict[str, Any] = {}
    if isinstance(grader, ScoreModelGrader):
        if grader.sampling_params is not None:
            sampling = grader.sampling_params
            for key, value in (("temperature", sampling.temperature), ("top_p", sampling.top_p),
                               ("seed", sampling.seed), ("max_tokens", sampling.max_completions_tokens)):
                if value is not None:
                    params[key] = value
        low, high = grader.bounds
        result: dict[str, Any] = {"type": "number", "minimum": low, "maximum": high}
    else:
        result = {"type": "string", "enum": list(grader.labels)}
    params["response_format"] = {
        "type": "json_schema",
        "json_schema": {
            "name": grader.type,
            "strict": True,
            "schema": {"type": "object", "properties": {"result": result}, "required": ["result"],
                       "additionalProperties": False},
        },
    }
    return params


async def _model_grader(
    grader: ScoreModelGrader | LabelModelGrader, item: Mapping[str, Any], sample: Sample, caller: ModelCaller | None
) -> GradeResult:
    if caller is None:
        raise GraderError(f"{grader.type} needs a model to ask and none was given", "grader.model")
    messages = judge_messages(grader, item, sample)
    try:
        answer = await _call(caller, grader.model, messages, judge_params(grader))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a judge that fails is a recorded error, never the caller's exception
        return _failed(grader, "model_grader_server_error", f"{grader.model}: {type(exc).__name__}: {exc}")
    if not isinstance(answer, str):
        kind = type(answer).__name__
        return _failed(grader, "model_grader_server_error", f"{grader.model} answered a {kind}, not text")
    details: dict[str, Any] = {"judge_output": answer}
    if isinstance(grader, LabelModelGrader):
        label = parse_label(answer, grader.labels)
        if label is None:
            return _failed(grader, "model_grader_parse_error",
                           f"the judge's answer is not one of the labels {grader.labels}: {answer[:200]!r}", **details)
        ok = label in grader.passing_labels
        return GradeResult(grader.name, grader.type, 1.0 if ok else 0.0, ok, details={**details, "label": label})
    low, high = grader.bounds
    raw = parse_score(answer)
    if raw is None or not low <= raw <= high:
        why = "has no number" if raw is None else f"gives {raw}, outside the range [{low}, {high}]"
        return _failed(grader, "model_grader_parse_error", f"the judge's answer {why}: {answer[:200]!r}", **details)
    passed = None if grader.pass_threshold is None else raw >= grader.pass_threshold
    score = (raw - low) / (high - low)
    return GradeResult(grader.name, grader.type, score, passed, details={**details, "raw_score": raw})


async def _call(caller: ModelCaller, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(caller) or inspect.iscoroutinefunction(type(caller).__call__):
        return await caller(model, messages, params)  # type: ignore[misc]
    answer = await asyncio.to_thread(caller, model, messages, params)  # a blocking caller stays off the loop
    return await answer if inspect.isawaitable(answer) else answer


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_score(answer: str) -> float | None:
    """The judge's number: `{"result": n}` (the structured answer asked for), the whole answer, or the one
    number in it. None when there is none or more than one (a "7/10" is ambiguous, so refused)."""
    found = _result_field(answer)
    if found is not None:
        value: Any = found
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
            else None
    numbers = _NUMBER.findall(answer)
    if len(numbers) != 1:
        return None
    value = float(numbers[0])
    return value if math.isfinite(value) else None


def parse_label(answer: str, labels: list[str]) -> str | None:
    """The judge's label: `{"result": label}`, or the answer itself once quotes and a final period are dropped;
    exact first, then ignoring case when that names one label only."""
    found = _result_field(answer)
    candidate = found if isinstance(found, str) else answer
    candidate = candidate.strip().strip("\"'`").strip().rstrip(".").strip()
    if candidate in labels:
        return candidate
    matches = [label for label in labels if label.casefold() == candidate.casefold()]
    return matches[0] if len(matches) == 1 else None


def _result_field(answer: str) -> Any:
    text = answer.strip()
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            parsed = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(parsed, dict) and "result" in parsed:
            return parsed["result"]
    return None


async def _multi(
    grader: MultiGrader, item: Mapping[str, Any], sample: Sample, caller: ModelCaller | None
) -> GradeResult:
    """Every sub-grader's score (0 for one that failed, its error kept), then the formula, clipped to [0, 1]."""
    named = grader.graders
    results = await asyncio.gather(*(_grade(sub, item, sample, caller) for sub in named.values()))
    subs = dict(zip(named, results, strict=True))
    errors = [
        GradeError(error.kind, f"{name}: {error.message}") for name, result in subs.items() for error in result.errors
    ]
    formula = formulas.parse(grader.calculate_output, set(named))
    try:
        value = formula.evaluate({name: result.score for name, result in subs.items()})
    except formulas.FormulaRuntimeError as exc:
        return GradeResult(grader.name, grader.type, 0.0, None, [*errors, GradeError("other_error", str(exc))],
                           sub_results=subs)
    score = min(1.0, max(0.0, value))
    return GradeResult(grader.name, grader.type, score, None, errors, {"formula_value": value}, subs)
