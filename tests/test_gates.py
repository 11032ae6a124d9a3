"""Promotion gates, the pure part: whether an eval run lets a version through, and why not (adapters/gates.py)."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.gates import EvalGateFailed, EvalRequired, check_version, gate_verdict, pass_rates, unknown_criteria
from adapters.schema import CriterionCounts, EvalGate, EvalRunRecord, EvalRunStatus, ResultCounts

EVAL_ID = "eval_" + "0" * 32
CRITERIA = ["names the capital", "close"]


def run(
    per: dict[str, tuple[int, int]], total: int, errored: int = 0, status: str = "completed",
    model: str = "geo@v1", created_at: float = 1.0,
) -> EvalRunRecord:
    return EvalRunRecord(
        eval_id=EVAL_ID, model=model, status=EvalRunStatus(status), created_at=created_at,
        result_counts=ResultCounts(total=total, errored=errored),
        per_criterion={name: CriterionCounts(passed=p, failed=f) for name, (p, f) in per.items()},
    )


def gate(**fields: Any) -> EvalGate:
    return EvalGate(eval_id=EVAL_ID, **fields)


@pytest.mark.parametrize(
    ("the_gate", "the_run", "passes", "reason"),
    [
        # the default gate: every criterion on every row
        (gate(), run({"names the capital": (4, 0), "close": (4, 0)}, 4), True, "passes every criterion"),
        (gate(), run({"names the capital": (4, 0), "close": (3, 1)}, 4), False,
         "criterion 'close' passed 75% of 4 rows in run"),
        # the first failing criterion, in the eval's order, is the one named
        (gate(), run({"names the capital": (1, 3), "close": (0, 4)}, 4), False, "criterion 'names the capital'"),
        # a lower bar for all, and a per-criterion one over it
        (gate(min_pass_rate=0.75), run({"names the capital": (3, 1), "close": (3, 1)}, 4), True, ""),
        (gate(min_pass_rate=0.5, criteria={"close": 1.0}), run({"names the capital": (2, 2), "close": (3, 1)}, 4),
         False, "criterion 'close' passed 75% of 4 rows in run"),
        (gate(criteria={"close": 0.5}), run({"names the capital": (4, 0), "close": (2, 2)}, 4), True, ""),
        # an errored row was graded by no criterion, and counts as failed
        (gate(), run({"names the capital": (3, 0), "close": (3, 0)}, 4, errored=1), False,
         "criterion 'names the capital' passed 75% of 4 rows"),
        # a criterion that graded nothing (every row errored) is at 0
        (gate(min_pass_rate=0.0), run({}, 2, errored=2), True, ""),
        (gate(min_pass_rate=0.1), run({}, 2, errored=2), False, "criterion 'names the capital' passed 0%"),
        # only a completed run with rows speaks for a version
        (gate(), run({"names the capital": (4, 0), "close": (4, 0)}, 4, status="failed"), False,
         "is failed, not completed"),
        (gate(), run({"names the capital": (2, 0), "close": (2, 0)}, 2, status="in_progress"), False,
         "is in_progress, not completed"),
        (gate(min_pass_rate=0.0), run({}, 0), False, "graded no rows"),
    ],
)
def test_a_run_passes_a_gate_when_every_criterions_pass_rate_reaches_its_minimum(
    the_gate: EvalGate, the_run: EvalRunRecord, passes: bool, reason: str
) -> None:
    verdict = gate_verdict(the_gate, the_run, CRITERIA)
    assert verdict.passed is passes
    assert reason in verdict.reason


def test_pass_rates_are_over_every_row_of_the_run() -> None:
    rates = pass_rates(run({"names the capital": (3, 0), "close": (1, 2)}, 4, errored=1), CRITERIA)
    assert rates == {"names the capital": 0.75, "close": 0.25}


def test_a_per_criterion_minimum_naming_no_criterion_of_the_eval_is_found() -> None:
    assert unknown_criteria(gate(criteria={"close": 0.5, "clsoe": 0.5}), CRITERIA) == ["clsoe"]


def test_a_version_without_a_completed_run_on_exactly_it_needs_one_naming_the_eval_and_the_model() -> None:
    runs = [
        run({"names the capital": (4, 0), "close": (4, 0)}, 4, model="geo@prod"),  # an alias: not the version
        run({"names the capital": (4, 0), "close": (4, 0)}, 4, model="geo@v2"),
        run({}, 0, model="geo@v1", status="in_progress"),
    ]
    with pytest.raises(EvalRequired) as refused:
        check_version(gate(), "prod", "geo@v1", runs, CRITERIA)
    assert EVAL_ID in str(refused.value) and "'geo@v1'" in str(refused.value)
    assert refused.value.code == "eval_required"


def test_a_version_passes_when_any_completed_run_on_it_passes_and_fails_naming_the_newest_otherwise() -> None:
    older_pass = run({"names the capital": (4, 0), "close": (4, 0)}, 4, created_at=1.0)
    newer_fail = run({"names the capital": (4, 0), "close": (2, 2)}, 4, created_at=2.0)
    assert check_version(gate(), "prod", "geo@v1", [newer_fail, older_pass], CRITERIA).passed
    with pytest.raises(EvalGateFailed) as refused:
        check_version(gate(), "prod", "geo@v1", [newer_fail], CRITERIA)
    assert refused.value.code == "eval_gate_failed"
    assert "criterion 'close' passed 50% of 4 rows" in str(refused.value) and newer_fail.id in str(refused.value)
