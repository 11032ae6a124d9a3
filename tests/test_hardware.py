"""`dtype: auto`: bfloat16 only where the CPU multiplies it natively and it was measured to pay, float32 elsewhere."""

from __future__ import annotations

import pytest

from adapters.hardware import cpu_flags, native_bf16, resolve_dtype

SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8"
COOPER_LAKE = "fpu sse2 avx2 avx512f avx512bw avx512_bf16"
EPYC_ZEN3 = "fpu sse2 avx2 fma sha_ni"  # an AMD EPYC without avx512_bf16
SKYLAKE = "fpu sse2 avx2 avx512f avx512bw"  # AVX-512, where oneDNN only emulates bf16

CPUINFO = f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {SAPPHIRE_RAPIDS}\n\nprocessor\t: 1\n"


def test_cpu_flags_are_read_from_proc_cpuinfo_text() -> None:
    assert {"amx_bf16", "avx512_bf16"} <= cpu_flags(CPUINFO)
    assert cpu_flags("processor\t: 0\n") == set()


@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS, COOPER_LAKE])
def test_cpu_with_amx_or_avx512_bf16_has_native_bf16(flags: str) -> None:
    native, why = native_bf16("AVX512", flags.split())
    assert native and "avx512_bf16" in why


@pytest.mark.parametrize(("capability", "flags"), [("AVX2", EPYC_ZEN3), ("AVX512", SKYLAKE), ("AVX2", COOPER_LAKE)])
def test_cpu_without_the_units_or_torch_kernels_has_no_native_bf16(capability: str, flags: str) -> None:
    native, why = native_bf16(capability, flags.split())
    assert not native and capability in why


def test_auto_keeps_float32_on_an_epyc_without_avx512_bf16_for_every_use() -> None:
    epyc = native_bf16("AVX2", EPYC_ZEN3.split())
    for use in ("serving", "training"):
        dtype, why = resolve_dtype("auto", on_gpu=False, use=use, native=epyc)
        assert dtype == "float32" and "without native bf16" in why


def test_auto_on_a_cpu_with_native_bf16_follows_what_was_measured_per_use() -> None:
    xeon = native_bf16("AVX512", SAPPHIRE_RAPIDS.split())
    serving, why = resolve_dtype("auto", on_gpu=False, use="serving", native=xeon)
    # bf16 answers of the default model are wrong in vLLM ("capital of France": docs/performance.md)
    assert serving == "float32" and "kept float32 for serving" in why
    training, why = resolve_dtype("auto", on_gpu=False, use="training", native=xeon)
    # faster at the same losses with only the frozen products in bf16 (trainer/precision.py)
    assert training == "bfloat16" and "with native bf16" in why and "same losses" in why


def test_auto_on_gpu_is_the_models_own_bfloat16_and_an_explicit_dtype_is_kept() -> None:
    epyc = native_bf16("AVX2", EPYC_ZEN3.split())
    assert resolve_dtype("auto", on_gpu=True, native=epyc)[0] == "bfloat16"
    assert resolve_dtype("bfloat16", on_gpu=False, native=epyc) == ("bfloat16", "set explicitly")
    assert resolve_dtype("float32", on_gpu=True) == ("float32", "set explicitly")
    with pytest.raises(ValueError, match="float64"):
        resolve_dtype("float64", on_gpu=False)


def test_engine_args_carry_the_dtype_auto_resolved_to_and_why() -> None:
    from service.engine.core import Engine
    from service.settings import Settings

    engine = Engine(Settings(dtype="auto"))
    assert engine.engine_args().dtype == engine.dtype == resolve_dtype("auto", on_gpu=False, use="serving")[0]
    assert engine.dtype_reason and engine.dtype_reason.startswith("auto on CPU")
    explicit = Engine(Settings(dtype="bfloat16"))
    assert explicit.engine_args().dtype == "bfloat16" and explicit.dtype_reason == "set explicitly"
