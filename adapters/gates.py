"""Promotion gates: whether an eval run lets a version through (pure), and which run speaks for a version.

One verdict for every gate: an alias moving to a version (adapters/registry/aliases.py) and a training job about to
publish (trainer/gate.py) both ask `gate_verdict`. A criterion's pass rate is the rows it passed over every row of
the run: a row that errored (its prompt could not be sampled, a grader failed) was graded by no criterion and counts
as failed here, so a gate is never passed by rows that were never judged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from adapters import graders
from adapters.errors import Conflict
from adapters.schema import EvalGate, EvalRunRecord, EvalRunStatus


class EvalGateFailed(Conflict):
    """A version's run of a gate's eval falls short: the alias does not move, the job does not publish."""

    code = "eval_gate_failed"


class EvalRequired(Conflict):
    """A gated alias was asked to serve a version that has no completed run of the gate's eval."""

    code = "eval_required"


@dataclass(frozen=True)
class Verdict:
    """Whether a run passes a gate; `reason` names the first failing criterion with its rate and minimum."""

    passed: bool
    reason: str
    rates: dict[str, float] = field(default_factory=dict)


def pass_rates(run: EvalRunRecord, criteria: Iterable[str]) -> dict[str, float]:
    """Each criterion's pass rate in `run`: passed over the run's rows (errored rows count as failed); 0 for a
    criterion that graded nothing."""
    rates = {}
    for name in criteria:
        counts = run.per_criterion.get(name)
        passed = counts.passed if counts else 0
        graded = (counts.passed + counts.failed) if counts else 0
        rows = max(run.result_counts.total, graded)
        rates[name] = passed / rows if rows else 0.0
    return rates


def minimum(gate: EvalGate, criterion: str) -> float:
    return gate.criteria.get(criterion, gate.min_pass_rate)


def rows_problem(gate: EvalGate, run: EvalRunRecord) -> str | None:
    """Why `run`'s rows cannot speak for `gate`: not the file the gate fixes, or fewer rows than it asks for (so a
    run on easier or fewer rows cannot pass it)."""
    if gate.file_id is not None:
        source = run.data_source.get("source") or {}
        used = source.get("id") if source.get("type") == "file_id" else None
        if used != gate.file_id:
            took = f"file {used}" if used else f"{source.get('type') or 'no'} rows"
            return f"run {run.id} took its rows from {took}, not from file {gate.file_id} as the gate requires"
    if gate.min_rows is not None and run.result_counts.total < gate.min_rows:
        return f"run {run.id} graded {run.result_counts.total} rows; the gate requires at least {gate.min_rows}"
    return None


def gate_verdict(gate: EvalGate, run: EvalRunRecord, criteria: list[str]) -> Verdict:
    """Whether `run` (of the gate's eval, whose testing criteria are named `criteria`, in order) passes `gate`."""
    if run.status is not EvalRunStatus.completed:
        return Verdict(False, f"run {run.id} is {run.status.value}, not completed")
    if run.result_counts.total == 0:
        return Verdict(False, f"run {run.id} graded no rows")
    problem = rows_problem(gate, run)
    if problem is not None:
        return Verdict(False, problem)
    rates = pass_rates(run, criteria)
    for name in criteria:
        least = minimum(gate, name)
        if rates[name] < least:
            return Verdict(
                False,
                f"criterion {name!r} passed {rates[name]:.0%} of {run.result_counts.total} rows in run {run.id}, "
                f"below the gate's minimum {least:.0%}",
                rates,
            )
    return Verdict(True, f"run {run.id} passes every criterion", rates)


def unknown_criteria(gate: EvalGate, criteria: list[str]) -> list[str]:
    """The gate's per-criterion minimums that name no criterion of its eval (a typo would gate nothing)."""
    return [name for name in gate.criteria if name not in criteria]


def criterion_names(testing_criteria: list[dict[str, object]]) -> list[str]:
    """The names an eval's results are reported under (as adapters/graders.validate names them)."""
    return [graders.validate(c, f"testing_criteria[{i}]").name for i, c in enumerate(testing_criteria)]


def speaks_for(run: EvalRunRecord, model: str) -> bool:
    """Whether `run` measured exactly `model` (`name@<version>`): it was sent to that model, or every row it
    sampled was answered by it (a run sent to an alias or an `ft:` id records the version that served each row; an
    alias that moved or split during the run leaves two, and such a run speaks for neither)."""
    return run.served_by == [model] or (run.model == model and run.served_by in ([], [model]))


def check_version(
    gate: EvalGate, alias: str, model: str, runs: list[EvalRunRecord], criteria: list[str], param: str = "version"
) -> Verdict:
    """Whether `model` (`name@<version>`) may be served by gated `alias`: some completed run of the gate's eval on
    exactly that model passes (`speaks_for`). Raises EvalRequired when there is none, EvalGateFailed with the
    newest completed run's reason when none passes."""
    completed = [r for r in runs if speaks_for(r, model) and r.status is EvalRunStatus.completed]
    if not completed:
        raise EvalRequired(
            f"alias {alias!r} is gated by eval {gate.eval_id}: run it on model {model!r} first "
            f"(POST /v1/evals/{gate.eval_id}/runs with data_source.model {model!r}, or an alias or ft: id that "
            "serves that version for the whole run)",
            param=param,
        )
    verdicts = [gate_verdict(gate, run, criteria) for run in sorted(completed, key=lambda r: r.created_at,
                                                                    reverse=True)]
    for verdict in verdicts:
        if verdict.passed:
            return verdict
    raise EvalGateFailed(f"{model} may not be served by alias {alias!r}: {verdicts[0].reason}", param=param)
