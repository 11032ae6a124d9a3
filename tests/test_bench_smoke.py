"""`python -m bench --size tiny` end to end: every benchmark runs and writes the figures it promises.

No timing is asserted: figures are only checked to exist and to describe equal work on both sides.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.hardware import native_bf16

REPO = Path(__file__).resolve().parents[1]
SERVING_FIGURES = {"output_tok_s", "requests_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "e2e_p50_ms", "e2e_p99_ms"}
TRAINING_FIGURES = {"tokens_per_second", "train_seconds", "wall_seconds", "peak_rss_mib", "train_loss", "eval_loss"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, dict[str, Any]], str]:
    """One tiny run of every benchmark through the CLI; its results and generated table."""
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "tiny", "--results-dir", str(out / "results"),
         "--markdown", str(out / "BENCHMARKS.md"), "--workdir", str(out / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=3500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}
    return results, (out / "BENCHMARKS.md").read_text()


def test_every_benchmark_records_the_machine_and_the_table_shows_it(tiny_run: Any) -> None:
    results, markdown = tiny_run
    assert set(results) == {"serving", "lora_ops", "loading", "training"}
    for result in results.values():
        machine = result["machine"]
        assert machine["nproc"] >= 1 and machine["cpu_model"] and machine["date"]
        assert "torch" in machine["versions"] and "transformers" in machine["versions"]
    headings = ("## Machine", "## Serving", "### Adapter / base", "## CPU LoRA ops", "## Adapter loading", "## Train")
    for heading in headings:
        assert heading in markdown


def test_serving_compares_each_case_on_equal_work(tiny_run: Any) -> None:
    serving = tiny_run[0]["serving"]
    mixes = {(c["mix"], c["concurrency"]) for c in serving["cases"]}
    assert {m for m, _ in mixes} == {"base", "one-adapter", "mixed-adapters"}
    for case in serving["cases"]:
        for side in ("ours", "vllm"):
            assert set(case[side]) >= SERVING_FIGURES
            repeats = serving["settings"]["repeats"]
            assert len(case[side]["runs"]) == repeats and case[side]["front_cpu_s"] >= 0
            assert case[side]["failed"] == 0 and case[side]["completed"] == case["requests"] * repeats
            # ignore_eos honoured on both sides: every request produced exactly the asked-for tokens.
            assert case[side]["output_tokens"] == case[side]["expected_output_tokens"]
        assert set(case["ratio"]) == SERVING_FIGURES and all(v is not None for v in case["ratio"].values())
    assert set(serving["targets"]) == {
        "base_throughput_ratio_min", "adapter_throughput_ratio_min", "one_adapter_vs_base",
        "mixed_adapters_vs_base", "ttft_p50_overhead_ms_max", "mixed_vs_one_adapter_throughput",
    }  # fmt: skip
    # Each server's adapter mixes over its own base model, at every concurrency.
    for mix in ("one-adapter", "mixed-adapters"):
        assert set(serving["adapter_vs_base"][mix]) == {str(c) for c in serving["settings"]["concurrencies"]}
    # vLLM's server runs vLLM's own LoRA ops: our plugin is not among those it loads.
    assert "skillserve-cpu-lora" not in serving["settings"]["vllm_serve_plugins"]


def test_lora_ops_are_timed_on_the_same_inputs(tiny_run: Any) -> None:
    ops = tiny_run[0]["lora_ops"]
    mixes = ("one adapter", "8 adapters interleaved")
    assert {(c["dtype"], c["step"], c["mix"]) for c in ops["cases"]} == {
        (dtype, step, mix)
        for dtype in ("float32", "bfloat16")
        for step, mix in [*((step, mix) for step in ("prefill", "decode") for mix in mixes), ("decode", "one request")]
    }
    assert all(c["same_result"] and c["vllm_ms"] > 0 and c["ours_ms"] > 0 for c in ops["cases"])


def test_loading_measures_every_tier_on_both_stores(tiny_run: Any) -> None:
    loading = tiny_run[0]["loading"]
    assert {t["store"] for t in loading["tiers"]} == {"file", "s3"}
    for tier in loading["tiers"]:
        assert all(tier[k] > 0 for k in ("cold_s", "warm_s", "hot_s", "base_floor_s"))
    many = loading["many_adapters"]
    assert many["adapters"] > many["engine_slots"] and many["failed"] == 0
    # Each distinct adapter came from the store once; the rest of the round-robin hit the disk cache.
    assert many["counts"]["store_fetches"] == many["adapters"]
    assert many["counts"]["disk_hits"] == many["requests"] - many["adapters"]
    assert many["ratio_many_over_one"]["output_tok_s"] > 0


def test_training_runs_ours_and_the_baseline_on_the_same_work(tiny_run: Any) -> None:
    training = tiny_run[0]["training"]
    runs = training["runs"]
    # ours_bf16 where the CPU multiplies bf16 in hardware (adapters/hardware.py), float32 only elsewhere
    bf16 = {"ours_bf16"} if native_bf16()[0] else set()
    assert set(runs) == {
        "baseline", "ours", "ours_padding_free", "ours_no_gradient_checkpointing", "ours_defaults", *bf16,
    }
    # Each run trained with the layout it asked for; the defaults' is the trainer's: packed, as these rows (47-118
    # tokens in batches of 4) make it 0.78x padding's work (trainer/layout.py).
    layouts = {label: (run.get("padding_free"), run.get("gradient_checkpointing")) for label, run in runs.items()}
    assert layouts["ours"] == (False, True) and layouts["ours_padding_free"] == (True, True)
    assert layouts["ours_no_gradient_checkpointing"] == (False, False)
    assert layouts["ours_defaults"][0] is True and isinstance(layouts["ours_defaults"][1], bool)
    for run in runs.values():
        assert set(run) >= TRAINING_FIGURES
    # Same rows, same template text, same steps: the loss is taken over the same tokens on each side.
    assert len({run["loss_tokens_per_epoch"] for run in runs.values()}) == 1
    assert len({run["train_tokens"] for label, run in runs.items() if label != "baseline"}) == 1
    # The baseline's inputs end at <|im_end|>; ours also carry the template's newline after it (no loss).
    assert runs["baseline"]["train_tokens"] <= runs["ours"]["train_tokens"]
    assert len({run["steps"] for run in runs.values()}) == 1
    # Padding-free changes the batch layout, not what is learned from it.
    assert runs["ours_padding_free"]["eval_loss"] == pytest.approx(runs["ours"]["eval_loss"], rel=1e-2)
    assert set(training["ratio"]["ours"]) == TRAINING_FIGURES
    # Our adapters' held-out loss read on the base in both dtypes: what training learned apart from bf16's reading.
    for label in set(runs) - {"baseline"}:
        read = runs[label]["eval_loss_read_in"]
        assert set(read) == {"float32", "bfloat16"} and all(loss > 0 for loss in read.values())
        assert runs[label]["lora_change"]["layers"] > 0 and runs[label]["lora_change"]["change_over_output_median"] > 0
    if bf16:
        assert {"bf16_eval_loss_read_in_float32_within_2pct_of_float32", "bf16_tokens_per_second_ratio"} <= set(
            training["targets"]
        )


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """`python -m bench --only quality --size small`: two small tasks (one of them facts, for the knowledge figures),
    the defaults and one sweep point each."""
    out = tmp_path_factory.mktemp("quality")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "quality", "--size", "small", "--results-dir",
         str(out / "results"), "--markdown", str(out / "BENCHMARKS.md"), "--workdir", str(out / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=3500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "results" / "quality.json").read_text()), (out / "BENCHMARKS.md").read_text()


def test_quality_scores_the_base_the_defaults_and_a_sweep_point_on_held_out_rows(quality_run: Any) -> None:
    quality, markdown = quality_run
    assert [t["task"] for t in quality["tasks"]] == ["shout", "facts"]
    sweep = [f"lr{p['learning_rate']:g}-ep{p['epochs']:g}" for p in quality["settings"]["sweep"]]
    for task in quality["tasks"]:
        held = task["held_out_rows"]
        assert task["base"]["of"] == held and 0 <= task["base"]["right"] <= held
        assert list(task["adapters"]) == ["defaults", *sweep]
        for label, adapter in task["adapters"].items():
            assert adapter["status"] == "succeeded", (label, adapter["error"])
            assert adapter["of"] == held and adapter["train_seconds"] > 0
            # The defaults run sent no hyperparameters; a sweep point sent exactly its two.
            assert set(adapter["requested"]) == (set() if label == "defaults" else {"learning_rate", "epochs"})
            assert {"learning_rate", "epochs", "total_steps"} <= set(adapter["chosen"])
            assert "eval_loss" in adapter["manifest_metrics"]
        assert task["best_sweep"] in sweep
    # facts: the knowledge an adapter must keep, asked of the base model in prose and with its answer begun, and
    # asked again of every adapter in prose.
    facts = quality["tasks"][1]
    for known in (facts["base_prose"], facts["base_begun"], *(a["prose"] for a in facts["adapters"].values())):
        assert known["of"] == facts["held_out_rows"] and 0 <= known["right"] <= known["of"]
    assert facts["base_prose"]["right"] >= facts["held_out_rows"] // 2  # the facts were picked as ones it knows
    point = quality["settings"]["sweep"][0]
    assert quality["tasks"][0]["adapters"][sweep[0]]["chosen"]["learning_rate"] == point["learning_rate"]
    assert set(quality["targets"]) == {"defaults_vs_best", "no_forgetting"}
    assert "## Skill quality" in markdown and "| shout | alpaca |" in markdown


def test_the_data_loop_trains_the_next_version_from_reviewed_traffic_and_grades_both(tmp_path: Path) -> None:
    """`python -m bench.data_loop --size tiny`: stored conversations, reviewed, exported, trained, both graded."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.data_loop", "--size", "tiny", "--workdir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=3500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    reviewed = report["reviewed"]
    assert report["stored_conversations"] == sum(reviewed.values()) == 12
    assert report["export"]["rows"] == reviewed["good"] + reviewed["corrected"]  # what was accepted or corrected
    first, second = report["first_version"]["version"], report["next_version"]["version"]
    assert first != second
    scores = report["eval"]["scores"]
    assert set(scores) == {f"loop-shout@{first}", f"loop-shout@{second}"}
    assert all(s["status"] == "completed" and s["total"] == 8 for s in scores.values())
