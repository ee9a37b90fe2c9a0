"""Synchronous checks of NCLUE request fields (names and Object Storage paths), shared by every resource."""

from __future__ import annotations

from userlens.errors import DomainError, InvalidParameter
from userlens.storage.objectstore import InvalidObjectPath, ObjectStore, ObjectStoreError, check_bucket, check_key

MAX_NAME_LENGTH = 100
# Forbidden in Object Storage paths (NCLUE docs): & $ @ ; : + , ? * \ { } ^ % ` [ ] < > ~ # | " '
FORBIDDEN_PATH_CHARS = set("&$@;:+,?*\\{}^%`[]<>~#|\"'")


def check_name(name: object) -> str:
    if name is None:
        raise InvalidParameter("name is required")
    if not isinstance(name, str):
        raise InvalidParameter("name must be a string")
    if not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise DomainError(f"name must be 1-{MAX_NAME_LENGTH} characters (got {len(name)})", name="NAME_TOO_LONG")
    return name


def check_path_characters(path: object, field: str, error_name: str) -> str:
    """Forbidden characters, control characters and non-ASCII bytes; also traversal ('..', '/x', '\\')."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise InvalidParameter(f"{field} is required")
    if not isinstance(path, str):
        raise InvalidParameter(f"{field} must be a string")
    for i, ch in enumerate(path):
        code = ord(ch)
        if code < 32 or code >= 127 or ch in FORBIDDEN_PATH_CHARS:
            shown = ch if 32 <= code < 127 else f"U+{code:04X}"
            raise DomainError(f"{field} contains a forbidden character {shown!r} at position {i}", name=error_name)
    try:
        check_key(path.rstrip("/") or ".")
    except InvalidObjectPath:
        raise DomainError(f"{field} must be a relative path inside the bucket without '.' or '..' segments or '//'", name=error_name) from None
    return path


def check_path_exists(store: ObjectStore, bucket: object, path: str, field: str, error_name: str, internal_bucket: str) -> None:
    """The bucket exists and the path is an object or a folder holding objects (404 otherwise).

    userlens's own bucket is never readable through the API: it answers as a missing bucket."""
    if not isinstance(bucket, str) or not bucket:
        raise InvalidParameter(f"the bucket of {field} is required")
    try:
        check_bucket(bucket)
    except InvalidObjectPath:
        raise DomainError(f"bucket {bucket!r} does not exist", name=error_name) from None
    try:
        if bucket == internal_bucket or not store.bucket_exists(bucket):
            raise DomainError(f"bucket {bucket!r} does not exist", name=error_name)
        if path.endswith("/"):
            found = store.is_dir(bucket, path)
        else:
            found = store.exists(bucket, path) or store.is_dir(bucket, path)
    except ObjectStoreError as exc:
        raise DomainError(f"object storage unavailable: {exc}", name="OBS_UNAVAILABLE") from exc
    if not found:
        raise DomainError(f"{field} {path!r} does not exist in bucket {bucket!r}", name=error_name)
