"""The decode kernel's build (service/engine/cpu_lora_kernel.py): made once per source and CPU, and left out with a
logged reason where it cannot be built. What it computes is checked against the oracle in tests/test_vllm_cpu_lora.py
(`test_a_whole_layer_matches_the_oracle`, with the kernel built and off)."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import pytest
import torch

from service.engine import cpu_lora_kernel

needs_cc = pytest.mark.skipif(cpu_lora_kernel.compiler() is None, reason="no C compiler on PATH")


@needs_cc
def test_the_kernel_is_built_once_and_then_found(tmp_path: Path) -> None:
    first = cpu_lora_kernel.build(directory=tmp_path)
    built_at = first.stat().st_mtime_ns
    assert cpu_lora_kernel.build(directory=tmp_path) == first
    assert first.stat().st_mtime_ns == built_at
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no partial file left beside it
    kernels = cpu_lora_kernel.load(first)
    assert set(kernels) == {torch.float32, torch.bfloat16}
    # Called as Python API functions, which keep the GIL: a call of microseconds that let it go would wait to take
    # it back behind any other busy thread of the engine's process.
    assert all(fn._flags_ & ctypes._FUNCFLAG_PYTHONAPI for fn in kernels.values())


@needs_cc
def test_one_row_on_one_slot_is_its_adapters_product(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 5, 4, generator=gen), torch.zeros(2, 4, 6)
    b[:, :2, :3] = torch.randn(2, 2, 3, generator=gen)  # two slices: ranks 0-1 -> columns 0-2, 2-3 -> 3-5
    b[:, 2:, 3:] = torch.randn(2, 2, 3, generator=gen)
    bounds = torch.tensor([[0, 2, 0, 3], [2, 4, 3, 6]])
    x, out = torch.randn(3, 5, generator=gen), torch.ones(3, 6)
    pairs = torch.tensor([[2, 1], [0, 0]])  # row 1 has no adapter
    run = cpu_lora_kernel.load(cpu_lora_kernel.build(directory=tmp_path))[torch.float32]
    run(a.data_ptr(), b.data_ptr(), 5, 4, 6, bounds.data_ptr(), 2, pairs.data_ptr(), 2, x.data_ptr(), 5,
        out.data_ptr(), 6, 0.5)
    expected = torch.ones(3, 6)
    expected[2] += 0.5 * x[2] @ a[1] @ b[1]
    expected[0] += 0.5 * x[0] @ a[0] @ b[0]
    torch.testing.assert_close(out, expected)


def test_a_failing_compiler_leaves_no_file_and_says_why(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="false failed"):
        cpu_lora_kernel.build(cc="false", directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_without_a_compiler_the_ops_keep_pytorch_and_the_log_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No build shipped with the package, none made earlier, and nothing to make one with."""
    monkeypatch.setattr(cpu_lora_kernel, "PREBUILT", tmp_path / "lora_rows-portable.so")
    monkeypatch.setattr(cpu_lora_kernel, "build_dir", lambda: tmp_path / "built")
    monkeypatch.setattr(cpu_lora_kernel, "compiler", lambda: None)
    with caplog.at_level(logging.WARNING, logger=cpu_lora_kernel.log.name):
        assert cpu_lora_kernel.kernel.__wrapped__() is None
    assert "no C compiler on PATH" in caplog.text


def test_the_kernel_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_lora_kernel.SWITCH, "0")
    assert cpu_lora_kernel.kernel.__wrapped__() is None


# (inputs, each slice's rank, each slice's columns): the kernel adds four inputs, and four ranks, at a time; the
# second shape leaves a remainder of each (lora_rows.c).
SHAPES = {"in fours": (24, (4, 4, 4), (10, 6, 6)), "with remainders": (27, (5, 3, 6), (9, 7, 4))}


def random_layer(dtype: torch.dtype, seed: int, shape: str = "in fours") -> tuple[torch.Tensor, ...]:
    """Four slots of a fused layer (`SHAPES`: three slices side by side) and six rows on slots."""
    inputs, ranks, widths = SHAPES[shape]
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(4, inputs, sum(ranks), generator=gen), torch.zeros(4, sum(ranks), sum(widths))
    bounds = torch.tensor([[sum(ranks[:i]), sum(ranks[: i + 1]), sum(widths[:i]), sum(widths[: i + 1])]
                           for i in range(len(ranks))])  # fmt: skip
    for r0, r1, c0, c1 in bounds.tolist():
        b[:, r0:r1, c0:c1] = torch.randn(4, r1 - r0, c1 - c0, generator=gen)
    x, out = torch.randn(7, inputs, generator=gen), torch.randn(7, sum(widths), generator=gen)
    pairs = torch.tensor([[0, 3], [1, 0], [2, 0], [4, 2], [5, 1], [6, 3]])  # row 3 has no adapter
    return a.to(dtype), b.to(dtype), bounds, x.to(dtype), out.to(dtype), pairs


def run_layer(kernels: cpu_lora_kernel.Kernel, layer: tuple[torch.Tensor, ...]) -> torch.Tensor:
    a, b, bounds, x, out, pairs = (t.clone() for t in layer)
    (_, inputs, rr), width = a.shape, b.shape[2]
    kernels[a.dtype](a.data_ptr(), b.data_ptr(), inputs, rr, width, bounds.data_ptr(), bounds.shape[0],
                     pairs.data_ptr(), pairs.shape[0], x.data_ptr(), inputs, out.data_ptr(), width, 0.5)
    return out


@needs_cc
@pytest.mark.parametrize("shape", SHAPES)
def test_the_portable_build_computes_what_the_build_for_this_cpu_computes(tmp_path: Path, shape: str) -> None:
    """The image's build (one clone per x86-64 level, the CPU's best chosen at load) against this CPU's own build
    and against the layer worked in float64: they differ at most by where a multiply-add is fused."""
    native = cpu_lora_kernel.load(cpu_lora_kernel.build(directory=tmp_path / "native"))
    portable = cpu_lora_kernel.load(cpu_lora_kernel.build_portable(target=tmp_path / "portable.so"))
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 1.6e-2)):
        layer = random_layer(dtype, 7, shape)
        a, b, _, x, out, pairs = (t.double() for t in layer)
        expected = out.clone()
        for row, slot in pairs.long().tolist():
            expected[row] += 0.5 * x[row] @ a[slot] @ b[slot]
        for kernels in (native, portable):
            torch.testing.assert_close(run_layer(kernels, layer).double(), expected, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(run_layer(portable, layer), run_layer(native, layer), rtol=tolerance, atol=1e-5)


@needs_cc
def test_without_a_compiler_the_portable_build_shipped_with_the_package_decodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As in the CPU image: its build stage ran `--portable` into the package, and the final stage has no compiler."""
    shipped = tmp_path / "lora_rows-portable.so"
    cpu_lora_kernel.main(["--portable", "--output", str(shipped)])
    monkeypatch.setattr(cpu_lora_kernel, "PREBUILT", shipped)
    monkeypatch.setattr(cpu_lora_kernel, "compiler", lambda: None)
    with caplog.at_level(logging.INFO, logger=cpu_lora_kernel.log.name):
        kernels = cpu_lora_kernel.kernel.__wrapped__()
    assert kernels is not None and set(kernels) == {torch.float32, torch.bfloat16}
    assert f"shipped with the package (portable build): {shipped}" in caplog.text
    layer = random_layer(torch.float32, 8)
    assert not torch.equal(run_layer(kernels, layer), layer[4])  # it adds the rows' products


@needs_cc
def test_a_shipped_build_that_does_not_load_gives_way_to_one_built_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    shipped = tmp_path / "lora_rows-portable.so"
    shipped.write_bytes(b"not a shared library")
    monkeypatch.setattr(cpu_lora_kernel, "PREBUILT", shipped)
    monkeypatch.setattr(cpu_lora_kernel, "build_dir", lambda: tmp_path / "built")
    with caplog.at_level(logging.INFO, logger=cpu_lora_kernel.log.name):
        kernels = cpu_lora_kernel.kernel.__wrapped__()
    assert kernels is not None
    assert "shipped with the package does not load, building one" in caplog.text
    assert f"for this CPU: {tmp_path / 'built'}" in caplog.text


def test_an_output_path_without_portable_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cpu_lora_kernel.main(["--output", "/nonexistent/k.so"])
    assert exit_.value.code == 2 and "--output is for --portable" in capsys.readouterr().err
