"""Reading NCLUE sequence datasets (`user_id\\tb1->b2->...`, UTF-8, tab-delimited `.csv`) as a stream.

The input is one object or a folder of part files (Hadoop style: hidden files and names starting
with `_` or `.`, such as `_SUCCESS`, are skipped). Lines are read in blocks, so memory stays bounded
whatever the file size. Every violation raises a `JobFailure` with the documented fail_message code
and, in its detail, the file and line number.

Rules (documented in the README):
  - blank lines are skipped; a trailing `\\r` is removed (CRLF files work);
  - a line must be `user_id<TAB>sequence` with exactly one tab, a non-empty user id and at least one
    non-empty behaviour (empty behaviours between arrows are ignored) -> else UNEXPECTED_TXT_FORMAT;
  - the text must be UTF-8 (a UTF-8 BOM at the start is allowed) -> else UNEXPECTED_TXT_FORMAT;
  - binary or compressed content (NUL bytes, gzip/zip/bzip2/xz/zstd/Parquet magic) -> UNEXPECTED_FILE_TYPE;
  - UTF-16 text (a byte order mark, or NUL every other byte) and lines over 16 MiB -> UNEXPECTED_TXT_FORMAT;
  - user ids longer than 100 characters -> LIMIT_ERROR_MID_LENGTH; repeated user ids -> DUPLICATE_USERID;
  - no file, or no user at all -> NOT_EXIST_FILE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import xxhash

from userlens.jobs.engine import JobFailure, TransientJobError
from userlens.storage.objectstore import ObjectStore, ObjectStoreError

MAX_USER_ID_LENGTH = 100
MAX_LINE_BYTES = 16 * 1024 * 1024  # one user's line (2,048 tokens are kept; far longer lines are not text)
BLOCK_BYTES = 4 * 1024 * 1024
TAIL_BYTES = 64 * 1024
MAGIC = {
    b"\x1f\x8b": "gzip",
    b"PK\x03\x04": "zip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PAR1": "parquet",
    b"7z\xbc\xaf\x27\x1c": "7z",
}


def list_input_files(store: ObjectStore, bucket: str, path: str) -> list[str]:
    """The object keys a path names: itself if it is an object, else the visible files under it."""
    try:
        if not path.endswith("/") and store.exists(bucket, path):
            return [path]
        if store.is_dir(bucket, path):
            keys = []
            for obj in store.list(bucket, path):
                rel = obj.key[len(path.rstrip("/")) + 1 :]
                if any(part.startswith(("_", ".")) for part in rel.split("/")):
                    continue
                keys.append(obj.key)
            return keys
        return []
    except ObjectStoreError as exc:
        raise TransientJobError("OBS_DOWNLOAD_FAILED", str(exc)) from exc


@dataclass
class SequenceChunk:
    user_ids: list[str]
    sequences: list[str]
    consumed_bytes: int  # input bytes read so far, across all files (for progress)


def _utf16(head: bytes) -> bool:
    """UTF-16 text: a byte order mark, or ASCII-range text with every other byte NUL."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    even, odd = head[0::2], head[1::2]
    return len(head) >= 8 and (odd.count(0) >= 0.9 * len(odd) or even.count(0) >= 0.9 * len(even))


def _check_binary(key: str, head: bytes) -> None:
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            raise JobFailure("UNEXPECTED_FILE_TYPE", f"{key}: {kind}-compressed or binary content; expected UTF-8 tab-delimited text")
    if _utf16(head):  # an encoding mistake rather than a wrong file type
        raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key}: UTF-16 text; expected UTF-8")
    if b"\x00" in head:
        raise JobFailure("UNEXPECTED_FILE_TYPE", f"{key}: binary content (NUL bytes); expected UTF-8 tab-delimited text")


def iter_lines(store: ObjectStore, bucket: str, key: str, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line without newline) for every line of one object, in bounded blocks.

    With a byte range, the lines that START in [start, end) (Hadoop's rule: a range that begins
    mid-line leaves that line to the range before it); line numbers then count from the range's
    first line (`absolute_line` turns them into the file's)."""
    try:
        f = store.open_read(bucket, key)
    except FileNotFoundError as exc:
        raise JobFailure("NOT_EXIST_FILE", f"{key} does not exist") from exc
    except ObjectStoreError as exc:
        raise TransientJobError("OBS_DOWNLOAD_FAILED", f"{key}: {exc}") from exc
    lineno = 0
    rest = b""
    first = start == 0
    skipping = start > 0  # the end of the line that began before the range
    offset = start - 1 if skipping else 0  # file offset of the next block's first byte
    rest_at = start  # file offset of `rest`'s first byte
    pad = 0
    limit = end if end is not None else float("inf")
    with f:
        try:
            if skipping:
                f.seek(offset)
        except Exception as exc:
            raise TransientJobError("OBS_DOWNLOAD_FAILED", f"{key}: {exc}") from exc
        while True:
            # Whole blocks inside the range; past its end, small ones to finish the last line.
            size = BLOCK_BYTES if offset + BLOCK_BYTES <= limit else max(int(limit - offset), TAIL_BYTES)
            try:
                block = f.read(size)
            except FileNotFoundError as exc:
                raise JobFailure("NOT_EXIST_FILE", f"{key} disappeared while reading") from exc
            except Exception as exc:
                raise TransientJobError("OBS_DOWNLOAD_FAILED", f"{key}: {exc}") from exc
            if first:
                _check_binary(key, block[:4096])
                if block.startswith(b"\xef\xbb\xbf"):
                    block = block[3:]
                    offset = pad = 3  # the BOM belongs to line 1, which starts at byte 0
                first = False
            if b"\x00" in block:  # the whole block, not only the head the magic check saw
                raise JobFailure("UNEXPECTED_FILE_TYPE", f"{key}: binary content (NUL bytes) after line {lineno}")
            if not block:
                break
            if skipping:
                nl = block.find(b"\n")
                if nl < 0:
                    offset += len(block)
                    if offset - start > MAX_LINE_BYTES:
                        raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key}: a line longer than {MAX_LINE_BYTES} bytes ends after byte {start}")
                    continue
                block = block[nl + 1 :]
                offset += nl + 1
                rest_at = offset
                skipping = False
                if rest_at >= limit:
                    return
            offset += len(block)
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            for line in lines:
                if rest_at >= limit:
                    return
                lineno += 1
                if len(line) > MAX_LINE_BYTES:
                    raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: longer than {MAX_LINE_BYTES} bytes")
                yield lineno, line
                rest_at += len(line) + 1 + pad
                pad = 0
            if rest_at >= limit:
                return
            if len(rest) > MAX_LINE_BYTES:  # a line that never ends would grow without bound
                raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno + 1}: longer than {MAX_LINE_BYTES} bytes")
        if rest and not skipping and rest_at < limit:
            yield lineno + 1, rest


LINE_IN_DETAIL = re.compile(r"^(?P<head>.*? line )(?P<n>\d+)(?P<tail>.*)$", re.S)


def absolute_line(store: ObjectStore, bucket: str, key: str, start: int, failure: JobFailure) -> JobFailure:
    """The failure of a range that starts at `start` with its line number counted from the file's
    start (read only when a range fails: the newlines before it, plus the one that ended the line
    the range skipped)."""
    m = LINE_IN_DETAIL.match(failure.detail)
    if start == 0 or m is None or not m.group("head").startswith(key):
        return failure
    before = 1
    try:
        with store.open_read(bucket, key) as f:
            left = start - 1
            while left > 0:
                block = f.read(min(BLOCK_BYTES, left))
                if not block:
                    break
                before += block.count(b"\n")
                left -= len(block)
    except Exception:  # the range's own number still names the line, within the range
        return failure
    return type(failure)(failure.code, f"{m.group('head')}{int(m.group('n')) + before}{m.group('tail')}")


@dataclass(frozen=True)
class ByteRange:
    key: str
    start: int
    end: int


def plan_ranges(store: ObjectStore, bucket: str, keys: list[str], rows_per_range: int, max_bytes: int) -> list[ByteRange]:
    """Splits the input files into byte ranges of about `rows_per_range` lines each (the line length
    estimated from the first MiB), at most `max_bytes` long; every file gets at least one range."""
    try:
        sizes = [store.size(bucket, k) for k in keys]
        sample = b""
        for k, size in zip(keys, sizes):
            if size:
                with store.open_read(bucket, k) as f:
                    sample = f.read(1024 * 1024)
                break
    except FileNotFoundError as exc:
        raise JobFailure("NOT_EXIST_FILE", str(exc)) from exc
    except ObjectStoreError as exc:
        raise TransientJobError("OBS_DOWNLOAD_FAILED", str(exc)) from exc
    line_bytes = max(1, len(sample) // max(1, sample.count(b"\n")))
    step = max(1024, min(max_bytes, line_bytes * rows_per_range))
    ranges = []
    for k, size in zip(keys, sizes):
        ranges += [ByteRange(k, lo, min(size, lo + step)) for lo in range(0, max(1, size), step)]
    return ranges


def parse_line(key: str, lineno: int, raw: bytes) -> tuple[str, str] | None:
    """(user_id, sequence) of one line, None for a blank line; raises the documented failures."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    parts = text.split("\t")
    if len(parts) != 2:
        raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: expected user_id<TAB>sequence, found {len(parts) - 1} tabs")
    user_id, sequence = parts[0].strip(), parts[1]
    if not user_id:
        raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: empty user_id")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise JobFailure("LIMIT_ERROR_MID_LENGTH", f"{key} line {lineno}: user_id of {len(user_id)} characters (maximum {MAX_USER_ID_LENGTH})")
    if not sequence.replace("->", "").strip():  # no behaviour with any text (C-level check)
        raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: user {user_id!r} has no behaviour")
    return user_id, sequence


def iter_chunks(store: ObjectStore, bucket: str, keys: list[str], chunk_rows: int) -> Iterator[SequenceChunk]:
    """Validated users of all input files, `chunk_rows` at a time."""
    ids: list[str] = []
    seqs: list[str] = []
    consumed = 0
    for key in keys:
        for lineno, raw in iter_lines(store, bucket, key):
            consumed += len(raw) + 1
            parsed = parse_line(key, lineno, raw)
            if parsed is None:
                continue
            ids.append(parsed[0])
            seqs.append(parsed[1])
            if len(ids) >= chunk_rows:
                yield SequenceChunk(ids, seqs, consumed)
                ids, seqs = [], []
    if ids:
        yield SequenceChunk(ids, seqs, consumed)


class DuplicateDetector:
    """Finds repeated user ids in bounded memory: 8 bytes per user (64-bit hashes), checked at the end.

    A hash collision between different ids (probability ~n^2/2^65) is resolved by the caller's exact
    check (`resolve`), so a collision never fails a valid file."""

    def __init__(self) -> None:
        self._hashes: list[np.ndarray] = []

    def add(self, user_ids: list[str]) -> None:
        self._hashes.append(self.hashes(user_ids))

    def add_hashes(self, hashes: np.ndarray) -> None:
        """Hashes made elsewhere (a chunk on another machine returns its users' hashes)."""
        self._hashes.append(hashes)

    @staticmethod
    def hashes(user_ids: list[str]) -> np.ndarray:
        return np.fromiter((xxhash.xxh64_intdigest(u.encode()) for u in user_ids), dtype=np.uint64, count=len(user_ids))

    def candidate_hashes(self) -> np.ndarray:
        if not self._hashes:
            return np.empty(0, dtype=np.uint64)
        allh = np.sort(np.concatenate(self._hashes))
        self._hashes = [allh]
        dup = allh[1:][allh[1:] == allh[:-1]]
        return np.unique(dup)

    @staticmethod
    def hash_of(user_id: str) -> int:
        return xxhash.xxh64_intdigest(user_id.encode())
