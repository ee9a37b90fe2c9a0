"""Object storage behind one interface: a local folder of buckets, or any S3-compatible store.

Both backends are fsspec filesystems, so pyarrow and DuckDB can read the same paths. Writes through
`open_write` become visible atomically: the local backend writes a hidden temporary file and renames
it; S3 makes an object visible only when its (multipart) upload completes.
"""

from __future__ import annotations

import os
import re
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

    # -- objects -------------------------------------------------------------------------------
    def exists(self, bucket: str, key: str) -> bool:
        return self._guard(lambda: self.fs.isfile(self.path(bucket, check_key(key))))

    def is_dir(self, bucket: str, key: str) -> bool:
        key = check_key(key.rstrip("/"))
        return self._guard(lambda: bool(key) and self.fs.isdir(self.path(bucket, key)))

    def size(self, bucket: str, key: str) -> int:
        return self._guard(lambda: int(self.fs.size(self.path(bucket, check_key(key)))))

    def list(self, bucket: str, prefix: str = "") -> list[ObjectInfo]:
        """Every object under a folder-like prefix, recursively, sorted by key."""
        prefix = prefix.rstrip("/")
        if prefix:
            check_key(prefix)
        root = self.path(bucket, prefix)
        base = self.path(bucket)

        def _find():
            if not self.fs.exists(root):
                return []
            found = self.fs.find(root, detail=True)
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
        return self._guard(lambda: self.fs.open(self.path(bucket, check_key(key)), "rb", block_size=block_size))

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
        p = self.path(bucket, check_key(key))
        self._guard(lambda: self.fs.rm_file(p) if self.fs.exists(p) else None)

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        prefix = check_key(prefix.rstrip("/"))
        p = self.path(bucket, prefix)
        self._guard(lambda: self.fs.rm(p, recursive=True) if self.fs.exists(p) else None)

    def _guard(self, fn):
        try:
            return fn()
        except (InvalidObjectPath, FileNotFoundError):
            raise
        except (OSError, Exception) as exc:  # botocore/aiohttp errors arrive as various types
            if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, OSError):
                raise
            raise ObjectStoreError(f"{type(exc).__name__}: {exc}") from exc


class LocalObjectStore(ObjectStore):
    """Buckets are folders under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.fs = fsspec.filesystem("file")

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
        return [o for o in super().list(bucket, prefix) if not o.key.rsplit("/", 1)[-1].startswith(".tmp-")]

    @contextmanager
    def open_write(self, bucket: str, key: str) -> Iterator[IO[bytes]]:
        final = Path(self.path(bucket, check_key(key)))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{uuid.uuid4().hex}-{final.name}"
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class S3ObjectStore(ObjectStore):
    """Any S3-compatible endpoint through s3fs (signatures checked by the server)."""

    def __init__(self, endpoint_url: str, access_key: str, secret_key: str, region: str = "us-east-1"):
        import s3fs

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
        return self._guard(lambda: self.fs.exists(bucket))

    def create_bucket(self, bucket: str) -> None:
        check_bucket(bucket)
        self._guard(lambda: None if self.fs.exists(bucket) else self.fs.mkdir(bucket))

    def is_dir(self, bucket: str, key: str) -> bool:
        key = check_key(key.rstrip("/"))
        if not key:
            return False
        return self._guard(lambda: bool(self.fs.ls(self.path(bucket, key), detail=False, refresh=True)) and not self.fs.isfile(self.path(bucket, key)))

    @contextmanager
    def open_write(self, bucket: str, key: str) -> Iterator[IO[bytes]]:
        # s3fs uploads parts as they fill and completes the multipart upload on close: until then
        # no reader can see the object. On error the upload is discarded.
        p = self.path(bucket, check_key(key))
        f = self._guard(lambda: self.fs.open(p, "wb", block_size=16 * 1024 * 1024))
        try:
            yield f
        except BaseException:
            try:
                f.discard()
            except Exception:
                pass
            raise
        self._guard(f.close)


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
