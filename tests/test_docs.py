"""The README's configuration tables are generated from the config objects; CI runs the README's test command."""

from __future__ import annotations

from pathlib import Path

import pytest

from docsgen.config_table import render_block, tables

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["settings", "hyperparameters"])
def test_readme_table_matches_the_config_object(kind: str) -> None:
    readme = (REPO / "README.md").read_text()
    assert render_block(kind, tables()[kind]) in readme, (
        f"README's {kind} table is stale: paste the output of `python -m docsgen.config_table`"
    )


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and "\nmake test\n" in ci
