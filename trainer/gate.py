"""A training job's eval gate: the new version answers the eval's rows before it is published, every criterion
grades it, the answers are recorded as a completed run of the eval on `name@<version>` (so the run is listed under
/v1/evals/{id}/runs and satisfies an alias's gate later), and the job publishes only if the run passes.

The answers come from the trainer, not the gateway: greedy, with the adapter's own template, encoded as the gateway
encodes a request (trainer/evaluate.py `greedy_answers`). Model graders are refused when the job is submitted: a
judge needs a served model, and the trainer serves none.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from adapters import graders
from adapters.eval_rows import criterion_result, item_status, parse_eval_rows, recount, rendered_messages
from adapters.gates import EvalGateFailed, Verdict, criterion_names, gate_verdict
from adapters.registry import Registry
from adapters.schema import EvalOutputItem, EvalRunRecord, EvalRunStatus, TrainingEvalGate, output_item_id
from adapters.templates import ChatTemplate
from trainer.evaluate import greedy_answers

log = logging.getLogger("skillserve.trainer")


def gate_rows(registry: Registry, gate: TrainingEvalGate) -> list[dict[str, Any]]:
    """The gate's rows: inline (`file_content`) or the stored file of purpose evals (`file_id`)."""
    if gate.source.get("type") == "file_id":
        return parse_eval_rows(registry.file_content(str(gate.source["id"])), 1 << 40)
    return list(gate.source.get("content") or [])


def data_source(gate: TrainingEvalGate, model: str) -> dict[str, Any]:
    """The run's data source as an eval run records it (what `GET /v1/evals/{id}/runs/{run}` shows)."""
    return {
        "type": "completions",
        "model": model,
        "input_messages": gate.input_messages,
        "sampling_params": {"temperature": 0, "max_completion_tokens": gate.max_completion_tokens},
        "source": gate.source,
    }


def load_adapter(base_dir: Path, adapter_dir: Path) -> tuple[Any, Any]:
    """The base model with the trained adapter on it, and the tokenizer, as the gate generates with them."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_dir).eval(), AutoTokenizer.from_pretrained(base_dir)


def run_gate(
    registry: Registry, gate: TrainingEvalGate, model_ref: str, job_id: str, answer: Any
) -> tuple[EvalRunRecord, Verdict]:
    """Answer the gate's rows with `answer(prompts) -> texts`, grade them, write the completed run of `model_ref`
    (items first, then the run, so no reader sees a completed run without its items); the run and the verdict."""
    evaluation = registry.get_eval(gate.eval_id)
    criteria = [graders.validate(c, f"testing_criteria[{i}]") for i, c in enumerate(evaluation.testing_criteria)]
    rows = gate_rows(registry, gate)
    run = EvalRunRecord(
        eval_id=evaluation.id, name=f"training gate of job {job_id}", model=model_ref,
        metadata={"job_id": job_id, "gate": "training"}, data_source=data_source(gate, model_ref), rows=len(rows),
        started_at=time.time(),
    )
    prompts: list[list[dict[str, str]] | None] = []
    errors: list[dict[str, str] | None] = []
    for row in rows:
        try:
            prompts.append(rendered_messages(gate.input_messages, row.get("item") or {}))
            errors.append(None)
        except graders.TemplateReferenceError as exc:
            prompts.append(None)
            errors.append({"code": "invalid_variable_error", "message": str(exc)})
    texts = iter(answer([p for p in prompts if p is not None]))
    items = []
    for index, (row, prompt, error) in enumerate(zip(rows, prompts, errors, strict=True)):
        item = row.get("item") or {}
        text = next(texts) if prompt is not None else None
        results = [] if text is None else [
            criterion_result(graders.grade_sync(criterion, item, text)) for criterion in criteria
        ]
        items.append(EvalOutputItem(
            id=output_item_id(run.id, index), run_id=run.id, eval_id=evaluation.id, index=index,
            status=item_status(results, error),  # type: ignore[arg-type]
            item=item, results=results,
            sample={"input": prompt or [], "output": [] if text is None else [{"role": "assistant", "content": text}],
                    "model": model_ref, "error": error, "temperature": 0,
                    "max_completion_tokens": gate.max_completion_tokens},
            served_by=model_ref if text is not None else None,
        ))
    for item in items:
        registry.put_output_item(item)
    finished = recount(run, items).model_copy(
        update={"status": EvalRunStatus.completed, "finished_at": time.time()}
    )
    registry.put_eval_run(finished)
    verdict = gate_verdict(gate, finished, criterion_names(evaluation.testing_criteria))
    log.info("training gate of job %s: run %s of eval %s on %s: %s", job_id, run.id, evaluation.id, model_ref,
             verdict.reason)
    return finished, verdict


def check_training_gate(
    registry: Registry, gate: TrainingEvalGate, model_ref: str, job_id: str, template: ChatTemplate,
    base_dir: Path, adapter_dir: Path,
) -> dict[str, Any]:
    """Run the gate on the trained adapter; its figures for the job's metrics, or EvalGateFailed naming the
    criterion (the job fails and nothing is published)."""
    model, tokenizer = load_adapter(base_dir, adapter_dir)

    def answer(prompts: list[list[dict[str, str]]]) -> list[str]:
        return greedy_answers(model, tokenizer, template, prompts, gate.max_completion_tokens)

    run, verdict = run_gate(registry, gate, model_ref, job_id, answer)
    if not verdict.passed:
        raise EvalGateFailed(f"{model_ref} failed the eval gate: {verdict.reason}; not published")
    return {"eval_gate_run": run.id, "eval_gate_pass_rates": verdict.rates}
