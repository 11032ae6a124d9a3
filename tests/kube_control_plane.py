"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager on loopback.

`../shared/k8s/start.sh` (v1.20.2, built from Debian's `kubernetes` source package; its README says how) starts
them in about 8 s. There is no kubelet and no scheduler: the Job controller creates pods, which stay Pending
until a test writes their status as a kubelet would (`play_kubelet`). Tests skip, saying why, where the binaries
or Debian's `etcd-server` are missing; CI installs `etcd-server` (Makefile `k8s-test-deps`) and has the binaries.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = Path(os.environ.get("SKILLSERVE_K8S_DIR") or ROOT.parent / "shared" / "k8s")


def missing() -> str | None:
    """Why the control plane cannot start here, or None."""
    if not (K8S_DIR / "start.sh").exists() or not (K8S_DIR / "bin" / "kube-apiserver.gz").exists():
        return f"no Kubernetes control plane binaries at {K8S_DIR} (see its README; set SKILLSERVE_K8S_DIR)"
    if shutil.which("etcd") is None:
        return "etcd not installed: apt-get install etcd-server (make k8s-test-deps)"
    if shutil.which("openssl") is None:
        return "openssl not installed"
    return None


def _free_port_block(size: int) -> int:
    """A port p with p..p+size-1 all free on loopback (etcd takes three consecutive ones)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free block of loopback ports")


@dataclass
class ControlPlane:
    state: Path
    kubeconfig: Path
    api_url: str
    ca_file: Path

    def client(self, token: str | None = None) -> Any:
        """An ApiClient as the admin (kubeconfig), or as whoever `token` belongs to."""
        from kubernetes import client, config

        if token is None:
            return config.new_client_from_config(config_file=str(self.kubeconfig))
        configuration = client.Configuration()
        configuration.host = self.api_url
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(configuration)

    def namespace(self) -> str:
        """A fresh namespace, so tests sharing the control plane never see each other's Jobs."""
        from kubernetes import client

        name = f"t-{uuid.uuid4().hex[:10]}"
        client.CoreV1Api(self.client()).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        return name


@contextmanager
def control_plane() -> Iterator[ControlPlane]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    state = Path(os.environ.get("TMPDIR", "/tmp")) / f"skillserve-k8s-{uuid.uuid4().hex[:8]}"
    etcd = _free_port_block(3)
    api, kcm = _free_port_block(1), _free_port_block(1)
    env = {**os.environ, "ETCD_PORT": str(etcd), "API_PORT": str(api), "KCM_PORT": str(kcm)}
    proc = subprocess.run(
        ["bash", str(K8S_DIR / "start.sh"), str(state)], env=env, capture_output=True, text=True, timeout=120
    )
    try:
        if proc.returncode != 0:
            logs = "".join(
                f"\n--- {log.name}\n{log.read_text()[-2000:]}" for log in sorted(state.glob("*.log")) if log.exists()
            )
            raise RuntimeError(f"start.sh failed ({proc.returncode}): {proc.stderr[-2000:]}{logs}")
        yield ControlPlane(
            state=state,
            kubeconfig=Path(proc.stdout.strip().splitlines()[-1]),
            api_url=f"https://127.0.0.1:{api}",
            ca_file=state / "certs" / "apiserver.crt",
        )
    finally:
        subprocess.run(["bash", str(K8S_DIR / "stop.sh"), str(state)], capture_output=True, timeout=60)
        shutil.rmtree(state, ignore_errors=True)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0, every: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy (and return it); fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def play_kubelet(core: Any, namespace: str, pod: str, phase: str, exit_code: int, message: str = "") -> None:
    """Write a pod's status as the kubelet would once its only container has exited (no kubelet runs here)."""
    now = datetime.now(UTC)
    status = {
        "phase": phase,
        "message": message,
        "startTime": now.isoformat(),
        "containerStatuses": [
            {
                "name": "trainer",
                "ready": False,
                "restartCount": 0,
                "image": "skillserve:cpu",
                "imageID": "",
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Completed" if exit_code == 0 else "Error",
                        "startedAt": now.isoformat(),
                        "finishedAt": now.isoformat(),
                    }
                },
            }
        ],
    }
    core.patch_namespaced_pod_status(pod, namespace, {"status": status})
