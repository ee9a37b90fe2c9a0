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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np

from userlens.jobs.engine import JobFailure, TransientJobError
from userlens.storage.objectstore import ObjectStore, ObjectStoreError

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def result_object_key(path: str, now: dt.datetime, random: str | None = None) -> str:
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%d%H")
    random = random or secrets.token_hex(4)
    if path.endswith("/"):
        return f"{path}nclue_{random}_{stamp}.tsv"
    return f"{path}_{random}_{stamp}.tsv"


def safe_cell(value: str) -> str:
    return "'" + value if value.startswith(FORMULA_START) else value


def _write_lines(f, ids: list[str], scores: np.ndarray) -> None:
    if any(u.startswith(FORMULA_START) for u in ids):
        ids = [safe_cell(u) for u in ids]
    f.write("".join([f"{u}\t{s:.6f}\n" for u, s in zip(ids, scores.tolist())]).encode("utf-8"))


def write_scores_tsv(
    store: ObjectStore,
    bucket: str,
    key: str,
    batches: Iterable[tuple[list[str], np.ndarray]],
    header: tuple[str, str] = ("user_id", "score"),
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Streams (user_ids, scores) batches into one TSV that appears whole; returns the line count."""
    lines = 0
    try:
        if not store.bucket_exists(bucket):
            raise JobFailure("OBS_UPLOAD_FAILED", f"result bucket {bucket!r} does not exist")
        # Batch i is formatted and written on a second thread while batch i+1 is computed (the
        # caller's NumPy work releases the GIL); at most one batch waits, so memory stays bounded.
        with store.open_write(bucket, key) as f, ThreadPoolExecutor(1, thread_name_prefix="tsv-writer") as writer:
            f.write(("\t".join(header) + "\n").encode())
            pending: Future | None = None
            for ids, scores in batches:
                future = writer.submit(_write_lines, f, ids, scores)
                if pending is not None:
                    pending.result()
                pending = future
                lines += len(ids)
                if on_batch:
                    on_batch(lines)
            if pending is not None:
                pending.result()
    except FileNotFoundError as exc:
        raise JobFailure("OBS_UPLOAD_FAILED", f"result bucket {bucket!r} does not exist") from exc
    except ObjectStoreError as exc:
        raise TransientJobError("OBS_UPLOAD_FAILED", f"writing {bucket}/{key}: {exc}") from exc
    return lines
