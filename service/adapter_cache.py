"""The adapter tiers below the engine: manifests from the store, files in a local disk cache, LoRA ids.

Cold tier: the object store (any replica may have published). Warm tier: the local disk cache,
filled once per adapter version (single-flight), sha256-verified, LRU-evicted by size. Hot tier:
vLLM's own LoRA slots, addressed by a stable integer id per adapter version.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.errors import InvalidAdapter, NotFound
from adapters.schema import Manifest, check_name
from service.errors import model_not_found
from service.metrics import Metrics

log = logging.getLogger("skillserve.adapters")

ALLOWED_SUFFIXES = (".safetensors", ".json")
# peft writes a model card beside the weights; it is inert text, so it may travel with them.
INERT_FILES = ("README.md",)
MANIFEST_TTL_S = 3.0


def split_model(model: str) -> tuple[str, str | None]:
    """`adapter` -> (adapter, None); `adapter@version` -> (adapter, version)."""
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


@dataclass
class _Entry:
    path: Path
    size: int
    last_used: float
    users: int = 0


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
    ):
        self.registry = registry
        self.root = cache_dir / "adapters"
        self.max_bytes = max_bytes
        self.base_model_id = base_model_id
        self.max_lora_rank = max_lora_rank
        self.metrics = metrics
        self.unload = unload
        self._manifests: dict[tuple[str, str | None], _CachedManifest] = {}
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[Path]] = {}
        self._ids: dict[str, int] = {}
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
        name, version = split_model(model)
        try:
            check_name(name)
            if version is not None:
                check_name(version, "version")
        except ValueError:
            raise model_not_found(model) from None
        key = (name, version)
        cached = self._manifests.get(key)
        # Re-read after a short TTL: the newest version may change, and another replica may have deleted it.
        if cached and time.monotonic() - cached.fetched_at < MANIFEST_TTL_S:
            return cached.manifest
        try:
            manifest: Manifest = await asyncio.to_thread(self.registry.manifest, name, version)
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
            path = await asyncio.to_thread(self.registry.fetch, manifest, dest)
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

    async def forget(self, name: str, version: str | None = None) -> None:
        """After a delete: unload from the engine, drop local files and cached manifests."""
        for key in [
            k for k in self._manifests if k[0] == name and (version is None or k[1] in (None, version))
        ]:
            del self._manifests[key]
        for ref in [r for r in self._entries if split_model(r)[0] == name]:
            if version is not None and split_model(ref)[1] != version:
                continue
            entry = self._entries.pop(ref)
            shutil.rmtree(entry.path, ignore_errors=True)
        for ref, lora_id in list(self._ids.items()):
            matches = split_model(ref)[0] == name and version in (None, split_model(ref)[1])
            if matches and self.unload is not None:
                await self.unload(lora_id)
