"""What a job runner does: launch the trainer for a queued job, cancel it, and keep job records truthful."""

from __future__ import annotations

from typing import Any, Protocol

from adapters.registry import job_uri
from adapters.schema import JobRecord


class Runner(Protocol):
    """A place where training runs: local subprocesses or Kubernetes Jobs.

    The gateway stores the JobRecord (status queued) before calling `submit`. The trainer itself
    (`python -m trainer run <job URI>`, adapters.registry.job_uri) moves it to running and then to succeeded or
    failed; the runner marks jobs failed when the trainer dies without saying so, and cancelled on cancel.
    """

    name: str

    def start(self) -> None:
        """Begin work: resume queued jobs, mark jobs interrupted by a restart as failed, start watching."""

    def submit(self, job: JobRecord) -> None:
        """Run (or queue) the trainer for a job whose record is already stored. A place that refuses the job
        fails its record with the reason and raises adapters.errors.JobRefused (the API answers 4xx)."""

    def cancel(self, job_id: str) -> None:
        """Stop a queued or running job and mark it cancelled; nothing is published."""

    def stop(self) -> None:
        """Stop watching; running trainers are left to finish or be marked failed on the next start."""


def trainer_uri(registry: Any, store_uri: str, job_id: str) -> str:
    """The job URI a trainer is launched with: inside the job's project's namespace when the runner's registry knows
    every project's jobs (adapters.registry.ProjectJobs), else `<store-uri>/jobs/<id>.json`."""
    if hasattr(registry, "job_uri"):
        return str(registry.job_uri(job_id))
    return job_uri(store_uri, job_id)


def trainer_command(processes: int = 1) -> list[str]:
    """Arguments after the Python executable that start the trainer; the job URI follows.

    One process runs `-m trainer run`. More run it data-parallel under torchrun on this node, one process per
    GPU (trainer/distributed.py): `-m torch.distributed.run` is torchrun without relying on its console script
    being on PATH, and `--standalone` holds the rendezvous on a free local port."""
    if processes <= 1:
        return ["-m", "trainer", "run"]
    return ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m", "trainer", "run"]
