"""The facts task's forms (bench/quality_tasks.py), the quality benchmark's seeds, and the committed report.

The benchmarks themselves run in tests/test_bench_smoke.py; these check, without an engine, that the probe
forms of the facts task ask the same facts in another form, that the best sweep point and the targets go by the
mean over the training seeds, and that BENCHMARKS.md is what the report makes of the committed results.
"""

from __future__ import annotations

from typing import Any

from adapters.schema import Hyperparameters
from bench import report
from bench.quality import KNOBS, SIZES, _targets, _task_result
from bench.quality_tasks import build
from bench.servers import REPO


def test_the_spaced_facts_are_the_same_rows_with_a_space_before_the_value() -> None:
    plain, spaced = build("facts", 32, 36), build("facts-spaced", 32, 36)
    assert spaced.name == "facts-spaced" and len(spaced.train) == 32 and len(spaced.held_out) == 36
    for a, b in zip(plain.train, spaced.train, strict=True):
        key, value = a["output"].split("=", 1)
        assert b["output"] == f"{key}: {value}"
        assert b["instruction"] == a["instruction"].replace(f"{key}=<", f"{key}: <")
    for a, b in zip(plain.held_out, spaced.held_out, strict=True):
        assert (a.prose, a.truth) == (b.prose, b.truth) and b.reference.endswith(f": {b.truth}")


def test_the_all_rows_facts_train_on_every_item_the_held_out_rows_leave() -> None:
    every = build("facts-all-rows", 32, 36)
    plain = build("facts", 32, 36)
    assert len(every.train) == 88 and [e.reference for e in every.held_out] == [e.reference for e in plain.held_out]
    asked = {e.prose for e in every.held_out}
    assert not asked & {row["instruction"].split(" Answer in")[0] for row in every.train}


def test_benchmarks_md_is_what_the_report_makes_of_the_committed_results() -> None:
    assert (REPO / "BENCHMARKS.md").read_text() == report.render(REPO / "bench" / "results")


def _scored(right: int, seconds: float = 50.0) -> dict[str, Any]:
    return {"status": "succeeded", "right": right, "of": 36, "score": round(right / 36, 4), "train_seconds": seconds}


def test_the_best_sweep_point_and_the_targets_go_by_the_mean_over_the_training_seeds() -> None:
    task = build("recall", 32, 36)
    points = {f"lr{lr:g}-ep2": {"learning_rate": lr, "epochs": 2.0} for lr in (1e-3, 2e-3)}
    # With the trainer's seed alone lr0.002 wins by two rows (a lucky seed); over three seeds lr0.001 is better.
    rows = {"defaults": (32, 33, 32), "lr0.001-ep2": (33, 34, 34), "lr0.002-ep2": (35, 30, 31)}
    adapters = {}
    for label, (first, *others) in rows.items():
        adapters[label] = _scored(first)
        for seed, right in zip((1, 2), others, strict=True):
            adapters[f"{label}-seed{seed}"] = _scored(right)
    result = _task_result(task, _scored(0), None, None, adapters, points, (1, 2))
    assert result["best_sweep"] == "lr0.001-ep2"
    assert result["over_seeds"]["defaults"] == {"right": [32, 33, 32], "of": 36, "mean": 0.8981, "mean_right": 32.33}
    target = _targets([result])["defaults_vs_best"]["per_task"]["recall"]
    # 32.33 of 36 against 33.67: 3.7 points apart, within 5; the best's mean (93.5%) is under 95%, so no 90% bar.
    assert target == {"defaults": 0.8981, "best": 0.9352, "within_5_points": True, "met": True}
    # One failed seed leaves a run without a mean: it cannot be best, and is not averaged over fewer seeds.
    adapters["lr0.001-ep2-seed2"] = {"status": "failed", "error": "boom"}
    result = _task_result(task, _scored(0), None, None, adapters, points, (1, 2))
    assert result["over_seeds"]["lr0.001-ep2"]["mean"] is None and result["best_sweep"] == "lr0.002-ep2"
    assert "failed" in report._over_seeds(result, "lr0.001-ep2")
    assert report._over_seeds(result, "defaults") == "90% (mean of 32 / 33 / 32 of 36)"


def test_without_extra_seeds_the_trainer_seed_alone_decides() -> None:
    task = build("shout", 30, 8)
    adapters = {"defaults": _scored(5), "lr0.002-ep1": _scored(6)}
    result = _task_result(task, _scored(0), None, None, adapters, {"lr0.002-ep1": {}}, ())
    assert result["best_sweep"] == "lr0.002-ep1" and result["over_seeds"]["defaults"]["right"] == [5]
    assert report._over_seeds(result, "defaults") == report._pct(adapters["defaults"])


def test_every_knob_and_variant_is_a_setting_the_trainer_takes_and_leaves_the_rest_to_the_defaults() -> None:
    """`POST /adapters` would refuse a misspelt knob with a 422 after the benchmark's base-model phase."""
    for variants in (KNOBS["full"].variants, SIZES["full"].variants):
        for label, sent in variants.items():
            chosen = Hyperparameters.model_validate(sent)
            assert chosen.model_dump(include=set(sent)) == sent, label
            assert chosen.model_fields_set == set(sent), label


def test_the_rft_recipes_send_prompt_rows_the_grader_reads_and_a_parent_instead_of_a_template() -> None:
    """facts_rft: the facts rows as reinforcement prompts (the answer as the grader's item.answer), the sft+rft job
    continuing from its sft version with that version's template; the table gives each recipe's mean over seeds."""
    from adapters.dataset import parse_dataset, rows_to_jsonl
    from adapters.graders import validate
    from bench.quality import EXACT_ANSWER, RFT, _recipe_mean, _rft_body

    task = build("facts", 30, 8, 0)
    fresh = _rft_body(task, RFT["small"], "q-facts-rft", 42, None)
    continued = _rft_body(task, RFT["small"], "q-facts-sft-rft", 42, "q-facts-sft@v1")
    assert fresh["template"] == task.template and "model" not in fresh
    assert continued["model"] == "q-facts-sft@v1" and "template" not in continued
    dataset = parse_dataset(rows_to_jsonl(fresh["rows"]), method="reinforcement",
                            grader=validate(EXACT_ANSWER, "method.grader"))
    assert [item["answer"] for item in dataset.items] == [r["output"] for r in task.train]
    adapters = {"sft-seed42": {"right": 3, "prose": {"right": 6}, "train_seconds": 40.0},
                "sft-seed1": {"right": 5, "prose": {"right": 8}, "train_seconds": 44.0},
                "rft-seed42": {"status": "failed"}, "rft-seed1": {"right": 1}}
    assert _recipe_mean(adapters, "sft", (42, 1))["mean_right"] == 4.0
    assert _recipe_mean(adapters, "rft", (42, 1))["mean_right"] is None  # a failed seed: no mean over fewer
    result = {"size": "small", "task": {"reference_example": "CAPITAL=Edinburgh", "train_rows": 30, "held_out_rows": 8},
              "settings": {"seeds": [42, 1]}, "base": None, "base_prose": None,
              "recipes": {"sft": _recipe_mean(adapters, "sft", (42, 1))}}
    assert "| sft | 4.00 (3, 5) | 7.00 (6, 8) | 42 |" in "\n".join(report.facts_rft_section(result))
    adapters["sft-seed42"]["sampled"] = {"k": 8, "any_right": 5, "of": 8, "sample_rate": 0.3}
    adapters["sft-seed1"]["sampled"] = {"k": 8, "any_right": 7, "of": 8, "sample_rate": 0.5}
    result["recipes"] = {"sft": _recipe_mean(adapters, "sft", (42, 1))}
    result["base_sampled"] = {"k": 8, "any_right": 2, "of": 8, "sample_rate": 0.05}
    table = "\n".join(report.facts_rft_section(result))
    assert "| sft | 4.00 (3, 5) | 7.00 (6, 8) | 6.00 (5, 7) | 42 |" in table
    assert "any of 8 samples at temperature 1 right on 2 of 8" in table


def test_every_task_gives_reinforcement_prompts_asked_as_its_held_out_rows_and_a_grader_that_scores_them() -> None:
    """rft_tasks: each task's training rows as prompts in the same shape as its held-out rows (the turns before the
    answer), the answer as item.answer; the task's grader, validated as the trainer validates it, gives the reference
    full marks and a wrong answer less."""
    from adapters.dataset import parse_dataset, rows_to_jsonl
    from adapters.graders import grade_sync, validate
    from bench.quality import FULL_TASKS, RFT_TASKS, _prompt_rows, _rft_body, task_grader

    assert set(RFT_TASKS["full"].tasks) == set(FULL_TASKS) - {"facts"}
    for name in FULL_TASKS:
        task = build(name, 12, 4, 0)
        rows = _prompt_rows(task)
        assert len(rows) == len(task.train)
        held_roles = [[m["role"] for m in ex.messages] for ex in task.held_out]
        for row in rows:
            assert [m["role"] for m in row["messages"]] in held_roles, name
            assert row["messages"][-1]["role"] == "user" and row["answer"], name
        grader = validate(task_grader(task), "method.grader")
        dataset = parse_dataset(rows_to_jsonl(rows), method="reinforcement", grader=grader)
        assert [item["answer"] for item in dataset.items] == [r["answer"] for r in rows]
        reference = task.held_out[0].reference
        item = {"answer": reference}
        assert grade_sync(grader, item, reference).score == 1.0, name
        assert grade_sync(grader, item, "nothing like it").score < 1.0, name
        assert _rft_body(task, RFT_TASKS["full"], "q", 42, "q-sft@v1")["method"]["grader"] == task_grader(task)


def test_the_rft_tasks_table_gives_each_tasks_recipes_over_the_seeds() -> None:
    from bench.quality import _recipe_mean

    adapters = {"sft-seed42": {"right": 30, "train_seconds": 50.0, "sampled": {"any_right": 34}},
                "sft-seed1": {"right": 32, "train_seconds": 52.0, "sampled": {"any_right": 35}},
                "sft+rft-seed42": {"right": 33, "train_seconds": 400.0, "sampled": {"any_right": 35}},
                "sft+rft-seed1": {"status": "failed"}}  # fmt: skip
    result = {"size": "full", "settings": {"seeds": [42, 1]},
              "tasks": {"shout": {"held_out_rows": 36, "recipes": {r: _recipe_mean(adapters, r, (42, 1))
                                                                   for r in ("sft", "sft+rft")}}}}  # fmt: skip
    table = "\n".join(report.rft_tasks_section(result))
    assert "| shout | sft | 31.00 (30, 32) | 34.50 (34, 35) | 36 | 51 |" in table
    assert "| shout | sft+rft | - (33, -) | - (35, -) | 36 | - |" in table
