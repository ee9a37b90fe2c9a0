"""Result files written to the customer's bucket (Runs, Custom Attributes).

Naming (NCLUE §2.4): a `result_file_path` ending in `/` is a folder and the file is
`{folder}nclue_{random}_{YYYYMMDDHH}.tsv`; otherwise it is a stem and the file is
`{stem}_{random}_{YYYYMMDDHH}.tsv`. `{random}` is 8 lower-case hex characters; the hour is UTC. The
name is fixed when the resource is created, so a retried job overwrites its own file, never adds one.

Content: a header line, then one line per user, tab-separated, UTF-8. Scores have 6 decimals.
Cells that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a
carriage return) are written with a leading apostrophe (`'`), as OWASP advises for CSV exports; user
ids never contain tabs or newlines, so every line has exactly the header's columns.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from userlens.jobs.engine import JobFailure, TransientJobError
from userlens.storage.objectstore import ObjectStore, ObjectStoreError, ObjectStoreFull

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def result_object_key(path: str, now: dt.datetime, random: str | None = None) -> str:
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%d%H")
    random = random or secrets.token_hex(4)
    if path.endswith("/"):
        return f"{path}nclue_{random}_{stamp}.tsv"
    return f"{path}_{random}_{stamp}.tsv"


def safe_cell(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_START) else value


def _python_lines(ids: list[str], scores: np.ndarray) -> bytes:
    if any(u.startswith(FORMULA_START) for u in ids):
        ids = [safe_cell(u) for u in ids]
    return "".join([f"{u}\t{s:.6f}\n" for u, s in zip(ids, scores.tolist())]).encode("utf-8")


def _score_cells(scores: np.ndarray) -> pa.StringArray | None:
    """`f"{s:.6f}\\n"` of every score, column-wise; None when a score is outside (-10, 10) or not
    finite (then the caller formats in Python). Rounding is Python's (to nearest, ties to even, on
    the exact binary value): the few values whose scaled fraction is within 1e-6 of a tie are
    formatted by Python itself."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    if not np.all(np.abs(s) < 9.999999):  # also False for NaN
        return None
    scaled = np.abs(s) * 1e6
    micro = np.rint(scaled).astype(np.int64)
    neg = np.signbit(s)
    cells = np.empty((n, 10), dtype=np.uint8)
    cells[:, 0] = ord("-")
    cells[:, 1] = ord("0") + micro // 1_000_000
    cells[:, 2] = ord(".")
    frac = micro % 1_000_000
    for col in range(8, 2, -1):
        cells[:, col] = ord("0") + frac % 10
        frac //= 10
    cells[:, 9] = ord("\n")
    keep = np.ones((n, 10), dtype=bool)
    keep[:, 0] = neg
    data = cells[keep]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.where(neg, 10, 9), out=offsets[1:])
    out = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    near_tie = np.flatnonzero(np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6)
    if len(near_tie):
        fixed = out.to_pylist()
        for i in near_tie.tolist():
            fixed[i] = f"{float(s[i]):.6f}\n"
        out = pa.array(fixed, pa.string())
    return out


def format_lines(ids: list[str], scores: np.ndarray) -> bytes:
    """The TSV lines `{user_id}\\t{score:.6f}\\n` of a batch, with formula-like ids escaped.

    Built column-wise with Arrow (a Run writes a million lines; formatting them in Python was the
    Run's bottleneck once scoring used every core); identical to the Python formatting."""
    cells = _score_cells(scores)
    if cells is None or not ids:
        return _python_lines(ids, scores)
    col = pa.array(ids, pa.string())
    risky = pc.match_substring_regex(col, "^[=+\\-@\t\r]")
    if pc.any(risky).as_py():
        col = pc.if_else(risky, pc.binary_join_element_wise("'", col, ""), col)
    lines = pc.binary_join_element_wise(col, cells, "\t")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset : lines.offset + len(lines) + 1]
    return lines.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]


def upload_failed(what: str, exc: ObjectStoreError) -> TransientJobError:
    """A failed write: transient either way (retried); a full store fails, once retries run out,
    with DISK_SPACE_SHORTAGE, any other store error with OBS_UPLOAD_FAILED."""
    code = "DISK_SPACE_SHORTAGE" if isinstance(exc, ObjectStoreFull) else "OBS_UPLOAD_FAILED"
    return TransientJobError(code, f"{what}: {exc}")


def require_bucket(store: ObjectStore, bucket: str) -> None:
    """The result bucket must exist (checked before the work, and again when writing)."""
    try:
        exists = store.bucket_exists(bucket)
    except ObjectStoreError as exc:
        raise TransientJobError("OBS_UPLOAD_FAILED", f"checking result bucket {bucket!r}: {exc}") from exc
    if not exists:
        raise JobFailure("OBS_UPLOAD_FAILED", f"result bucket {bucket!r} does not exist")


def write_tsv(
    store: ObjectStore,
    bucket: str,
    key: str,
    pieces: Iterable[bytes],
    header: tuple[str, str] = ("user_id", "score"),
) -> None:
    """Writes the header and the pieces (formatted lines, in order) as one TSV that appears whole."""
    try:
        require_bucket(store, bucket)
        with store.open_write(bucket, key) as f:
            f.write(("\t".join(header) + "\n").encode())
            for piece in pieces:
                f.write(piece)
    except FileNotFoundError as exc:
        raise JobFailure("OBS_UPLOAD_FAILED", f"result bucket {bucket!r} does not exist") from exc
    except ObjectStoreError as exc:
        raise upload_failed(f"writing {bucket}/{key}", exc) from exc
