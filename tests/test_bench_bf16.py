"""Issue 30's benchmark views: where two greedy answers part, the serving cases as bf16 over float32 with the issue's
targets, and the tables BENCHMARKS.md gets from them. The measured runs are in docs/performance.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters import hardware
from adapters.hardware import native_bf16
from bench import report
from bench.bf16 import fact_prompts
from bench.parity import first_difference
from bench.quality_bf16 import compare, parity_summary
from bench.quality_tasks import build
from bench.servers import EngineShape
from bench.serving import FIGURES, SIZES, bf16_view, ratios


def test_greedy_answers_part_at_their_first_different_token_or_where_the_shorter_ends() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 9, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
    assert first_difference([], [4]) == 0


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
    # The same added time a step in both dtypes: 0.95 in float32 is 1 / 0.95 - 1 = 0.0526 of the base's step, so
    # 1 / (1 + 0.0526 x 2.5) = 0.884 in bf16 at c=1, where 0.9 allows 0.1111 / 2.5 = 0.0444: 16% of it cut.
    assert "| one-adapter | 0.884 / 0.960, 16% | 0.896 / 0.864, 4% |" in table


def test_a_machine_without_native_bf16_gets_a_line_saying_why_the_view_did_not_run() -> None:
    skipped = {"benchmark": "serving_bf16", "size": "full", "skipped": "no native bf16 here: no avx512_bf16"}
    assert report.serving_bf16_section(skipped)[-2] == "Not run: no native bf16 here: no avx512_bf16."


def _side(right: list[int], answers: list[list[str]], parity: dict[str, Any] | None) -> dict[str, Any]:
    """One dtype's view of one task as bench/quality_bf16.py's gateway pass records it, one adapter per seed."""
    adapters = {str(seed): {"right": r, "answers": a, "prose": {"right": r + 1}, "train_seconds": 10.0}
                for seed, r, a in zip((42, 1), right, answers, strict=True)}  # fmt: skip
    return {"base": {"right": 0, "of": 4}, "adapters": adapters, "parity": parity}


def test_the_quality_view_compares_each_tasks_mean_and_answers_across_dtypes_and_judges_the_one_row_target() -> None:
    rows = [{"prompt_tokens_match": True, "answer_tokens": 5, "parted_at": None, "logprob_gap": 1e-5},
            {"prompt_tokens_match": True, "answer_tokens": 6, "parted_at": 3, "logprob_gap": 0.02},
            {"prompt_tokens_match": False, "answer_tokens": 4, "parted_at": 0, "logprob_gap": 0.0}]  # fmt: skip
    parity = parity_summary(rows)
    assert parity == {
        "prompts": 3, "prompt_tokens_match": 2, "same_answer": 1, "parted": 2, "parted_at": [0, 3],
        "parted_at_median": 1.5, "answer_tokens_median": 5, "max_logprob_gap_before_parting": 0.02,
    }  # fmt: skip
    views = {
        "float32": {"shout": _side([3, 4], [["A", "B", "C", "D"]] * 2, parity),
                    "topic": _side([2, 2], [["x"] * 4] * 2, None)},
        "bfloat16": {"shout": _side([2, 2], [["A", "B", "c", "D"], ["A", "b", "c", "d"]], parity),
                     "topic": _side([2, 3], [["x"] * 4] * 2, None)},
    }  # fmt: skip
    result = compare(views, (42, 1))
    shout, topic = result["tasks"]["shout"], result["tasks"]["topic"]
    assert shout["float32"]["right"] == [3, 4] and shout["float32"]["mean_right"] == 3.5
    assert shout["bfloat16"]["mean_right"] == 2.0 and shout["bfloat16"]["mean_prose_right"] == 3.0
    assert shout["bf16_less_float32"] == -1.5 and shout["within_1_row"] is False
    assert (shout["same_answers"], shout["answers_compared"]) == (4, 8)  # seed 42: A, B, D; seed 1: A
    assert topic["bf16_less_float32"] == 0.5 and topic["within_1_row"] is True
    target = result["targets"]["every_task_within_1_row"]
    assert target["value"] == 1.5 and target["met"] is False

    table = "\n".join(report.quality_bf16_section(
        {"benchmark": "quality_bf16", "size": "small", "settings": {"seeds": [42, 1]}, **result}))  # fmt: skip
    assert "| shout | 4 | 0 / 0 | 3.50 (3, 4) | 2.00 (2, 2) | -1.50 | 4 of 8 | 4.50 / 3.00 |" in table
    assert "largest difference 1.50: **missed**" in table
    assert "| shout | bfloat16 | 2 of 3 | 1 of 3 | 1.5 | 5 | 2.0e-02 |" in table
    skipped = {"benchmark": "quality_bf16", "size": "full", "skipped": "no native bf16 here: no avx512_bf16"}
    assert report.quality_bf16_section(skipped)[-2] == "Not run: no native bf16 here: no avx512_bf16."


@pytest.mark.skipif(not native_bf16()[0], reason="vLLM's oneDNN kernel multiplies bf16 only on a CPU with the units")
def test_the_products_view_times_both_dtypes_on_the_same_rows_and_renders() -> None:
    from bench import products

    result = products.run("tiny")
    assert [c["rows"] for c in result["cases"]] == list(products.SIZES["tiny"]["rows"])
    for case in result["cases"]:
        assert case["float32_us"] > 0 and case["bfloat16_us"] > 0
        assert abs(case["bf16_speedup"] - case["float32_us"] / case["bfloat16_us"]) < 0.02  # the figures are rounded
    text = "\n".join(report.products_section(result))
    assert "bf16 speed-up" in text and f"| 16 | {result['cases'][1]['float32_us']:.1f} |" in text


def test_the_products_view_says_why_it_did_not_run_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stands in for a CPU without the units (the flags are this machine's): on an AVX2-only EPYC, vLLM's oneDNN
    kernel cannot make a bf16 matmul ("could not create a primitive descriptor"), so the view is not run."""
    from bench import products

    monkeypatch.setattr(hardware, "native_bf16", lambda: (False, "CPU flags without amx_bf16 or avx512_bf16"))
    result = products.run("tiny")
    assert result == {"benchmark": "products", "size": "tiny",
                      "skipped": "no native bf16 here: CPU flags without amx_bf16 or avx512_bf16"}  # fmt: skip
    assert report.products_section(result)[-2] == (
        "Not run: no native bf16 here: CPU flags without amx_bf16 or avx512_bf16."
    )


@pytest.mark.slow
def test_the_train_step_view_splits_each_step_by_kind_and_bounds_what_bf16s_products_can_give() -> None:
    from bench import train_step

    result = train_step.run("tiny")
    shares = result["float32_profile"]["shares"]
    assert abs(sum(shares.values()) - 1) < 0.01 and min(shares.values()) >= 0
    # The base's products and the LoRA's (a side of the LoRA's rank) are told apart by their shapes.
    assert shares["products"] > 0 and shares["LoRA products"] > 0
    products = shares["products"]
    assert result["bf16_speedup_bound"] == round(1 / (1 - products), 3)
    step_s = result["step_s"]
    assert abs(result["bf16_speedup"] - step_s["float32"] / step_s["bfloat16"]) < 0.01
    text = "\n".join(report.train_step_section(result))
    assert f"more than **{result['bf16_speedup_bound']:.3f}x**" in text and "| LoRA products |" in text


def test_another_machines_views_render_after_the_main_ones_under_their_folders_name(tmp_path: Path) -> None:
    main = {"benchmark": "products", "size": "full", "skipped": "no native bf16 here: a CPU without the units",
            "machine": {"cpu_model": "CPU one", "bf16_units": []}}
    other = {**main, "skipped": "no native bf16 here: another reason", "machine": {"cpu_model": "CPU two",
                                                                                   "bf16_units": ["avx512_bf16"]}}
    (tmp_path / "amd-epyc").mkdir()
    (tmp_path / "products.json").write_text(json.dumps(main))
    (tmp_path / "amd-epyc" / "products.json").write_text(json.dumps(other))
    (tmp_path / "empty").mkdir()  # a folder without results adds nothing
    text = report.render(tmp_path)
    first, _, second = text.partition("# Another machine: amd-epyc\n")
    assert "CPU one" in first and "a CPU without the units" in first and "CPU two" not in first
    assert "| CPU two | avx512_bf16 |" in second and "another reason" in second and "CPU one" not in second
    assert "empty" not in text
