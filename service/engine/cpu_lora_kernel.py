"""The decode step's LoRA kernel (service/engine/lora_rows.c), built for this CPU with the system C compiler.

A decode step multiplies a few rows, each on its own adapter. In PyTorch that is about ten op calls per layer
(gather the rows and their slots' weights, two batched products, scatter back), and their fixed costs are most of
the time: in bf16 they are what keeps several adapters under 0.9x of the base (docs/performance.md). The kernel
does a layer's rows in one call, reading each row's slot's weights once.

An image has no compiler at run time, so its build stage ships a portable build beside this module
(`python -P -m service.engine.cpu_lora_kernel --portable`): one copy of each function per x86-64 level (v4 with
AVX-512, v3 with AVX2, the baseline), the best one the CPU has chosen when the library loads. Where there is none,
the kernel is compiled on first use with `-march=native` into a directory keyed by the source, the flags and the CPU,
so a shared temporary directory never hands one CPU's build to another; processes that build at once each write their
own file and rename it into place. Without either, `kernel()` is None, the reason is logged once, and the ops keep
their PyTorch path.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from adapters.hardware import cpu_flags

log = logging.getLogger("vllm.plugins.skillserve_cpu_lora")

SOURCE = Path(__file__).with_name("lora_rows.c")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")
# The portable build: no -march, and on x86-64 one clone per level (lora_rows.c); on this project's EPYC it runs
# within 4% of the native build (docs/performance.md).
PORTABLE_FLAGS = ("-O3", "-shared", "-fPIC", *(("-DSKILLSERVE_CLONES",) if platform.machine() == "x86_64" else ()))
# Where the image's build stage puts the portable build: inside the installed package, beside the source.
PREBUILT = SOURCE.with_name("lora_rows-portable.so")
# The kernel keeps a row's shrink and expand on the stack: rank columns plus output columns, in float32.
MAX_COLUMNS = 65536
# Set to 0 in the gateway's environment (its engine processes inherit it) to decode with PyTorch's products.
SWITCH = "SKILLSERVE_LORA_KERNEL"

_P, _I = ctypes.c_void_p, ctypes.c_int64
_ARGS = [_P, _P, _I, _I, _I, _P, _I, _P, _I, _P, _I, _P, _I, ctypes.c_float]


def compiler() -> str | None:
    """The C compiler Python was built with (its first word), else `cc`, where either is on PATH."""
    configured = (sysconfig.get_config_var("CC") or "").split()
    for name in (*configured[:1], "cc", "gcc"):
        found = shutil.which(name)
        if found:
            return found
    return None


def build_dir() -> Path:
    """Under the temporary directory (TMPDIR), one per user: a container's /tmp is writable where nothing else is."""
    return Path(tempfile.gettempdir()) / f"skillserve-kernels-{os.getuid()}"


def build(cc: str | None = None, directory: Path | None = None) -> Path:
    """The shared library for this CPU, compiled unless a build of the same source, flags and CPU is there."""
    source = SOURCE.read_bytes()
    facts = [source, " ".join(FLAGS).encode(), platform.machine().encode(), *sorted(f.encode() for f in cpu_flags())]
    key = hashlib.sha256(b"\0".join(facts)).hexdigest()[:16]
    target = (directory or build_dir()) / f"lora_rows-{key}.so"
    if not target.exists():
        _compile(cc, FLAGS, target)
    return target


def build_portable(cc: str | None = None, target: Path = PREBUILT) -> Path:
    """The portable build, for an image whose CPU is not known when it is built (the Dockerfile's build stage)."""
    _compile(cc, PORTABLE_FLAGS, target)
    return target


def _compile(cc: str | None, flags: tuple[str, ...], target: Path) -> None:
    """Compiles the source into `target` through a temporary file beside it, so no reader sees half a library."""
    cc = cc or compiler()
    if cc is None:
        raise RuntimeError("no C compiler on PATH (cc or gcc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    try:
        command = [cc, *flags, "-o", str(partial), str(SOURCE)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed: {done.stderr.strip()[-500:]}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


Kernel = dict[torch.dtype, Callable[..., None]]


def load(path: Path) -> Kernel:
    """The library's functions by dtype. They hold the GIL while they run (`PyDLL`, not `CDLL`): a call of a few
    microseconds that let it go would then wait to take it back behind any busy thread of the process (measured
    in-process, one such thread running: 911 us a call that lets it go, 4.4 us one that holds it; 2.9 us alone)."""
    lib = ctypes.PyDLL(str(path))
    kernels: Kernel = {}
    for dtype in (torch.float32, torch.bfloat16):
        fn = getattr(lib, f"lora_rows_{str(dtype).removeprefix('torch.')}")
        fn.argtypes, fn.restype = _ARGS, None
        kernels[dtype] = fn
    return kernels


@functools.cache
def kernel() -> Kernel | None:
    """The kernel by the rows' dtype (float32, bfloat16): the portable build shipped beside this module (an image's),
    else one built for this CPU on first use; None where neither can be had."""
    if os.environ.get(SWITCH, "1") == "0":
        log.info("LoRA decode kernel off (%s=0): the PyTorch path decodes", SWITCH)
        return None
    if PREBUILT.exists():
        try:
            kernels = load(PREBUILT)
        except (OSError, AttributeError) as exc:
            log.warning("LoRA decode kernel shipped with the package does not load, building one: %s", exc)
        else:
            log.info("LoRA decode kernel shipped with the package (portable build): %s", PREBUILT)
            return kernels
    try:
        path = build()
        kernels = load(path)
    except (OSError, AttributeError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("LoRA decode kernel not built, the PyTorch path decodes: %s", exc)
        return None
    log.info("LoRA decode kernel for this CPU: %s", path)
    return kernels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -P -m service.engine.cpu_lora_kernel",
        description="Build the decode kernel ahead of its first use: for this CPU, or (--portable) for the image.",
    )
    parser.add_argument("--portable", action="store_true", help=f"for any CPU of this architecture, into {PREBUILT}")
    parser.add_argument("--output", type=Path, help="where the portable build goes (default: beside the source)")
    args = parser.parse_args(argv)
    if args.output and not args.portable:
        parser.error("--output is for --portable")
    target = build_portable(target=args.output or PREBUILT) if args.portable else build()
    dtypes = [str(dtype).removeprefix("torch.") for dtype in load(target)]  # one that does not load fails here
    print(f"{target}: {', '.join(dtypes)}")


if __name__ == "__main__":
    main()
