"""/v1/fine_tuning/alpha/graders: validate a grader, and run one on one sample (its judges asked through the chat
serving path, as an eval run's are)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from adapters import graders
from adapters.schema import (
    TokenUsage,
)
from service.management.eval_runs import sample_chat
from service.management.evals import bad
from service.protocol.evals import (
    GraderRunErrors,
    GraderRunMetadata,
    GraderRunResult,
    RunGrader,
    ValidatedGrader,
    ValidateGrader,
)

if TYPE_CHECKING:
    from service.gateway import Gateway


def validate_grader(body: ValidateGrader) -> ValidatedGrader:
    graders.validate(body.grader, "grader")
    return ValidatedGrader(grader=body.grader)


async def run_grader(gw: Gateway, body: RunGrader) -> GraderRunResult:
    """Grade one sample of one item: the reward, each sub-grader's, OpenAI's error flags, the judges' tokens."""
    checked = graders.validate(body.grader, "grader")
    if body.item is not None and not isinstance(body.item, dict):
        raise bad("item", "must be an object (it fills the item namespace)")
    usage: dict[str, TokenUsage] = {}

    async def judge(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        answer = await sample_chat(gw, model, messages, params)
        usage[model] = usage.get(model, TokenUsage()).plus(answer.usage)
        return answer.text

    started = time.perf_counter()
    result = await graders.grade(checked, body.item or {}, body.model_sample, judge)
    elapsed = time.perf_counter() - started
    errors = GraderRunErrors()
    for error in _all_errors(result):
        setattr(errors, error.kind, True)
        if error.kind == "model_grader_server_error":
            errors.model_grader_server_error_details = error.message
    judged_by = getattr(checked, "model", None)
    return GraderRunResult(
        reward=result.score,
        metadata=GraderRunMetadata(
            name=result.name,
            type=result.type,
            errors=errors,
            execution_time=elapsed,
            scores={result.name: result.score, **{name: sub.score for name, sub in result.sub_results.items()}},
            token_usage=sum(u.total_tokens for u in usage.values()) or None,
            sampled_model_name=judged_by,
        ),
        sub_rewards={name: sub.score for name, sub in result.sub_results.items()},
        model_grader_token_usage_per_model={model: u.model_dump() for model, u in usage.items()},
    )


def _all_errors(result: graders.GradeResult) -> list[graders.GradeError]:
    return [*result.errors, *(e for sub in result.sub_results.values() for e in _all_errors(sub))]
