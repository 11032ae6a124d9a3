"""float32 vs bfloat16 serving, side by side in one run: what the base model answers, how soon greedy output parts.

Issue 30 asks whether `dtype: auto` may serve in bf16 where the CPU multiplies it in hardware. One gateway is started
in float32 and one in bfloat16 (one after the other, same engine settings); each is asked the same prompts through
`/v1/chat/completions` at temperature 0 (4 at a time):
- **Facts**: every fact of the quality benchmark's facts task (bench/quality_tasks.py: capitals, languages,
  currencies the base model was picked for knowing), asked in prose; right when the answer names the true value
  (`prose_right`, as the quality benchmark scores it).
- **Parity**: for each prompt, whether the two greedy answers are the same text and, when not, at which token of
  the answer they part (the answers tokenized with the model's tokenizer).
- **Speed**: output tokens per second over the whole set, each dtype (a side figure: bench/serving.py is the
  serving benchmark).
`python -m bench.bf16 [--size tiny|full]` prints a JSON report (docs/performance.md has the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from adapters.models import DEFAULT_MODEL, resolve_model
from bench.parity import first_difference
from bench.quality_tasks import RELATIONS, prose_right
from bench.servers import API_KEY, BASE_MODEL_ID, EngineShape, start_gateway

SIZES = {"tiny": 12, "full": None}  # prompts asked (None: every fact)
MAX_TOKENS = 48
CONCURRENCY = 4


def fact_prompts() -> list[tuple[str, str]]:
    """(prose question, true value) for every fact of the facts task."""
    return [
        (question.format(country), value)
        for table, question, _key, _placeholder in RELATIONS
        for country, value in (pair.split(":") for pair in table.split("|"))
    ]


async def ask_all(url: str, questions: list[str]) -> tuple[list[str], float]:
    """Each question's greedy answer, `CONCURRENCY` at a time, and the completion tokens per second overall."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    gate = asyncio.Semaphore(CONCURRENCY)
    produced = 0

    async def one(client: httpx.AsyncClient, question: str) -> str:
        nonlocal produced
        body = {"model": BASE_MODEL_ID, "temperature": 0, "max_tokens": MAX_TOKENS,
                "messages": [{"role": "user", "content": question}]}  # fmt: skip
        async with gate:
            reply = await client.post("/v1/chat/completions", json=body)
        reply.raise_for_status()
        answer = reply.json()
        produced += answer["usage"]["completion_tokens"]
        return str(answer["choices"][0]["message"]["content"] or "")

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        started = time.perf_counter()
        answers = await asyncio.gather(*(one(client, q) for q in questions))
        seconds = time.perf_counter() - started
    return list(answers), produced / seconds


def run(size_name: str, workdir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    facts = fact_prompts()[: SIZES[size_name]]
    questions = [q for q, _ in facts]
    answers: dict[str, list[str]] = {}
    speed: dict[str, float] = {}
    for dtype in ("float32", "bfloat16"):
        shape = EngineShape(max_num_seqs=CONCURRENCY, max_loras=1, max_cpu_loras=1, dtype=dtype)
        with start_gateway(shape, f"file://{workdir / 'store'}", workdir / dtype) as server:
            asyncio.run(ask_all(server.url, questions[:CONCURRENCY]))  # warm
            answers[dtype], speed[dtype] = asyncio.run(ask_all(server.url, questions))
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    rows: list[dict[str, Any]] = []
    for (question, truth), fp32, bf16 in zip(facts, answers["float32"], answers["bfloat16"], strict=True):
        where = first_difference(tokenizer.encode(fp32), tokenizer.encode(bf16))
        rows.append({"question": question, "truth": truth, "float32": fp32, "bfloat16": bf16, "parted_at": where,
                     "right": {"float32": prose_right(fp32, truth), "bfloat16": prose_right(bf16, truth)}})  # fmt: skip
    parted = [r["parted_at"] for r in rows if r["parted_at"] is not None]
    right = {dtype: sum(r["right"][dtype] for r in rows) for dtype in ("float32", "bfloat16")}
    return {
        "benchmark": "bf16",
        "size": size_name,
        "settings": {"prompts": len(rows), "max_tokens": MAX_TOKENS, "concurrency": CONCURRENCY,
                     "engine": "the gateway's vLLM engine, float32 then bfloat16, temperature 0"},  # fmt: skip
        "facts_right": right | {"of": len(rows)},
        "only_float32_right": [r["question"] for r in rows if r["right"]["float32"] and not r["right"]["bfloat16"]],
        "only_bfloat16_right": [r["question"] for r in rows if r["right"]["bfloat16"] and not r["right"]["float32"]],
        "parity": {
            "same_answer": len(rows) - len(parted),
            "parted": len(parted),
            "parted_at_token": {
                "first": sum(1 for p in parted if p == 0),
                "min": min(parted, default=None),
                "median": statistics.median(parted) if parted else None,
            },
        },
        "output_tok_s": {dtype: round(v, 2) for dtype, v in speed.items()},
        "bf16_over_float32_tok_s": round(speed["bfloat16"] / speed["float32"], 3),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bf16", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--size", choices=tuple(SIZES), default="full")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    from bench import environment

    machine = environment.machine()
    with tempfile.TemporaryDirectory(prefix="skillserve-bf16-") as scratch:
        result = run(args.size, Path(scratch)) | {"machine": machine}
    report = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
