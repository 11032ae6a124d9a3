"""The `skillserve` CLI against the session's real gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.cli import main
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer, publish_adapter

pytestmark = pytest.mark.slow


def test_cli_lists_adapters_and_chats(
    gateway: GatewayServer, peft_adapter_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_adapter(gateway.registry, peft_adapter_dir, "cli-skill")
    assert main(["--url", gateway.url, "--key", API_KEY, "adapters"]) == 0
    assert "cli-skill" in capsys.readouterr().out
    assert (
        main(
            [
                "--url",
                gateway.url,
                "--key",
                API_KEY,
                "chat",
                "--model",
                "cli-skill",
                "--max-tokens",
                "8",
                "Hi",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip()
    assert main(["--url", gateway.url, "--key", API_KEY, "chat", "--model", "missing", "Hi"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_train_reports_bad_lines(
    gateway: GatewayServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "Shout: a", "output": "A!"}\n{"oops": true}\n')
    assert main(["--url", gateway.url, "--key", ADMIN_KEY, "train", str(data), "--name", "bad"]) == 1
    assert "line 2:" in capsys.readouterr().err
