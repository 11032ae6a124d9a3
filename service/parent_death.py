"""The one way a process of ours asks to die with its parent: the kernel's parent-death signal (`PR_SET_PDEATHSIG`).

Used by the vLLM engine processes (service/engine/lifetime.py) and by local trainer subprocesses
(service/runners/local.py, before exec). It imports nothing: it runs inside vLLM's processes and in a forked child
before exec, where taking a lock (logging, imports) could hang."""

from __future__ import annotations

import ctypes
import sys

PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def signal_on_parent_death(sig: int) -> bool:
    """Have the kernel send `sig` to this process when its parent (thread) exits; False where prctl is unavailable
    or refused (ctypes.get_errno() says why)."""
    if not sys.platform.startswith("linux"):
        return False
    return bool(ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0)
