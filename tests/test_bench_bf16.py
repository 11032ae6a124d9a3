"""Issue 30's benchmark views: where two greedy answers part, the serving cases as bf16 over float32 with the issue's
targets, and the tables BENCHMARKS.md gets from them. The measured runs are in docs/performance.md."""

from __future__ import annotations

from typing import Any

from bench import report
from bench.bf16 import fact_prompts, parted_at
from bench.quality_tasks import build
from bench.servers import EngineShape
from bench.serving import FIGURES, SIZES, bf16_view, ratios


def test_greedy_answers_part_at_their_first_different_token_or_where_the_shorter_ends() -> None:
    assert parted_at([1, 2, 3], [1, 2, 3]) is None
    assert parted_at([1, 2, 3], [1, 9, 3]) == 1
    assert parted_at([1, 2], [1, 2, 3]) == 2
    assert parted_at([], [4]) == 0


def test_the_facts_asked_are_every_fact_of_the_quality_benchmarks_facts_task() -> None:
    facts = fact_prompts()
    assert len(facts) == len(set(facts))
    task = build("facts", 32, 36, 0)
    truths = {truth for _question, truth in facts}
    assert {ex.truth for ex in task.held_out} <= truths


def _measured(tok_s: float, ttft: float) -> dict[str, Any]:
    figures = {name: ttft for name in FIGURES.values()} | {"output_tok_s": tok_s, "requests_s": tok_s / 32}
    return {**figures, "engine_cpu_s": 10.0, "runs": [{"output_tokens": 320, "duration_s": 320 / tok_s}]}


def _case(mix: str, concurrency: int, fp32: float, bf16: float) -> dict[str, Any]:
    """One serving case as bench/serving.py records it, our float32 gateway as `ours`, the bf16 one as `vllm`."""
    ours, theirs = _measured(fp32, 200.0), _measured(bf16, 100.0)
    return {"mix": mix, "adapters": 0 if mix == "base" else 2, "concurrency": concurrency, "requests": 16,
            "ours": ours, "vllm": theirs, "ratio": ratios(ours, theirs)}  # fmt: skip


def test_the_serving_view_gives_bf16_over_float32_and_judges_both_targets() -> None:
    cases = [_case("base", 1, 10.0, 25.0), _case("base", 4, 20.0, 44.0),
             _case("one-adapter", 1, 9.5, 24.0), _case("one-adapter", 4, 19.0, 38.0)]  # fmt: skip
    startup = {"gateway_s": 30.0, "vllm_serve_s": 31.0}
    view = bf16_view("tiny", SIZES["tiny"], EngineShape(max_num_seqs=4, dtype="float32"), cases, startup)
    assert [c["bf16_over_float32"]["output_tok_s"] for c in view["cases"]] == [2.5, 2.2, 2.526, 2.0]
    assert [c["bf16_over_float32_tok_s_by_repeat"] for c in view["cases"]] == [[2.5], [2.2], [2.526], [2.0]]
    assert view["cases"][0]["bf16_over_float32"]["ttft_p50_ms"] == 0.5
    assert view["adapter_vs_base"]["bfloat16"]["one-adapter"] == {"1": 0.96, "4": 0.864}
    assert view["adapter_vs_base"]["float32"]["one-adapter"] == {"1": 0.95, "4": 0.95}
    targets = view["targets"]
    assert targets["base_bf16_over_float32_tok_s_min"] == {"value": 2.2, "target": ">= 2.0 at every concurrency",
                                                           "met": True}  # fmt: skip
    assert targets["adapters_vs_base_in_bf16_min"]["value"] == 0.864
    assert targets["adapters_vs_base_in_bf16_min"]["met"] is False

    table = "\n".join(report.serving_bf16_section(view))
    assert "| base | 1 | 16 | 10.0 / 25.0 | 2.500 | 200.0 / 100.0 | 0.500 |" in table
    assert "| one-adapter | 0.950 / 0.960 | 0.950 / 0.864 |" in table
    assert "worst 2.200: **met**" in table and "worst 0.864: **missed**" in table


def test_a_machine_without_native_bf16_gets_a_line_saying_why_the_view_did_not_run() -> None:
    skipped = {"benchmark": "serving_bf16", "size": "full", "skipped": "no native bf16 here: no avx512_bf16"}
    assert report.serving_bf16_section(skipped)[-2] == "Not run: no native bf16 here: no avx512_bf16."
