"""How a run's batches are laid out and what their activations cost: the two hyperparameters the trainer decides
itself when a request leaves them to it (`padding_free` and `gradient_checkpointing`, null or "auto").

Both depend on what only the trainer has: the encoded rows' lengths, the model, the memory free where it runs.
- **padding_free** packs a batch's rows into one unpadded row. The model then does no work on padding, but its
  attention runs over the whole packed row with a block-diagonal mask (transformers on sdpa/eager), so it costs
  (rows x mean length)^2 where padding costs rows x longest^2. The expected work of both layouts is counted from
  the lengths and the model's sizes (`work`); packing is chosen when it does at most PACKED_SHARE of padding's.
- **gradient_checkpointing** recomputes each layer's activations in the backward pass instead of keeping them: a
  third more work for far less memory. It stays off when the largest batch's activations fit in a share of the
  memory free (`MEMORY_SHARE`), measured per token on the model itself (`activation_bytes_per_token`).
The figures behind both are in docs/performance.md ("Training: what auto lays out").
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.schema import Hyperparameters
from trainer import distributed

# Packing is chosen when its expected work is at most this share of padding's: a margin for what the count leaves
# out (the collator's position ids, the mask's build), so a near tie keeps the layout every trainer uses.
PACKED_SHARE = 0.8
# Checkpointing stays off when the largest batch's activations take at most this share of the memory free: the
# rest is for the backward pass's own tensors, the evaluation and the optimizer. On the default model, turning
# checkpointing off moved peak RSS 1.06x as far as it moved the saved tensors' bytes (docs/performance.md).
MEMORY_SHARE = 0.5
PROBE_TOKENS = 16


@dataclass(frozen=True)
class ModelSize:
    """A causal LM's work per token: 2 x `linear_weights` multiply-adds' flops for its linear layers (the head
    included), and 4 x `attention_width` flops for each pair of tokens that attend (scores and the weighted sum,
    in every layer)."""

    linear_weights: int
    attention_width: int


def model_size(model: Any) -> ModelSize:
    import torch

    config = model.config
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return ModelSize(weights, layers * heads * head_dim)


def _expected_max(lengths: Sequence[int], batch: int, power: int = 1) -> float:
    """E[max(l)^power] over `batch` rows drawn at random (with replacement) from `lengths`."""
    ordered = sorted(lengths)
    n = len(ordered)
    return sum(length**power * ((i / n) ** batch - ((i - 1) / n) ** batch) for i, length in enumerate(ordered, 1))


def work(lengths: Sequence[int], batch: int, size: ModelSize) -> tuple[float, float]:
    """The expected flops of one forward pass over a batch of `batch` random rows: padded to its longest row, and
    packed into one row. The backward pass and a checkpointing recompute are multiples of the same for both."""
    n = len(lengths)
    mean = sum(lengths) / n
    variance = sum((length - mean) ** 2 for length in lengths) / n
    linear, attention = 2 * size.linear_weights, 4 * size.attention_width
    padded = linear * batch * _expected_max(lengths, batch) + attention * batch * _expected_max(lengths, batch, 2)
    # The packed row is as long as the batch's rows together: E[(sum of lengths)^2] = (batch x mean)^2 + batch x var.
    packed = linear * batch * mean + attention * ((batch * mean) ** 2 + batch * variance)
    return padded, packed


@dataclass(frozen=True)
class Choice:
    value: bool
    reason: str


def choose_padding_free(lengths: Sequence[int], batch: int, size: ModelSize) -> Choice:
    if batch < 2 or len(lengths) < 2:
        return Choice(False, f"batches of {batch} row{'s' if batch != 1 else ''} have nothing to pad")
    padded, packed = work(lengths, batch, size)
    share = packed / padded
    mean = sum(lengths) / len(lengths)
    why = (f"rows of {min(lengths)}-{max(lengths)} tokens (mean {mean:.0f}) in batches of {batch}: packed, a batch "
           f"is {share:.2f}x padding's work")
    if share <= PACKED_SHARE:
        return Choice(True, why)
    return Choice(False, f"{why}, more than {PACKED_SHARE}x: padded")


def neftune_scale(lengths: Sequence[int], batch: int) -> float:
    """What NEFTune's alpha is multiplied by on packed rows, so its noise per value stays what padded batches get.
    Its scale is alpha / sqrt(row length x width): a packed row is batch x mean tokens long, a padded one as long
    as its longest row."""
    mean = sum(lengths) / len(lengths)
    return math.sqrt(batch * mean / _expected_max(lengths, batch))


def largest_batch_tokens(lengths: Sequence[int], batch: int, padding_free: bool) -> int:
    """Tokens the forward pass holds activations for in the run's largest batch."""
    longest = sorted(lengths, reverse=True)[:batch]
    return sum(longest) if padding_free else len(longest) * longest[0]


def activation_bytes_per_token(model: Any, targets: Sequence[str] | str, dropout: float, rank: int) -> float:
    """What the backward pass keeps per token of a training forward pass, measured: a short forward of the frozen
    model with gradients asked for its input, every tensor autograd saves counted once (the weights apart), plus
    what the LoRA adds in each layer it adapts. On the default model this is within 5% of the same count over the
    model with its LoRA in place (tests/test_training_layout.py)."""
    import torch

    adapted = [module for name, module in model.named_modules() if _adapted(name, module, model, targets)]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    ids = torch.arange(PROBE_TOKENS).unsqueeze(0) % model.config.vocab_size
    try:
        for param, _ in flags:
            param.requires_grad_(False)
        if not dropout:
            # Without dropout a LoRA keeps its layer's very input, shared with the layers beside it (q, k and v read
            # one tensor): a weight that asks for a gradient keeps the same, counted once.
            for module in adapted:
                module.weight.requires_grad_(True)
        model.train()
        with torch.random.fork_rng(devices=[]):
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            saved = saved_bytes(model, lambda: model(inputs_embeds=embeds, labels=ids, use_cache=False))
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        model.train(was_training)
    # With dropout, each LoRA keeps a dropped copy of its input and the dropout's noise (float32 on the CPU), and
    # every LoRA keeps its rank-wide middle.
    lora = sum(module.in_features * (8 if dropout else 0) + 4 * rank for module in adapted)
    return saved / PROBE_TOKENS + lora


def saved_bytes(model: Any, forward: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd saves for the backward pass while `forward` runs, each storage counted once and
    the model's own weights and buffers left out (they are there whether saved or not)."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weights |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        forward()
    return sum(saved.values())


def _adapted(name: str, module: Any, model: Any, targets: Sequence[str] | str) -> bool:
    """Whether peft puts a LoRA on `module`: every linear layer but the head for "all-linear", else the linear
    layers named (by the last part of their name, or in full)."""
    import torch

    if not isinstance(module, torch.nn.Linear):
        return False
    if targets == "all-linear":
        return module is not model.get_output_embeddings()
    return name in targets or name.rsplit(".", 1)[-1] in targets


def free_memory(meminfo: str | None = None, cgroup: Path = Path("/sys/fs/cgroup")) -> tuple[int, str]:
    """Bytes this process can still take, and where the figure comes from: the GPU's free memory there, else the
    least of the machine's available memory and the container's limit less its use (cgroup v2, then v1)."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free), "the GPU's free memory"
    if meminfo is None:
        meminfo = Path("/proc/meminfo").read_text()
    fields = {k.strip(): v.split() for k, _, v in (line.partition(":") for line in meminfo.splitlines())}
    available, source = int(fields["MemAvailable"][0]) * 1024, "the machine's available memory"
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit, usage = (cgroup / limit_file).read_text().strip(), (cgroup / usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) - int(usage) < available:
            available, source = max(0, int(limit) - int(usage)), "the container's memory limit less its use"
        break
    return available, source


def choose_checkpointing(per_token: float, tokens: int, free: int, source: str, processes: int = 1) -> Choice:
    """Off when the largest batch's activations fit in MEMORY_SHARE of the memory free to each of the `processes`
    training here (ranks of one CPU machine share its memory)."""
    need, room = per_token * tokens, MEMORY_SHARE * free / processes
    shared = f" for {processes} processes" if processes > 1 else ""
    why = (f"the largest batch ({tokens} tokens at {per_token / 2**20:.2f} MiB a token) keeps {need / 2**30:.2f} GiB "
           f"of activations; {source}: {free / 2**30:.1f} GiB{shared}")
    if need <= room:
        return Choice(False, f"{why}: they fit in {MEMORY_SHARE:.0%} of it, so nothing is recomputed")
    return Choice(True, f"{why}: over {MEMORY_SHARE:.0%} of it, so each layer's are recomputed in the backward pass")


def processes_sharing_memory() -> int:
    """Training processes on this machine that share its memory: torchrun's ranks here on the CPU, else one."""
    import torch

    return 1 if torch.cuda.is_available() else max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


@dataclass(frozen=True)
class Layout:
    """What a run trains with: `hp` with both fields decided, NEFTune's alpha multiplier, and why, for the job's
    events (one line per field the trainer chose)."""

    hp: Hyperparameters
    neftune_scale: float
    reasons: tuple[str, ...]


def lay_out(hp: Hyperparameters, method: str, model: Any, lengths: Sequence[int], batch: int) -> Layout:
    """Decide `padding_free` and `gradient_checkpointing` where `hp` leaves them to the trainer (None). Only
    supervised runs are counted: DPO's pairs and reinforcement's samples are batched by trl in shapes this does
    not model, so they keep padded batches and checkpointing, as before these were chosen."""
    reasons: list[str] = []
    update: dict[str, bool] = {}
    supervised = method == "supervised" and bool(lengths)
    if hp.padding_free is None:
        padding = choose_padding_free(lengths, batch, model_size(model)) if supervised else Choice(
            False, f"{method} batches are padded")
        update["padding_free"] = padding.value
        reasons.append(f"padding_free {padding.value}: {padding.reason}")
    padding_free = update.get("padding_free", hp.padding_free)
    if hp.gradient_checkpointing is None:
        if supervised:
            per_token = activation_bytes_per_token(model, hp.target_modules, hp.dropout, hp.rank or 0)
            free, source = free_memory()
            tokens = largest_batch_tokens(lengths, batch, bool(padding_free))
            checkpointing = choose_checkpointing(per_token, tokens, free, source, processes_sharing_memory())
            # Every rank trains the same way: one that recomputes while another keeps would still agree on the
            # gradients, but one rank short of memory fails the whole run.
            checkpointing = Choice(distributed.any_rank(checkpointing.value), checkpointing.reason)
        else:
            checkpointing = Choice(True, f"{method} runs recompute activations (their batches are not counted)")
        update["gradient_checkpointing"] = checkpointing.value
        reasons.append(f"gradient_checkpointing {checkpointing.value}: {checkpointing.reason}")
    scale = neftune_scale(lengths, batch) if padding_free and supervised and hp.neftune_noise_alpha else 1.0
    if scale != 1.0:
        reasons.append(f"NEFTune alpha x{scale:.2f} on packed rows: the noise per value padded batches would get")
    return Layout(hp.model_copy(update=update), scale, tuple(reasons))
