"""The registry: adapters, jobs and datasets laid out in the object store.

    adapters/<name>/<version>/adapter_config.json, adapter_model.safetensors, ..., manifest.json (last)
    jobs/<job-id>.json
    datasets/<sha256>.jsonl

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

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from adapters.errors import AlreadyExists, ChecksumMismatch, Conflict, InvalidAdapter, InvalidName, NotFound
from adapters.models import sha256_file, weights_hash
from adapters.schema import (
    FILE_ID_RE,
    GENERATED_VERSION_RE,
    LATEST,
    Aliases,
    AliasTarget,
    FileEntry,
    FineTune,
    FineTunedModel,
    JobRecord,
    JobStatus,
    LoraInfo,
    Manifest,
    StoredFile,
    check_job_id,
    check_name,
    new_version,
)
from adapters.servable import REQUIRED_FILES
from adapters.store import ObjectStore, check_key

if TYPE_CHECKING:
    from adapters.templates import ChatTemplate

log = logging.getLogger("skillserve.registry")

MANIFEST = "manifest.json"
_DATASET_KEY_RE = re.compile(r"datasets/[0-9a-f]{64}\.jsonl")


def adapter_prefix(name: str, version: str | None = None) -> str:
    """The store prefix of an adapter (or of one version), ending in '/'."""
    check_name(name)
    if version is None:
        return f"adapters/{name}/"
    return f"adapters/{name}/{check_name(version, 'version')}/"


def manifest_key(name: str, version: str) -> str:
    return adapter_prefix(name, version) + MANIFEST


def file_key(manifest: Manifest, filename: str) -> str:
    """Where one file of a published version lies: its content address, or beside the manifest for manifests
    published before content addressing."""
    entry = manifest.files[filename]
    return adapter_prefix(manifest.name, manifest.version) + (entry.key or _check_filename(filename))


ALIAS_WRITE_ATTEMPTS = 8
# A job record's compare-and-swap, retried on a lost race: its writers write at most about once a second.
UPDATE_ATTEMPTS = 8
ALIAS_REVISIONS_KEPT = 4


def alias_prefix(name: str) -> str:
    return f"aliases/{check_name(name)}/"


def alias_key(name: str, revision: int) -> str:
    return f"{alias_prefix(name)}{revision:012d}.json"  # zero-padded: list order is revision order


def pick_version(aliases: Aliases, ref: str | None, user: str | None) -> str | None:
    """The version a reference means: an alias's (split by `user`), a version named outright, or None (the
    newest) for a bare name whose `latest` was never set."""
    target = aliases.aliases.get(ref or LATEST)
    if target is None:
        return ref
    return target.pick(user if user is not None else uuid.uuid4().hex)


def job_key(job_id: str) -> str:
    return f"jobs/{check_job_id(job_id)}.json"


# The one contract between gateway and trainer: a runner launches `python -m trainer run <job URI>`, and the
# trainer finds the store and its job record from that URI alone.
def job_uri(store_uri: str, job_id: str) -> str:
    """`<store-uri>/jobs/<id>.json`: the job record inside the store, what the trainer is launched with."""
    return f"{store_uri.rstrip('/')}/{job_key(job_id)}"


def parse_job_uri(uri: str) -> tuple[str, str]:
    """`<store-uri>/jobs/<id>.json` -> (store uri, job id); InvalidName for anything else."""
    root, sep, leaf = uri.rpartition("/jobs/")
    if not sep or not leaf.endswith(".json"):
        raise InvalidName(f"not a job URI (expected <store-uri>/jobs/<id>.json): {uri!r}")
    return root, check_job_id(leaf.removesuffix(".json"))


def checkpoint_prefix(job_id: str, step: int) -> str:
    return f"checkpoints/{check_job_id(job_id)}/step-{int(step)}/"


def new_manifest(
    name: str, template: ChatTemplate, lora: LoraInfo, *, base_model: str, base_dir: Path,
    version: str | None = None, **fields: Any,
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


class Registry:
    """Publish, find, fetch and delete adapters; keep job records and datasets. No state but the store."""

    def __init__(self, store: ObjectStore):
        self.store = store

    # Adapters

    def publish(self, manifest: Manifest, directory: Path) -> Manifest:
        """Upload the files in `directory` under their content addresses, then the manifest last, conditionally;
        AlreadyExists if the version exists or another publisher's manifest landed first."""
        key = manifest_key(manifest.name, manifest.version)
        files = _adapter_files(directory)
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
            return current.model_copy(update={
                "aliases": {**current.aliases, LATEST: latest},
                "unpublished": [v for v in current.unpublished if v != manifest.version],
            })

        self._change_aliases(manifest.name, point_latest)
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

    # Aliases: aliases/<name>/<revision>.json, append-only, each revision a conditional put.
    #
    # Every change to an adapter's aliases, a delete's included, is one revision written with if_absent over the
    # revision it read, so the changes are totally ordered. A delete first writes a revision that drops the aliases
    # pointing at the versions it deletes and lists those versions as `unpublished`, and only then removes their
    # manifests; an alias write refuses a version the revision it read lists, or whose manifest is gone. So an alias
    # write that lands before the delete's revision is seen (and undone) by the delete, and one that lands after it
    # read the delete's revision and refuses: no interleaving leaves an alias pointing at a deleted version.

    def aliases(self, name: str) -> Aliases:
        """The aliases in force for `name` (revision 0 and none when never set)."""
        keys = [k for k in self.store.list(alias_prefix(name)) if k.endswith(".json")]
        for key in reversed(keys):
            try:
                return Aliases.model_validate_json(self.store.get_bytes(key))
            except NotFound:
                continue  # deleted between list and get
        return Aliases(name=name)

    def set_alias(
        self, name: str, alias: str, target: AliasTarget | None, *, expected_revision: int | None = None
    ) -> Aliases:
        """Point `alias` at `target` (None removes it) in a new revision, written with a conditional put.

        With `expected_revision`, the write happens only if that revision is still in force (AlreadyExists
        otherwise: someone moved an alias since it was read); without, a lost race is retried on the new state.
        Refused: an alias named like a version (InvalidName), a version being deleted (Conflict), an unknown version
        or, when removing, an adapter with neither versions nor aliases (NotFound)."""
        check_name(alias, "alias")
        if GENERATED_VERSION_RE.fullmatch(alias):
            raise InvalidName(f"alias {alias!r} is named like a version: name@{alias} must mean that version",
                              param="alias")

        def change(current: Aliases) -> Aliases | None:
            if expected_revision is not None and current.revision != expected_revision:
                raise AlreadyExists(
                    f"aliases of {name} are at revision {current.revision}, not {expected_revision}: "
                    "read them again and retry"
                )
            if self.store.exists(manifest_key(name, alias)):
                raise InvalidName(f"alias {alias!r} is a version of {name}: {name}@{alias} must mean that version",
                                  param="alias")
            if target is None:
                if alias in current.aliases:
                    return current.model_copy(update={"aliases": {a: t for a, t in current.aliases.items()
                                                                  if a != alias}})
                if current.revision == 0 and not self.versions(name):
                    raise NotFound(f"adapter {name!r} not found")
                return None  # not set: nothing to remove
            for version, param in ((target.version, "version"), (target.canary, "canary")):
                if version is None:
                    continue
                # Checked on the revision just read, after reading it: see the comment above `aliases`.
                if version in current.unpublished:
                    raise Conflict(f"adapter {name}@{version} is being deleted: no alias can point at it",
                                   param=param)
                if not self.store.exists(manifest_key(name, version)):
                    raise NotFound(f"adapter {name}@{version} not found", param=param)
            return current.model_copy(update={"aliases": {**current.aliases, alias: target}})

        return self._change_aliases(name, change, conditional=expected_revision is not None)

    def _change_aliases(
        self, name: str, change: Callable[[Aliases], Aliases | None], *, conditional: bool = False
    ) -> Aliases:
        """Write `change(current)` as the next revision, if_absent: a lost race reads the new revision and runs
        `change` again (or, `conditional`, is refused). `change` returning None writes nothing."""
        for _ in range(ALIAS_WRITE_ATTEMPTS):
            current = self.aliases(name)
            changed = change(current)
            if changed is None:
                return current
            # Versions whose manifest is gone need no fence: an alias write checks the manifest after its read.
            unpublished = [v for v in changed.unpublished if self.store.exists(manifest_key(name, v))]
            written = Aliases(name=name, revision=current.revision + 1, aliases=changed.aliases,
                              unpublished=unpublished)
            try:
                self.store.put_bytes(
                    alias_key(name, written.revision), written.model_dump_json(indent=2).encode(), if_absent=True
                )
            except AlreadyExists:
                if conditional:
                    raise AlreadyExists(f"aliases of {name} were changed by another writer meanwhile") from None
                continue
            self._prune_aliases(name, written.revision)
            return written
        raise AlreadyExists(f"aliases of {name} keep changing under this writer; retry")

    def _prune_aliases(self, name: str, revision: int) -> None:
        # Old revisions are history nobody reads; a few stay so a reader between list and get still finds one.
        for key in self.store.list(alias_prefix(name))[:-ALIAS_REVISIONS_KEPT]:
            self.store.delete(key)

    def versions(self, name: str) -> list[Manifest]:
        """Every published version of `name`, oldest first."""
        prefix = adapter_prefix(name)
        keys = [k for k in self.store.list(prefix) if _is_manifest_key(k)]
        return _oldest_first(self._load_manifests(keys))

    def adapters(self) -> list[Manifest]:
        """The newest published version of every adapter, by name."""
        newest: dict[str, Manifest] = {}
        for manifest in _oldest_first(
            self._load_manifests(k for k in self.store.list("adapters/") if _is_manifest_key(k))
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
            _check_filename(filename)
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
                        f"adapter {manifest.ref}: {filename} has sha256 {digest}, "
                        f"the manifest says {entry.sha256}"
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

        fence = self._change_aliases(name, unpublish)
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

    # Jobs

    def put_job(self, record: JobRecord) -> None:
        """Write a job record whole: for a new job. A change to an existing one goes through `update_job`."""
        self.store.put_bytes(job_key(record.id), record.model_dump_json(indent=2).encode())

    def get_job(self, job_id: str) -> JobRecord:
        try:
            data = self.store.get_bytes(job_key(job_id))
        except NotFound:
            raise NotFound(f"job {job_id} not found") from None
        return JobRecord.model_validate_json(data)

    def update_job(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        """Apply `change` to the stored record and write what it returns (None: write nothing), as a
        compare-and-swap: if another process wrote the record in between, it is read again and `change` runs
        on the new one. So no writer (the trainer, a runner, the gateway) ever overwrites what it did not see.
        Returns the record written, or None when `change` declined; NotFound if the job is gone."""
        key = job_key(job_id)
        try:
            for _ in range(UPDATE_ATTEMPTS):
                data, tag = self.store.get_tagged(key)
                written = change(JobRecord.model_validate_json(data))
                if written is None:
                    return None
                try:
                    self.store.put_bytes(key, written.model_dump_json(indent=2).encode(), if_match=tag)
                except Conflict:
                    log.info("job %s changed while it was being written; reading it again", job_id)
                    continue
                return written
        except NotFound:  # gone before the read, or between the read and the write
            raise NotFound(f"job {job_id} not found") from None
        raise Conflict(f"job {job_id} kept changing: {UPDATE_ATTEMPTS} writes in a row lost the race")

    def list_jobs(self) -> list[JobRecord]:
        """Every job record, newest first."""
        records = []
        for key in self.store.list("jobs/"):
            if not key.endswith(".json") or key.count("/") != 1:
                continue
            try:
                records.append(JobRecord.model_validate_json(self.store.get_bytes(key)))
            except NotFound:
                continue
            except ValidationError as exc:
                log.warning("skipping unreadable job record %s: %s", key, exc)
        return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)

    # Checkpoints: adapters a job kept beside the one it published, publishable as versions later

    def store_checkpoint(self, job_id: str, step: int, directory: Path) -> str:
        """Upload a kept checkpoint's adapter files; returns its prefix (what `Checkpoint.stored` records)."""
        prefix = checkpoint_prefix(job_id, step)
        for path in _adapter_files(directory):
            self.store.put_file(prefix + path.name, path)
        return prefix

    def publish_checkpoint(self, job_id: str, step: int) -> Manifest:
        """Publish the checkpoint a job stored at `step` as a new version of the job's adapter (the manifest of the
        version the job published, with this step's files and figures); NotFound when none was stored."""
        record = self.get_job(job_id)
        checkpoint = next((c for c in record.checkpoints if c.step == step), None)
        if checkpoint is not None and checkpoint.version is not None:
            return self.manifest(record.spec.name, checkpoint.version)
        if checkpoint is None or checkpoint.stored is None:
            raise NotFound(f"job {job_id} kept no checkpoint at step {step}")
        if record.status is not JobStatus.succeeded:
            raise NotFound(f"job {job_id} published no adapter to take the checkpoint's manifest from")
        origin = self.manifest(record.spec.name, record.spec.version)  # what the job published
        metrics = {"kept": "checkpoint", "kept_step": step, "eval_loss": checkpoint.eval_loss,
                   "train_loss": checkpoint.train_loss, "checkpoint_of": origin.ref}
        manifest = origin.model_copy(
            update={"version": f"{record.spec.version}-step{step}", "metrics": metrics, "files": {},
                    "created_at": time.time()}
        )
        with tempfile.TemporaryDirectory(prefix="skillserve-checkpoint-") as tmp:
            directory = Path(tmp)
            for key in self.store.list(checkpoint.stored):
                self.store.get_file(key, directory / _check_filename(key.rsplit("/", 1)[-1]))
            completed = self.publish(manifest, directory)

        def record_version(current: JobRecord) -> JobRecord:
            return current.model_copy(
                update={"checkpoints": [c.model_copy(update={"version": manifest.version}) if c.step == step else c
                                        for c in current.checkpoints]}
            )

        self.update_job(job_id, record_version)
        return completed

    # Datasets

    def put_dataset(self, data: bytes) -> tuple[str, str]:
        """Store a dataset under its sha256 (idempotent); returns (key, sha256)."""
        digest = hashlib.sha256(data).hexdigest()
        key = f"datasets/{digest}.jsonl"
        if not self.store.exists(key):
            # Content-addressed: whoever wins a race wrote the same bytes.
            with contextlib.suppress(AlreadyExists):
                self.store.put_bytes(key, data, if_absent=True)
        return key, digest

    def dataset_in_use(self, key: str) -> bool:
        """Whether a job or a stored file still names the dataset at `key`."""
        sha = key.removeprefix("datasets/").removesuffix(".jsonl")
        if any(f.sha256 == sha for f in self.list_files()):
            return True
        return any(key in (j.spec.dataset_uri, j.spec.validation_uri) for j in self.list_jobs())

    # Files (OpenAI's Files API): files/<id>.json, the bytes content-addressed under datasets/ where jobs find them

    def put_file(self, record: StoredFile, data: bytes) -> StoredFile:
        """Store the bytes (once per content), then the record; returns the record with size and hash filled in."""
        _, digest = self.put_dataset(data)
        stored = record.model_copy(update={"sha256": digest, "bytes": len(data)})
        self.store.put_bytes(stored_file_key(stored.id), stored.model_dump_json(indent=2).encode(), if_absent=True)
        return stored

    def get_file(self, file_id: str) -> StoredFile:
        """A stored file's record; NotFound for an id that is not one, an unknown one or an expired one."""
        not_found = NotFound(f"No such File object: {file_id}")
        if not isinstance(file_id, str) or not FILE_ID_RE.fullmatch(file_id):
            raise not_found
        try:
            record = StoredFile.model_validate_json(self.store.get_bytes(stored_file_key(file_id)))
        except NotFound:
            raise not_found from None
        if record.expires_at is not None and record.expires_at <= time.time():
            raise not_found
        return record

    def list_files(self) -> list[StoredFile]:
        """Every stored file not expired, newest first."""
        records = []
        now = time.time()
        for key in self.store.list("files/"):
            try:
                record = StoredFile.model_validate_json(self.store.get_bytes(key))
            except NotFound:
                continue
            except ValidationError as exc:
                log.warning("skipping unreadable file record %s: %s", key, exc)
                continue
            if record.expires_at is None or record.expires_at > now:
                records.append(record)
        return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)

    def file_content(self, file_id: str) -> bytes:
        return self.get_dataset(dataset_key(self.get_file(file_id).sha256))

    def delete_file(self, file_id: str) -> StoredFile:
        """Remove a file's record, then its bytes unless a job or another file still names them."""
        record = self.get_file(file_id)
        self.store.delete(stored_file_key(file_id))
        key = dataset_key(record.sha256)
        if not self.dataset_in_use(key):
            self.store.delete(key)
        return record

    # Jobs created through the OpenAI API: what they asked for, and the ft: model ids naming adapter versions

    def put_fine_tune(self, fine_tune: FineTune) -> None:
        self.store.put_bytes(f"fine_tunes/{check_job_id(fine_tune.job_id)}.json", fine_tune.model_dump_json().encode())

    def get_fine_tune(self, job_id: str) -> FineTune | None:
        """What a job created through the OpenAI API asked for; None for a job created through POST /adapters."""
        try:
            return FineTune.model_validate_json(self.store.get_bytes(f"fine_tunes/{check_job_id(job_id)}.json"))
        except NotFound:
            return None

    def put_fine_tuned_model(self, model: FineTunedModel) -> None:
        self.store.put_bytes(fine_tuned_model_key(model.id), model.model_dump_json(indent=2).encode())

    def fine_tuned_model(self, model_id: str) -> FineTunedModel:
        """The adapter version an ft: model id names (published or not yet); NotFound if it names none."""
        try:
            return FineTunedModel.model_validate_json(self.store.get_bytes(fine_tuned_model_key(model_id)))
        except NotFound:
            raise NotFound(f"The model `{model_id}` does not exist.") from None

    def fine_tuned_models(self) -> list[FineTunedModel]:
        models = []
        for key in self.store.list("ft_models/"):
            with contextlib.suppress(NotFound):
                models.append(FineTunedModel.model_validate_json(self.store.get_bytes(key)))
        return sorted(models, key=lambda m: m.id)

    def delete_fine_tuned_model(self, model_id: str) -> FineTunedModel:
        """Forget an ft: model id (new requests get 404 at once), then unpublish the version it named."""
        model = self.fine_tuned_model(model_id)
        self.store.delete(fine_tuned_model_key(model_id))
        with contextlib.suppress(NotFound):
            self.delete(model.name, model.version)
        return model

    def get_dataset(self, key: str) -> bytes:
        """The dataset stored at `key` (a "datasets/<sha256>.jsonl" key), verified against its hash."""
        if not _DATASET_KEY_RE.fullmatch(check_key(key)):
            raise InvalidName(f"invalid dataset key {key!r}: expected datasets/<sha256>.jsonl")
        try:
            data = self.store.get_bytes(key)
        except NotFound:
            raise NotFound(f"dataset {key} not found") from None
        expected = key.removeprefix("datasets/").removesuffix(".jsonl")
        if hashlib.sha256(data).hexdigest() != expected:
            raise ChecksumMismatch(f"dataset {key} does not match its sha256")
        return data


def dataset_key(sha256: str) -> str:
    return f"datasets/{sha256}.jsonl"


def stored_file_key(file_id: str) -> str:
    return f"files/{file_id}.json"


def fine_tuned_model_key(model_id: str) -> str:
    # ft: ids hold ':' and capitals, which store keys may not: the record lies under the id's hash.
    return f"ft_models/{hashlib.sha256(model_id.encode()).hexdigest()}.json"


def _adapter_files(directory: Path) -> list[Path]:
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
        _check_filename(path.name)
        files.append(path)
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise InvalidAdapter(f"adapter directory {directory} lacks {', '.join(missing)}")
    return files


def _check_filename(filename: str) -> str:
    if "/" in filename or filename == MANIFEST:
        raise InvalidAdapter(f"invalid adapter file name {filename!r}")
    try:
        return check_key(filename)
    except InvalidName as exc:
        raise InvalidAdapter(f"invalid adapter file name {filename!r}: {exc}") from None


def _is_manifest_key(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 4 and parts[0] == "adapters" and parts[3] == MANIFEST


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
