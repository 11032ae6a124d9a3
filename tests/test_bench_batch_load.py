"""`python -m bench.batch_load --size tiny` end to end: a batch under live load, a gateway killed mid-batch and
restarted, and store on vs off; each case reports the figures it promises.

No timing is asserted: the live and store figures are only checked to exist and to describe equal work on both
sides. What the restart must keep is asserted: every line exactly once, the lines finished before the kill as they
were. Marked slow, as the other benchmark smokes: three gateway starts, 4 minutes at load average 2, about 9 at 7+.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.batch_load import RESTART_LINES, SIZES_LINES

REPO = Path(__file__).resolve().parents[1]
LINES = SIZES_LINES["tiny"]
RESTART = RESTART_LINES["tiny"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("batch-load")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.batch_load", "--size", "tiny", "--workdir", str(work / "work"),
         "--output", str(work / "batch_load.json")],
        cwd=REPO, capture_output=True, text=True, timeout=3500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(json.loads((work / "batch_load.json").read_text()))


def test_a_batch_over_four_adapters_completes_while_the_live_load_runs_alone_and_with_it(tiny_run: Any) -> None:
    live = tiny_run["batch"]["live"]
    assert [len(live["live"][name]) for name in ("alone", "with batch")] == [2, 2]
    for run in live["live"]["alone"] + live["live"]["with batch"]:
        assert run["failed"] == 0 and run["output_tokens"] == run["expected_output_tokens"]
    batch = live["batch"]
    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == LINES
    assert batch["missing"] == batch["duplicated"] == batch["unexpected"] == []
    # The batch was answering lines when each "with" run began.
    assert [run["answered_before"] >= 1 for run in batch["during_live_runs"]] == [True, True]
    assert tiny_run["batch"]["batch_lines"]["adapters"] == [f"bench-{i}" for i in range(4)]
    assert set(tiny_run["targets"]["live_ttft_p50_with_batch_over_alone"]) == {"value", "target", "met"}


def test_a_gateway_killed_mid_batch_and_restarted_keeps_every_finished_line_once(tiny_run: Any) -> None:
    restart = tiny_run["batch"]["restart"]
    assert restart["batch"]["status"] == "completed" and restart["batch"]["request_counts"]["completed"] == RESTART
    assert 1 <= restart["finished_before_kill"] < RESTART  # killed mid-batch
    assert restart["answered_after_restart"] == RESTART - restart["finished_before_kill"]
    assert restart["output_lines"] == RESTART
    assert restart["missing"] == restart["duplicated"] == restart["unexpected"] == []
    assert restart["finished_before_kill_lost"] == []
    assert tiny_run["targets"]["restart_keeps_every_line_once"]["met"]


def test_store_on_and_off_do_equal_work_and_every_store_on_answer_is_written(tiny_run: Any) -> None:
    store = tiny_run["store"]
    for arm in ("store on", "store off"):
        assert len(store[arm]["runs"]) == 2 and store[arm]["failed"] == 0
        assert store[arm]["output_tokens"] == store[arm]["expected_output_tokens"]
    stored = store["stored"]
    assert stored["written"] == stored["store_on_requests"] == store["store on"]["completed"]
    assert stored["dropped"] == stored["failed"] == 0
    assert store["ratio"]["output_tok_s"] > 0 and len(store["tok_s_ratio_by_pair"]) == 2
