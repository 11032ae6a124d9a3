"""Skill quality in float32 and in bfloat16, side by side in one run (issue 30).

Every task of the quality benchmark (bench/quality_tasks.py) is trained by the supervised defaults on each of the
quality benchmark's training seeds, twice: by a gateway serving and training in float32, then by one serving and
training in bfloat16 (`SKILLSERVE_DTYPE` for its engine, `hyperparameters.dtype` for its jobs: the frozen base in
bf16, the LoRA weights and AdamW in float32). Each gateway asks its own adapters the task's held-out rows (greedy,
through the openai SDK) and scores them as the quality benchmark does; the facts adapters are asked the facts in
prose too. The view: each task's mean held-out score in bf16 against float32's (the issue's target: within one row),
and how many answers of the two adapters of one seed are the same text.

**Parity**: each gateway's first-seed adapter of every task is also asked for its greedy tokens with their
log-probabilities, and transformers + peft (bench/parity.py, the reference tests/test_parity.py holds the float32
engine to) generates from the same adapter, in the same dtype, on the prompt ids the trainer would build: the prompt
token count the gateway reports must be those ids' count (the template and tokenizer do not depend on the dtype), and
the answer (the reference's tokens through its first stop) is compared token by token: the same, or the token where
the two part. Float32 is the control (the parity test's identity); bf16's parting is what the docs give as its
tolerance.

`python -m bench --only quality_bf16 [--size small|full]`. Where the CPU has no native bf16 (`auto` keeps float32
there and bf16 would be emulated) the benchmark records why and does not run.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters.hardware import native_bf16
from bench.parity import first_difference, hf_greedy
from bench.quality import (
    FULL_TASKS,
    SEED,
    THREADS,
    _adapter_name,
    _adapter_record,
    _answers,
    _prose,
    _scored,
    _submit,
    _training_gateway,
    _wait,
)
from bench.quality_tasks import Task, build
from bench.servers import API_KEY, BASE_MODEL_ID

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Bf16Size:
    tasks: tuple[str, ...]
    train_rows: int
    held_out_rows: int
    seeds: tuple[int, ...]  # the trainer's default seed (42) and the quality benchmark's others


SIZES = {
    # About 40 minutes on two cores: 6 tasks x 3 seeds x 2 dtypes = 36 jobs of the defaults, two at a time.
    "full": Bf16Size(tasks=FULL_TASKS, train_rows=32, held_out_rows=36, seeds=(42, 1, 2)),
    "small": Bf16Size(tasks=("shout", "facts"), train_rows=30, held_out_rows=8, seeds=(42,)),
}
SIZES["tiny"] = SIZES["small"]


def run(size_name: str, workdir: Path, **_: Any) -> dict[str, Any]:
    native, why = native_bf16()
    if not native:
        return {"benchmark": "quality_bf16", "size": size_name, "skipped": f"no native bf16 here: {why}"}
    size = SIZES[size_name]
    workdir.mkdir(parents=True, exist_ok=True)
    tasks = [build(name, size.train_rows, size.held_out_rows, SEED) for name in size.tasks]
    started = time.monotonic()
    views = {dtype: _view(dtype, tasks, size.seeds, workdir / dtype) for dtype in DTYPES}
    return {
        "benchmark": "quality_bf16",
        "size": size_name,
        "settings": {
            **asdict(size),
            "seed": SEED,
            "threads_per_process": THREADS,
            "native_bf16": why,
            "order": "the float32 gateway trains and answers, then the bfloat16 one",
        },
        "phase_s": round(time.monotonic() - started, 1),
        **compare(views, size.seeds),
    }


def _view(dtype: str, tasks: list[Task], seeds: tuple[int, ...], workdir: Path) -> dict[str, Any]:
    """One gateway in `dtype`: the base model's scores, the defaults trained in `dtype` on every seed and scored, and
    each task's first-seed adapter's greedy tokens against transformers + peft in `dtype`."""
    with _training_gateway(workdir, len(tasks) * len(seeds), dtype) as (gw, http):
        base = {
            t.name: _scored(
                t, asyncio.run(_answers(gw.url, BASE_MODEL_ID, [e.messages for e in t.held_out], t.max_tokens))
            )
            for t in tasks
        }
        names = {(t.name, seed): _adapter_name(t.name, f"{dtype}-seed{seed}") for t in tasks for seed in seeds}
        by_name = {t.name: t for t in tasks}
        submitted = {
            key: _submit(http, by_name[key[0]], name, {"seed": key[1], "dtype": dtype}) for key, name in names.items()
        }
        jobs = _wait(http, list(submitted.values()), 4 * 3600)
        result: dict[str, Any] = {}
        for t in tasks:
            adapters: dict[str, Any] = {}
            for seed in seeds:
                name, job = names[(t.name, seed)], jobs[submitted[(t.name, seed)]]
                record = _adapter_record(http, job, name)
                if job["status"] == "succeeded":
                    answers = asyncio.run(_answers(gw.url, name, [e.messages for e in t.held_out], t.max_tokens))
                    record.update(_scored(t, answers), answers=answers)
                    if any(e.prose for e in t.held_out):
                        record["prose"] = _prose(gw.url, t.held_out, name)
                adapters[str(seed)] = record
            first = names[(t.name, seeds[0])]
            parity = (
                _parity(gw.url, workdir / "store", first, t, dtype) if adapters[str(seeds[0])].get("answers") else None
            )
            result[t.name] = {"base": base[t.name], "adapters": adapters, "parity": parity}
    return result


def _parity(url: str, store: Path, name: str, task: Task, dtype: str) -> dict[str, Any]:
    """The adapter's greedy tokens through the gateway against transformers + peft in the same dtype, on the trainer's
    prompt ids: does the prompt count match, and where (if anywhere) does each answer part?"""
    import openai
    from transformers import AutoTokenizer
    from vllm.tokenizers.detokenizer_utils import convert_ids_list_to_tokens

    from adapters.models import resolve_model
    from adapters.registry import open_registry
    from adapters.templates import template_from_manifest
    from service.inference.chat import chat_prompt_ids
    from service.protocol.chat import ChatCompletionRequest

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(BASE_MODEL_ID))
    registry = open_registry(f"file://{store}")
    manifest = registry.resolve(name)
    template = template_from_manifest(manifest)
    conversations = [e.messages for e in task.held_out]
    prompt_ids = [
        chat_prompt_ids(
            tokenizer, template, ChatCompletionRequest.model_validate({"model": name, "messages": m}).messages
        )
        for m in conversations
    ]

    async def served() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=2, timeout=600)
        gate = asyncio.Semaphore(8)

        async def ask(messages: list[dict[str, str]]) -> Any:
            async with gate:
                return await client.chat.completions.create(
                    model=name,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=0,
                    max_tokens=task.max_tokens,
                    logprobs=True,
                    extra_body={"ignore_eos": True},
                )

        try:
            return list(await asyncio.gather(*(ask(m) for m in conversations)))
        finally:
            await client.close()

    replies = asyncio.run(served())
    with tempfile.TemporaryDirectory(prefix="skillserve-parity-") as scratch:
        adapter_dir = registry.fetch(manifest, Path(scratch) / "adapter")
        hf_ids, hf_logprobs = hf_greedy(adapter_dir, prompt_ids, tokenizer.pad_token_id, task.max_tokens, dtype)
    stops = set(template.stop_token_ids(tokenizer))
    rows = []
    for reply, ids, prompt, reference_lp in zip(replies, hf_ids, prompt_ids, hf_logprobs, strict=True):
        content = reply.choices[0].logprobs.content or []
        tokens, logprobs = [c.token for c in content], [c.logprob for c in content]
        answer = next((k + 1 for k, i in enumerate(ids) if i in stops), len(ids))  # through the first stop
        reference = convert_ids_list_to_tokens(tokenizer, ids[:answer])  # type: ignore[arg-type]
        parted = first_difference(tokens[:answer], reference)
        same = answer if parted is None else parted
        gap = max((abs(a - b) for a, b in zip(logprobs[:same], reference_lp[:same], strict=True)), default=0.0)
        rows.append(
            {
                "prompt_tokens_match": reply.usage.prompt_tokens == len(prompt),
                "answer_tokens": answer,
                "parted_at": parted,
                "logprob_gap": gap,
            }
        )
    return parity_summary(rows)


def parity_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts over one adapter's prompts: prompt counts matching, answers the same token for token, where the others
    part (token index in the answer), and the largest log-probability gap over the tokens before parting."""
    parted = [r["parted_at"] for r in rows if r["parted_at"] is not None]
    return {
        "prompts": len(rows),
        "prompt_tokens_match": sum(r["prompt_tokens_match"] for r in rows),
        "same_answer": len(rows) - len(parted),
        "parted": len(parted),
        "parted_at": sorted(parted),
        "parted_at_median": statistics.median(parted) if parted else None,
        "answer_tokens_median": statistics.median(r["answer_tokens"] for r in rows) if rows else None,
        "max_logprob_gap_before_parting": round(max((r["logprob_gap"] for r in rows), default=0.0), 6),
    }


def compare(views: dict[str, dict[str, Any]], seeds: tuple[int, ...]) -> dict[str, Any]:
    """Per task, each dtype's rows right per seed and on average, bf16's mean less float32's, the same answers of the
    two adapters of each seed, and both parity summaries; the issue's target over every task."""
    tasks: dict[str, Any] = {}
    for task, fp32 in views["float32"].items():
        bf16 = views["bfloat16"][task]
        side: dict[str, Any] = {}
        for dtype, view in (("float32", fp32), ("bfloat16", bf16)):
            right = [view["adapters"][str(s)].get("right") for s in seeds]
            prose = [(view["adapters"][str(s)].get("prose") or {}).get("right") for s in seeds]
            side[dtype] = {
                "base_right": view["base"]["right"],
                "right": right,
                "mean_right": _mean(right),
                "prose_right": prose,
                "mean_prose_right": _mean(prose),
                "parity": view["parity"],
                "train_seconds": [view["adapters"][str(s)].get("train_seconds") for s in seeds],
            }
        pairs = [
            (a, b)
            for s in seeds
            for a, b in zip(
                fp32["adapters"][str(s)].get("answers") or [],
                bf16["adapters"][str(s)].get("answers") or [],
                strict=False,
            )
        ]
        means = side["float32"]["mean_right"], side["bfloat16"]["mean_right"]
        difference = None if None in means else round(means[1] - means[0], 2)  # type: ignore[operator]
        tasks[task] = {
            **side,
            "of": fp32["base"]["of"],
            "bf16_less_float32": difference,
            "within_1_row": None if difference is None else abs(difference) <= 1,
            "same_answers": sum(a == b for a, b in pairs),
            "answers_compared": len(pairs),
        }
    measured = [t["within_1_row"] for t in tasks.values() if t["within_1_row"] is not None]
    return {
        "tasks": tasks,
        "targets": {
            "every_task_within_1_row": {
                "value": max(
                    (abs(t["bf16_less_float32"]) for t in tasks.values() if t["bf16_less_float32"] is not None),
                    default=None,
                ),
                "target": "every task's mean held-out rows right in bf16 within 1 of float32's",
                "met": all(measured) if measured and len(measured) == len(tasks) else None,
            }
        },
    }


def _mean(values: list[Any]) -> float | None:
    return round(sum(values) / len(values), 2) if values and None not in values else None
