"""Adapter versions: publish, find, fetch and delete them.

A version is published when, and only when, its manifest.json exists: files go up first, the manifest
last with a conditional write, so a crash in between leaves nothing visible and two publishers of one
version cannot both win.

Each file goes up under its content address, `adapters/<name>/<version>/blobs/<sha256>`, and the manifest maps
file names to those keys. Two publishers of one version therefore never write over each other's bytes: the
winner's manifest names only blobs whose content is exactly what it hashed, and a loser removes only the blobs
the winner does not name. Manifests written before this layout (no `key` in their file entries) keep their
files beside the manifest and are read from there.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from adapters.errors import AlreadyExists, ChecksumMismatch, InvalidAdapter, NotFound
from adapters.models import sha256_file, weights_hash
from adapters.registry.aliases import AliasBook, pick_version
from adapters.registry.keys import (
    MANIFEST,
    adapter_prefix,
    alias_key,
    alias_prefix,
    check_filename,
    file_key,
    is_manifest_key,
    manifest_key,
)
from adapters.schema import LATEST, Aliases, AliasTarget, FileEntry, LoraInfo, Manifest, new_version
from adapters.servable import REQUIRED_FILES
from adapters.store import ObjectStore

if TYPE_CHECKING:
    from adapters.templates import ChatTemplate

log = logging.getLogger("skillserve.registry")


def new_manifest(
    name: str,
    template: ChatTemplate,
    lora: LoraInfo,
    *,
    base_model: str,
    base_dir: Path,
    version: str | None = None,
    **fields: Any,
) -> Manifest:
    """The manifest of an adapter about to be published: its template's text and stops, the base's weights
    hash, and any other manifest `fields` (metrics, dataset, job); `files` is filled in by `publish`."""
    return Manifest(
        name=name,
        version=version or new_version(),
        base_model=base_model,
        base_model_sha256=weights_hash(base_dir),
        template_name=template.name,
        template=template.text,
        stop=list(template.stop),
        lora=lora,
        files={},
        **fields,
    )


class AdapterVersions(AliasBook):
    """Published adapter versions and the aliases that name them (a delete and an alias move are ordered
    through the alias revisions: aliases.py says how)."""

    store: ObjectStore

    def publish(self, manifest: Manifest, directory: Path) -> Manifest:
        """Upload the files in `directory` under their content addresses, then the manifest last, conditionally;
        AlreadyExists if the version exists or another publisher's manifest landed first."""
        key = manifest_key(manifest.name, manifest.version)
        files = adapter_files(directory)
        if self.store.exists(key):
            raise AlreadyExists(f"adapter {manifest.ref} is already published")
        if manifest.version == LATEST or manifest.version in self.aliases(manifest.name).aliases:
            # `name@<alias>` means the alias: a version of that name could never be reached, or would shadow it.
            raise AlreadyExists(f"{manifest.ref}: {manifest.version!r} is an alias of {manifest.name}, not a version")
        entries = {}
        for path in files:
            digest = sha256_file(path)
            entries[path.name] = FileEntry(sha256=digest, size=path.stat().st_size, key=f"blobs/{digest}")
        completed = manifest.model_copy(update={"files": entries})
        for path in files:
            self.store.put_file(file_key(completed, path.name), path)
        try:
            self.store.put_bytes(key, completed.model_dump_json(indent=2).encode(), if_absent=True)
        except AlreadyExists:
            self._discard_loser(completed)
            raise AlreadyExists(f"adapter {manifest.ref} was published by another writer meanwhile") from None
        latest = AliasTarget(version=manifest.version)

        def point_latest(current: Aliases) -> Aliases:
            # A version deleted and published again under its old name is no longer being unpublished.
            return current.model_copy(
                update={
                    "aliases": {**current.aliases, LATEST: latest},
                    "unpublished": [v for v in current.unpublished if v != manifest.version],
                }
            )

        self.change_aliases(manifest.name, point_latest)
        return completed

    def _discard_loser(self, lost: Manifest) -> None:
        """Remove the blobs of a publish that lost the manifest race, except those the winner names (same
        content, same key: they are the winner's too)."""
        try:
            winner = self.manifest(lost.name, lost.version)
        except (NotFound, InvalidAdapter):
            return  # unknown winner: leaving orphans is safe, deleting a blob someone reads is not
        kept = {file_key(winner, filename) for filename in winner.files}
        for filename in lost.files:
            key = file_key(lost, filename)
            if key not in kept:
                self.store.delete(key)

    def manifest(self, name: str, version: str | None = None) -> Manifest:
        """One version's manifest, or the newest version's if `version` is None; NotFound if unpublished.
        (Aliases are resolved by `resolve`; this reads versions only.)"""
        if version is None:
            published = self.versions(name)
            if not published:
                raise NotFound(f"adapter {name!r} not found")
            return published[-1]
        try:
            data = self.store.get_bytes(manifest_key(name, version))
        except NotFound:
            raise NotFound(f"adapter {name}@{version} not found") from None
        return _parse_manifest(data, name, version)

    def resolve(self, name: str, ref: str | None = None, user: str | None = None) -> Manifest:
        """What `name` (the `latest` alias, else the newest version), `name@alias` or `name@version` means for one
        request; `user` keeps a canary split sticky."""
        return self.manifest(name, pick_version(self.aliases(name), ref, user))

    def versions(self, name: str) -> list[Manifest]:
        """Every published version of `name`, oldest first."""
        prefix = adapter_prefix(name)
        keys = [k for k in self.store.list(prefix) if is_manifest_key(k)]
        return _oldest_first(self._load_manifests(keys))

    def adapters(self) -> list[Manifest]:
        """The newest published version of every adapter, by name."""
        newest: dict[str, Manifest] = {}
        for manifest in _oldest_first(
            self._load_manifests(k for k in self.store.list("adapters/") if is_manifest_key(k))
        ):
            newest[manifest.name] = manifest
        return [newest[name] for name in sorted(newest)]

    def _load_manifests(self, keys: Iterable[str]) -> list[Manifest]:
        manifests = []
        for key in keys:
            _, name, version, _ = key.split("/")
            try:
                manifests.append(_parse_manifest(self.store.get_bytes(key), name, version))
            except NotFound:
                continue  # deleted between list and get
            except InvalidAdapter as exc:
                # One bad manifest must not hide every other adapter.
                log.warning("skipping unreadable manifest: %s", exc)
        return manifests

    def fetch(self, manifest: Manifest, dest: Path) -> Path:
        """Download and verify an adapter into `dest` (atomically: all of it or nothing); returns `dest`."""
        dest = Path(dest)
        if dest.exists():
            return dest
        for filename in manifest.files:
            check_filename(filename)
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.fetch-"))
        try:
            for filename, entry in manifest.files.items():
                target = temp / filename
                self.store.get_file(file_key(manifest, filename), target)
                size = target.stat().st_size
                if size != entry.size:
                    raise ChecksumMismatch(
                        f"adapter {manifest.ref}: {filename} is {size} bytes, the manifest says {entry.size}"
                    )
                digest = sha256_file(target)
                if digest != entry.sha256:
                    raise ChecksumMismatch(
                        f"adapter {manifest.ref}: {filename} has sha256 {digest}, the manifest says {entry.sha256}"
                    )
            (temp / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            try:
                os.rename(temp, dest)
            except OSError:
                if not dest.exists():
                    raise
                # Another fetch of the same adapter finished first: its copy is as good as ours.
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        return dest

    def unpublished_files(self, prefix: str) -> list[str]:
        """The names of the files directly under `prefix` (a key ending in `/`): a PEFT directory put in the store
        by other means, before it is imported as a version."""
        return [key[len(prefix) :] for key in self.store.list(prefix) if "/" not in key[len(prefix) :]]

    def get_unpublished_files(self, prefix: str, names: Iterable[str], dest: Path) -> None:
        """Download the files `names` under `prefix` into the directory `dest`, to be checked and published."""
        for filename in names:
            self.store.get_file(prefix + check_filename(filename), dest / filename)

    def delete(self, name: str, version: str | None = None) -> list[str]:
        """Unpublish one version (every version if None): first a revision of the aliases that drops those
        pointing at it and fences it off, then the manifest, then the files; NotFound if none."""
        if version is None:
            versions = [m.version for m in self.versions(name)]
            if not versions:
                raise NotFound(f"adapter {name!r} not found")
        else:
            if not self.store.exists(manifest_key(name, version)):
                raise NotFound(f"adapter {name}@{version} not found")
            versions = [version]
        gone = set(versions)

        def unpublish(current: Aliases) -> Aliases:
            # An alias must never point at nothing; `latest` falls back to the newest version.
            kept = {a: t for a, t in current.aliases.items() if not {t.version, t.canary} & gone}
            fenced = current.unpublished + [v for v in versions if v not in current.unpublished]
            return current.model_copy(update={"aliases": kept, "unpublished": fenced})

        fence = self.change_aliases(name, unpublish)
        for each in versions:
            # The manifest goes first so no reader ever sees a published version with missing files.
            self.store.delete(manifest_key(name, each))
            for key in self.store.list(adapter_prefix(name, each)):
                self.store.delete(key)
        if version is None:
            # The newest revision stays: removing it would let an alias writer that read an older one write again
            # at a revision number nobody holds.
            for key in self.store.list(alias_prefix(name)):
                if key < alias_key(name, fence.revision):
                    self.store.delete(key)
        return versions


def adapter_files(directory: Path) -> list[Path]:
    """The regular files to publish from an adapter directory (all but manifest.json), checked."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidAdapter(f"adapter directory {directory} does not exist")
    files = []
    for path in sorted(directory.iterdir()):
        if path.name == MANIFEST:
            continue
        if path.is_symlink() or not path.is_file():
            # peft writes a flat directory; anything else is not ours to upload.
            raise InvalidAdapter(f"adapter directory {directory} holds {path.name!r}, not a regular file")
        check_filename(path.name)
        files.append(path)
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise InvalidAdapter(f"adapter directory {directory} lacks {', '.join(missing)}")
    return files


def _parse_manifest(data: bytes, name: str, version: str) -> Manifest:
    """A stored manifest, which must describe the very name and version whose place it holds."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise InvalidAdapter(f"manifest of {name}@{version} is unreadable: {exc}") from None
    if (manifest.name, manifest.version) != (name, version):
        raise InvalidAdapter(f"manifest stored for {name}@{version} describes {manifest.ref}")
    return manifest


def _oldest_first(manifests: list[Manifest]) -> list[Manifest]:
    return sorted(manifests, key=lambda m: (m.created_at, m.version))
