"""The facts task's forms (bench/quality_tasks.py) and the committed benchmark report.

The benchmarks themselves run in tests/test_bench_smoke.py; these check, without an engine, that the probe
forms of the facts task ask the same facts in another form, and that BENCHMARKS.md is what the report makes of
the committed results.
"""

from __future__ import annotations

from bench import report
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
