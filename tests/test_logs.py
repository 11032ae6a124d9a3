"""The gateway's logs: every logger of its modules writes the JSON lines service/logs.py configures."""

from __future__ import annotations

import ast
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from adapters.registry import Registry
from adapters.store import FileStore
from service import logs
from service.runners.cluster import job_name
from service.runners.kubernetes import KubernetesRunner
from service.settings import Settings
from tests.test_runner_kubernetes import FakeBatchV1Api, queued_job

REPO = Path(__file__).resolve().parents[1]
# vLLM plugins run inside vLLM's own processes and log through vLLM's logging configuration.
VLLM_PLUGINS = "vllm.plugins."


def logger_names(path: Path) -> Iterator[tuple[int, str]]:
    """(line, name) of each logging.getLogger(...) call in a module; a name that is not a literal is given as
    the source text of the argument (e.g. `__name__`)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "getLogger":
            (arg,) = node.args
            yield node.lineno, str(arg.value) if isinstance(arg, ast.Constant) else ast.unparse(arg)


def test_every_logger_of_the_gateways_code_is_under_the_configured_tree() -> None:
    outside = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for package in ("service", "adapters", "trainer")
        for path in sorted((REPO / package).rglob("*.py"))
        for line, name in logger_names(path)
        if not (name == "skillserve" or name.startswith("skillserve.") or name.startswith(VLLM_PLUGINS))
    ]
    assert outside == [], "loggers outside 'skillserve' (logs.configure) write bare text or nothing"


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """What logs.configure (as the gateway calls it) writes, caught in a buffer; the tree's state restored after."""
    tree = logging.getLogger("skillserve")
    saved = (tree.handlers[:], tree.level, tree.propagate)
    logs.configure("info")
    (handler,) = tree.handlers
    written = io.StringIO()
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(written)  # instead of stderr, which pytest swaps between a test's phases
    try:
        yield written
    finally:
        tree.handlers[:], tree.level, tree.propagate = saved


def test_a_cluster_runners_info_and_warning_lines_are_json_lines(json_logs: io.StringIO, tmp_path: Path) -> None:
    registry = Registry(FileStore(tmp_path / "store"))
    api = FakeBatchV1Api()
    runner = KubernetesRunner(Settings(store_uri="s3://b-1/p", k8s_namespace="ml"), registry, batch_api=api)
    record = queued_job(registry)
    runner.submit(record)
    api.fail(job_name(record.id), "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    runner.reconcile()
    api.list_namespaced_job = _refuse(ApiException(status=403, reason="Forbidden"))  # type: ignore[method-assign]
    runner.reconcile()
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]  # each one JSON, or this fails
    said = {(line["logger"], line["level"], line["msg"].split(":")[0]) for line in lines}
    assert ("skillserve.runner.kubernetes", "info", f"job {record.id} failed") in said
    assert ("skillserve.runner.kubernetes", "warning", "cannot list Jobs in ml") in said


def _refuse(exc: ApiException):  # type: ignore[no-untyped-def]
    def call(**_: object) -> None:
        raise exc

    return call
