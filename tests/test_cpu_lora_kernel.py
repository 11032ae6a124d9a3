"""The decode kernel's build (service/engine/cpu_lora_kernel.py): made once per source and CPU, and left out with a
logged reason where it cannot be built. What it computes is checked against the oracle in tests/test_vllm_cpu_lora.py
(`test_a_whole_layer_matches_the_oracle`, with the kernel built and off)."""

from __future__ import annotations

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
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cpu_lora_kernel, "compiler", lambda: None)
    with caplog.at_level(logging.WARNING, logger=cpu_lora_kernel.log.name):
        assert cpu_lora_kernel.kernel.__wrapped__() is None
    assert "no C compiler on PATH" in caplog.text


def test_the_kernel_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_lora_kernel.SWITCH, "0")
    assert cpu_lora_kernel.kernel.__wrapped__() is None
