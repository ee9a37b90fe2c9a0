"""Contract of userlens.storage.objectstore, checked on the local folder store AND a real S3 server
(SeaweedFS, started once per session): both backends must behave the same."""

from __future__ import annotations

import gc
import hashlib
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from userlens.storage.objectstore import (
    InvalidObjectPath,
    LocalObjectStore,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    S3ObjectStore,
)

try:  # tests/ without __init__.py: pytest puts tests/ on sys.path
    from infra.backends import fresh_object_store, seaweed_server  # noqa: F401 - seaweed_server is a fixture
    from infra.seaweed import SeaweedServer, pick_free_ports
except ImportError:  # pragma: no cover - tests/ is a package
    from tests.infra.backends import fresh_object_store, seaweed_server  # noqa: F401
    from tests.infra.seaweed import SeaweedServer, pick_free_ports

MB = 1024 * 1024
PART = 16 * MB  # S3ObjectStore's block size: writes beyond it start a multipart upload


@dataclass
class Case:
    kind: str  # "local" | "s3"
    store: ObjectStore  # the writer
    reader: ObjectStore  # a second client on the same storage, as another process would have
    server: SeaweedServer | None
    root: Path | None  # the local store's folder


@pytest.fixture(params=["local", "s3"])
def case(request, tmp_path) -> Case:
    store, server = fresh_object_store(request, request.param, tmp_path)
    if isinstance(store, LocalObjectStore):
        return Case("local", store, LocalObjectStore(store.root), None, store.root)
    assert server is not None
    reader = S3ObjectStore(server.endpoint_url, server.access_key, server.secret_key)
    return Case("s3", store, reader, server, None)


@pytest.fixture
def store(case) -> ObjectStore:
    return case.store


@pytest.fixture
def bucket(store) -> str:
    store.create_bucket("contract")
    return "contract"


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def leftovers(case: Case, bucket: str) -> list[str]:
    """Traces of unfinished writes: local temporaries, or S3 multipart uploads still open."""
    if case.kind == "local":
        assert case.root is not None
        return [str(Path(d) / f) for d, _, files in os.walk(case.root) for f in files if f.startswith(".tmp-")]
    assert case.server is not None
    uploads = case.server.s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [u["Key"] for u in uploads]


# -- buckets ----------------------------------------------------------------------------------------
def test_create_bucket_then_exists_and_idempotent(store):
    assert not store.bucket_exists("alpha")
    store.create_bucket("alpha")
    assert store.bucket_exists("alpha")
    store.create_bucket("alpha")  # again: no error
    assert store.bucket_exists("alpha")
    assert not store.bucket_exists("beta")


@pytest.mark.parametrize("name", ["abc", "a.b-c", "0-9", "x" * 63])
def test_valid_bucket_names(store, name):
    store.create_bucket(name)
    assert store.bucket_exists(name)
    store.write_bytes(name, "k", b"v")
    assert store.read_bytes(name, "k") == b"v"


@pytest.mark.parametrize(
    "name",
    ["", "ab", "x" * 64, "Upper", "-abc", "abc-", "a_b", "a/b", "a\\b", "..", "../abc", "abc/..", "a b"],
)
def test_invalid_bucket_names_rejected(store, name):
    for op in (
        lambda: store.bucket_exists(name),
        lambda: store.create_bucket(name),
        lambda: store.exists(name, "k"),
        lambda: store.write_bytes(name, "k", b"v"),
        lambda: store.read_bytes(name, "k"),
        lambda: store.list(name),
        lambda: store.is_dir(name, "a"),
        lambda: store.delete(name, "k"),
        lambda: store.delete_prefix(name, "a"),
    ):
        with pytest.raises(InvalidObjectPath):
            op()


def test_writing_into_a_missing_bucket_fails(store):
    with pytest.raises(FileNotFoundError):
        store.write_bytes("nobucket", "k", b"v")
    assert not store.bucket_exists("nobucket")
    assert not store.exists("nobucket", "k")
    assert store.list("nobucket") == []
    assert not store.is_dir("nobucket", "a")
    with pytest.raises(FileNotFoundError):
        store.read_bytes("nobucket", "k")


# -- keys -------------------------------------------------------------------------------------------
BAD_KEYS = [
    "..",
    "../x",
    "a/../b",
    "a/..",
    ".",
    "./a",
    "a/./b",
    "/abs",
    "/",
    "a\\b",
    "\\x",
    "a//b",
    "//a",
    "a/b//",
    "a\x00b",
]


@pytest.mark.parametrize("key", BAD_KEYS + ["", "a/", "dir/sub/"], ids=repr)
def test_invalid_object_keys_rejected(case, bucket, key):
    store = case.store

    def open_write():
        with store.open_write(bucket, key) as f:
            f.write(b"v")

    def open_read():
        with store.open_read(bucket, key) as f:
            f.read()

    for op in (
        lambda: store.exists(bucket, key),
        lambda: store.size(bucket, key),
        lambda: store.read_bytes(bucket, key),
        open_read,
        lambda: store.write_bytes(bucket, key, b"v"),
        open_write,
        lambda: store.delete(bucket, key),
    ):
        with pytest.raises(InvalidObjectPath):
            op()
    assert store.list(bucket) == []
    assert leftovers(case, bucket) == []


@pytest.mark.parametrize("prefix", [k for k in BAD_KEYS if k.rstrip("/") and k != "a/b//"], ids=repr)
def test_invalid_prefixes_rejected(store, bucket, prefix):
    store.write_bytes(bucket, "a/b", b"keep")
    for op in (
        lambda: store.list(bucket, prefix),
        lambda: store.usage(bucket, prefix),
        lambda: store.is_dir(bucket, prefix),
        lambda: store.delete_prefix(bucket, prefix),
    ):
        with pytest.raises(InvalidObjectPath):
            op()
    assert store.read_bytes(bucket, "a/b") == b"keep"


@pytest.mark.parametrize("prefix", ["", "/"])
def test_delete_prefix_refuses_to_empty_the_bucket(store, bucket, prefix):
    store.write_bytes(bucket, "a/b", b"keep")
    with pytest.raises(InvalidObjectPath):
        store.delete_prefix(bucket, prefix)
    assert store.bucket_exists(bucket)
    assert store.read_bytes(bucket, "a/b") == b"keep"


def test_check_errors_are_value_errors():
    assert issubclass(InvalidObjectPath, ValueError)
    assert not issubclass(ObjectStoreError, ValueError)


# -- objects ----------------------------------------------------------------------------------------
def test_write_read_roundtrip_and_overwrite(case, bucket):
    store = case.store
    store.write_bytes(bucket, "dir/obj.bin", b"first version")
    assert case.reader.read_bytes(bucket, "dir/obj.bin") == b"first version"
    store.write_bytes(bucket, "dir/obj.bin", b"2nd")
    assert case.reader.read_bytes(bucket, "dir/obj.bin") == b"2nd"
    assert store.size(bucket, "dir/obj.bin") == 3
    assert store.list(bucket) == [ObjectInfo("dir/obj.bin", 3)]


def test_empty_object(store, bucket):
    store.write_bytes(bucket, "empty", b"")
    assert store.exists(bucket, "empty")
    assert store.size(bucket, "empty") == 0
    assert store.read_bytes(bucket, "empty") == b""
    assert store.list(bucket) == [ObjectInfo("empty", 0)]


@pytest.mark.parametrize("key", ["dir with space/é+%=&#?;,~!.txt", "unicodé/ключ/鍵.bin", "a+b/c=d/e@f", "x.tmp", "tmp-not-hidden"])
def test_unusual_but_valid_keys(store, bucket, key):
    store.write_bytes(bucket, key, b"data")
    assert store.exists(bucket, key)
    assert store.read_bytes(bucket, key) == b"data"
    assert store.list(bucket) == [ObjectInfo(key, 4)]
    store.delete(bucket, key)
    assert store.list(bucket) == []


def test_exists_is_dir_size(store, bucket):
    for key, data in {"a/b/c.txt": b"abc", "a/d.txt": b"dd", "ab/e.txt": b"e", "top.txt": b"top!"}.items():
        store.write_bytes(bucket, key, data)
    assert store.exists(bucket, "a/b/c.txt")
    assert store.exists(bucket, "top.txt")
    for not_an_object in ("a", "a/b", "ab", "a/b/c", "nope"):
        assert not store.exists(bucket, not_an_object), not_an_object
    for folder in ("a", "a/", "a/b", "a/b/", "ab"):
        assert store.is_dir(bucket, folder), folder
    for not_a_folder in ("a/b/c.txt", "top.txt", "nope", "a/b/c", "a/d", "", "/"):
        assert not store.is_dir(bucket, not_a_folder), not_a_folder
    assert store.size(bucket, "a/b/c.txt") == 3
    assert store.size(bucket, "top.txt") == 4


def test_missing_objects(store, bucket):
    store.write_bytes(bucket, "folder/obj", b"x")
    for key in ("nope", "folder/nope", "folder"):  # a folder-like prefix is not an object either
        assert not store.exists(bucket, key)
        with pytest.raises(FileNotFoundError):
            store.size(bucket, key)
        with pytest.raises(FileNotFoundError):
            store.read_bytes(bucket, key)
        with pytest.raises(FileNotFoundError):
            store.open_read(bucket, key)
        store.delete(bucket, key)  # deleting what is not there is not an error
    assert store.list(bucket) == [ObjectInfo("folder/obj", 1)]


def test_list_is_recursive_sorted_with_sizes(store, bucket):
    objects = {
        "z.txt": 1,
        "a/b/c/d.bin": 4,
        "a/b/a.bin": 3,
        "a/x.bin": 2,
        "a-sibling/y": 5,
        "ab/y": 6,
        "a.txt": 7,
    }
    for key, n in objects.items():
        store.write_bytes(bucket, key, b"x" * n)
    everything = store.list(bucket)
    assert everything == [ObjectInfo(k, objects[k]) for k in sorted(objects)]
    assert [o.key for o in everything] == sorted(o.key for o in everything)

    under_a = [ObjectInfo("a/b/a.bin", 3), ObjectInfo("a/b/c/d.bin", 4), ObjectInfo("a/x.bin", 2)]
    assert store.list(bucket, "a") == under_a  # folder-like: not "ab/", "a-sibling/" nor "a.txt"
    assert store.list(bucket, "a/") == under_a
    assert store.list(bucket, "a/b") == under_a[:2]
    assert store.list(bucket, "a/b/c/") == [ObjectInfo("a/b/c/d.bin", 4)]
    assert store.list(bucket, "ab") == [ObjectInfo("ab/y", 6)]
    assert store.list(bucket, "nope") == []
    assert store.list(bucket, "a/nope") == []


def test_usage(store, bucket):
    store.write_bytes(bucket, "acct/1/f1/part-0", b"x" * 100)
    store.write_bytes(bucket, "acct/1/f1/part-1", b"x" * 50)
    store.write_bytes(bucket, "acct/1/f2/part-0", b"x" * 7)
    store.write_bytes(bucket, "acct/10/f1/part-0", b"x" * 1000)
    assert store.usage(bucket, "acct/1") == 157
    assert store.usage(bucket, "acct/1/f1") == 150
    assert store.usage(bucket, "acct/10/") == 1000
    assert store.usage(bucket, "acct/2") == 0
    assert store.usage(bucket, "") == 1157


def test_delete(store, bucket):
    store.write_bytes(bucket, "d/one", b"1")
    store.write_bytes(bucket, "d/two", b"22")
    store.delete(bucket, "d/one")
    assert not store.exists(bucket, "d/one")
    assert store.list(bucket) == [ObjectInfo("d/two", 2)]
    store.delete(bucket, "d/one")  # twice: fine
    store.delete(bucket, "d")  # a folder is not an object: nothing happens
    assert store.list(bucket) == [ObjectInfo("d/two", 2)]
    store.delete(bucket, "d/two")
    assert store.list(bucket) == []
    assert not store.is_dir(bucket, "d")  # no object left: no folder either (as on S3)
    assert store.bucket_exists(bucket)


def test_delete_prefix_is_folder_like(store, bucket):
    for key in ("f/1", "f/sub/2", "f/sub/deeper/3", "fx/4", "f-5", "f.txt", "g/6"):
        store.write_bytes(bucket, key, b"x")
    store.delete_prefix(bucket, "f")
    assert [o.key for o in store.list(bucket)] == ["f-5", "f.txt", "fx/4", "g/6"]
    assert not store.is_dir(bucket, "f")
    store.delete_prefix(bucket, "g/")
    assert [o.key for o in store.list(bucket)] == ["f-5", "f.txt", "fx/4"]
    store.delete_prefix(bucket, "nope")  # nothing there: fine
    store.delete_prefix(bucket, "fx/4/5")
    assert store.bucket_exists(bucket)
    assert [o.key for o in store.list(bucket)] == ["f-5", "f.txt", "fx/4"]


# -- atomic writes ----------------------------------------------------------------------------------
class Boom(Exception):
    pass


@pytest.mark.parametrize("size", [3, PART + 4 * MB], ids=["small", "multipart"])
def test_open_write_error_leaves_no_object(case, bucket, size):
    store = case.store
    data = payload(size)
    with pytest.raises(Boom):
        with store.open_write(bucket, "w/obj.bin") as f:
            for i in range(0, size, MB):
                f.write(data[i : i + MB])
            raise Boom()
    gc.collect()  # an abandoned file object must not commit itself when collected
    time.sleep(0.2)
    assert not case.reader.exists(bucket, "w/obj.bin")
    assert case.reader.list(bucket) == []
    assert not case.reader.is_dir(bucket, "w")
    assert leftovers(case, bucket) == []


def test_open_write_error_keeps_the_previous_version(case, bucket):
    store = case.store
    store.write_bytes(bucket, "obj", b"old version")
    with pytest.raises(Boom):
        with store.open_write(bucket, "obj") as f:
            f.write(payload(PART + MB))
            raise Boom()
    gc.collect()
    assert case.reader.read_bytes(bucket, "obj") == b"old version"
    assert leftovers(case, bucket) == []


def observe(reader: ObjectStore, bucket: str, key: str) -> dict:
    """Everything a reader can learn about `key` (asserted outside the write's with-block)."""

    def outcome(fn):
        try:
            return fn()
        except Exception as exc:
            return type(exc).__name__

    folder = key.rsplit("/", 1)[0]
    return {
        "exists": outcome(lambda: reader.exists(bucket, key)),
        "list": outcome(lambda: reader.list(bucket)),
        "list folder": outcome(lambda: reader.list(bucket, folder)),
        "is_dir folder": outcome(lambda: reader.is_dir(bucket, folder)),
        "usage": outcome(lambda: reader.usage(bucket, "")),
        "size": outcome(lambda: reader.size(bucket, key)),
        "read": outcome(lambda: len(reader.read_bytes(bucket, key))),
    }


@pytest.mark.parametrize("size", [3, PART + 4 * MB], ids=["small", "multipart"])
def test_object_invisible_until_close(case, bucket, size):
    store, reader = case.store, case.reader
    store.write_bytes(bucket, "other", b"o")
    data = payload(size, seed=1)
    with store.open_write(bucket, "new/obj.bin") as f:
        for i in range(0, size, MB):
            f.write(data[i : i + MB])
        f.flush()
        # Written (on S3: parts uploaded) but not closed: no reader may see any of it.
        during = observe(reader, bucket, "new/obj.bin")
    assert during == {
        "exists": False,
        "list": [ObjectInfo("other", 1)],
        "list folder": [],
        "is_dir folder": False,
        "usage": 1,
        "size": "FileNotFoundError",
        "read": "FileNotFoundError",
    }
    assert reader.exists(bucket, "new/obj.bin")
    assert reader.size(bucket, "new/obj.bin") == size
    assert reader.read_bytes(bucket, "new/obj.bin") == data
    assert reader.list(bucket) == [ObjectInfo("new/obj.bin", size), ObjectInfo("other", 1)]
    assert leftovers(case, bucket) == []


def test_overwrite_readers_see_old_version_until_close(case, bucket):
    store, reader = case.store, case.reader
    old = payload(2 * MB, seed=2)
    new = payload(PART + 2 * MB, seed=3)
    store.write_bytes(bucket, "obj", old)
    with store.open_write(bucket, "obj") as f:
        f.write(new)
        f.flush()
        during = (reader.size(bucket, "obj"), reader.read_bytes(bucket, "obj") == old, reader.list(bucket))
    assert during == (len(old), True, [ObjectInfo("obj", len(old))])
    assert reader.read_bytes(bucket, "obj") == new


def test_large_object_streamed_in_pieces_never_seen_partial(case, bucket):
    """40 MB written in 1 MB pieces (S3: a 3-part multipart upload) while another client polls:
    whenever it sees the object, it sees all of it."""
    store, reader = case.store, case.reader
    pieces = 40
    chunk = payload(MB, seed=4)
    total = pieces * MB
    digest = hashlib.sha256()
    stop = threading.Event()
    seen: list[tuple[int | None, list[ObjectInfo]]] = []
    errors: list[BaseException] = []

    def poll():
        try:
            while not stop.is_set():
                size = reader.size(bucket, "big/obj.bin") if reader.exists(bucket, "big/obj.bin") else None
                seen.append((size, reader.list(bucket, "big")))
                time.sleep(0.02)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        with store.open_write(bucket, "big/obj.bin") as f:
            for i in range(pieces):
                piece = i.to_bytes(4, "big") + chunk[4:]  # every piece differs
                f.write(piece)
                digest.update(piece)
    finally:
        time.sleep(0.1)
        stop.set()
        poller.join(timeout=30)
    assert not errors, errors
    assert seen, "the reader never ran"
    for size, listing in seen:
        assert size in (None, total), size
        assert listing in ([], [ObjectInfo("big/obj.bin", total)]), listing
    assert reader.size(bucket, "big/obj.bin") == total
    assert reader.list(bucket) == [ObjectInfo("big/obj.bin", total)]
    assert reader.usage(bucket, "big") == total

    # Read back streaming, piece by piece, and by ranges.
    back = hashlib.sha256()
    n = 0
    with reader.open_read(bucket, "big/obj.bin", block_size=4 * MB) as f:
        while True:
            part = f.read(MB)
            if not part:
                break
            back.update(part)
            n += len(part)
    assert n == total
    assert back.hexdigest() == digest.hexdigest()
    with reader.open_read(bucket, "big/obj.bin") as f:
        f.seek(17 * MB)
        assert f.read(4) == (17).to_bytes(4, "big")
        f.seek(total - 3)
        assert f.read(10) == chunk[-3:]
    assert leftovers(case, bucket) == []


# -- failures -------------------------------------------------------------------------------------
def test_unreachable_s3_raises_object_store_error_for_every_operation():
    """An outage must never look like a missing bucket or object (jobs retry ObjectStoreError)."""
    (port,) = pick_free_ports(1)  # nothing listens there
    ops = {
        "bucket_exists": lambda store: store.bucket_exists("abc"),
        "create_bucket": lambda store: store.create_bucket("abc"),
        "exists": lambda store: store.exists("abc", "k"),
        "is_dir": lambda store: store.is_dir("abc", "p"),
        "size": lambda store: store.size("abc", "k"),
        "list": lambda store: store.list("abc"),
        "list prefix": lambda store: store.list("abc", "p"),
        "usage": lambda store: store.usage("abc", "p"),
        "read_bytes": lambda store: store.read_bytes("abc", "k"),
        "write_bytes": lambda store: store.write_bytes("abc", "k", b"v"),
        "delete": lambda store: store.delete("abc", "k"),
        "delete_prefix": lambda store: store.delete_prefix("abc", "p"),
    }

    def outcome(op) -> str:  # retries make each call take ~2 s: run them side by side
        try:
            op(S3ObjectStore(f"http://127.0.0.1:{port}", "key", "secret"))
        except ObjectStoreError:
            return "ObjectStoreError"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no error"

    with ThreadPoolExecutor(max_workers=len(ops)) as pool:
        outcomes = dict(zip(ops, pool.map(outcome, ops.values())))
    assert outcomes == {name: "ObjectStoreError" for name in ops}


def test_s3_wrong_credentials_raise_object_store_error(request, tmp_path):
    good, server = fresh_object_store(request, "s3", tmp_path)
    good.create_bucket("creds")
    good.write_bytes("creds", "dir/k", b"v")
    bad = S3ObjectStore(server.endpoint_url, server.access_key, "wrong-secret")
    for op in (
        lambda: bad.bucket_exists("creds"),
        lambda: bad.create_bucket("other"),
        lambda: bad.exists("creds", "dir/k"),
        lambda: bad.is_dir("creds", "dir"),
        lambda: bad.size("creds", "dir/k"),
        lambda: bad.list("creds"),
        lambda: bad.read_bytes("creds", "dir/k"),
        lambda: bad.write_bytes("creds", "k2", b"v"),
        lambda: bad.delete("creds", "dir/k"),
        lambda: bad.delete_prefix("creds", "dir"),
    ):
        with pytest.raises(ObjectStoreError):
            op()
    assert good.list("creds") == [ObjectInfo("dir/k", 1)]


# -- writes killed outright (local store) -----------------------------------------------------------
KILLED_WRITER = """
import sys, time
from userlens.storage.objectstore import LocalObjectStore
store = LocalObjectStore(sys.argv[1])
with store.open_write(sys.argv[2], sys.argv[3]) as f:
    f.write(b"partial" * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(120)
"""


def killed_write(root: Path, bucket: str, key: str) -> None:
    """A process that is SIGKILLed in the middle of store.open_write(bucket, key)."""
    import signal
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root), bucket, key], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == b"writing"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)


def test_a_killed_writes_temporary_is_stale_at_once_and_cleaned_up(case, bucket):
    """SIGKILL skips every clean-up of open_write: the hidden temporary stays. Its name says which
    process wrote it, so it is known stale as soon as that process is gone (no grace period to wait),
    while a temporary of a write in flight is kept."""
    if case.kind != "local":
        pytest.skip("only the local store writes temporaries (S3 uploads are invisible until complete)")
    store = case.store
    killed_write(case.root, bucket, "results/run.tsv")
    temps = list(store.temporaries(bucket))
    assert [k.rsplit("/", 1)[0] for k, _, _ in temps] == ["results"] and temps[0][1] == 7000
    assert store.list(bucket) == [] and not store.is_dir(bucket, "results")
    with store.open_write(bucket, "results/other.tsv") as f:  # a write in flight in this process
        f.write(b"x")
        assert sorted(k for k, _, _ in store.temporaries(bucket, "results")) != []
        assert store.remove_stale_temporaries(bucket, "results", grace_seconds=3600) == [temps[0][0]]
        assert len(list(store.temporaries(bucket))) == 1  # ours, kept
    assert list(store.temporaries(bucket)) == []
    assert store.read_bytes(bucket, "results/other.tsv") == b"x"


def test_the_retried_write_of_an_object_sweeps_the_killed_ones_temporary(case, bucket):
    if case.kind != "local":
        pytest.skip("local store only")
    store = case.store
    killed_write(case.root, bucket, "results/run.tsv")
    killed_write(case.root, bucket, "results/kept.tsv")  # another object: not this write's business
    assert len(list(store.temporaries(bucket))) == 2
    store.write_bytes(bucket, "results/run.tsv", b"done")
    left = [k for k, _, _ in store.temporaries(bucket)]
    assert len(left) == 1 and left[0].endswith("-kept.tsv"), left
    assert store.read_bytes(bucket, "results/run.tsv") == b"done"


def test_temporaries_of_unknown_writers_are_stale_after_the_grace_period(case, bucket):
    """Temporaries named the old way (no writer) or by another host: age decides."""
    if case.kind != "local":
        pytest.skip("local store only")
    store = case.store
    folder = case.root / bucket / "d"
    folder.mkdir(parents=True)
    old, young, other_host = folder / f".tmp-{'a' * 32}-x.bin", folder / f".tmp-{'b' * 32}-y.bin", folder / ".tmp-1.ffffffff-0123456789abcdef-z.bin"
    for p in (old, young, other_host):
        p.write_bytes(b"t")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.remove_stale_temporaries(bucket, "", grace_seconds=3600) == ["d/" + old.name]
    assert sorted(p.name for p in folder.iterdir()) == sorted([young.name, other_host.name])
    assert sorted(store.remove_stale_temporaries(bucket, "d", grace_seconds=0)) == sorted(["d/" + young.name, "d/" + other_host.name])
