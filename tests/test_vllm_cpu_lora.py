"""The grouped CPU LoRA ops (service/engine/cpu_lora.py), each checked against a row-by-row oracle.

The oracle is the LoRA definition itself: a row with adapter slot i gets x @ W[i]^T, computed in the
output's dtype as vLLM's ops do; a row with index -1 (no adapter) gets nothing. Every op is checked in fp32
and bf16 on batches of base rows only, one adapter, several interleaved, every slot used, and prefill
segments of uneven length. The end-to-end check, base and adapter requests batched in the real engine, is
`test_base_rows_in_a_mixed_batch_keep_the_base_weights` in tests/test_openai_sdk.py; greedy parity with
transformers + peft is tests/test_parity.py.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

import pytest
import torch

from service.engine import cpu_lora as vllm_cpu_lora
from service.engine import cpu_lora_kernel, cpu_lora_ops

SLOTS, RANK, HIDDEN, OUT = 4, 8, 32, 24

# (name, lora index of each prefill segment, segment lengths): rows of one request are contiguous.
SEGMENTS = {
    "base rows only": ([-1], [7]),
    "one adapter": ([2], [9]),
    "one adapter after base rows": ([-1, 1], [3, 6]),
    "several interleaved": ([0, -1, 3, 0, 1, -1, 3], [2, 1, 5, 3, 1, 4, 2]),
    "every slot used": ([3, 2, 1, 0], [1, 4, 2, 6]),
    "uneven segments, slots repeated": ([1, 0, 1, 2, 1], [13, 1, 2, 7, 1]),
    "decode: one row per request": ([0, 1, 2, 3, 0, 1, 2, 3, -1], [1] * 9),
    # Gathered rows stack only the slots they use, here two apart (1 and 3), so the stack is a copy.
    "decode: two slots apart, a base row between": ([3, 1, -1, 1, 3], [1, 1, 1, 1, 1]),
    # One row a slot: the stack is the rows in slot order, with nothing to place.
    "decode: one request per adapter": ([2, 0, 3], [1, 1, 1]),
    # Runs longer than BATCHED_DEPTH are multiplied in place; shorter ones gathered, in one batched matmul
    # or, where a slot's gathered rows outnumber BATCHED_DEPTH, one matmul per slot.
    "long prompts, two adapters": ([0, 3], [40, 37]),
    "long prompts, a slot repeated, base rows": ([1, 0, -1, 1], [35, 40, 9, 33]),
    "a prompt beside decode rows": ([2, 0, 1, -1, 2], [40, 1, 1, 1, 1]),
    "short runs adding up past the depth": ([0, 1, 0, -1, 1, 0], [20, 5, 20, 2, 3, 1]),
}
CASES = list(SEGMENTS)
DTYPES = [torch.float32, torch.bfloat16]


# Unit roundoff: half the gap between 1 and the next number of the type.
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}


def assert_within_rounding(
    actual: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor, depth: int, dtype: torch.dtype
) -> None:
    """`actual` and `expected` are one sum of products computed in two orders (the op's and the oracle's; and
    the BLAS kernels of an Intel and an AMD CPU order a reduction differently, so the same test gives other
    last bits on each). Either result lies within gamma_n * sum|products| of the exact value, gamma_n = n*u /
    (1 - n*u) for a reduction of depth n accumulated in float32 (Higham, Accuracy and Stability of Numerical
    Algorithms, 3.1), so the two differ by at most twice that. `magnitude` is sum|products| per element (the
    oracle on absolute values), `depth` the longest chain of additions into one element (a whole layer:
    hidden + rank). A result kept in bfloat16 is also rounded once on each side, and so is the fp32 shrink
    buffer where one side stores it in bfloat16 before the expand: 2 * u_bf16 relative to the magnitude each.
    A wrong slot or a lost term moves an element by about a whole product, far past this bound."""
    u32 = UNIT_ROUNDOFF[torch.float32]
    gamma = depth * u32 / (1 - depth * u32)
    bound = 2 * gamma * magnitude.double()
    if dtype == torch.bfloat16:
        bound = bound + 2 * 2 * UNIT_ROUNDOFF[torch.bfloat16] * magnitude.double()
    bound = bound + torch.finfo(torch.float32).tiny  # an exact zero on both sides
    error = (actual.double() - expected.double()).abs()
    worst = int((error - bound).argmax())
    assert bool((error <= bound).all()), (
        f"{int((error > bound).sum())} of {error.numel()} elements past the rounding bound; worst at flat index "
        f"{worst}: off by {error.flatten()[worst]:.3g}, bound {bound.flatten()[worst]:.3g}"
    )


def token_indices(case: str) -> torch.Tensor:
    slots, lens = SEGMENTS[case]
    return torch.repeat_interleave(torch.tensor(slots), torch.tensor(lens))


def segments(case: str) -> tuple[Any, ...]:
    """vLLM's prefill metadata: (seq starts, seq lengths, lora index per segment, batches, max len, tokens)."""
    slots, lens = SEGMENTS[case]
    starts = [sum(lens[:i]) for i in range(len(lens))]
    return torch.tensor(starts), torch.tensor(lens), torch.tensor(slots), len(lens), max(lens), sum(lens)


def oracle(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Row by row: x_r @ W[idx_r]^T in `dtype`, or None where idx_r is -1 (the row gets nothing)."""
    rows = []
    for r, idx in enumerate(indices.tolist()):
        if idx < 0:
            rows.append(torch.full((weights.shape[2],), float("nan"), dtype=dtype))
        else:
            rows.append(weights[idx, 0].to(dtype) @ x[r].to(dtype))
    return torch.stack(rows)


def weights(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["bgmv", "sgmv"])
def test_shrink_matches_the_oracle(kind: str, case: str, dtype: torch.dtype) -> None:
    idx = token_indices(case)
    n = idx.numel()
    x = weights((n, HIDDEN), dtype, 1)  # the layer's input, in the model's dtype
    a = weights((SLOTS, 1, RANK, HIDDEN), dtype, 2)
    out = torch.full((n, RANK), 7.0)  # vLLM's shrink buffer is fp32; every row is overwritten
    if kind == "bgmv":
        cpu_lora_ops.bgmv_shrink(x, a, out, idx, 0.5)
    else:
        cpu_lora_ops.sgmv_shrink(x, a, out, *segments(case), 0.5)
    expected = 0.5 * oracle(x, a, idx, torch.float32)
    magnitude = 0.5 * oracle(x.abs(), a.abs(), idx, torch.float32).nan_to_num(0.0)
    # The buffer is fp32 whatever the model's dtype: the products of bf16 inputs are exact in fp32.
    assert_within_rounding(out, expected.nan_to_num(0.0), magnitude, HIDDEN, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["bgmv", "sgmv"])
@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_matches_the_oracle(kind: str, case: str, dtype: torch.dtype, add_inputs: bool) -> None:
    idx = token_indices(case)
    n = idx.numel()
    h = weights((n, RANK), torch.float32, 3)  # the fp32 shrink buffer
    b = weights((SLOTS, 1, OUT, RANK), dtype, 4)
    start = weights((n, OUT), dtype, 5)
    out = start.clone()
    if kind == "bgmv":
        cpu_lora_ops.bgmv_expand(h, b, out, idx, add_inputs)
    else:
        cpu_lora_ops.sgmv_expand(h, b, out, *segments(case), add_inputs)
    delta = oracle(h, b, idx, dtype)
    base = delta.isnan()
    expected = (start + delta if add_inputs else delta).where(~base, start if add_inputs else 0)
    size = oracle(h.abs(), b.abs(), idx, torch.float32).nan_to_num(0.0) + (start.abs() if add_inputs else 0)
    assert_within_rounding(out, expected, size, RANK + 1, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["bgmv", "sgmv"])
@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_slice_touches_only_its_slice(kind: str, case: str, dtype: torch.dtype, add_inputs: bool) -> None:
    idx = token_indices(case)
    n = idx.numel()
    h = weights((n, RANK), torch.float32, 6)
    b = weights((SLOTS, 1, OUT, RANK), dtype, 7)
    start = weights((n, OUT + 8), dtype, 8)
    out = start.clone()
    if kind == "bgmv":
        cpu_lora_ops.bgmv_expand_slice(h, b, out, idx, 4, OUT, add_inputs)
    else:
        cpu_lora_ops.sgmv_expand_slice(h, b, out, *segments(case), 4, OUT, add_inputs)
    delta = oracle(h, b, idx, dtype)
    base = delta.isnan()
    part = start[:, 4 : 4 + OUT]
    expected = start.clone()
    expected[:, 4 : 4 + OUT] = (part + delta if add_inputs else delta).where(~base, part if add_inputs else 0)
    size = start.abs().float()
    size[:, 4 : 4 + OUT] = oracle(h.abs(), b.abs(), idx, torch.float32).nan_to_num(0.0) + (
        size[:, 4 : 4 + OUT] if add_inputs else 0
    )
    assert_within_rounding(out, expected, size, RANK + 1, dtype)


@pytest.mark.parametrize(
    "case", ["one adapter", "several interleaved", "a prompt beside decode rows", "short runs adding up past the depth"]
)
@pytest.mark.parametrize("add_inputs", [True, False])
def test_slots_of_a_module_the_adapter_leaves_out_are_skipped_exactly(case: str, add_inputs: bool) -> None:
    """vLLM zeroes the slot of a module an adapter does not target; skipping it must change nothing, and a
    slot that is written afterwards (an adapter loaded into it) must be multiplied again."""
    idx = token_indices(case)
    n = idx.numel()
    x, a = weights((n, HIDDEN), torch.float32, 15), weights((SLOTS, 1, RANK, HIDDEN), torch.float32, 16)
    h, b = weights((n, RANK), torch.float32, 17), weights((SLOTS, 1, OUT, RANK), torch.float32, 18)
    a[1:3], b[1:3] = 0, 0  # slots 1 and 2 leave this module out
    shrink_size = 0.5 * oracle(x.abs(), a.abs(), idx, torch.float32).nan_to_num(0.0)
    for _ in range(2):  # the second time, from the cache
        out = torch.full((n, RANK), 7.0)
        cpu_lora_ops.sgmv_shrink(x, a, out, *segments(case), 0.5)
        assert_within_rounding(
            out, (0.5 * oracle(x, a, idx, torch.float32)).nan_to_num(0.0), shrink_size, HIDDEN, torch.float32
        )
        start = weights((n, OUT), torch.float32, 19)
        out = start.clone()
        cpu_lora_ops.sgmv_expand(h, b, out, *segments(case), add_inputs)
        delta = oracle(h, b, idx, torch.float32)
        expected = (start + delta if add_inputs else delta).where(~delta.isnan(), start if add_inputs else 0)
        size = oracle(h.abs(), b.abs(), idx, torch.float32).nan_to_num(0.0) + (start.abs() if add_inputs else 0)
        assert_within_rounding(out, expected, size, RANK + 1, torch.float32)
    assert cpu_lora_ops.empty_slots(a) == (False, True, True, False)
    a[2, 0].copy_(weights((RANK, HIDDEN), torch.float32, 20))  # an adapter loaded into slot 2, in place
    assert cpu_lora_ops.empty_slots(a) == (False, True, False, False)
    out = torch.zeros(n, RANK)
    cpu_lora_ops.sgmv_shrink(x, a, out, *segments(case), 1.0)
    size = oracle(x.abs(), a.abs(), idx, torch.float32).nan_to_num(0.0)
    assert_within_rounding(out, oracle(x, a, idx, torch.float32).nan_to_num(0.0), size, HIDDEN, torch.float32)


def test_empty_slots_of_inference_tensors_are_checked_every_time() -> None:
    with torch.inference_mode():
        a = torch.zeros(2, 1, RANK, HIDDEN)
        assert cpu_lora_ops.empty_slots(a) == (True, True)
        a[1] = 1.0
        assert cpu_lora_ops.empty_slots(a) == (True, False)


def test_expand_keeps_vllms_rules_for_width_and_a_single_row() -> None:
    """Adapter wider than the output: the common width. One input row, many output rows: broadcast."""
    h = weights((1, RANK), torch.float32, 9)
    b = weights((SLOTS, 1, OUT + 4, RANK), torch.float32, 10)
    out = torch.ones(3, OUT)
    cpu_lora_ops.bgmv_expand(h, b, out, torch.tensor([1]), True)
    size = 1 + (b[1, 0, :OUT].abs() @ h[0].abs()).expand(3, OUT)
    assert_within_rounding(out, 1 + (b[1, 0, :OUT] @ h[0]).expand(3, OUT), size, RANK + 1, torch.float32)


@pytest.mark.parametrize("case", ["one adapter", "every slot used", "uneven segments, slots repeated"])
def test_the_ops_agree_with_vllms_on_rows_that_have_an_adapter(case: str) -> None:
    """Where no row is a base row, vLLM's ops are right (only slower): ours give the same numbers."""
    upstream = vllm_cpu_lora.upstream_ops()
    slots, lens = SEGMENTS[case]
    idx = token_indices(case)
    n = idx.numel()
    x, a = weights((n, HIDDEN), torch.float32, 11), weights((SLOTS, 1, RANK, HIDDEN), torch.float32, 12)
    h, b = weights((n, RANK), torch.float32, 13), weights((SLOTS, 1, OUT, RANK), torch.float32, 14)
    assert -1 not in slots  # vLLM's ops give base rows the last slot
    expand_size = 1 + oracle(h.abs(), b.abs(), idx, torch.float32)
    slice_size = torch.ones(n, OUT + 4)
    slice_size[:, 4:] = expand_size
    for name, args, shape, size, depth in [
        (
            "sgmv_shrink",
            (x, a, None, *segments(case), 0.5),
            (n, RANK),
            0.5 * oracle(x.abs(), a.abs(), idx, torch.float32),
            HIDDEN,
        ),
        ("sgmv_expand_slice", (h, b, None, *segments(case), 4, OUT, True), (n, OUT + 4), slice_size, RANK + 1),
        ("bgmv_expand", (h, b, None, idx, True), (n, OUT), expand_size, RANK + 1),
    ]:
        ours, theirs = torch.ones(shape), torch.ones(shape)
        getattr(cpu_lora_ops, name)(*(ours if a_ is None else a_ for a_ in args))
        upstream[name](*(theirs if a_ is None else a_ for a_ in args))
        assert_within_rounding(ours, theirs, size, depth, torch.float32)


SLICES = (OUT, 8, 8)  # a fused QKV projection's q, k and v


def layer_oracle(x, a, b, idx, scale, dtype):  # type: ignore[no-untyped-def]
    """Row by row, every slice: (scale * x_r @ A_i[slot]^T in fp32, as vLLM's buffer) @ B_i[slot]^T in `dtype`."""
    rows = []
    for r, slot in enumerate(idx.tolist()):
        if slot < 0:
            rows.append(torch.zeros(sum(SLICES), dtype=dtype))
            continue
        parts = []
        for a_i, b_i in zip(a, b, strict=True):
            h = scale * (a_i[slot, 0].to(torch.float32) @ x[r].to(torch.float32))
            parts.append(b_i[slot, 0].to(dtype) @ h.to(dtype))
        rows.append(torch.cat(parts))
    return torch.stack(rows)


# A whole layer's longest chain of additions into one output: the shrink over the hidden size, the expand over
# the rank, and the add into the output.
LAYER_DEPTH = HIDDEN + RANK + 1


def layer_size(x, a, b, idx, scale):  # type: ignore[no-untyped-def]
    """sum|products| of every output element of `layer_oracle`: the oracle on absolute values, in fp32."""
    absolute = tuple(t.abs() for t in a), tuple(t.abs() for t in b)
    return layer_oracle(x.abs(), *absolute, idx, abs(scale), torch.float32)


def layer_weights(dtype: torch.dtype, seed: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    a = tuple(weights((SLOTS, 1, RANK, HIDDEN), dtype, seed + i) for i in range(len(SLICES)))
    b = tuple(weights((SLOTS, 1, width, RANK), dtype, seed + 10 + i) for i, width in enumerate(SLICES))
    return a, b


@pytest.fixture(scope="module")
def portable_kernel(tmp_path_factory: pytest.TempPathFactory) -> cpu_lora_kernel.Kernel:
    """The image's build of the kernel (one clone per x86-64 level), made here as its build stage makes it."""
    if cpu_lora_kernel.compiler() is None:
        pytest.skip("no C compiler on PATH to make the portable build with")
    return cpu_lora_kernel.load(cpu_lora_kernel.build_portable(target=tmp_path_factory.mktemp("k") / "portable.so"))


@pytest.mark.parametrize("kernel", ["built", "portable", "off"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("prefill", [True, False])
def test_a_whole_layer_matches_the_oracle(
    case: str,
    dtype: torch.dtype,
    prefill: bool,
    kernel: str,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """`add_lora_linear`, every slice in one shrink and one expand: each row gets its own adapter's delta
    on every slice, base rows nothing, and the output's columns past the slices are left alone. Short runs of
    rows go through the decode kernel where it is built (for this CPU, or the image's portable build), and
    through PyTorch's products where it is off."""
    if kernel == "off":
        monkeypatch.setattr(cpu_lora_kernel, "kernel", lambda: None)
    elif kernel == "portable":
        kernels = request.getfixturevalue("portable_kernel")
        monkeypatch.setattr(cpu_lora_kernel, "kernel", lambda: kernels)
    elif cpu_lora_kernel.kernel() is None:
        pytest.skip(f"no decode kernel here (no C compiler: {cpu_lora_kernel.compiler()})")
    idx = token_indices(case)
    n = idx.numel()
    x = weights((n, HIDDEN), dtype, 30)
    a, b = layer_weights(dtype, 31)
    start = weights((n, sum(SLICES) + 3), dtype, 32)
    out = start.clone()
    vllm_cpu_lora.add_lora_linear(vllm_cpu_lora.cpu_wrapper(idx, prefill), out, x, a, b, 0.5, SLICES)
    expected = start.clone()
    expected[:, : sum(SLICES)] += layer_oracle(x, a, b, idx, 0.5, dtype)
    size = start.abs().float()
    size[:, : sum(SLICES)] += layer_size(x, a, b, idx, 0.5)
    assert_within_rounding(out, expected, size, LAYER_DEPTH, dtype)


@pytest.mark.parametrize("case", ["one adapter", "several interleaved", "long prompts, a slot repeated, base rows"])
def test_a_whole_layer_agrees_with_vllms_and_follows_slot_writes(case: str) -> None:
    """Against vLLM's own `add_lora_linear` (rows with an adapter only, where vLLM's are right). A slot
    whose adapter leaves the layer out is skipped; an adapter written into it later is used (the fused
    weights are rebuilt when a stack's version counter moves)."""
    upstream = vllm_cpu_lora.upstream_method("add_lora_linear")
    idx = token_indices(case)
    n = idx.numel()
    x = weights((n, HIDDEN), torch.float32, 40)
    a, b = layer_weights(torch.float32, 41)
    for stack in (*a, *b):
        stack[1] = 0  # slot 1 leaves this layer out
    wrapper = vllm_cpu_lora.cpu_wrapper(idx.clamp(min=0))
    for _ in range(2):  # the second time, from the cache
        ours, theirs = torch.ones(n, sum(SLICES)), torch.ones(n, sum(SLICES))
        vllm_cpu_lora.add_lora_linear(wrapper, ours, x, a, b, 1.0, SLICES)
        upstream(wrapper, theirs, x, a, b, 1.0, SLICES)
        size = 1 + layer_size(x, a, b, idx.clamp(min=0), 1.0)
        assert_within_rounding(ours, theirs, size, LAYER_DEPTH, torch.float32)
    a[0][1, 0].copy_(weights((RANK, HIDDEN), torch.float32, 42))  # an adapter loaded into slot 1, in place
    b[2][1, 0].copy_(weights((SLICES[2], RANK), torch.float32, 43))
    ours = torch.zeros(n, sum(SLICES))
    vllm_cpu_lora.add_lora_linear(wrapper, ours, x, a, b, 1.0, SLICES)
    expected = layer_oracle(x, a, b, idx.clamp(min=0), 1.0, torch.float32)
    assert_within_rounding(ours, expected, layer_size(x, a, b, idx.clamp(min=0), 1.0), LAYER_DEPTH, torch.float32)


def test_a_layer_of_inference_tensors_takes_the_per_slice_path() -> None:
    """No version counter, so a write could not be seen: no fused copy is kept, and the result is the same."""
    pytest.importorskip("vllm.lora.punica_wrapper.punica_cpu")
    vllm_cpu_lora.register()  # that path runs the grouped ops, which leave base rows alone
    idx = token_indices("several interleaved")
    with torch.inference_mode():
        x = weights((idx.numel(), HIDDEN), torch.float32, 50)
        a, b = layer_weights(torch.float32, 51)
        assert vllm_cpu_lora.fused_weights(a, b, SLICES, torch.float32) is None
        out = torch.zeros(idx.numel(), sum(SLICES))
        vllm_cpu_lora.add_lora_linear(vllm_cpu_lora.cpu_wrapper(idx), out, x, a, b, 1.0, SLICES)
    expected = layer_oracle(x, a, b, idx, 1.0, torch.float32)
    assert_within_rounding(out, expected, layer_size(x, a, b, idx, 1.0), LAYER_DEPTH, torch.float32)


def test_a_layer_every_slot_leaves_out_is_skipped_without_a_copy() -> None:
    """The MLP of an adapter on q,k,v,o: vLLM wraps it and zeroes its slots; nothing is computed or kept."""
    idx = token_indices("several interleaved")
    a, b = layer_weights(torch.float32, 70)
    for stack in a:
        stack.zero_()
    fused = vllm_cpu_lora.fused_weights(a, b, SLICES, torch.float32)
    assert fused is not None and fused.a is None and fused.b is None and all(fused.empty)
    start = weights((idx.numel(), sum(SLICES)), torch.float32, 71)
    out = start.clone()
    vllm_cpu_lora.add_lora_linear(
        vllm_cpu_lora.cpu_wrapper(idx), out, weights((idx.numel(), HIDDEN), torch.float32, 72), a, b, 1.0, SLICES
    )
    assert torch.equal(out, start)


@pytest.mark.parametrize("kernel", ["built", "off"])
def test_a_bf16_layer_keeps_float32_copies_only_where_pytorch_decodes(
    kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fp32 forms of a bf16 layer's fused weights are made on first read: the decode kernel reads the bf16 ones,
    so with it they never are; PyTorch's decode path makes them, exactly the bf16 weights widened."""
    if kernel == "off":
        monkeypatch.setattr(cpu_lora_kernel, "kernel", lambda: None)
    elif cpu_lora_kernel.kernel() is None:
        pytest.skip(f"no decode kernel here (no C compiler: {cpu_lora_kernel.compiler()})")
    idx = token_indices("decode: one row per request")
    a, b = layer_weights(torch.bfloat16, 80)
    x, out = weights((idx.numel(), HIDDEN), torch.bfloat16, 81), torch.zeros(idx.numel(), sum(SLICES)).bfloat16()
    vllm_cpu_lora.add_lora_linear(vllm_cpu_lora.cpu_wrapper(idx, prefill=False), out, x, a, b, 1.0, SLICES)
    fused = vllm_cpu_lora.fused_weights(a, b, SLICES, torch.bfloat16)
    assert fused is not None and fused.a_out is not None and fused.b_out is not None
    assert fused.a_out.dtype == torch.bfloat16 and out.abs().sum() > 0
    made = {"a", "b"} & vars(fused).keys()
    if kernel == "built":
        assert made == set()
    else:
        assert made == {"a", "b"}
        assert fused.a is not None and fused.b is not None
        assert torch.equal(fused.a, fused.a_out.float()) and torch.equal(fused.b, fused.b_out.float())


def test_the_logits_lora_is_skipped_while_no_slot_holds_an_lm_head_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM calls `add_lora_logits` every step. While every lm_head slot is zero (no adapter targets it), the logits
    are left as they are and vLLM's ops are not run; once an adapter is written into a slot, the logits get what
    vLLM's own call gives them."""
    idx = torch.tensor([2, -1, 0, 2])
    wrapper = vllm_cpu_lora.cpu_wrapper(idx, prefill=False)
    wrapper._sampler_indices[: idx.numel()].copy_(idx)
    wrapper.indices_len[1] = idx.numel()
    vocab = 50
    a, b = torch.zeros(SLOTS, 1, RANK, HIDDEN), torch.zeros(SLOTS, 1, vocab, RANK)
    x, start = weights((idx.numel(), HIDDEN), torch.float32, 90), weights((idx.numel(), vocab), torch.float32, 91)
    upstream = vllm_cpu_lora.upstream_method("add_lora_logits")
    calls: list[int] = []
    monkeypatch.setattr(vllm_cpu_lora, "upstream_method", lambda name: lambda *args, **kwargs: calls.append(1))
    logits = start.clone()
    vllm_cpu_lora.add_lora_logits(wrapper, logits, x, a, b, 1.0)
    assert torch.equal(logits, start) and calls == []

    a[2].copy_(weights((1, RANK, HIDDEN), torch.float32, 92))  # vLLM writes an lm_head adapter into slot 2
    b[2].copy_(weights((1, vocab, RANK), torch.float32, 93))
    monkeypatch.setattr(vllm_cpu_lora, "upstream_method", lambda name: {"add_lora_logits": upstream}[name])
    ours, theirs = start.clone(), start.clone()
    vllm_cpu_lora.add_lora_logits(wrapper, ours, x, a, b, 1.0)
    upstream(wrapper, theirs, x, a, b, 1.0)
    assert torch.equal(ours, theirs)
    expected = start.clone()
    expected[[0, 3]] += x[[0, 3]] @ a[2, 0].T @ b[2, 0].T
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_the_steps_plan_is_made_again_when_vllm_updates_the_metadata() -> None:
    """Every layer of a step reads one plan; vLLM's next `update_metadata` (patched) drops it."""
    punica_cpu = pytest.importorskip("vllm.lora.punica_wrapper.punica_cpu")
    from vllm.lora.layers.utils import LoRAMapping

    vllm_cpu_lora.register()
    wrapper = punica_cpu.PunicaWrapperCPU(16, 4, "cpu")
    ids = [7, 8, None, None]  # adapter 7 in slot 0, adapter 8 in slot 1
    wrapper.update_metadata(LoRAMapping((7, 7, 8, 8, 8), (7, 8), is_prefill=True), ids, 4, 100)
    first = vllm_cpu_lora.wrapper_plan(wrapper)
    assert set(first.used) == {0, 1} and first.rows == 5
    assert vllm_cpu_lora.wrapper_plan(wrapper) is first
    wrapper.update_metadata(LoRAMapping((8, 8, 0), (8, 0), is_prefill=True), ids, 4, 100)
    second = vllm_cpu_lora.wrapper_plan(wrapper)
    assert second.used == (1,) and second.rows == 2


def test_gathered_rows_stack_only_the_slots_they_use() -> None:
    """A decode step's products are bound by reading the weights: a slot no row uses is not read."""
    apart = cpu_lora_ops.segment_plan(*segments("decode: two slots apart, a base row between")[:3])
    assert apart.spans == () and apart.groups == ((1, slice(0, 2)), (3, slice(2, 4)))
    assert apart.slots == 2 and apart.depth == 2
    assert apart.order is not None and apart.order.tolist() == [1, 3, 0, 4]  # row 2 has no adapter
    stack = torch.arange(float(SLOTS)).view(SLOTS, 1, 1)
    assert apart.stacked(stack).flatten().tolist() == [1.0, 3.0]
    consecutive = cpu_lora_ops.token_plan(torch.tensor([2, 1, 2, -1]))
    assert consecutive.slots == 2 and consecutive.stacked(stack).data_ptr() == stack[1].data_ptr()  # a view


def test_the_self_check_finds_a_layer_that_disagrees() -> None:
    assert not vllm_cpu_lora.linear_disagreement(vllm_cpu_lora.upstream_method("add_lora_linear"))
    assert vllm_cpu_lora.linear_disagreement(lambda *args, **kwargs: None)


def base_rows_get_an_adapter(shrink: Callable[..., None]) -> bool:
    """Run a `bgmv_shrink` on one base row (index -1) with a non-zero last slot: True if it leaks."""
    weights = torch.ones(2, 1, 1, 2)
    out = torch.zeros(1, 1)
    shrink(torch.ones(1, 2), weights, out, torch.tensor([-1]), 1.0)
    return bool(out.abs().sum() > 0)


def test_vllms_ops_give_base_rows_the_last_slot() -> None:
    """One reason the ops are replaced; ours leave base rows alone."""
    assert base_rows_get_an_adapter(vllm_cpu_lora.upstream_ops()["bgmv_shrink"])
    assert not base_rows_get_an_adapter(cpu_lora_ops.bgmv_shrink)


def test_the_self_check_finds_an_op_that_disagrees() -> None:
    upstream = vllm_cpu_lora.upstream_ops()
    assert vllm_cpu_lora.disagreement(upstream) is None
    wrong = dict(upstream, sgmv_expand=lambda *args: None)
    assert vllm_cpu_lora.disagreement(wrong) == "sgmv_expand"


def test_register_installs_the_ops_where_vllm_would_run_its_own() -> None:
    ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
    punica_cpu = pytest.importorskip("vllm.lora.punica_wrapper.punica_cpu")
    vllm_cpu_lora.register()
    for name, op in cpu_lora_ops.OPS.items():
        assert getattr(punica_cpu, name) is op  # what PunicaWrapperCPU calls
        assert getattr(ops, name) is op
    assert punica_cpu.PunicaWrapperCPU.add_lora_linear is vllm_cpu_lora.add_lora_linear
    assert punica_cpu.PunicaWrapperCPU.add_lora_logits is vllm_cpu_lora.add_lora_logits
    vllm_cpu_lora.register()  # vLLM loads plugins once per process, but twice must be harmless
    assert punica_cpu.sgmv_shrink is cpu_lora_ops.sgmv_shrink
    assert vllm_cpu_lora.upstream_method("add_lora_linear") is not vllm_cpu_lora.add_lora_linear
    assert vllm_cpu_lora.upstream_ops()["sgmv_shrink"] is not cpu_lora_ops.sgmv_shrink


def test_register_leaves_vllms_ops_on_another_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.platforms import current_platform

    ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
    assert vllm_cpu_lora.why_not(ops) is None or getattr(ops, "_skillserve_grouped", False)
    monkeypatch.setattr(type(current_platform), "get_punica_wrapper", classmethod(lambda cls: "a GPU wrapper"))
    assert "does not run the PyTorch LoRA ops" in (vllm_cpu_lora.why_not(ops) or "")


def test_register_leaves_vllms_ops_when_their_signature_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
    monkeypatch.setattr(ops, "sgmv_expand", lambda inputs, weights, out, indices: None)
    assert vllm_cpu_lora.why_not(ops) == "vLLM's sgmv_expand has changed its signature"


def test_the_plugins_are_registered_with_vllm() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins.get("skillserve-cpu-lora") == "service.engine.cpu_lora:register"
    assert plugins.get("skillserve-engine-lifetime") == "service.engine.lifetime:register"


def test_a_layers_fused_copy_goes_with_its_stacks() -> None:
    a, b = layer_weights(torch.float32, 60)
    assert vllm_cpu_lora.fused_weights(a, b, SLICES, torch.float32) is not None
    before = len(vllm_cpu_lora._fused)
    del a, b
    assert len(vllm_cpu_lora._fused) == before - 1
