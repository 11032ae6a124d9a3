"""The grouped LoRA ops with vLLM's signatures (bgmv_*/sgmv_*): rows grouped by adapter slot (`Plan`), one matmul
per adapter, rows without one (index -1) left alone. service/engine/cpu_lora.py says why and installs them."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Runs of more rows than this (prompts) are multiplied in place, one matmul per run. Shorter ones (decode
# rows, short chunks) are gathered, sorted by slot; where no slot has more than this many of them, they go
# through one batched matmul over all slots, zero-padded to the deepest: one call instead of one per run,
# whose fixed cost (about 10 us on these CPUs) would exceed the arithmetic.
BATCHED_DEPTH = 32


def short(rows: slice) -> bool:
    """A run of at most `BATCHED_DEPTH` rows: a decode step's or a short chunk's, not a prompt's."""
    return rows.stop - rows.start <= BATCHED_DEPTH


@dataclass(frozen=True)
class Plan:
    """Which rows each adapter slot multiplies, made once per batch and shared by every op call of a step.

    `spans` are long runs of the batch's rows on one slot, multiplied in place with no copy. `order` (if
    any) holds the other rows that have an adapter, sorted by slot; `groups` are each slot's slice of it.
    For the batched matmul, the (slots, depth, features) stack is gathered in one `index_select` by
    `source` (the batch row at each place of the stack; a place no row fills repeats one that does, and its
    product is never read), and `placed` is where each row of `order` sits in the flattened stack. The stack
    holds only the slots the rows use (`stacked`): a slot no row of the step uses is not read, which matters
    because a decode step's products are bound by reading the weights from memory. Rows with the index -1
    (no adapter) are in neither.
    """

    spans: tuple[tuple[int, slice], ...] = ()
    order: torch.Tensor | None = None
    groups: tuple[tuple[int, slice], ...] = ()
    source: torch.Tensor | None = None
    placed: torch.Tensor | None = None
    depth: int = 0

    @property
    def slots(self) -> int:
        """The stack's first dimension: the slots the gathered rows use."""
        return len(self.groups)

    def stacked(self, weights: torch.Tensor) -> torch.Tensor:
        """The used slots' matrices, in the stack's order: a view where they are consecutive, else a copy."""
        first, last = self.groups[0][0], self.groups[-1][0]
        if last - first + 1 == len(self.groups):
            return weights[first : last + 1]
        return weights.index_select(0, self.slot_index)

    def in_order(self, products: torch.Tensor) -> torch.Tensor:
        """The batched matmul's products (the flattened stack) as the rows of `order`: with one row a slot they
        already are, so nothing is read again."""
        if self.depth == 1:
            return products
        assert self.placed is not None
        return products.index_select(0, self.placed)

    @functools.cached_property
    def slot_index(self) -> torch.Tensor:
        """The used slots in the stack's order, for `stacked` to gather."""
        return torch.tensor([slot for slot, _ in self.groups])

    @functools.cached_property
    def used(self) -> tuple[int, ...]:
        """The slots this step's rows use."""
        return tuple({slot for slot, _ in self.spans} | {slot for slot, _ in self.groups})

    @property
    def batched(self) -> bool:
        """Whether the gathered rows go through one batched matmul (or the decode kernel): there are some, and no
        slot has more than `BATCHED_DEPTH` of them."""
        return self.source is not None and self.placed is not None and self.depth <= BATCHED_DEPTH

    @functools.cached_property
    def few(self) -> torch.Tensor:
        """(row, slot) pairs, one per row the decode kernel takes (service/engine/cpu_lora_kernel.py): the rows of
        `short` spans, and the gathered rows where they are `batched`."""
        pairs = [(row, slot) for slot, span in self.spans if short(span) for row in range(span.start, span.stop)]
        if self.batched:
            assert self.order is not None
            order = self.order.tolist()
            pairs += [(row, slot) for slot, rows in self.groups for row in order[rows]]
        return torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)

    @functools.cached_property
    def kernel_rows(self) -> tuple[int, int]:
        """The decode kernel's `rows` arguments: `few` and its length."""
        return self.few.data_ptr(), self.few.shape[0]

    @functools.cached_property
    def kernel_only(self) -> bool:
        """Whether the decode kernel, where it is built, takes every row this plan has (a decode step's)."""
        return all(short(span) for _, span in self.spans) and (self.order is None or self.batched)

    @functools.cached_property
    def rows(self) -> int:
        return sum(span.stop - span.start for _, span in self.spans) + sum(g.stop - g.start for _, g in self.groups)


NOTHING = Plan()


def _gathered(rows: torch.Tensor, slots: torch.Tensor, spans: tuple[tuple[int, slice], ...] = ()) -> Plan:
    """A plan that gathers `rows` (batch row numbers, each on slot `slots[i]` >= 0) sorted by slot."""
    by_slot = torch.argsort(slots, stable=True)
    order, slot_of = rows[by_slot], slots[by_slot]
    counts = torch.bincount(slot_of)
    used = torch.nonzero(counts).flatten()
    counts = counts[used]
    groups, start = [], 0
    for slot, count in zip(used.tolist(), counts.tolist(), strict=True):
        groups.append((slot, slice(start, start + count)))
        start += count
    place = torch.empty(int(used[-1]) + 1, dtype=torch.long)
    place[used] = torch.arange(used.numel())
    at = place[slot_of]  # each row's place in the stack: its slot's rank among the used ones
    first_row = torch.cumsum(counts, 0) - counts  # where each slot's rows start in `order`
    depth = int(counts.max())
    placed = at * depth + torch.arange(order.numel(), device=order.device) - first_row[at]
    source = order[:1].repeat(used.numel() * depth)
    source[placed] = order
    return Plan(spans, order, tuple(groups), source, placed, depth)


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
    few = [(slot, start, n) for slot, start, n in runs if not (n > BATCHED_DEPTH or len(runs) == 1)]
    if not few:
        plan = Plan(long)
    else:
        starts, lens = torch.tensor([r[1] for r in few]), torch.tensor([r[2] for r in few])
        slots = torch.repeat_interleave(torch.tensor([r[0] for r in few]), lens)
        offsets = torch.arange(int(lens.sum())) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
        plan = _gathered(torch.repeat_interleave(starts, lens) + offsets, slots, long)
    _last_segments = (key, plan)
    return plan


def _stack(weights: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """All slots' matrices as (slots, in, out) for `x @ w`, their first `rows` output rows, in `dtype`."""
    if weights.dim() == 4:  # stacked as (slots, 1, out, in)
        weights = weights[:, 0]
    return weights[:, :rows].to(dtype=dtype).transpose(1, 2)


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
    if plan.batched:
        assert plan.source is not None
        stack = x.index_select(0, plan.source).to(dtype=dtype).view(plan.slots, plan.depth, x.shape[1])
        ys = plan.in_order(torch.bmm(stack, plan.stacked(w)).view(-1, width))
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
