"""The object store contract, run against both backends (a local directory and S3 over HTTP to moto)."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from adapters.errors import AlreadyExists, Conflict, InvalidName, NotFound, StoreUnavailable
from adapters.store import FileStore, ObjectStore, S3Store, check_key, open_store


def closed_loopback_endpoint() -> str:
    """An http endpoint on a loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_bytes_roundtrip_and_overwrite(store: ObjectStore) -> None:
    store.put_bytes("jobs/abc.json", b'{"a": 1}')
    assert store.get_bytes("jobs/abc.json") == b'{"a": 1}'
    assert store.exists("jobs/abc.json")
    store.put_bytes("jobs/abc.json", b"second")
    assert store.get_bytes("jobs/abc.json") == b"second"


def test_file_of_a_few_megabytes_roundtrips(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "adapter_model.safetensors"
    payload = os.urandom(3 * 2**20 + 17)
    source.write_bytes(payload)
    store.put_file("adapters/shout/v1/adapter_model.safetensors", source)
    target = tmp_path / "downloaded.bin"
    store.get_file("adapters/shout/v1/adapter_model.safetensors", target)
    assert target.read_bytes() == payload


def test_large_file_goes_up_and_down_in_parts(s3_store_uri: str, tmp_path: Path) -> None:
    # 5 MiB is S3's smallest multipart part; 11 MiB makes three parts each way.
    store = S3Store(s3_store_uri, multipart_chunk=5 * 2**20)
    source = tmp_path / "big.bin"
    payload = os.urandom(11 * 2**20)
    source.write_bytes(payload)
    store.put_file("big.bin", source)
    store.get_file("big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == payload


def test_missing_keys_raise_not_found(store: ObjectStore, tmp_path: Path) -> None:
    assert not store.exists("jobs/nothing.json")
    with pytest.raises(NotFound, match="jobs/nothing.json"):
        store.get_bytes("jobs/nothing.json")
    with pytest.raises(NotFound, match="jobs/nothing.json"):
        store.get_file("jobs/nothing.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_list_is_recursive_sorted_and_bounded_by_prefix(store: ObjectStore) -> None:
    assert store.list("") == []
    for key in [
        "adapters/b/v1/x",
        "adapters/a/v2/manifest.json",
        "adapters/a/v1/x",
        "jobs/1.json",
        "adaptersx",
    ]:
        store.put_bytes(key, b".")
    assert store.list("adapters/") == ["adapters/a/v1/x", "adapters/a/v2/manifest.json", "adapters/b/v1/x"]
    assert store.list("adapters/a/") == ["adapters/a/v1/x", "adapters/a/v2/manifest.json"]
    assert store.list("adapters/a/v") == ["adapters/a/v1/x", "adapters/a/v2/manifest.json"]
    assert store.list("adapters") == [
        "adapters/a/v1/x",
        "adapters/a/v2/manifest.json",
        "adapters/b/v1/x",
        "adaptersx",
    ]
    assert store.list("") == sorted(store.list("adapters") + ["jobs/1.json"])
    assert store.list("datasets/") == []


def test_delete_removes_and_ignores_missing(store: ObjectStore) -> None:
    store.put_bytes("datasets/d.jsonl", b"{}")
    store.delete("datasets/d.jsonl")
    assert not store.exists("datasets/d.jsonl")
    assert store.list("datasets/") == []
    store.delete("datasets/d.jsonl")
    store.delete("never/was/there")


def test_if_absent_is_refused_the_second_time(store: ObjectStore) -> None:
    store.put_bytes("adapters/a/v1/manifest.json", b"first", if_absent=True)
    with pytest.raises(AlreadyExists, match="manifest.json"):
        store.put_bytes("adapters/a/v1/manifest.json", b"second", if_absent=True)
    assert store.get_bytes("adapters/a/v1/manifest.json") == b"first"


def test_racing_if_absent_writers_exactly_one_wins(store: ObjectStore) -> None:
    writers = 8
    barrier = threading.Barrier(writers)
    won: list[int] = []
    lost: list[int] = []

    def write(n: int) -> None:
        barrier.wait()
        try:
            store.put_bytes("adapters/race/v1/manifest.json", f"writer {n}".encode(), if_absent=True)
            won.append(n)
        except AlreadyExists:
            lost.append(n)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == writers - 1
    assert store.get_bytes("adapters/race/v1/manifest.json") == f"writer {won[0]}".encode()


def test_if_match_writes_only_over_the_version_that_was_read(store: ObjectStore) -> None:
    store.put_bytes("jobs/j.json", b"v1")
    data, tag = store.get_tagged("jobs/j.json")
    assert data == b"v1"
    store.put_bytes("jobs/j.json", b"v2", if_match=tag)
    data, newer = store.get_tagged("jobs/j.json")
    assert data == b"v2" and newer != tag
    # A writer still holding the first read loses, and what the other wrote stays.
    with pytest.raises(Conflict, match="jobs/j.json changed"):
        store.put_bytes("jobs/j.json", b"stale", if_match=tag)
    assert store.get_tagged("jobs/j.json") == (b"v2", newer)
    store.delete("jobs/j.json")
    with pytest.raises(NotFound):
        store.put_bytes("jobs/j.json", b"after the delete", if_match=newer)
    assert not store.exists("jobs/j.json")
    assert store.list("jobs/") == []  # the file store's lock file is no key


def test_racing_compare_and_swap_writers_lose_no_update(tmp_path: Path) -> None:
    """Threads that each add to a counter by read, compare and swap: every addition lands (file store: its
    lock; on S3 the server's If-Match does the same, checked above for one stale writer)."""
    store = FileStore(tmp_path / "store")
    store.put_bytes("jobs/counter.json", b"0")
    writers, additions = 4, 10
    barrier = threading.Barrier(writers)

    def add() -> None:
        barrier.wait()
        for _ in range(additions):
            while True:
                data, tag = store.get_tagged("jobs/counter.json")
                try:
                    store.put_bytes("jobs/counter.json", str(int(data) + 1).encode(), if_match=tag)
                    break
                except Conflict:
                    continue  # another writer's addition landed first: add to it

    threads = [threading.Thread(target=add) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert int(store.get_bytes("jobs/counter.json")) == writers * additions


HOSTILE_KEYS = [
    "",
    "/etc/passwd",
    "../escape",
    "adapters/../../escape",
    "adapters/..",
    "adapters/./x",
    "./x",
    "adapters//x",
    "adapters/x/",
    "adapters\\..\\x",
    "%2e%2e/escape",
    "adapters%2f..%2fx",
    "adapters%5cx",
    "adapters/%2E%2E/x",
    "adapters/x\x00.json",
    "adapters/x\n",
    "adapters/\u2024\u2024/x",  # one-dot leaders that look like '..'
    "adapters\uff0f..\uff0fx",  # fullwidth solidus
    "adapters/caf\u00e9",
    ".hidden",
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_are_refused_before_any_io(
    key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stores that would fail on any I/O: a root that must not be created and an endpoint nobody serves.
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_loopback_endpoint())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    stores: list[ObjectStore] = [FileStore(tmp_path / "root"), S3Store("s3://bucket/p", max_attempts=1)]
    source = tmp_path / "source"
    source.write_bytes(b"x")
    with pytest.raises(InvalidName):
        check_key(key)
    for store in stores:
        calls = [
            lambda s=store: s.put_bytes(key, b"x"),
            lambda s=store: s.put_bytes(key, b"x", if_absent=True),
            lambda s=store: s.get_bytes(key),
            lambda s=store: s.put_file(key, source),
            lambda s=store: s.get_file(key, tmp_path / "dest"),
            lambda s=store: s.exists(key),
            lambda s=store: s.delete(key),
        ]
        for call in calls:
            with pytest.raises(InvalidName):
                call()
    assert not (tmp_path / "root").exists()
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("prefix", ["../", "/abs", "a/../", "%2e%2e/"])
def test_hostile_list_prefixes_are_refused(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidName):
        store.list(prefix)


def test_ordinary_keys_are_accepted() -> None:
    for key in [
        "adapters/shout/v20250101-ab12/adapter_model.safetensors",
        "jobs/0f.json",
        "datasets/ab.jsonl",
    ]:
        assert check_key(key) == key


def test_unreachable_s3_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed_loopback_endpoint())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = open_store("s3://skillserve-nowhere/p")  # default timeouts and retries, as deployed
    source = tmp_path / "f"
    source.write_bytes(b"x")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.get_bytes("jobs/x.json")
    assert time.monotonic() - started < 15
    for call in (
        lambda: store.put_bytes("jobs/x.json", b"x", if_absent=True),
        lambda: store.list("jobs/"),
        lambda: store.exists("jobs/x.json"),
        lambda: store.put_file("f", source),
        lambda: store.get_file("f", tmp_path / "g"),
    ):
        with pytest.raises(StoreUnavailable):
            call()
    assert time.monotonic() - started < 60


def test_s3_prefix_places_keys_under_it(s3_store_uri: str, moto_endpoint: str) -> None:
    import boto3

    store = open_store(s3_store_uri)
    assert isinstance(store, S3Store) and store.uri == s3_store_uri
    store.put_bytes("jobs/a.json", b"{}")
    bucket = s3_store_uri.removeprefix("s3://").split("/")[0]
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in listed] == ["root/jobs/a.json"]


def test_missing_bucket_is_not_found(moto_endpoint: str) -> None:
    store = open_store("s3://skillserve-no-such-bucket")
    with pytest.raises(NotFound, match="bucket"):
        store.get_bytes("jobs/a.json")


def test_file_store_root_is_created_on_demand_and_leaves_no_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    store = open_store(f"file://{root}")
    assert isinstance(store, FileStore) and store.uri == root.as_uri()
    assert store.list("") == []
    assert not root.exists()
    store.put_bytes("adapters/x/v1/manifest.json", b"{}", if_absent=True)
    with pytest.raises(AlreadyExists):
        store.put_bytes("adapters/x/v1/manifest.json", b"{}", if_absent=True)
    assert sorted(p.name for p in (root / "adapters/x/v1").iterdir()) == ["manifest.json"]


def test_open_store_accepts_plain_paths_and_refuses_other_schemes(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "plain"))
    assert isinstance(store, FileStore) and store.root == tmp_path / "plain"
    for uri in ["", "http://example.com/x", "file://host/x", "file://relative", "s3://", "s3://Bad_Bucket/x"]:
        with pytest.raises(InvalidName):
            open_store(uri)
    with pytest.raises(InvalidName):
        open_store("s3://bucket/../x")
