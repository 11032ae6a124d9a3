"""The adapter tiers below the engine: manifests from the store, files in a local disk cache, LoRA ids.

Cold tier: the object store (any replica may have published). Warm tier: the local disk cache,
filled once per adapter version (single-flight), sha256-verified, LRU-evicted by size. Hot tier:
vLLM's own LoRA slots, addressed by a stable integer id per adapter version.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.errors import InvalidAdapter, ModelNotFound, NotFound, StoreUnavailable
from adapters.registry import pick_version
from adapters.schema import Manifest, parse_ref
from adapters.servable import base_linear_shapes, check_files, check_manifest
from service.metrics import Metrics

log = logging.getLogger("skillserve.adapters")

MANIFEST_TTL_S = 3.0
# Store reads kept per replica: every name asked for leaves one (an unknown name its empty aliases), so a bound.
NAME_CACHE_ENTRIES = 4096
# OpenAI's fine-tuned model ids, `ft:<base>:<owner>:<suffix>:<id>`: aliases of one adapter version each.
FT_PREFIX = "ft:"


def split_model(model: str) -> tuple[str, str | None]:
    """`adapter` -> (adapter, None); `adapter@version` -> (adapter, version), for refs this cache made."""
    name, _, version = model.partition("@")
    return name, (version or None)


@dataclass
class _Entry:
    path: Path
    size: int
    last_used: float
    users: int = 0
    # Deleted while requests held it: its files and engine slot go when the last of them lets go.
    retired: bool = False


@dataclass
class _Cached:
    value: Any  # a Manifest, or the Aliases of one adapter
    fetched_at: float


@dataclass
class Lease:
    """A local adapter directory held for one request (not evicted while held)."""

    manifest: Manifest
    path: Path
    lora_id: int
    _release: Callable[[], None] = field(repr=False)
    ref: str = ""  # the version's name in the engine: `name@version`, after `<project>/` for a project's own

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
        max_names: int = NAME_CACHE_ENTRIES,
    ):
        self.registry = registry
        self.root = cache_dir / "adapters"
        self.max_bytes = max_bytes
        self.base_model_id = base_model_id
        self.max_lora_rank = max_lora_rank
        self.metrics = metrics
        self.unload = unload
        self.base_dir = base_dir
        # Least recently used first: beyond `max_names` entries the oldest go, so any number of distinct names
        # (random unknown ones included) holds a bounded amount of memory.
        self._manifests: OrderedDict[tuple[str, str | None], _Cached] = OrderedDict()
        self.max_names = max_names
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[Path]] = {}
        self._ids: dict[str, int] = {}
        self._drops: set[asyncio.Task[None]] = set()
        # '' for the default project; `<project>/` before every name this view keeps (scoped).
        self.scope = ""
        # Each process starts with an empty cache: files a crashed process left behind are not trusted.
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def scoped(self, project: str, registry: Any) -> AdapterCache:
        """This cache as one project sees it: its manifests read from the project's registry, and every name it
        keeps (manifests, disk, engine LoRA ids) qualified by the project, so two projects' `support-tone` are two
        adapters; the state itself (bounds, disk, engine ids) shared with every other view."""
        view = copy.copy(self)  # shallow: the dicts below are this cache's own, shared
        view.registry = registry
        view.scope = f"{project}/"
        return view

    def _ref(self, manifest: Manifest) -> str:
        return self.scope + manifest.ref

    # ------------------------------------------------------------ names and manifests

    def lora_id(self, ref: str) -> int:
        """A stable positive id per adapter version for this process's life (vLLM keys its slots by it)."""
        if ref not in self._ids:
            self._ids[ref] = len(self._ids) + 1
        return self._ids[ref]

    async def manifest(self, model: str, user: str | None = None) -> Manifest:
        """The manifest a model name means for one request (`name` = its `latest` alias, `name@alias`,
        `name@version`, or an `ft:` id naming one version; `user` keeps a canary split sticky); 404
        (ModelNotFound) if there is none."""
        if model.startswith(FT_PREFIX):
            try:
                target = await self._cached(("@ft", self.scope + model), lambda: self.registry.fine_tuned_model(model))
            except NotFound:
                raise ModelNotFound(model) from None
            name, ref = target.name, target.version
        else:
            try:
                name, ref = parse_ref(model)
            except ValueError:  # not a name any adapter could have: it does not exist
                raise ModelNotFound(model) from None
        aliases = await self._cached(("@aliases", self.scope + name), lambda: self.registry.aliases(name))
        version = pick_version(aliases, ref, user)
        key = (self.scope + name, version)
        try:
            manifest: Manifest = await self._cached(key, lambda: self.registry.manifest(name, version))
        except NotFound:
            if self._manifests.pop(key, None) is not None:
                await self.forget(name, version)  # deleted elsewhere: unload it here too
            raise ModelNotFound(model) from None
        return manifest

    async def _cached(self, key: tuple[str, str | None], read: Callable[[], Any]) -> Any:
        """A store read kept for MANIFEST_TTL_S: the newest version and aliases may move, and another replica may
        delete; while the store is unreachable, what this replica already knows keeps serving."""
        cached = self._manifests.get(key)
        if cached and time.monotonic() - cached.fetched_at < MANIFEST_TTL_S:
            self._manifests.move_to_end(key)
            return cached.value
        try:
            value = await asyncio.to_thread(read)
        except StoreUnavailable:
            if cached is None:
                raise  # 503 with Retry-After
            log.warning("store unreachable; serving %s from what was read before", key)
            return cached.value
        self._manifests[key] = _Cached(value, time.monotonic())
        self._manifests.move_to_end(key)
        while len(self._manifests) > self.max_names:
            self._manifests.popitem(last=False)
        return value

    # ------------------------------------------------------------ local files

    async def acquire(self, manifest: Manifest) -> Lease:
        """Validate the adapter, make sure its files are on local disk, and hold them for one request."""
        check_manifest(manifest, self.base_model_id, self.max_lora_rank)
        ref = self._ref(manifest)
        started = time.perf_counter()
        entry = self._entries.get(ref)
        if entry is not None and entry.path.exists():
            self.metrics.adapter_cache_hits.inc()
            tier = "disk"
        else:
            path = await self._download_once(manifest)
            entry = self._entries[ref] = _Entry(
                path, sum(f.size for f in manifest.files.values()), time.monotonic()
            )
            self._evict(keep=ref)
            tier = "store"
        self.metrics.adapter_load.labels(tier).observe(time.perf_counter() - started)
        entry.users += 1
        entry.last_used = time.monotonic()
        held = entry

        def release() -> None:
            held.users -= 1
            if held.retired and held.users == 0:
                self._schedule_drop(ref, held)

        return Lease(manifest, entry.path, self.lora_id(ref), release, ref)

    async def _download_once(self, manifest: Manifest) -> Path:
        """Single-flight: concurrent first requests for one version share one download."""
        ref = self._ref(manifest)
        future = self._inflight.get(ref)
        if future is not None:
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._inflight[ref] = future
        try:
            dest = self.root / (self.scope + manifest.name) / manifest.version
            started = time.monotonic()
            path = Path(await asyncio.to_thread(self.registry.fetch, manifest, dest))
            try:
                await asyncio.to_thread(
                    check_files, path, manifest, self.max_lora_rank, self._base_shapes()
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

    def in_use(self) -> list[str]:
        """Adapter names with requests in the engine now.

        Called by /metrics from a worker thread while the event loop may add entries: `list()` snapshots
        the dict in one step under the GIL, so iteration never sees it change size."""
        entries = list(self._entries.items())
        return sorted({split_model(ref)[0] for ref, entry in entries if entry.users > 0})

    def resident(self, tier: str) -> int:
        """Adapter versions on local disk ("disk"), or with requests in the engine now ("in_use")."""
        entries = list(self._entries.values())  # a snapshot: /metrics reads this from a worker thread
        return len(entries) if tier == "disk" else sum(entry.users > 0 for entry in entries)

    def tier(self, ref: str, engine_ids: set[int]) -> str:
        """Where this process holds an adapter version: "engine", "disk" or "store"."""
        ref = self.scope + ref
        if self._ids.get(ref) in engine_ids:
            return "engine"
        return "disk" if ref in self._entries else "store"

    async def forget_aliases(self, name: str) -> None:
        """After an alias moved through this replica: the next request reads the new ones (others within the TTL)."""
        self._manifests.pop(("@aliases", self.scope + name), None)

    async def forget(self, name: str, version: str | None = None) -> None:
        """After a delete: drop cached manifests at once (new requests get 404), then local files and the
        engine's slot of each version, but only once no request holds it.

        vLLM reloads an adapter from its directory whenever its slot was reused, and a failed load kills the
        engine core; so files and the slot of a version in use stay until its last request finishes."""
        scoped = self.scope + name
        for key in [
            k
            for k, cached in self._manifests.items()
            if (k[0] == scoped and (version is None or k[1] in (None, version)))
            or k == ("@aliases", scoped)
            or (k[0] == "@ft" and (k[1] or "").startswith(self.scope) and cached.value.name == name
                and version in (None, cached.value.version))
        ]:
            del self._manifests[key]
        for ref in [r for r in self._ids if split_model(r)[0] == scoped]:
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
