"""The adapter tiers below the engine: manifests from the store, files in a local disk cache, LoRA ids.

Cold tier: the object store (any replica may have published). Warm tier: the local disk cache,
filled once per adapter version (single-flight), sha256-verified, LRU-evicted by size. Hot tier:
vLLM's own LoRA slots, addressed by a stable integer id per adapter version.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from adapters.errors import InvalidAdapter, NotFound, StoreUnavailable
from adapters.schema import Manifest, parse_ref
from service.errors import model_not_found
from service.metrics import Metrics

log = logging.getLogger("skillserve.adapters")

ALLOWED_SUFFIXES = (".safetensors", ".json")
# peft writes a model card beside the weights; it is inert text, so it may travel with them.
INERT_FILES = ("README.md",)
MANIFEST_TTL_S = 3.0


def split_model(model: str) -> tuple[str, str | None]:
    """`adapter` -> (adapter, None); `adapter@version` -> (adapter, version), for refs this cache made."""
    name, _, version = model.partition("@")
    return name, (version or None)


def validate_manifest(manifest: Manifest, base_model_id: str, max_lora_rank: int) -> None:
    """Refuse adapters that must not reach the engine (raises InvalidAdapter, a 400)."""
    if manifest.base_model != base_model_id:
        raise InvalidAdapter(
            f"adapter trained on another base: {manifest.ref} was trained on {manifest.base_model!r}, "
            f"this gateway serves {base_model_id!r}"
        )
    if manifest.lora.rank > max_lora_rank:
        raise InvalidAdapter(
            f"adapter {manifest.ref} has LoRA rank {manifest.lora.rank}; "
            f"this gateway accepts at most {max_lora_rank}"
        )
    for name in manifest.files:
        unsafe = "/" in name or "\\" in name or name.startswith(".")
        if unsafe or not (name.endswith(ALLOWED_SUFFIXES) or name in INERT_FILES):
            raise InvalidAdapter(f"adapter {manifest.ref} holds a file that is not allowed: {name!r}")
    if "adapter_config.json" not in manifest.files:
        raise InvalidAdapter(f"adapter {manifest.ref} has no adapter_config.json")


@lru_cache(maxsize=4)
def base_linear_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the base model's 2-D weights in its layers (what LoRA may adapt), read from headers only."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = tuple(handle.get_slice(key).get_shape())
                if ".layers." in key and key.endswith(".weight") and len(shape) == 2:
                    shapes[key] = shape
    return shapes


def supported_modules(shapes: dict[str, tuple[int, ...]]) -> set[str]:
    """Module names (q_proj, down_proj, ...) LoRA may target, from base_linear_shapes."""
    return {key.split(".")[-2] for key in shapes}


_LORA_TENSOR = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight")


def check_adapter_dir(
    path: Path, manifest: Manifest, max_lora_rank: int, base_shapes: dict[str, tuple[int, ...]]
) -> None:
    """Refuse downloaded adapter files the engine must not load (raises InvalidAdapter, a 400).

    The manifest is checked before the download; this checks what the files themselves say, so a
    manifest that lies about rank or targets, or weights that are not safetensors or do not fit the
    base model's layers, never reach vLLM. An empty `base_shapes` (no local base weights) skips the
    comparison with the base.
    """
    from safetensors import safe_open

    ref = manifest.ref
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InvalidAdapter(f"adapter {ref}: adapter_config.json is unreadable: {exc}") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise InvalidAdapter(f"adapter {ref}: adapter_config.json does not describe a LoRA adapter")
    rank = config.get("r")
    if not isinstance(rank, int) or not 1 <= rank <= max_lora_rank:
        raise InvalidAdapter(
            f"adapter {ref}: LoRA rank {rank!r} is outside 1..{max_lora_rank} (max_lora_rank)"
        )
    if rank != manifest.lora.rank:
        raise InvalidAdapter(
            f"adapter {ref}: adapter_config.json has r={rank}, its manifest {manifest.lora.rank}"
        )
    if config.get("modules_to_save") or config.get("use_dora"):
        raise InvalidAdapter(f"adapter {ref}: modules_to_save and DoRA are not supported by the engine")
    targets = config.get("target_modules")
    supported = supported_modules(base_shapes)
    if isinstance(targets, list) and supported and not set(targets) <= supported:
        raise InvalidAdapter(
            f"adapter {ref}: target modules {sorted(set(targets) - supported)} are not linear layers of the "
            f"base model (supported: {sorted(supported)})"
        )
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise InvalidAdapter(f"adapter {ref} has no adapter_model.safetensors")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            tensors = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error type for every malformed file
        raise InvalidAdapter(
            f"adapter {ref}: adapter_model.safetensors is not a valid safetensors file: {exc}"
        ) from None
    if not tensors:
        raise InvalidAdapter(f"adapter {ref}: adapter_model.safetensors holds no tensors")
    for key, shape in tensors.items():
        match = _LORA_TENSOR.fullmatch(key)
        if match is None or len(shape) != 2:
            raise InvalidAdapter(f"adapter {ref}: unexpected tensor {key!r} {list(shape)} in its weights")
        is_a = match["ab"] == "A"
        tensor_rank, features = (shape[0], shape[1]) if is_a else (shape[1], shape[0])
        if tensor_rank > max_lora_rank:
            raise InvalidAdapter(f"adapter {ref}: tensor {key} has rank {tensor_rank} > {max_lora_rank}")
        if not base_shapes:
            continue
        base = base_shapes.get(match["module"] + ".weight")
        if base is None:
            raise InvalidAdapter(f"adapter {ref}: tensor {key} adapts no linear layer of the base model")
        if features != (base[1] if is_a else base[0]):
            raise InvalidAdapter(
                f"adapter {ref}: tensor {key} {list(shape)} does not fit the base layer {list(base)}"
            )


@dataclass
class _Entry:
    path: Path
    size: int
    last_used: float
    users: int = 0
    # Deleted while requests held it: its files and engine slot go when the last of them lets go.
    retired: bool = False


@dataclass
class _CachedManifest:
    manifest: Manifest
    fetched_at: float


@dataclass
class Lease:
    """A local adapter directory held for one request (not evicted while held)."""

    manifest: Manifest
    path: Path
    lora_id: int
    _release: Callable[[], None] = field(repr=False)

    def release(self) -> None:
        self._release()


class AdapterCache:
    """Resolves model names to manifests and keeps adapter files on local disk for the engine."""

    def __init__(
        self,
        registry: Any,
        cache_dir: Path,
        max_bytes: int,
        base_model_id: str,
        max_lora_rank: int,
        metrics: Metrics,
        unload: Callable[[int], Awaitable[None]] | None = None,
        base_dir: Path | None = None,
    ):
        self.registry = registry
        self.root = cache_dir / "adapters"
        self.max_bytes = max_bytes
        self.base_model_id = base_model_id
        self.max_lora_rank = max_lora_rank
        self.metrics = metrics
        self.unload = unload
        self.base_dir = base_dir
        self._manifests: dict[tuple[str, str | None], _CachedManifest] = {}
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[Path]] = {}
        self._ids: dict[str, int] = {}
        self._drops: set[asyncio.Task[None]] = set()
        # Each process starts with an empty cache: files a crashed process left behind are not trusted.
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ names and manifests

    def lora_id(self, ref: str) -> int:
        """A stable positive id per adapter version for this process's life (vLLM keys its slots by it)."""
        if ref not in self._ids:
            self._ids[ref] = len(self._ids) + 1
        return self._ids[ref]

    async def manifest(self, model: str) -> Manifest:
        """The manifest a model name means; 404 (model_not_found) if there is none in the store."""
        try:
            name, version = parse_ref(model)
        except ValueError:  # not a name any adapter could have: it does not exist
            raise model_not_found(model) from None
        key = (name, version)
        cached = self._manifests.get(key)
        # Re-read after a short TTL: the newest version may change, and another replica may have deleted it.
        if cached and time.monotonic() - cached.fetched_at < MANIFEST_TTL_S:
            return cached.manifest
        try:
            manifest: Manifest = await asyncio.to_thread(self.registry.manifest, name, version)
        except StoreUnavailable:
            if cached is None:
                raise  # 503 with Retry-After
            # The store is down: what this replica already knows keeps serving until it is back.
            log.warning("store unreachable; serving %s from its cached manifest", model)
            return cached.manifest
        except NotFound:
            if self._manifests.pop(key, None) is not None:
                await self.forget(name, version)  # deleted elsewhere: unload it here too
            raise model_not_found(model) from None
        self._manifests[key] = _CachedManifest(manifest, time.monotonic())
        return manifest

    # ------------------------------------------------------------ local files

    async def acquire(self, manifest: Manifest) -> Lease:
        """Validate the adapter, make sure its files are on local disk, and hold them for one request."""
        validate_manifest(manifest, self.base_model_id, self.max_lora_rank)
        ref = manifest.ref
        entry = self._entries.get(ref)
        if entry is not None and entry.path.exists():
            self.metrics.adapter_cache_hits.inc()
        else:
            path = await self._download_once(manifest)
            entry = self._entries[ref] = _Entry(
                path, sum(f.size for f in manifest.files.values()), time.monotonic()
            )
            self._evict(keep=ref)
        entry.users += 1
        entry.last_used = time.monotonic()
        held = entry

        def release() -> None:
            held.users -= 1
            if held.retired and held.users == 0:
                self._schedule_drop(ref, held)

        return Lease(manifest, entry.path, self.lora_id(ref), release)

    async def _download_once(self, manifest: Manifest) -> Path:
        """Single-flight: concurrent first requests for one version share one download."""
        ref = manifest.ref
        future = self._inflight.get(ref)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._inflight[ref] = future
        try:
            dest = self.root / manifest.name / manifest.version
            started = time.monotonic()
            path = Path(await asyncio.to_thread(self.registry.fetch, manifest, dest))
            try:
                await asyncio.to_thread(
                    check_adapter_dir, path, manifest, self.max_lora_rank, self._base_shapes()
                )
            except InvalidAdapter:
                shutil.rmtree(path, ignore_errors=True)  # never served, and fetched afresh if fixed
                raise
            self.metrics.adapter_loads.inc()
            log.info("fetched adapter %s in %.2fs", ref, time.monotonic() - started)
            future.set_result(Path(path))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._inflight[ref]
        return Path(path)

    def _base_shapes(self) -> dict[str, tuple[int, ...]]:
        return base_linear_shapes(self.base_dir) if self.base_dir is not None else {}

    def _evict(self, keep: str) -> None:
        """Drop least-recently-used versions not in use until the cache fits its size."""
        total = sum(e.size for e in self._entries.values())
        for ref, entry in sorted(self._entries.items(), key=lambda item: item[1].last_used):
            if total <= self.max_bytes:
                break
            if ref == keep or entry.users > 0:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            del self._entries[ref]
            total -= entry.size
            self.metrics.adapter_evictions.inc()
            log.info("evicted adapter %s from the disk cache", ref)

    def cached(self) -> list[str]:
        return sorted(self._entries)

    def in_use(self) -> list[str]:
        """Adapter names with requests in the engine now.

        Called by /metrics from a worker thread while the event loop may add entries: `list()` snapshots
        the dict in one step under the GIL, so iteration never sees it change size."""
        entries = list(self._entries.items())
        return sorted({split_model(ref)[0] for ref, entry in entries if entry.users > 0})

    def tier(self, ref: str, engine_ids: set[int]) -> str:
        """Where this process holds an adapter version: "engine", "disk" or "store"."""
        if self._ids.get(ref) in engine_ids:
            return "engine"
        return "disk" if ref in self._entries else "store"

    async def forget(self, name: str, version: str | None = None) -> None:
        """After a delete: drop cached manifests at once (new requests get 404), then local files and the
        engine's slot of each version, but only once no request holds it.

        vLLM reloads an adapter from its directory whenever its slot was reused, and a failed load kills the
        engine core; so files and the slot of a version in use stay until its last request finishes."""
        for key in [
            k for k in self._manifests if k[0] == name and (version is None or k[1] in (None, version))
        ]:
            del self._manifests[key]
        for ref in [r for r in self._ids if split_model(r)[0] == name]:
            if version is not None and split_model(ref)[1] != version:
                continue
            entry = self._entries.pop(ref, None)
            if entry is not None and entry.users > 0:
                entry.retired = True
                log.info("adapter %s deleted while %d request(s) use it: unloading when they finish",
                         ref, entry.users)
                continue
            await self._drop(ref, entry)

    def _schedule_drop(self, ref: str, entry: _Entry) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # released outside the event loop: files go now, the slot with the process
            shutil.rmtree(entry.path, ignore_errors=True)
            return
        task = loop.create_task(self._drop(ref, entry))
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)

    async def _drop(self, ref: str, entry: _Entry | None) -> None:
        """Unload a version no request holds from the engine, then remove its files."""
        if self.unload is not None and ref in self._ids:
            try:
                await self.unload(self._ids[ref])
            except Exception:  # the engine may never have loaded it; the files still go
                log.exception("could not unload adapter %s from the engine", ref)
        if entry is not None and self._entries.get(ref) is not entry:
            shutil.rmtree(entry.path, ignore_errors=True)
