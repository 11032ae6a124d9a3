"""OpenAI's standalone grader endpoints: validate a grader, or run one on one sample (adapters/graders.py).

Any key may call them: a model grader's judge costs what a chat request to that model costs."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.auth import require_inference
from service.api.bodies import OffLoopRoute
from service.api.deps import GatewayDep
from service.management import graders
from service.protocol.common import INFERENCE_ERRORS
from service.protocol.evals import GraderRunResult, RunGrader, ValidatedGrader, ValidateGrader

router = APIRouter(route_class=OffLoopRoute, tags=["graders"], dependencies=[Depends(require_inference)])


@router.post(
    "/v1/fine_tuning/alpha/graders/validate",
    response_model=ValidatedGrader,
    responses=INFERENCE_ERRORS,
    summary="Check a grader: the grader back, or a 400 naming its bad field",
)
async def validate_grader(body: ValidateGrader) -> ValidatedGrader:
    return graders.validate_grader(body)


@router.post(
    "/v1/fine_tuning/alpha/graders/run",
    response_model=GraderRunResult,
    responses=INFERENCE_ERRORS,
    summary="Grade one model sample of one item: the reward, sub-rewards and the errors met",
)
async def run_grader(body: RunGrader, gw: GatewayDep) -> GraderRunResult:
    return await graders.run_grader(gw, body)
