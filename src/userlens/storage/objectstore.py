"""Object storage behind one interface: a local folder of buckets, or any S3-compatible store.

Both backends are fsspec filesystems, so pyarrow and DuckDB can read the same paths. Writes through
`open_write` become visible atomically: the local backend writes a hidden temporary file and renames
it; S3 makes an object visible only when its (multipart) upload completes.

A local write killed outright (SIGKILL, power loss) leaves its hidden temporary next to the object it
was writing. The temporary's name carries its writer (process id and a tag of the host and process
namespace), so a temporary is *stale* once its writer is known dead (same host, process gone) or it
has not been written to for TEMP_GRACE_SECONDS. Stale temporaries go when a later write of the same
object succeeds (the retried attempt), with delete_prefix of their folder (everything under a prefix
goes, temporaries included), and with `userlens fsck --repair`, which looks for them in every bucket.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import fsspec

from userlens.config import Settings

# S3 bucket naming rules (3-63 chars, lower case, digits, dots, hyphens).
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class ObjectStoreError(Exception):
    """The store could not be reached or answered with an error (transient for jobs)."""


class ObjectStoreFull(ObjectStoreError):
    """The store has no space left (ENOSPC/EDQUOT on a local folder; an S3 server answering 507 or a
    quota error). Transient like any store error: a job retries, and succeeds once space is freed."""


# How a full disk or an exhausted quota reads in errors that lost their errno (pyarrow wraps the
# OSError of a Python file object) or come from an S3-compatible server (MinIO, Ceph RGW: 507).
FULL_MARKERS = ("No space left on device", "Disk quota exceeded", "XMinioStorageFull", "QuotaExceeded", "InsufficientStorage", "Insufficient Storage")


class InvalidObjectPath(ValueError):
    """A bucket name or key that could escape its bucket or is malformed."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


def check_bucket(bucket: str) -> str:
    if not BUCKET_RE.match(bucket or ""):
        raise InvalidObjectPath(f"invalid bucket name {bucket!r}")
    return bucket


def check_key(key: str) -> str:
    """Keys are relative, '/'-separated, with no empty, '.' or '..' segments and no backslashes."""
    if key is None or key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidObjectPath(f"invalid object key {key!r}")
    parts = key.rstrip("/").split("/") if key else []
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidObjectPath(f"invalid object key {key!r}")
    return key


def check_object_key(key: str) -> str:
    """The key of one object: a valid key that is not empty and does not end with '/'."""
    check_key(key)
    if not key or key.endswith("/"):
        raise InvalidObjectPath(f"invalid object key {key!r}")
    return key


def _not_found(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, "no such object", path)


TEMP_PREFIX = ".tmp-"
TEMP_GRACE_SECONDS = 3600.0  # a temporary untouched this long is stale even when its writer is unknown
_TEMP_WRITER = re.compile(r"^\.tmp-(\d+)\.([0-9a-f]{8})-")
_TEMP_NAME = re.compile(r"^\.tmp-(?:\d+\.[0-9a-f]{8}-[0-9a-f]{16}|[0-9a-f]{32})-(.+)$")  # this version's, and the one before


def _is_temporary(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def _host_tag() -> str:
    """This host and process namespace (process ids are only comparable within one)."""
    try:
        ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        ns = ""
    return hashlib.sha256(f"{socket.gethostname()}/{ns}".encode()).hexdigest()[:8]


_HOST_TAG = _host_tag()


def temporary_name(final_name: str) -> str:
    """`.tmp-{pid}.{host tag}-{random}-{name}`: hidden, unique, and naming its writer."""
    return f"{TEMP_PREFIX}{os.getpid()}.{_HOST_TAG}-{uuid.uuid4().hex[:16]}-{final_name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def temporary_is_stale(name: str, mtime: float | None, now: float | None = None, grace_seconds: float = TEMP_GRACE_SECONDS) -> bool:
    """Whether the hidden temporary `name` belongs to no write in flight: its writer ran on this host
    and has exited, or it was last written grace_seconds ago or more. Temporaries of older versions
    (no writer in the name) and of other hosts are judged by age alone."""
    m = _TEMP_WRITER.match(name)
    if m and m.group(2) == _HOST_TAG and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
        return True
    return mtime is not None and (now if now is not None else time.time()) - mtime >= grace_seconds


class ObjectStore:
    """Buckets and keys over an fsspec filesystem. Subclasses map (bucket, key) to a path."""

    fs: fsspec.AbstractFileSystem

    def path(self, bucket: str, key: str = "") -> str:
        raise NotImplementedError

    # -- buckets -------------------------------------------------------------------------------
    def bucket_exists(self, bucket: str) -> bool:
        check_bucket(bucket)
        return self._guard(lambda: self.fs.isdir(self.path(bucket)))

    def create_bucket(self, bucket: str) -> None:
        raise NotImplementedError

    def delete_bucket(self, bucket: str) -> None:
        """Removes a bucket and everything in it (tests and administration only)."""
        check_bucket(bucket)

        def _rm():
            if self.fs.exists(self.path(bucket)):
                self.fs.rm(self.path(bucket), recursive=True)

        self._guard(_rm)

    # -- objects -------------------------------------------------------------------------------
    def exists(self, bucket: str, key: str) -> bool:
        p = self.path(bucket, check_object_key(key))
        return self._guard(lambda: self._is_object(p))

    def _info(self, p: str) -> dict | None:
        """fs.info, or None if nothing is there. Unlike fsspec's exists()/isfile(), which answer False
        on any error, an unreachable store or a refused request raises (ObjectStoreError via _guard)."""
        try:
            return self.fs.info(p)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _is_object(self, p: str) -> bool:
        info = self._info(p)
        return info is not None and info.get("type") == "file"

    def is_dir(self, bucket: str, key: str) -> bool:
        """Whether the folder-like prefix `key` holds at least one (visible) object."""
        check_bucket(bucket)
        key = check_key(key.rstrip("/"))
        if not key:
            return False
        return self._guard(lambda: self._has_objects_under(bucket, key))

    def _has_objects_under(self, bucket: str, key: str) -> bool:
        raise NotImplementedError

    def size(self, bucket: str, key: str) -> int:
        p = self.path(bucket, check_object_key(key))

        def _size():
            info = self.fs.info(p)
            if info.get("type") != "file":  # a folder-like prefix is not an object
                raise _not_found(p)
            return int(info.get("size") or 0)

        return self._guard(_size)

    def list(self, bucket: str, prefix: str = "") -> list[ObjectInfo]:
        """Every object under a folder-like prefix, recursively, sorted by key."""
        prefix = prefix.rstrip("/")
        if prefix:
            check_key(prefix)
        root = self.path(bucket, prefix)
        base = self.path(bucket)

        def _find():
            try:
                found = self.fs.find(root, detail=True)
            except (FileNotFoundError, NotADirectoryError):  # no such bucket or prefix
                return []
            out = []
            for p, info in found.items():
                if info.get("type") != "file":
                    continue
                rel = p[len(base.rstrip("/")) + 1 :] if p.startswith(base.rstrip("/")) else p
                out.append(ObjectInfo(rel, int(info.get("size") or 0)))
            return sorted(out, key=lambda o: o.key)

        return self._guard(_find)

    def usage(self, bucket: str, prefix: str) -> int:
        return sum(o.size for o in self.list(bucket, prefix))

    def open_read(self, bucket: str, key: str, block_size: int = 8 * 1024 * 1024) -> IO[bytes]:
        p = self.path(bucket, check_object_key(key))

        def _open():
            try:
                f = self.fs.open(p, "rb", block_size=block_size)
            except IsADirectoryError:
                raise _not_found(p) from None
            details = getattr(f, "details", None)  # s3fs: what HEAD/listing said the path is
            if isinstance(details, dict) and details.get("type", "file") != "file":
                f.close()
                raise _not_found(p)
            return f

        return self._guard(_open)

    def read_bytes(self, bucket: str, key: str) -> bytes:
        with self.open_read(bucket, key) as f:
            return self._guard(f.read)

    @contextmanager
    def open_write(self, bucket: str, key: str) -> Iterator[IO[bytes]]:
        """Write an object that appears whole or not at all."""
        raise NotImplementedError
        yield  # pragma: no cover

    def write_bytes(self, bucket: str, key: str, data: bytes) -> None:
        with self.open_write(bucket, key) as f:
            f.write(data)

    def delete(self, bucket: str, key: str) -> None:
        """Delete one object; nothing happens if there is none (a folder-like prefix is not deleted)."""
        p = self.path(bucket, check_object_key(key))
        self._guard(lambda: self.fs.rm_file(p) if self._is_object(p) else None)

    def temporaries(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, int, float | None]]:
        """(key, size, mtime) of the hidden temporaries of writes under a prefix. Only the local store
        has any: an S3 upload is invisible until it completes."""
        return iter(())

    def incomplete_uploads(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, str, float | None]]:
        """(key, upload id, start time) of the multipart uploads under a prefix that were neither
        completed nor aborted. Only S3 has any: a writer killed mid-upload leaves one (its parts
        take space but no reader sees them); so does a write in flight, until it completes."""
        return iter(())

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        raise NotImplementedError

    def remove_stale_temporaries(self, bucket: str, prefix: str = "", grace_seconds: float = TEMP_GRACE_SECONDS) -> list[str]:
        """Deletes the stale temporaries (see temporary_is_stale) under a prefix; returns their keys."""
        gone = []
        now = time.time()
        for key, _size, mtime in self.temporaries(bucket, prefix):
            if temporary_is_stale(key.rsplit("/", 1)[-1], mtime, now, grace_seconds):
                self._guard(lambda k=key: self.fs.rm_file(self.path(bucket, k)) if self.fs.exists(self.path(bucket, k)) else None)
                gone.append(key)
        return gone

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        """Delete every object under a folder-like prefix (not the bucket: the prefix may not be empty);
        on the local store, temporaries of writes under it too."""
        prefix = check_key(prefix.rstrip("/"))
        if not prefix:
            raise InvalidObjectPath("delete_prefix needs a non-empty prefix")
        p = self.path(bucket, prefix)

        def _rm():
            try:
                self.fs.rm(p, recursive=True)
            except (FileNotFoundError, NotADirectoryError):  # nothing there
                pass

        self._guard(_rm)

    def _guard(self, fn):
        try:
            return fn()
        except (InvalidObjectPath, FileNotFoundError):
            raise
        except (OSError, Exception) as exc:  # botocore/aiohttp errors arrive as various types
            if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, OSError):
                raise
            if is_full(exc):
                raise ObjectStoreFull(f"the object store is full: {type(exc).__name__}: {exc}") from exc
            raise ObjectStoreError(f"{type(exc).__name__}: {exc}") from exc


def raise_if_full() -> None:
    """In an `except` block of open_write: a write of the caller's (f.write, outside _guard) that
    failed for lack of space surfaces as ObjectStoreFull, like every other store call."""
    exc = sys.exc_info()[1]
    if exc is not None and not isinstance(exc, ObjectStoreError) and is_full(exc):
        raise ObjectStoreFull(f"the object store is full: {type(exc).__name__}: {exc}") from exc


def is_full(exc: BaseException) -> bool:
    if isinstance(exc, ObjectStoreFull) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
        return True
    text = str(exc)
    return any(m in text for m in FULL_MARKERS) and not isinstance(exc, FileNotFoundError)


class LocalObjectStore(ObjectStore):
    """Buckets are folders under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.fs = fsspec.filesystem("file")
        # Per folder this process wrote to: the temporaries found there at its first write, by the name
        # of the object they were writing (see _sweep_temporaries_of).
        self._temporaries_seen: dict[Path, dict[str, list[str]]] = {}
        self._temporaries_lock = threading.Lock()

    def path(self, bucket: str, key: str = "") -> str:
        check_bucket(bucket)
        p = self.root / bucket
        if key:
            p = p / check_key(key)
        return p.as_posix()

    def create_bucket(self, bucket: str) -> None:
        Path(self.path(bucket)).mkdir(parents=True, exist_ok=True)

    def list(self, bucket: str, prefix: str = "") -> list[ObjectInfo]:
        # Hidden temporaries of writes in flight are not objects yet.
        return [o for o in super().list(bucket, prefix) if not _is_temporary(o.key.rsplit("/", 1)[-1])]

    def buckets(self) -> list[str]:
        """Every bucket (folder of the root with a valid bucket name)."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and BUCKET_RE.match(p.name))

    def temporaries(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, int, float | None]]:
        prefix = prefix.rstrip("/")
        if prefix:
            check_key(prefix)
        base = Path(self.path(bucket))
        root = Path(self.path(bucket, prefix))
        for dirpath, dirnames, filenames in os.walk(root):  # one folder at a time: memory stays bounded
            dirnames.sort()
            for name in sorted(filenames):
                if not _is_temporary(name):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:  # its write just finished (renamed) or failed
                    continue
                yield (Path(dirpath, name).relative_to(base).as_posix(), st.st_size, st.st_mtime)

    def _sweep_temporaries_of(self, folder: Path, final_name: str) -> None:
        """After a write of `final_name` succeeded: removes stale temporaries of earlier writes of the
        same object in its folder (a killed attempt's; the retry that just succeeded replaces it).
        The folder is listed once per process, at its first write there, not at every write (that
        made a folder of n objects cost n^2): a writer killed later is another process, whose own
        retry lists the folder again; fsck finds the rest."""
        with self._temporaries_lock:
            seen = self._temporaries_seen.get(folder)
        if seen is None:
            seen = {}
            try:
                for e in os.scandir(folder):
                    if (m := _TEMP_NAME.match(e.name)) is not None:
                        seen.setdefault(m.group(1), []).append(e.name)
            except OSError:
                return
            with self._temporaries_lock:
                if len(self._temporaries_seen) >= 4096:  # bounded: folders of old attempts are not written again
                    self._temporaries_seen.clear()
                self._temporaries_seen[folder] = seen
        with self._temporaries_lock:
            names = seen.pop(final_name, [])
        now = time.time()
        for name in names:
            path = folder / name
            try:
                if temporary_is_stale(name, path.stat().st_mtime, now):
                    path.unlink()
            except OSError:  # gone meanwhile, or not ours to remove: fsck sees it
                pass

    def _has_objects_under(self, bucket: str, key: str) -> bool:
        # Folders stay behind when their last object is deleted, and may hold only temporaries of
        # writes in flight: neither counts (as on S3, where folders exist only through objects).
        root = self.path(bucket, key)
        if not os.path.isdir(root):
            return False
        for _dirpath, _dirnames, filenames in os.walk(root):
            if any(not _is_temporary(name) for name in filenames):
                return True
        return False

    @contextmanager
    def open_write(self, bucket: str, key: str) -> Iterator[IO[bytes]]:
        final = Path(self.path(bucket, check_object_key(key)))
        bucket_dir = Path(self.path(bucket))
        if not bucket_dir.is_dir():  # as on S3: writing does not create the bucket
            raise FileNotFoundError(errno.ENOENT, f"bucket {bucket!r} does not exist", str(bucket_dir))
        tmp = final.parent / temporary_name(final.name)

        def _open():
            final.parent.mkdir(parents=True, exist_ok=True)
            return open(tmp, "wb")

        f = self._guard(_open)
        try:
            yield f

            def _commit():
                f.flush()
                os.fsync(f.fileno())
                f.close()
                os.replace(tmp, final)

            self._guard(_commit)
            self._sweep_temporaries_of(final.parent, final.name)
        except BaseException:
            # close() flushes what is still buffered: on a full disk it fails again (ENOSPC), and
            # must neither replace the original error nor keep the temporary from being removed.
            try:
                f.close()
            except OSError:
                pass
            tmp.unlink(missing_ok=True)
            raise_if_full()
            raise


class S3ObjectStore(ObjectStore):
    """Any S3-compatible endpoint through s3fs (signatures checked by the server)."""

    def __init__(self, endpoint_url: str, access_key: str, secret_key: str, region: str = "us-east-1"):
        import s3fs

        self.region = region
        self.fs = s3fs.S3FileSystem(
            key=access_key,
            secret=secret_key,
            client_kwargs={"endpoint_url": endpoint_url, "region_name": region},
            config_kwargs={"retries": {"max_attempts": 2, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 60},
            use_listings_cache=False,
            skip_instance_cache=True,
        )

    def path(self, bucket: str, key: str = "") -> str:
        check_bucket(bucket)
        return f"{bucket}/{check_key(key)}" if key else bucket

    def bucket_exists(self, bucket: str) -> bool:
        check_bucket(bucket)
        return self._guard(lambda: self._head_bucket(bucket))

    def _head_bucket(self, bucket: str) -> bool:
        # Not fs.exists(bucket): it answers False on any error (unreachable store, bad credentials).
        try:
            self.fs.call_s3("head_bucket", Bucket=bucket)
            return True
        except FileNotFoundError:
            return False

    def create_bucket(self, bucket: str) -> None:
        check_bucket(bucket)

        def _create():
            if self._head_bucket(bucket):
                return
            # Not fs.mkdir: s3fs always sends a LocationConstraint, which AWS rejects for us-east-1.
            kw = {}
            if self.region and self.region != "us-east-1":
                kw["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                self.fs.call_s3("create_bucket", Bucket=bucket, **kw)
            except FileExistsError:  # BucketAlreadyOwnedByYou (a concurrent create) is fine
                if not self._head_bucket(bucket):
                    raise ObjectStoreError(f"bucket {bucket!r} exists and belongs to someone else") from None
            finally:
                self.fs.invalidate_cache(bucket)

        self._guard(_create)

    def _has_objects_under(self, bucket: str, key: str) -> bool:
        # One listing without a delimiter: S3 has no folders, only keys. (SeaweedFS, for one, keeps
        # emptied folders and would report them as common prefixes.) Keys ending in '/' are folder
        # markers that other tools create, not objects.
        token = None
        while True:
            kw = {"Bucket": bucket, "Prefix": key + "/", "MaxKeys": 100}
            if token:
                kw["ContinuationToken"] = token
            try:
                out = self.fs.call_s3("list_objects_v2", **kw)
            except FileNotFoundError:  # no such bucket
                return False
            if any(not o["Key"].endswith("/") for o in out.get("Contents", [])):
                return True
            token = out.get("NextContinuationToken")
            if not out.get("IsTruncated") or not token:
                return False

    def incomplete_uploads(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, str, float | None]]:
        kw = {"Bucket": check_bucket(bucket), "Prefix": check_key(prefix)}
        while True:  # pages of at most 1,000 uploads (ListMultipartUploads)
            out = self._guard(lambda kw=dict(kw): self.fs.call_s3("list_multipart_uploads", **kw))
            for u in out.get("Uploads", []):
                started = u.get("Initiated")
                yield u["Key"], u["UploadId"], started.timestamp() if started is not None else None
            if not out.get("IsTruncated") or not out.get("NextKeyMarker"):
                return
            kw["KeyMarker"], kw["UploadIdMarker"] = out["NextKeyMarker"], out.get("NextUploadIdMarker", "")

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self._guard(lambda: self.fs.call_s3("abort_multipart_upload", Bucket=check_bucket(bucket), Key=check_object_key(key), UploadId=upload_id))

    @contextmanager
    def open_write(self, bucket: str, key: str) -> Iterator[IO[bytes]]:
        # s3fs uploads parts as they fill and completes the multipart upload on close: until then
        # no reader can see the object. On error the upload is aborted.
        p = self.path(bucket, check_object_key(key))
        f = self._guard(lambda: self.fs.open(p, "wb", block_size=16 * 1024 * 1024))
        try:
            yield f
            self._guard(f.close)
        except BaseException:
            try:
                f.discard()  # aborts the multipart upload, if one was started
            except Exception:
                pass
            finally:
                # Never let fsspec's __del__ -> close() commit what was written so far (it would,
                # if discard() failed half-way), nor log errors about the discarded buffer.
                f.closed = True
            raise_if_full()
            raise


def make_object_store(settings: Settings) -> ObjectStore:
    if settings.object_store == "s3":
        return S3ObjectStore(
            settings.s3_endpoint_url,
            settings.s3_access_key,
            settings.s3_secret_key.get_secret_value(),
            settings.s3_region,
        )
    assert settings.storage_root is not None
    return LocalObjectStore(settings.storage_root)
