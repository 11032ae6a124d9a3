"""Which dtype the weights run in: bfloat16 where the CPU multiplies it in hardware, float32 elsewhere.

The signal is the kernel's own CPU flags (`amx_bf16` or `avx512_bf16` in /proc/cpuinfo) together with torch's
`get_cpu_capability()` being "AVX512": the flags say the units exist (Intel's AMX on Sapphire Rapids and later,
AVX-512 BF16 on Cooper Lake and AMD's Zen 4), the capability says torch runs its AVX-512 kernels here (not an
ARM/POWER build, nor one held back by ATEN_CPU_CAPABILITY). Both are read in microseconds and cannot be fooled
by a busy neighbour, unlike a start-up micro-benchmark; on the Intel machines of this project they agree with a
measured 6.6x bf16/fp32 matmul ratio (NOTES.md), and on its AMD EPYC (`avx512_bf16`, no AMX) with 5.2x
(docs/performance.md). torch's `_is_mkldnn_bf16_supported()` is not used: it is true
on any AVX-512 CPU, where oneDNN emulates bf16 at no gain.

Pure functions with the machine's facts as defaults, so both kinds of machine are testable on either.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
DTYPES = ("float32", "bfloat16", "float16")
Use = Literal["serving", "training"]

# What `auto` picks on a CPU with native bf16, per use, and why: measured on this project's Intel Xeon
# (docs/performance.md, "bfloat16 on CPU"). A use absent here keeps float32 even there.
NATIVE_BF16_USES: dict[str, str] = {
    "training": "the frozen products in bf16, the LoRA and the rest in float32: 1.2x float32's tokens/s at the same "
    "losses (within 0.5%, three seeds) in the training benchmark on an Intel Xeon, 1.36x on an AMD EPYC",
}


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The flags of the first processor in /proc/cpuinfo's text (empty where there is none: not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def native_bf16(capability: str | None = None, flags: Iterable[str] | None = None) -> tuple[bool, str]:
    """Whether this CPU multiplies bfloat16 in hardware, and the evidence, in words."""
    capability = cpu_capability() if capability is None else capability
    have = sorted(set(cpu_flags() if flags is None else flags) & set(BF16_FLAGS))
    if not have:
        return False, f"no {' or '.join(BF16_FLAGS)} in the CPU flags (torch capability {capability})"
    if capability != "AVX512":
        return False, f"CPU flags {', '.join(have)} but torch capability {capability}, not AVX512"
    return True, f"CPU flags {', '.join(have)}, torch capability {capability}"


def resolve_dtype(
    requested: str,
    on_gpu: bool,
    use: Use = "serving",
    native: tuple[bool, str] | None = None,
) -> tuple[str, str]:
    """The dtype to load weights in for `use`, and why. An explicit dtype is kept; `auto` gives the model's own
    bfloat16 on GPU, bfloat16 on a CPU with native bf16 where NATIVE_BF16_USES allows it for `use`, else float32.
    `native` is native_bf16()'s answer (read from this machine when None)."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"dtype {requested!r} is not one of auto, {', '.join(DTYPES)}")
        return requested, "set explicitly"
    if on_gpu:
        return "bfloat16", "auto on GPU: the model's own dtype"
    has_native, evidence = native_bf16() if native is None else native
    if not has_native:
        return "float32", f"auto on CPU without native bf16 ({evidence})"
    why = NATIVE_BF16_USES.get(use)
    if why is None:
        return "float32", f"auto on CPU with native bf16 ({evidence}), kept float32 for {use}: {_KEPT[use]}"
    return "bfloat16", f"auto on CPU with native bf16 ({evidence}): {why}"


# Why a use keeps float32 even on a CPU with native bf16 (the figures are in docs/performance.md).
_KEPT: dict[str, str] = {
    "serving": 'the default model answers wrong in bf16 in vLLM ("capital of France" -> "L\'Étoile, la '
    'Marseillaise, la femme, ...")',
}
