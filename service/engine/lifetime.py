"""vLLM's engine processes die with the process that started them, loaded into each as a general plugin.

vLLM runs its engine core in a spawned child of the gateway, and on the CPU its model worker in a child of
the engine core. A gateway that exits cleanly shuts them down; one that is SIGKILLed (the OOM killer, a
`kill -9`, a crashed VM agent) cannot, and the engine core kept running with gigabytes of weights and KV
cache until someone found it. In a pod the container takes it down; on a laptop or a VM nothing did.

`register()` runs in every process that loads vLLM's plugins (entry point `skillserve-engine-lifetime`).
In a process that multiprocessing spawned (the engine core, its workers) it asks the kernel for SIGKILL
when the parent goes (`PR_SET_PDEATHSIG`). Each process does it relative to its own parent, so a chain
(gateway -> engine core -> worker) comes down link by link. In the gateway itself, which multiprocessing
did not spawn, it does nothing: the gateway's lifetime is its supervisor's business.

The kernel sends the signal when the *thread* that spawned the child exits, not the process. vLLM spawns
the engine core from the thread that builds the engine (the gateway's event loop thread, which lives as
long as the gateway) and the workers from the engine core's main thread. Starting the engine from a
short-lived thread would kill it when that thread ends; keep `Engine.start()` on a long-lived thread.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys

from service.parent_death import signal_on_parent_death

log = logging.getLogger("vllm.plugins.skillserve_engine_lifetime")

def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send `sig` to this process when its parent exits; False where prctl is unavailable.

    If the parent is already gone (the race between being spawned and getting here), exit at once: the
    kernel only signals for a parent that dies after the call.
    """
    if not sys.platform.startswith("linux"):
        return False
    if not signal_on_parent_death(sig):
        log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    if os.getppid() != parent_pid:  # reparented: the parent died before the call above
        log.warning("parent %d is gone; exiting", parent_pid)
        os._exit(1)
    return True


def register() -> None:
    """vLLM general-plugin entry point: in a spawned vLLM process, die with the parent that spawned it."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return  # the gateway (or `vllm serve`'s API server): not ours to tie to anything
    if die_with_parent(parent.pid):
        log.debug(
            "%s (pid %d) dies with its parent, pid %d", multiprocessing.current_process().name, os.getpid(), parent.pid
        )
