"""The registry over both store backends: publish, read back, fetch verified, delete, jobs and datasets."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.errors import AlreadyExists, ChecksumMismatch, Conflict, InvalidAdapter, InvalidName, NotFound
from adapters.registry import Registry, file_key, records
from adapters.schema import AliasTarget, JobRecord, JobSpec, JobStatus, LoraInfo, Manifest
from adapters.store import ObjectStore


@pytest.fixture
def registry(store: ObjectStore) -> Registry:
    return Registry(store)


def unpublished(name: str, version: str, created_at: float = 1000.0) -> Manifest:
    """A manifest as the trainer hands it over: everything but the files."""
    return Manifest(
        name=name,
        version=version,
        base_model="SmolLM2-135M-Instruct",
        base_model_sha256="0" * 64,
        template_name="chatml",
        template="{% for m in messages %}{{ m.content }}{% endfor %}",
        stop=["<|im_end|>"],
        lora=LoraInfo(rank=8, alpha=16, dropout=0.05, target_modules=["q_proj", "v_proj"]),
        dataset_sha256="1" * 64,
        dataset_rows=80,
        metrics={"train_loss": 0.01},
        files={},
        created_at=created_at,
    )


def adapter_dir(root: Path, seed: str = "a") -> Path:
    """An adapter directory as peft writes it (contents are opaque bytes to the registry)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_config.json").write_text(f'{{"r": 8, "seed": "{seed}"}}')
    (root / "adapter_model.safetensors").write_bytes(os.urandom(64 * 1024))
    (root / "README.md").write_text("# an adapter\n")
    return root


def test_published_adapter_reads_back_with_every_file_hashed(registry: Registry, tmp_path: Path) -> None:
    directory = adapter_dir(tmp_path / "out")
    published = registry.publish(unpublished("shout", "v1"), directory)
    assert sorted(published.files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    weights = directory / "adapter_model.safetensors"
    entry = published.files["adapter_model.safetensors"]
    assert entry.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert entry.size == weights.stat().st_size
    assert registry.manifest("shout", "v1") == published
    assert registry.manifest("shout") == published
    assert registry.store.list("adapters/shout/v1/")[-1] == "adapters/shout/v1/manifest.json"


def test_versions_oldest_first_and_adapters_list_the_newest(registry: Registry, tmp_path: Path) -> None:
    registry.publish(unpublished("shout", "v2", created_at=2000), adapter_dir(tmp_path / "s2"))
    registry.publish(unpublished("shout", "v1", created_at=1000), adapter_dir(tmp_path / "s1"))
    registry.publish(unpublished("calm", "v1", created_at=1500), adapter_dir(tmp_path / "c1"))
    assert [m.version for m in registry.versions("shout")] == ["v1", "v2"]
    assert registry.manifest("shout").version == "v2"
    assert [m.ref for m in registry.adapters()] == ["calm@v1", "shout@v2"]
    assert registry.versions("nobody") == []
    with pytest.raises(NotFound, match="nobody"):
        registry.manifest("nobody")
    with pytest.raises(NotFound, match="shout@v9"):
        registry.manifest("shout", "v9")


def test_publishing_the_same_version_twice_is_refused(registry: Registry, tmp_path: Path) -> None:
    first = registry.publish(unpublished("shout", "v1"), adapter_dir(tmp_path / "a", "first"))
    with pytest.raises(AlreadyExists, match="shout@v1"):
        registry.publish(unpublished("shout", "v1"), adapter_dir(tmp_path / "b", "second"))
    assert registry.manifest("shout", "v1") == first


def test_conditional_manifest_write_catches_a_publisher_that_raced_past_the_check(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.publish(unpublished("shout", "v1"), adapter_dir(tmp_path / "a"))
    # The other writer checked before this one's manifest landed: its exists() said no.
    monkeypatch.setattr(registry.store, "exists", lambda key: False)
    with pytest.raises(AlreadyExists, match="another writer"):
        registry.publish(unpublished("shout", "v1"), adapter_dir(tmp_path / "b"))


def test_racing_publishers_of_one_version_exactly_one_wins(registry: Registry, tmp_path: Path) -> None:
    directory = adapter_dir(tmp_path / "a")
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def publish() -> None:
        barrier.wait()
        try:
            registry.publish(unpublished("shout", "v1"), directory)
            outcomes.append("won")
        except AlreadyExists:
            outcomes.append("refused")

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused", "refused", "refused", "won"]
    assert [m.ref for m in registry.versions("shout")] == ["shout@v1"]


def test_two_publishers_of_one_version_one_wins_and_every_reader_gets_a_valid_adapter(
    registry: Registry, store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both publishers upload every file before either writes its manifest: the interleaving in which, with
    files under fixed names, the loser's bytes replaced the winner's and readers failed the checksum."""
    dirs = {seed: adapter_dir(tmp_path / seed, seed) for seed in ("first", "second")}
    both_uploaded = threading.Barrier(2)
    real_put_bytes = store.put_bytes

    def put_bytes(key: str, data: bytes, *, if_absent: bool = False) -> None:
        if key.endswith("/manifest.json"):
            both_uploaded.wait(timeout=60)
        real_put_bytes(key, data, if_absent=if_absent)

    monkeypatch.setattr(store, "put_bytes", put_bytes)
    outcomes: dict[str, str] = {}

    def publish(seed: str) -> None:
        try:
            registry.publish(unpublished("shout", "v1"), dirs[seed])
            outcomes[seed] = "won"
        except AlreadyExists:
            outcomes[seed] = "refused"

    threads = [threading.Thread(target=publish, args=(seed,)) for seed in dirs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == ["refused", "won"]
    winner = next(seed for seed, outcome in outcomes.items() if outcome == "won")
    for reader in range(3):  # fresh readers, each a complete download verified against the manifest
        dest = registry.fetch(registry.manifest("shout", "v1"), tmp_path / f"reader{reader}")
        for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
            assert (dest / name).read_bytes() == (dirs[winner] / name).read_bytes()
    # The loser left no blob behind that the winner does not name.
    published = registry.manifest("shout", "v1")
    named = {file_key(published, f) for f in published.files}
    assert set(store.list("adapters/shout/v1/blobs/")) == named


def test_a_manifest_published_before_content_addressing_is_read_from_beside_it(
    registry: Registry, store: ObjectStore, tmp_path: Path
) -> None:
    directory = adapter_dir(tmp_path / "old")
    files = {}
    for path in sorted(directory.iterdir()):
        store.put_file(f"adapters/shout/v0/{path.name}", path)
        files[path.name] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size}
    old = unpublished("shout", "v0").model_dump(mode="json") | {"files": files}
    store.put_bytes("adapters/shout/v0/manifest.json", Manifest.model_validate(old).model_dump_json().encode())
    manifest = registry.manifest("shout", "v0")
    assert all(entry.key is None for entry in manifest.files.values())
    dest = registry.fetch(manifest, tmp_path / "cache" / "shout@v0")
    assert (dest / "adapter_model.safetensors").read_bytes() == (directory / "adapter_model.safetensors").read_bytes()
    registry.delete("shout", "v0")
    assert store.list("adapters/shout/") == []


def test_a_manifest_cannot_point_a_file_at_another_key() -> None:
    entry = {"sha256": "a" * 64, "size": 1}
    with pytest.raises(ValueError, match="blobs"):
        Manifest.model_validate(
            unpublished("shout", "v1").model_dump(mode="json")
            | {"files": {"adapter_config.json": entry | {"key": "../../jobs/x.json"}}}
        )


def test_crash_between_files_and_manifest_leaves_nothing_visible(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_put_bytes = registry.store.put_bytes

    def crash_on_manifest(key: str, data: bytes, *, if_absent: bool = False) -> None:
        if key.endswith("/manifest.json"):
            raise OSError("process killed")
        real_put_bytes(key, data, if_absent=if_absent)

    monkeypatch.setattr(registry.store, "put_bytes", crash_on_manifest)
    with pytest.raises(OSError, match="killed"):
        registry.publish(unpublished("shout", "v1"), adapter_dir(tmp_path / "a"))
    assert any(k.startswith("adapters/shout/v1/blobs/") for k in registry.store.list("adapters/"))
    assert registry.versions("shout") == []
    assert registry.adapters() == []
    with pytest.raises(NotFound):
        registry.manifest("shout", "v1")
    with pytest.raises(NotFound):
        registry.delete("shout")
    # After the crash, publishing the same version again succeeds.
    monkeypatch.setattr(registry.store, "put_bytes", real_put_bytes)
    registry.publish(unpublished("shout", "v1"), adapter_dir(tmp_path / "b"))
    assert [m.ref for m in registry.adapters()] == ["shout@v1"]


def test_files_uploaded_without_manifest_are_invisible(registry: Registry, store: ObjectStore) -> None:
    store.put_bytes("adapters/ghost/v1/adapter_config.json", b"{}")
    store.put_bytes("adapters/ghost/v1/adapter_model.safetensors", b"weights")
    assert registry.adapters() == []
    assert registry.versions("ghost") == []


def test_fetch_downloads_verified_files_and_the_manifest(registry: Registry, tmp_path: Path) -> None:
    directory = adapter_dir(tmp_path / "out")
    manifest = registry.publish(unpublished("shout", "v1"), directory)
    dest = tmp_path / "cache" / "shout@v1"
    assert registry.fetch(manifest, dest) == dest
    for name in manifest.files:
        assert (dest / name).read_bytes() == (directory / name).read_bytes()
    assert Manifest.model_validate_json((dest / "manifest.json").read_text()) == manifest
    # Already there: returned as is, without touching the store.
    assert registry.fetch(manifest, dest) == dest
    assert sorted(p.name for p in dest.parent.iterdir()) == ["shout@v1"]


@pytest.mark.parametrize("corruption", [b"tampered weights", None])
def test_fetch_refuses_a_corrupted_file_and_leaves_nothing(
    registry: Registry, store: ObjectStore, tmp_path: Path, corruption: bytes | None
) -> None:
    manifest = registry.publish(unpublished("shout", "v1"), adapter_dir(tmp_path / "out"))
    key = file_key(manifest, "adapter_model.safetensors")
    original = store.get_bytes(key)
    # Same size, one byte flipped (None) catches the hash check; other bytes catch the size check.
    store.put_bytes(key, corruption or bytes([original[0] ^ 1]) + original[1:])
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatch, match="adapter_model.safetensors"):
        registry.fetch(manifest, cache / "shout@v1")
    assert list(cache.iterdir()) == []


def test_delete_unpublishes_one_version_or_all(
    registry: Registry, store: ObjectStore, tmp_path: Path
) -> None:
    for n in (1, 2, 3):
        registry.publish(unpublished("shout", f"v{n}", created_at=n), adapter_dir(tmp_path / f"v{n}"))
    assert registry.delete("shout", "v2") == ["v2"]
    assert [m.version for m in registry.versions("shout")] == ["v1", "v3"]
    assert store.list("adapters/shout/v2/") == []
    with pytest.raises(NotFound):
        registry.delete("shout", "v2")
    assert registry.delete("shout") == ["v1", "v3"]
    assert store.list("adapters/") == []
    with pytest.raises(NotFound):
        registry.delete("shout")


def test_hostile_names_are_refused(registry: Registry, tmp_path: Path) -> None:
    for call in (
        lambda: registry.manifest("../jobs"),
        lambda: registry.manifest("shout", "v1/../../x"),
        lambda: registry.versions("Shout"),
        lambda: registry.delete("a/b"),
        lambda: registry.get_job("../x"),
        lambda: registry.get_dataset("jobs/x.json"),
        lambda: registry.get_dataset("datasets/../jobs/x.jsonl"),
    ):
        with pytest.raises(InvalidName):
            call()


def test_publish_refuses_a_directory_without_adapter_weights(registry: Registry, tmp_path: Path) -> None:
    directory = adapter_dir(tmp_path / "out")
    (directory / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidAdapter, match="adapter_model.safetensors"):
        registry.publish(unpublished("shout", "v1"), directory)
    assert registry.store.list("") == []


def job(name: str, created_at: float) -> JobRecord:
    spec = JobSpec(
        name=name,
        base_model="SmolLM2-135M-Instruct",
        base_model_id="SmolLM2-135M-Instruct",
        dataset_uri="datasets/" + "a" * 64 + ".jsonl",
        dataset_sha256="a" * 64,
        dataset_rows=80,
    )
    return JobRecord(spec=spec, created_at=created_at)


def test_jobs_are_stored_updated_and_listed_newest_first(registry: Registry) -> None:
    old, new = job("shout", 100.0), job("calm", 200.0)
    registry.put_job(old)
    registry.put_job(new)
    assert registry.get_job(old.id) == old
    running = old.model_copy(update={"status": JobStatus.running})
    registry.put_job(running)
    assert registry.get_job(old.id).status is JobStatus.running
    assert [r.id for r in registry.list_jobs()] == [new.id, old.id]
    with pytest.raises(NotFound, match="job"):
        registry.get_job("0" * 32)


def test_an_update_that_keeps_losing_the_race_waits_and_tries_again_up_to_its_limit(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each try of `update_job` is beaten by another write between its read and its conditional write (here the
    change itself makes that write). One that loses more often than the old limit of 8 still lands, after a random
    wait each time; one that always loses is a Conflict after UPDATE_ATTEMPTS tries, with the record as the last
    rival left it."""
    monkeypatch.setattr(records, "BACKOFF_MAX_S", 0.01)
    waits: list[float] = []
    monkeypatch.setattr(records, "sleep", waits.append)
    record = job("shout", 100.0)
    registry.put_job(record)

    def rival_then(losses: int) -> Callable[[JobRecord], JobRecord]:
        tries = [0]

        def change(current: JobRecord) -> JobRecord:
            tries[0] += 1
            if tries[0] <= losses:  # another writer lands first
                registry.put_job(current.model_copy(update={"error": f"rival {tries[0]}"}))
            return current.model_copy(update={"status": JobStatus.running})

        return change

    written = registry.update_job(record.id, rival_then(10))
    assert written is not None and written.status is JobStatus.running and written.error == "rival 10"
    assert registry.get_job(record.id) == written
    assert len(waits) == 10 and all(0 <= w <= 0.01 for w in waits)
    waits.clear()
    with pytest.raises(Conflict, match=f"{records.UPDATE_ATTEMPTS} writes in a row lost the race"):
        registry.update_job(record.id, rival_then(records.UPDATE_ATTEMPTS))
    assert registry.get_job(record.id).error == f"rival {records.UPDATE_ATTEMPTS}"
    assert len(waits) == records.UPDATE_ATTEMPTS


def test_datasets_are_content_addressed_and_verified(registry: Registry, store: ObjectStore) -> None:
    data = b'{"messages": []}\n'
    key, sha = registry.put_dataset(data)
    assert sha == hashlib.sha256(data).hexdigest() and key == f"datasets/{sha}.jsonl"
    assert registry.put_dataset(data) == (key, sha)
    assert registry.get_dataset(key) == data
    with pytest.raises(NotFound):
        registry.get_dataset("datasets/" + "f" * 64 + ".jsonl")
    store.put_bytes(key, b"changed behind our back")
    with pytest.raises(ChecksumMismatch):
        registry.get_dataset(key)


def test_publishing_moves_latest_and_an_alias_rolls_back(registry: Registry, tmp_path: Path) -> None:
    registry.publish(unpublished("shout", "v1", created_at=1), adapter_dir(tmp_path / "1"))
    registry.publish(unpublished("shout", "v2", created_at=2), adapter_dir(tmp_path / "2"))
    assert registry.resolve("shout").version == "v2"
    prod = registry.set_alias("shout", "prod", AliasTarget(version="v2"))
    assert registry.resolve("shout", "prod").version == "v2"
    # Rollback: point it back, conditionally on the revision just read.
    registry.set_alias("shout", "prod", AliasTarget(version="v1"), expected_revision=prod.revision)
    assert registry.resolve("shout", "prod").version == "v1"
    with pytest.raises(AlreadyExists, match="revision"):
        registry.set_alias("shout", "prod", AliasTarget(version="v2"), expected_revision=prod.revision)
    registry.set_alias("shout", "latest", AliasTarget(version="v1"))
    assert registry.resolve("shout").version == "v1"
    assert registry.resolve("shout", "v2").version == "v2"  # versions by name still resolve
    with pytest.raises(NotFound):
        registry.set_alias("shout", "prod", AliasTarget(version="v9"))
    registry.delete("shout", "v1")  # aliases pointing at it go; `latest` falls back to the newest
    assert registry.resolve("shout").version == "v2"
    with pytest.raises(NotFound):
        registry.resolve("shout", "prod")
    registry.delete("shout")
    # One revision stays, with no alias: a writer that read an older one cannot write at a number nobody holds.
    assert len(registry.store.list("aliases/")) == 1 and registry.aliases("shout").aliases == {}


def test_concurrent_alias_writers_each_land_in_a_revision_of_their_own(registry: Registry, tmp_path: Path) -> None:
    for n in range(4):
        registry.publish(unpublished("shout", f"v{n}", created_at=n), adapter_dir(tmp_path / str(n)))
    barrier = threading.Barrier(4)

    def point(n: int) -> None:
        barrier.wait()
        registry.set_alias("shout", f"a{n}", AliasTarget(version=f"v{n}"))

    threads = [threading.Thread(target=point, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    aliases = registry.aliases("shout").aliases
    assert {a: t.version for a, t in aliases.items() if a != "latest"} == {f"a{n}": f"v{n}" for n in range(4)}


def test_a_canary_split_is_weighted_and_sticky_per_user() -> None:
    target = AliasTarget(version="v1", canary="v2", canary_weight=0.1)
    picks = [target.pick(f"user-{n}") for n in range(2000)]
    assert 0.07 < picks.count("v2") / len(picks) < 0.13
    assert all(target.pick(f"user-{n}") == picks[n] for n in range(2000))


class AliasesReadThen:
    """A store through which `meanwhile` runs once, right after this writer's first read of an adapter's aliases:
    another gateway's whole alias write or delete lands between this writer's read and its write."""

    def __init__(self, store: ObjectStore, meanwhile: Callable[[], object]):
        self.store, self.meanwhile = store, meanwhile
        self.done = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def list(self, prefix: str) -> list[str]:
        keys = self.store.list(prefix)
        if prefix.startswith("aliases/") and not self.done:
            self.done = True
            self.meanwhile()
        return keys


def _three_versions(registry: Registry, tmp_path: Path) -> None:
    for n in (1, 2, 3):
        registry.publish(unpublished("shout", f"v{n}", created_at=n), adapter_dir(tmp_path / str(n)))


def _no_alias_points_at_nothing(registry: Registry) -> None:
    published = {m.version for m in registry.versions("shout")}
    for alias, target in registry.aliases("shout").aliases.items():
        assert {target.version, target.canary} - {None} <= published, (alias, target, published)
    assert registry.resolve("shout").version in published  # the bare name still answers


def test_an_alias_write_that_read_before_a_delete_is_refused(registry: Registry, tmp_path: Path) -> None:
    _three_versions(registry, tmp_path)
    racing = Registry(AliasesReadThen(registry.store, lambda: registry.delete("shout", "v2")))  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="shout@v2"):  # its version was checked after its read
        racing.set_alias("shout", "latest", AliasTarget(version="v2"))
    _no_alias_points_at_nothing(registry)
    assert registry.resolve("shout").version == "v3"


class StopsAtManifestDelete:
    """A store that fails a delete of a manifest: a gateway that stopped in the middle of a delete."""

    def __init__(self, store: ObjectStore):
        self.store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def delete(self, key: str) -> None:
        if key.endswith("/manifest.json"):
            raise RuntimeError("the gateway stopped here")
        self.store.delete(key)


def test_no_alias_can_point_at_a_version_whose_delete_is_under_way(registry: Registry, tmp_path: Path) -> None:
    _three_versions(registry, tmp_path)
    with pytest.raises(RuntimeError):
        Registry(StopsAtManifestDelete(registry.store)).delete("shout", "v2")  # type: ignore[arg-type]
    assert registry.resolve("shout", "v2").version == "v2"  # still published, but fenced off
    with pytest.raises(Conflict, match="shout@v2 is being deleted") as refused:
        registry.set_alias("shout", "prod", AliasTarget(version="v3", canary="v2", canary_weight=0.1))
    assert refused.value.param == "canary"
    assert registry.delete("shout", "v2") == ["v2"]  # the delete, run again, completes
    registry.set_alias("shout", "prod", AliasTarget(version="v3"))
    assert registry.aliases("shout").unpublished == []  # no fence outlives its manifest


def test_a_delete_that_read_the_aliases_before_an_alias_moved_onto_its_version_removes_that_alias(
    registry: Registry, tmp_path: Path
) -> None:
    _three_versions(registry, tmp_path)
    moved = lambda: registry.set_alias("shout", "latest", AliasTarget(version="v2"))  # noqa: E731
    racing = Registry(AliasesReadThen(registry.store, moved))  # type: ignore[arg-type]
    assert racing.delete("shout", "v2") == ["v2"]
    _no_alias_points_at_nothing(registry)
    assert registry.resolve("shout").version == "v3"  # `latest` went with v2: the newest answers


def _move_latest_while_deleting_its_target(registry: Registry, name: str) -> None:
    barrier = threading.Barrier(2)

    def move() -> None:
        barrier.wait()
        with contextlib.suppress(Conflict, NotFound):  # refused: its version went first
            registry.set_alias(name, "latest", AliasTarget(version="v2"))

    def delete() -> None:
        barrier.wait()
        registry.delete(name, "v2")

    threads = [threading.Thread(target=move), threading.Thread(target=delete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_alias_moves_racing_deletes_of_their_version_never_leave_an_alias_on_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    for attempt in range(12):
        name = f"race{attempt}"
        for n in (1, 2, 3):
            registry.publish(unpublished(name, f"v{n}", created_at=n), adapter_dir(tmp_path / f"{attempt}-{n}"))
        _move_latest_while_deleting_its_target(registry, name)
        target = registry.aliases(name).aliases.get("latest")
        assert target is None or target.version in ("v1", "v3"), (attempt, target)
        assert registry.resolve(name).version in ("v1", "v3")


def test_an_alias_may_not_take_a_versions_name_nor_a_version_an_aliases(registry: Registry, tmp_path: Path) -> None:
    _three_versions(registry, tmp_path)
    with pytest.raises(InvalidName, match="is a version") as refused:
        registry.set_alias("shout", "v1", AliasTarget(version="v2"))
    assert refused.value.param == "alias"
    with pytest.raises(InvalidName, match="named like a version"):  # a version not published yet, too
        registry.set_alias("shout", "v20260101000000-ab12", AliasTarget(version="v2"))
    assert registry.resolve("shout", "v1").version == "v1"
    registry.set_alias("shout", "prod", AliasTarget(version="v2"))
    with pytest.raises(AlreadyExists, match="is an alias"):
        registry.publish(unpublished("shout", "prod", created_at=4), adapter_dir(tmp_path / "4"))
    assert registry.resolve("shout", "prod").version == "v2"


def test_removing_an_alias_of_a_missing_adapter_is_not_found_and_writes_nothing(registry: Registry) -> None:
    with pytest.raises(NotFound):
        registry.set_alias("ghost", "prod", None)
    assert registry.store.list("aliases/") == []


def test_a_version_published_again_after_its_delete_can_be_aliased(registry: Registry, tmp_path: Path) -> None:
    _three_versions(registry, tmp_path)
    registry.delete("shout", "v3")
    registry.publish(unpublished("shout", "v3", created_at=3), adapter_dir(tmp_path / "again"))
    registry.set_alias("shout", "prod", AliasTarget(version="v3"))
    assert registry.resolve("shout", "prod").version == "v3"
    assert registry.aliases("shout").unpublished == []


def test_a_directory_put_in_the_store_by_other_means_is_listed_and_copied_for_import(
    registry: Registry, tmp_path: Path
) -> None:
    """What POST /adapters/import reads through the registry: the files directly under the prefix (not deeper),
    then the chosen ones copied into a local directory."""
    registry.store.put_bytes("imports/peft/adapter_config.json", b"{}")
    registry.store.put_bytes("imports/peft/adapter_model.safetensors", b"weights")
    registry.store.put_bytes("imports/peft/checkpoint-1/adapter_model.safetensors", b"older")
    assert sorted(registry.unpublished_files("imports/peft/")) == ["adapter_config.json", "adapter_model.safetensors"]
    work = tmp_path / "work"
    work.mkdir()
    registry.get_unpublished_files("imports/peft/", ["adapter_model.safetensors"], work)
    assert [p.name for p in work.iterdir()] == ["adapter_model.safetensors"]
    assert (work / "adapter_model.safetensors").read_bytes() == b"weights"
    with pytest.raises(InvalidAdapter):
        registry.get_unpublished_files("imports/peft/", ["../escape"], work)


def test_a_dataset_named_by_its_key_is_read_through_the_registry(registry: Registry) -> None:
    key, _ = registry.put_dataset(b'{"messages": []}\n')
    assert registry.stored_dataset(key) == b'{"messages": []}\n'
    with pytest.raises(InvalidName):
        registry.stored_dataset("/etc/passwd")
