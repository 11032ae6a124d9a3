"""The fix for vLLM's CPU LoRA ops (service/vllm_lora_fix.py), checked against a row-by-row oracle.

The oracle is the LoRA definition itself: a row with adapter slot i gets x @ W[i]^T, a row with index -1
(no adapter) gets nothing. The end-to-end check, base and adapter requests batched in the real engine, is
`test_base_rows_in_a_mixed_batch_keep_the_base_weights` in tests/test_openai_sdk.py.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch

from service import vllm_lora_fix

SLOTS, RANK, HIDDEN, OUT = 3, 4, 16, 24


def oracle(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Row by row: x_r @ W[idx_r]^T, or zeros where idx_r is -1."""
    rows = []
    for r, idx in enumerate(indices.tolist()):
        rows.append(torch.zeros(weights.shape[2]) if idx < 0 else weights[idx, 0] @ x[r])
    return torch.stack(rows)


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(6, HIDDEN, generator=gen),
        "a": torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen),
        "h": torch.randn(6, RANK, generator=gen),
        "b": torch.randn(SLOTS, 1, OUT, RANK, generator=gen),
    }


INDICES = [
    [0, 1, 2, 0, 1, 2],  # every row has an adapter
    [-1, 2, -1, 2, 0, -1],  # base rows mixed in: -1 must not mean "the last slot"
    [-1] * 6,  # no adapter at all
]


@pytest.mark.parametrize("indices", INDICES)
def test_shrink_matches_the_oracle(data: dict[str, torch.Tensor], indices: list[int]) -> None:
    idx = torch.tensor(indices)
    out = torch.full((6, RANK), 7.0)
    vllm_lora_fix.bgmv_shrink(data["x"], data["a"], out, idx, 0.5)
    torch.testing.assert_close(out, 0.5 * oracle(data["x"], data["a"], idx))


@pytest.mark.parametrize("indices", INDICES)
@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_matches_the_oracle(data: dict[str, torch.Tensor], indices: list[int], add_inputs: bool) -> None:
    idx = torch.tensor(indices)
    start = torch.randn(6, OUT, generator=torch.Generator().manual_seed(1))
    out = start.clone()
    vllm_lora_fix.bgmv_expand(data["h"], data["b"], out, idx, add_inputs)
    delta = oracle(data["h"], data["b"], idx)
    torch.testing.assert_close(out, start + delta if add_inputs else delta)


@pytest.mark.parametrize("indices", INDICES)
@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_slice_touches_only_its_slice(
    data: dict[str, torch.Tensor], indices: list[int], add_inputs: bool
) -> None:
    idx = torch.tensor(indices)
    start = torch.randn(6, OUT + 8, generator=torch.Generator().manual_seed(2))
    out = start.clone()
    vllm_lora_fix.bgmv_expand_slice(data["h"], data["b"], out, idx, 4, OUT, add_inputs)
    expected = start.clone()
    delta = oracle(data["h"], data["b"], idx)
    expected[:, 4 : 4 + OUT] = start[:, 4 : 4 + OUT] + delta if add_inputs else delta
    torch.testing.assert_close(out, expected)


def test_rows_with_adapters_are_computed_bit_for_bit_as_upstream(data: dict[str, torch.Tensor]) -> None:
    """Where every row has an adapter, the replacement is the upstream computation, to the last bit."""
    upstream = vllm_lora_fix.upstream_ops()
    idx = torch.tensor(INDICES[0])
    ours, theirs = torch.zeros(6, RANK), torch.zeros(6, RANK)
    vllm_lora_fix.bgmv_shrink(data["x"], data["a"], ours, idx, 0.5)
    upstream["bgmv_shrink"](data["x"], data["a"], theirs, idx, 0.5)
    assert torch.equal(ours, theirs)
    ours, theirs = torch.ones(6, OUT), torch.ones(6, OUT)
    vllm_lora_fix.bgmv_expand(data["h"], data["b"], ours, idx, True)
    upstream["bgmv_expand"](data["h"], data["b"], theirs, idx, True)
    assert torch.equal(ours, theirs)


def test_upstream_ops_give_base_rows_the_last_slot() -> None:
    """Why the fix exists; when this fails, vLLM has fixed its ops and `register()` leaves them alone."""
    assert vllm_lora_fix.base_rows_get_an_adapter(vllm_lora_fix.upstream_ops()["bgmv_shrink"])


def test_register_replaces_the_ops_where_vllm_applies_the_last_slot_to_base_rows() -> None:
    ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
    punica_cpu = pytest.importorskip("vllm.lora.punica_wrapper.punica_cpu")
    vllm_lora_fix.register()
    assert not vllm_lora_fix.base_rows_get_an_adapter(ops.bgmv_shrink)
    assert punica_cpu.bgmv_shrink is vllm_lora_fix.bgmv_shrink
    # The prefill ops that punica_cpu calls delegate to the module's bgmv ops, so they are fixed too.
    out = torch.full((2, 1), 5.0)
    punica_cpu.sgmv_shrink(
        torch.ones(2, 2), torch.ones(2, 1, 1, 2), out, None, torch.tensor([1, 1]), torch.tensor([-1, 0]),
        2, 1, 2, 1.0,
    )
    assert out.tolist() == [[0.0], [2.0]]
    vllm_lora_fix.register()  # vLLM loads plugins once per process, but twice must be harmless
    assert punica_cpu.bgmv_shrink is vllm_lora_fix.bgmv_shrink


def test_the_fix_is_registered_as_a_vllm_general_plugin() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins.get("skillserve-cpu-lora-fix") == "service.vllm_lora_fix:register"
