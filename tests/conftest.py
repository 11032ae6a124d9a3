"""Shared fixtures: a real S3 server (moto over HTTP on loopback) and a `store` on each backend.

Other fixtures go below the store section.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.store import FileStore, ObjectStore, S3Store

# ---------------------------------------------------------------------------------------------
# Object store: moto's S3 server over real HTTP, a bucket per test, both backends behind `store`
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port for the whole session; boto3 finds it via AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        # Dummy credentials and no shared config, so a developer's real ~/.aws is never touched.
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_REGION", "us-east-1")
        env.setenv("AWS_CONFIG_FILE", "/nonexistent/skillserve-test-aws-config")
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/skillserve-test-aws-credentials")
        env.delenv("AWS_PROFILE", raising=False)
        env.delenv("AWS_SESSION_TOKEN", raising=False)
        yield endpoint
    server.stop()


@pytest.fixture
def s3_store_uri(moto_endpoint: str) -> str:
    """A fresh bucket on the moto server; returns `s3://<bucket>/<prefix>` so prefix handling is exercised."""
    import boto3

    bucket = f"skillserve-test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/root"


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same contract on both backends: a FileStore on tmp_path and an S3Store over HTTP to moto."""
    if request.param == "file":
        return FileStore(tmp_path / "store")
    return S3Store(request.getfixturevalue("s3_store_uri"))
from tests.gateway_fixtures import gateway, peft_adapter_dir  # noqa: E402,F401  (gateway fixtures)

# ---------------------------------------------------------------------------------------------
# Order: fast tests first, so a run shows progress (and fails) in its first minutes
# ---------------------------------------------------------------------------------------------

# The benchmark smoke test alone takes about a quarter of the suite; it goes last of all.
LAST_MODULES = ("test_bench_smoke.py",)


def _cost(item: pytest.Item) -> int:
    """0: fast; 1: starts the engine or trains (marked slow, or uses the session gateway); 2: goes last."""
    if item.path.name in LAST_MODULES:
        return 2
    if item.get_closest_marker("slow") is not None or "gateway" in getattr(item, "fixturenames", ()):
        return 1
    return 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: within each group the files and tests keep their order, so module fixtures stay together.
    items.sort(key=_cost)
