"""How runners launch the trainer: one process, or torchrun with one data-parallel process per GPU."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from adapters.registry import Registry
from adapters.store import FileStore
from service.app import build_runner
from service.runners.base import trainer_command
from service.runners.cluster import trainer_processes
from service.runners.kubernetes import build_job
from service.runners.local import LocalRunner
from service.settings import Settings
from tests.test_runner_kubernetes import GPU_TEMPLATE, K8S_VERSION, queued_job


def gpus(n: int) -> dict[str, Any]:
    return {**GPU_TEMPLATE, "resources": {"requests": {"nvidia.com/gpu": n}, "limits": {"nvidia.com/gpu": n}}}


def test_one_process_is_the_plain_trainer_and_more_are_torchrun_on_this_node() -> None:
    assert trainer_command(1) == ["-m", "trainer", "run"]
    assert trainer_command(4) == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "trainer", "run"
    ]


def test_trainer_processes_follow_the_gpus_a_job_template_asks_for() -> None:
    assert trainer_processes({}) == 1
    assert trainer_processes(GPU_TEMPLATE) == 1
    assert trainer_processes(gpus(8)) == 8
    assert trainer_processes({"resources": {"limits": {"amd.com/gpu": "2"}}}) == 2


@pytest.mark.parametrize("n", [1, 2])
def test_a_job_with_n_gpus_runs_n_trainer_processes(tmp_path: Path, n: int) -> None:
    registry = Registry(FileStore(tmp_path / "store"))
    record = queued_job(registry)
    settings = Settings(store_uri="s3://skillserve-test/registry")
    body = build_job(record, settings, gpus(n), "ml")
    kubernetes_validate.validate(body, K8S_VERSION, strict=True)
    pod = body["spec"]["template"]["spec"]
    container = pod["containers"][0]
    uri = f"s3://skillserve-test/registry/jobs/{record.id}.json"
    assert container["command"] == ["python", *trainer_command(n), uri]
    shm = [v for v in pod["volumes"] if v["name"] == "dshm"]
    if n == 1:
        assert not shm
    else:  # NCCL's shared-memory transport needs more than a container's default /dev/shm
        assert shm == [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_local_runner_launches_torchrun_when_a_job_gets_several_processes(tmp_path: Path) -> None:
    settings = Settings(store_uri=f"file://{tmp_path}/store", cache_dir=tmp_path / "cache", train_processes_per_job=2)
    runner = build_runner(settings, Registry(FileStore(tmp_path / "store")))
    assert isinstance(runner, LocalRunner)
    assert runner.command == [sys.executable, *trainer_command(2)]
