"""vLLM's engine processes die with the gateway, even a SIGKILLed one (service/engine/lifetime.py).

The processes are found by the process tree captured before the kill, never by name: the machine may run
other engines (other tests, `vllm serve`) that must not be mistaken for these.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.gateway_fixtures import REPO, free_port, gateway_env

GONE_WITHIN_S = 30.0


def alive(proc: psutil.Process) -> bool:
    """Running, and not a zombie waiting for whoever adopted it to reap it."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def survivors(procs: list[psutil.Process], within_s: float) -> list[psutil.Process]:
    deadline = time.monotonic() + within_s
    while True:
        left = [p for p in procs if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def kill_all(procs: list[psutil.Process]) -> None:
    """Clean up after a failure, by pid: only what this test started."""
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


# A process that spawns one child the way vLLM spawns its engine core, with the plugin run in the child.
SPAWNER = textwrap.dedent(
    """
    import multiprocessing, sys, time

    def child():
        from service.engine.lifetime import register
        register()
        time.sleep(600)

    if __name__ == "__main__":
        proc = multiprocessing.get_context("spawn").Process(target=child)
        proc.start()
        print(proc.pid, flush=True)
        time.sleep(600)
    """
)


def test_a_spawned_process_dies_with_its_killed_parent(tmp_path: Path) -> None:
    script = tmp_path / "spawner.py"
    script.write_text(SPAWNER)
    parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        time.sleep(3)  # the child has imported the plugin and registered
        assert alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert survivors([child], GONE_WITHIN_S) == []
    finally:
        kill_all([child])


def test_a_process_whose_parent_is_already_gone_exits() -> None:
    """The race: a parent that dies before the child asks for the signal would never send it."""
    code = "from service.engine.lifetime import die_with_parent; die_with_parent(1); print('still here')"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "still here" not in result.stdout


def test_the_gateway_itself_is_tied_to_nothing() -> None:
    """Not spawned by multiprocessing: the plugin leaves the process alone, whoever its parent is."""
    code = (
        "import ctypes, signal; from service.engine.lifetime import register; register(); "
        "sig = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0); print(sig.value)"
    )  # prctl(PR_GET_PDEATHSIG)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "0"


@pytest.mark.slow
def test_a_sigkilled_gateway_takes_its_engine_processes_with_it() -> None:
    with tempfile.TemporaryDirectory(prefix="skillserve-lifetime-") as tmp:
        port = free_port()
        env = gateway_env(f"file://{tmp}/store", Path(tmp) / "cache", port)
        env["SKILLSERVE_TRAINING_ENABLED"] = "false"
        log_path = Path(tmp) / "gateway.log"
        with log_path.open("wb") as log:
            gateway = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        tree: list[psutil.Process] = []
        try:
            deadline = time.monotonic() + 300
            while True:
                assert gateway.poll() is None, log_path.read_text(errors="replace")[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the gateway was not ready within 300 s"
                time.sleep(0.5)
            tree = psutil.Process(gateway.pid).children(recursive=True)
            engine = [p for p in tree if p.ppid() != gateway.pid]
            assert tree and engine, f"expected an engine core and its worker under the gateway, found {tree}"

            os.kill(gateway.pid, signal.SIGKILL)
            gateway.wait()
            left = survivors(tree, GONE_WITHIN_S)
            assert left == [], f"still running {GONE_WITHIN_S:.0f} s after the gateway was killed: {left}"
        finally:
            if gateway.poll() is None:
                gateway.kill()
                gateway.wait()
            kill_all(tree)
