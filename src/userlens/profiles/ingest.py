"""Batch ingestion (reference §6): create a batch, stream files into it, COMPLETE, ABORT or REVERT it, and the
job ("aep.batch_ingest") that validates, writes the data lake and feeds the profile store.

Status words. The batch row keeps the Catalog word: ``loading`` (accepting files) -> ``staging``
(COMPLETE registered the job; set in the same transaction) -> ``success`` (set by the job's publish
callback, in the transaction that completes the job) or ``failed`` (set by the job's ``on_fail``, in
the transaction that fails it); ``aborted`` on ABORT (before the job ends).

Uploads stream chunk by chunk to the internal bucket (``aep/{org}/{sandbox}/uploads/{batch}/{path}``)
through ``ObjectStore.open_write``: nothing is held whole in memory, and a file appears whole or not.

Each uploaded file is one chunk of the job's executor (``jobs/executor.py``: local threads, or a
Ray task reading and writing the object store itself; USERLENS_EXECUTOR), ``ingest_file``; a large
Parquet file is several, ranges of its row groups (``parquet_chunk_rows``). A chunk reads
the file in chunks of ``chunk_rows`` rows (JSON lines, one JSON array per line as aepp sends,
multi-line JSON, CSV, Parquet record batches), applies the row rules of ``xdm.check_row``
with 1-based row numbers per file (Parquet record batches of the usual shapes go through the same
rules column-wise, ``columnar.check_batch``, and fall back to the row path otherwise), and writes
the accepted rows as Parquet parts under an attempt-unique folder
``aep/{org}/{sandbox}/lake/{dataset}/{batch}/{attempt}/`` (Parquet input keeps its own Arrow schema:
rows are filtered, never converted). For Profile-enabled datasets it also feeds the profile store
(design: store.py), tagged with a *load* (this attempt of this batch):
* profile records: each chunk is one lake part, and its rows become record fragments in SQL;
* ExperienceEvents: a file's chunks gather into a *run* (at most ``event_run_rows`` rows / ``event_run_bytes``
  Arrow bytes, and chunks whose schemas unify), which is sorted by (primary identity, time) and
  written as one lake part (row groups of ``EVENT_ROW_GROUP`` rows); SQL gets one *event group* per
  person of the run, pointing at its rows. The bodies stay in the lake only.
A chunk's parts are numbered from its index times ``PART_STRIDE`` (chunks run apart). A chunk on Ray
has no database: it leaves each part's SQL rows in a staging file (``{attempt}/stage/``), which the
job thread loads as the chunk's result arrives; on the local executor a chunk hands them to the job's
loader at once (``FileJob.sink``), so loading overlaps reading as before. SQL inserts of Parquet input
run on a background thread (``_Loader``). A chunk returns its counts, rejected rows and identity-graph
input; the job thread, chunk by chunk in order, gathers them and the graph input
(every identity, and the links of rows with several), kept column-wise and merged into the sandbox
graph at publication. Publication makes the batch, its lake files and its store rows visible at once.

Failure threshold: the batch fails whole when at least ``failure_threshold_pct`` percent of its rows
are rejected (default 10 %, the Identity Service's documented batch failure rate; a batch created with
``partialIngestionPercentage`` N uses N). Below it, rejected rows are counted in ``failedRecordCount``
and listed in ``errors`` with their row numbers, and the rest is ingested.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from userlens.errors import InvalidParameter, NotFound
from userlens.jobs.engine import JobContext, JobFailure, JobQueue, JobRegistry, Outcome, TransientJobError
from userlens.jobs.executor import LocalExecutor
from userlens.jobs.models import JobStatus
from userlens.orgs.service import Tenant
from userlens.profiles.catalog import new_ulid, now_ms
from userlens.profiles.columnar import Unsupported, check_batch, distinct_pairs, single_identity_json
from userlens.profiles.models import Batch, BatchFile, Dataset
from userlens.profiles.store import ProfileStore, ikeys_of
from userlens.profiles.xdm import Accepted, check_row, dumps
from userlens.storage.objectstore import InvalidObjectPath, ObjectStore, ObjectStoreError, check_object_key

log = logging.getLogger("userlens.aep.ingest")

JOB_KIND = "aep.batch_ingest"
FORMATS = ("json", "parquet", "csv")
MAX_FILES = 1500
DEFAULT_THRESHOLD_PCT = 10
MAX_ERROR_RANGES = 100
EVENT_RUN_ROWS = 1_000_000  # events sorted together into one lake part (bounds the job's memory) ...
EVENT_RUN_BYTES = 128 * 1024 * 1024  # ... and their Arrow bytes
EVENT_ROW_GROUP = 4096  # rows per row group of an event part: what one event read decodes at least


def pkeys_key(part_key: str) -> str:
    """The sidecar of a record part: each row's primary identity (the record's fragment key)."""
    return part_key.removesuffix(".parquet") + ".pkeys.parquet"


def sandbox_root(org_id: str, sandbox_id: str) -> str:
    return f"aep/{org_id.replace('@', '_')}/{sandbox_id}"


def upload_prefix(b: Batch) -> str:
    return f"{sandbox_root(b.org_id, b.sandbox_id)}/uploads/{b.id}"


def lake_root(b: Batch) -> str:
    return f"{sandbox_root(b.org_id, b.sandbox_id)}/lake/{b.dataset_id}/{b.id}"


class StreamedUpload:
    """Writes an upload from the event loop into the object store on a worker thread, through a
    bounded queue: memory holds at most a few request chunks, whatever the file size."""

    def __init__(self, store: ObjectStore, bucket: str, key: str):
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self.size = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(store, bucket, key), daemon=True)
        self.thread.start()

    def _run(self, store, bucket, key) -> None:
        try:
            with store.open_write(bucket, key) as f:
                while True:
                    item = self.q.get()
                    if item is None:
                        break
                    if item is _ABORT:
                        raise _Aborted()
                    f.write(item)
                    self.size += len(item)
        except _Aborted:
            pass
        except BaseException as exc:  # reported to the request by close()
            self.error = exc
            while self.q.get() not in (None, _ABORT):  # drain so the producer never blocks forever
                pass

    def put(self, chunk: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(chunk, timeout=300)

    def close(self) -> int:
        self.q.put(None, timeout=300)
        self.thread.join(600)
        if self.error is not None:
            raise self.error
        return self.size

    def abort(self) -> None:
        try:
            self.q.put(_ABORT, timeout=5)
        except queue.Full:
            pass
        self.thread.join(30)


class _Aborted(Exception):
    pass


_ABORT = object()


class ErrorCollector:
    """Rejected rows grouped by (file, code), as Catalog `errors` entries with row ranges."""

    def __init__(self) -> None:
        self.by: dict[tuple[str, str], tuple[str, list[int]]] = {}
        self.count = 0

    def add(self, err: tuple[str, str], path: str, row: int) -> None:
        self.count += 1
        code, desc = err
        entry = self.by.setdefault((path, code), (desc, []))
        rows = entry[1]
        if len(rows) < 20 * MAX_ERROR_RANGES:
            rows.append(row)

    def absorb(self, other: "ErrorCollector") -> None:
        """Adds the rejected rows of the next piece of the input (rows in order, as add() would)."""
        for k, (desc, rows) in other.by.items():
            mine = self.by.setdefault(k, (desc, []))[1]
            mine.extend(rows[: max(0, 20 * MAX_ERROR_RANGES - len(mine))])
        self.count += other.count

    def entries(self) -> list[dict]:
        out = []
        for (path, code), (desc, rows) in self.by.items():
            ranges: list[str] = []
            start = prev = None
            for r in rows:
                if start is None:
                    start = prev = r
                elif r == prev + 1:
                    prev = r
                else:
                    ranges.append(f"{start}-{prev}" if prev != start else str(start))
                    start = prev = r
            if start is not None:
                ranges.append(f"{start}-{prev}" if prev != start else str(start))
            out.append({"code": code, "description": f"{desc} (file '{path}')", "rows": ranges[:MAX_ERROR_RANGES], "file": path})
        return out


def _nest(flat: dict) -> dict:
    """CSV row with dotted headers -> nested object; empty cells are absent values."""
    out: dict = {}
    for k, v in flat.items():
        if k is None or v is None or v == "":
            continue
        node = out
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = v
    return out


def _utf8(rec: dict) -> bool:
    """Whether a CSV row's header and cells are UTF-8 (decoding left no lone surrogates)."""
    try:
        for k, v in rec.items():
            for x in (k, *(v if isinstance(v, list) else (v,))):
                if isinstance(x, str) and not x.isascii():
                    x.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class Chunk:
    rows: list[Any]
    sizes: list[int | None]
    arrow: pa.RecordBatch | None = None


def read_chunks(store: ObjectStore, bucket: str, key: str, fmt: str, multiline: bool, chunk_rows: int, row_groups: list[int] | None = None) -> Iterator[Chunk]:
    """The rows of a file in chunks of `chunk_rows`; of a Parquet file, only `row_groups` if given."""
    if fmt == "parquet":
        with store.open_read(bucket, key) as f:
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowInvalid, OSError) as exc:
                raise JobFailure("INGEST-1290-400", f"file '{key.rsplit('/', 1)[-1]}' is not a readable Parquet file: {exc}") from exc
            batches = pf.iter_batches(batch_size=chunk_rows, row_groups=row_groups)
            while True:
                try:
                    rb = next(batches)
                except StopIteration:
                    break
                except (pa.ArrowInvalid, OSError) as exc:  # a damaged page or column chunk behind a valid footer
                    if type(exc) not in (pa.ArrowInvalid, OSError):  # an I/O error of the store (e.g. FileNotFoundError) stays what it is
                        raise
                    raise JobFailure("INGEST-1290-400", f"file '{key.rsplit('/', 1)[-1]}' is not a readable Parquet file: {exc}") from exc
                yield Chunk(None, None, rb)  # rows are made only if the column-wise rules cannot apply
        return
    with store.open_read(bucket, key) as raw:
        # Bytes that are not UTF-8 become lone surrogates, so the row that holds them is rejected
        # as malformed (INGEST-1207) instead of being stored with replacement characters.
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        if fmt == "csv":
            rows: list = []
            try:
                for rec in csv.DictReader(text):
                    rows.append(None if not _utf8(rec) else _nest(rec))
                    if len(rows) >= chunk_rows:
                        yield Chunk(rows, [None] * len(rows))
                        rows = []
            except csv.Error as exc:  # e.g. a field over the csv module's 128 KiB limit
                raise JobFailure("INGEST-1290-400", f"file '{key.rsplit('/', 1)[-1]}' is not readable CSV: {exc}") from exc
            if rows:
                yield Chunk(rows, [None] * len(rows))
            return
        if multiline:
            # Multi-line JSON is one document (an array or an object): bounded by the upload size.
            try:
                doc = json.load(text)
                json.dumps(doc, ensure_ascii=False).encode("utf-8")  # lone surrogates: not UTF-8
            except (ValueError, UnicodeEncodeError):
                doc = [None]
            items = doc if isinstance(doc, list) else [doc]
            for i in range(0, len(items), chunk_rows):
                part = items[i : i + chunk_rows]
                yield Chunk(part, [None] * len(part))
            return
        rows, sizes = [], []
        for line in text:
            if not line.strip():
                continue
            try:
                size = len(line.encode("utf-8"))
                value = json.loads(line)
            except UnicodeEncodeError:  # not UTF-8 text
                size, value = len(line.encode("utf-8", "surrogateescape")), None
            except ValueError:
                value = None
            if isinstance(value, list):  # aepp sends a list as one JSON array
                rows += value
                sizes += [None] * len(value)
            else:
                rows.append(value)
                sizes.append(size)
            if len(rows) >= chunk_rows:
                yield Chunk(rows, sizes)
                rows, sizes = [], []
        if rows:
            yield Chunk(rows, sizes)


def _lake_table(chunk: Chunk, mask: list[bool], accepted_rows: list[dict], accepted: list[Accepted]) -> pa.Table:
    if chunk.arrow is not None:
        return pa.Table.from_batches([chunk.arrow.filter(pa.array(mask, pa.bool_()))])
    try:
        return pa.Table.from_pylist(accepted_rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        # Rows whose fields change type from row to row: keep each row whole as JSON text.
        return pa.table({"_id": [r.get("_id") if isinstance(r.get("_id"), str) else None for r in accepted_rows], "xdm_json": [a.doc if a.doc is not None else dumps(r) for a, r in zip(accepted, accepted_rows)]})


class _Loader:
    """Runs the profile-store inserts of a job on one background thread, at most two chunks behind
    the reader, so validating and writing the lake overlap with the database's work. Only for input
    whose reading is mostly Arrow (C++, without the GIL): beside a reader that runs Python code
    (JSON, CSV, the row rules) the thread makes things slower, not faster, because SQLite and psycopg
    give the GIL back and take it again around every row they write, and each time it waits for
    the reader's next switch interval (measured: JSON ingestion 18% slower with the thread). There
    `threaded=False` runs each insert at once. Errors surface at the next submit or at wait()."""

    def __init__(self, threaded: bool = True, depth: int = 2):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aep-load") if threaded else None
        self.pending: deque = deque()
        self.depth = depth

    def submit(self, fn, *args, **kwargs) -> None:
        if self.pool is None:
            fn(*args, **kwargs)
            return
        while len(self.pending) >= self.depth:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(fn, *args, **kwargs))

    def wait(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        """Waits for what is running (an abort must not race a running insert), drops the rest."""
        for fut in self.pending:
            fut.cancel()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


_NO_KEYS = pa.array([], pa.string())


class _GraphInput:
    """The identity-graph input of a batch, kept column-wise and made distinct as it grows: every
    identity, and (first identity of a row, another identity of it) for rows with several."""

    COMPACT = 2_000_000

    def __init__(self) -> None:
        self.keys: list[pa.Array] = []
        self.a: list[pa.Array] = []
        self.b: list[pa.Array] = []
        self.size = 0
        self.limit = self.COMPACT  # compact again once twice as big as the last compacted state

    def add(self, keys: pa.Array, a: pa.Array, b: pa.Array) -> None:
        self.keys.append(keys)
        if len(a):
            self.a.append(a)
            self.b.append(b)
        self.size += len(keys) + len(a)
        if self.size > self.limit:
            keys, (a, b) = self.result()
            self.keys, self.a, self.b = [keys], [a] if len(a) else [], [b] if len(a) else []
            self.size = len(keys) + len(a)
            self.limit = max(self.COMPACT, 2 * self.size)

    def add_rows(self, rows: list[list[str]]) -> None:
        keys = [k for r in rows for k in r]
        a = [r[0] for r in rows for _ in r[1:]]
        b = [k for r in rows for k in r[1:]]
        self.add(pa.array(keys, pa.string()), pa.array(a, pa.string()), pa.array(b, pa.string()))

    def result(self) -> tuple[pa.Array, tuple[pa.Array, pa.Array]]:
        keys = pc.unique(pa.chunked_array(self.keys, pa.string())) if self.keys else pa.array([], pa.string())
        if not self.a:
            return keys, (pa.array([], pa.string()), pa.array([], pa.string()))
        return keys, distinct_pairs(pa.concat_arrays(self.a), pa.concat_arrays(self.b))


class _EventRun:
    """Accepted events waiting to be sorted by (primary identity, time) and written as one lake part,
    so that each person's events of the part are one run of rows (one event group). Bounded by rows
    and bytes; chunks whose Arrow schemas cannot be unified start a new run."""

    def __init__(self, max_rows: int, max_bytes: int):
        self.max_rows, self.max_bytes = max_rows, max_bytes
        self.tables: list[pa.Table] = []
        self.pkeys: list[pa.Array] = []
        self.idents: list[pa.Array | None] = []  # None: one identity per row (made from the keys if needed)
        self.ts: list[np.ndarray] = []
        self.rows = self.nbytes = 0
        self.schema: pa.Schema | None = None

    def unified(self, schema: pa.Schema) -> pa.Schema | None:
        if self.schema is None or schema == self.schema:
            return schema
        try:
            return pa.unify_schemas([self.schema, schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return None

    def add(self, table: pa.Table, pkeys: pa.Array, idents: pa.Array | None, ts: np.ndarray) -> None:
        self.schema = self.unified(table.schema)
        self.tables.append(table)
        self.pkeys.append(pkeys)
        self.idents.append(idents)
        self.ts.append(ts)
        self.rows += table.num_rows
        self.nbytes += table.nbytes

    @property
    def full(self) -> bool:
        return self.rows >= self.max_rows or self.nbytes >= self.max_bytes

    def take(self) -> list[tuple[pa.Table, pa.Array, pa.Array | None, np.ndarray]]:
        """The run as one (table, pkeys, identities JSON or None, times); as one per chunk in the
        unexpected case that Arrow unified the schemas but cannot concatenate the tables."""
        tables, pkeys, idents, ts = self.tables, self.pkeys, self.idents, self.ts
        self.__init__(self.max_rows, self.max_bytes)
        try:
            table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return [(t, k, i, x) for t, k, i, x in zip(tables, pkeys, idents, ts)]
        joined = None
        if any(i is not None for i in idents):
            joined = pa.concat_arrays([single_identity_json(k) if i is None else i for k, i in zip(pkeys, idents)])
        return [(table, pa.concat_arrays(pkeys), joined, np.concatenate(ts))]


def event_groups(pkeys: pa.Array, idents: pa.Array | None, ts: np.ndarray) -> tuple[np.ndarray, list[tuple]]:
    """(order, groups): the order that sorts events by (primary identity, time), stable, and one
    (pkey, n, ts_min, ts_max, row0, identities JSON) per primary identity in that order. `idents`
    None: every event holds only its primary identity."""
    n = len(pkeys)
    enc = pkeys.dictionary_encode()
    by_key = pc.sort_indices(enc.dictionary).to_numpy()  # identities in key order: the index is written in order
    rank = np.empty(len(by_key), np.int64)
    rank[by_key] = np.arange(len(by_key))
    codes = rank[enc.indices.to_numpy(zero_copy_only=False)]
    rel = ts - ts.min() if n else ts
    if n and rel.max() < (1 << 42) and len(by_key) < (1 << 21):  # one int64 key: half the time of lexsort
        order = np.argsort((codes << 42) | rel, kind="stable")
    else:
        order = np.lexsort((ts, codes))
    sc, st = codes[order], ts[order]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]]) if n else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n]
    gkeys_arr = enc.dictionary.take(pa.array(by_key[sc[starts]], pa.int64()))
    gkeys = gkeys_arr.to_pylist()
    if idents is None:
        return order, list(zip(gkeys, (ends - starts).tolist(), st[starts].tolist(), st[ends - 1].tolist(), starts.tolist(), single_identity_json(gkeys_arr).to_pylist()))
    ienc = idents.dictionary_encode()
    icode = ienc.indices.to_numpy(zero_copy_only=False)[order]
    lo = np.minimum.reduceat(icode, starts) if n else icode
    hi = np.maximum.reduceat(icode, starts) if n else icode
    gident = ienc.dictionary.take(pa.array(lo, pa.int64())).to_pylist()
    idict = None
    for g in np.flatnonzero(lo != hi):  # several identity sets for one person: their union
        idict = idict if idict is not None else ienc.dictionary.to_pylist()
        seen: dict[tuple, list] = {}
        for c in np.unique(icode[starts[g] : ends[g]]):
            for item in json.loads(idict[c]):
                seen.setdefault((item[0], item[1]), item)
        gident[g] = json.dumps(list(seen.values()))
    groups = list(zip(gkeys, (ends - starts).tolist(), st[starts].tolist(), st[ends - 1].tolist(), starts.tolist(), gident))
    return order, groups


PARQUET_CHUNK_ROWS = 100_000  # a Parquet file this large is split into chunks of row groups (at least this many rows each)
PART_STRIDE = 10_000  # lake part numbers of one file: file i writes parts i*PART_STRIDE, ... (event groups name a part by its number)
EVENT_STAGE = ("pkey", "n", "ts_min", "ts_max", "part", "row0", "identities")  # an event part's staged SQL rows


@dataclass(frozen=True)
class FileJob:
    """What every file of an ingestion job shares (sent once to each executor task)."""

    bucket: str
    lake: str  # the attempt's lake folder
    fmt: str
    multiline: bool
    behaviour: str
    ingest_ms: int
    to_store: bool
    chunk_rows: int
    event_run_rows: int
    event_run_bytes: int
    # Local executor only (never sent to Ray): takes each part's SQL rows at once, as the file is
    # read, so the loading overlaps the reading as it did before chunks; None: staging files.
    sink: Callable[[pa.Table], None] | None = None

    @property
    def events(self) -> bool:
        return self.behaviour == "time-series"


def stage_prefix(lake: str) -> str:
    """Where a file's chunk leaves the profile-store rows of its parts for the job thread to load."""
    return f"{lake}/stage"


class _PartWriter:
    """Writes the lake parts of one file (numbered from index * PART_STRIDE, so files need not know
    of each other) and, for the profile store, one staging file per part holding its SQL rows: a
    chunk running on Ray has no database, the job thread loads them (then they are deleted)."""

    def __init__(self, store: ObjectStore, job: FileJob, index: int, path: str):
        self.store, self.job, self.path = store, job, path
        self.base = index * PART_STRIDE
        self.parts: list[dict] = []

    def _next(self) -> tuple[int, str, str]:
        if len(self.parts) >= PART_STRIDE:
            raise JobFailure("INGEST-1290-400", f"file '{self.path}' makes more than {PART_STRIDE} lake parts: split it into several files")
        n = self.base + len(self.parts)
        name = f"part-{n:05d}.parquet"
        return n, name, f"{self.job.lake}/{name}"

    def _write(self, key: str, table: pa.Table, **kwargs) -> None:
        with self.store.open_write(self.job.bucket, key) as out:
            pq.write_table(table, out, **kwargs)

    def _done(self, part: dict, n: int, stage: pa.Table | None) -> None:
        if stage is not None and self.job.sink is not None:
            self.job.sink(stage)
        elif stage is not None:
            part["stage"] = f"{stage_prefix(self.job.lake)}/{n:05d}.parquet"
            self._write(part["stage"], stage, compression="zstd", compression_level=1)
        part["size"] = self.store.size(self.job.bucket, part["key"])
        self.parts.append(part)

    def write(self, table: pa.Table, records: int, pkeys: pa.Array | None = None, identities: pa.Array | None = None, docs: pa.Array | None = None) -> None:
        """A part of accepted rows. With `pkeys` (the primary identity of each row of a record part)
        a sidecar file `pkeys` holds them too: an export then reads the profile records from the lake
        (scan.LakeExport); and the rows (pkey, identities, doc) are staged for the profile store."""
        n, name, key = self._next()
        self._write(key, table, compression="zstd")
        part = {"name": name, "key": key, "records": records}
        stage = None
        if pkeys is not None:
            part["pkeys"] = pkeys_key(key)
            self._write(part["pkeys"], pa.table({"pkey": pkeys}), compression="zstd")
            stage = pa.table({"pkey": pkeys, "identities": identities, "doc": docs})
        self._done(part, n, stage)

    def add_events(self, run: _EventRun, table: pa.Table, pkeys: pa.Array, idents: pa.Array | None, ts: np.ndarray) -> None:
        if run.rows and run.unified(table.schema) is None:
            self.flush_events(run)  # a schema this run cannot hold
        run.add(table, pkeys, idents, ts)
        if run.full:
            self.flush_events(run)

    def flush_events(self, run: _EventRun) -> None:
        """Sorts a run of events by (primary identity, time), writes it as one lake part and stages
        its event groups (one per person). The part is written a slice at a time (memory: the run
        once more, not twice), without dictionary encoding: with row groups this small each would
        carry its own dictionaries (measured on the benchmark's events: 25% larger and 30% slower)."""
        if not run.rows:
            return
        for table, pkeys, idents, ts in run.take():
            order, groups = event_groups(pkeys, idents, ts)
            del pkeys, idents, ts
            table = table.combine_chunks()
            n, name, key = self._next()
            step = EVENT_ROW_GROUP * 16
            with self.store.open_write(self.job.bucket, key) as out, pq.ParquetWriter(out, table.schema, compression="zstd", use_dictionary=False) as w:
                for i in range(0, len(order), step):
                    w.write_table(table.take(pa.array(order[i : i + step], pa.int64())), row_group_size=EVENT_ROW_GROUP)
            k, cnt, t0, t1, r0, ids = (list(c) for c in zip(*groups))
            stage = pa.table({"pkey": pa.array(k, pa.string()), "n": pa.array(cnt, pa.int64()), "ts_min": pa.array(t0, pa.int64()), "ts_max": pa.array(t1, pa.int64()), "part": pa.array([n] * len(k), pa.int64()), "row0": pa.array(r0, pa.int64()), "identities": pa.array(ids, pa.string())})
            self._done({"name": name, "key": key, "records": table.num_rows}, n, stage)
            del table


def ingest_file(store: ObjectStore, job: FileJob, item: tuple[int, str, str, int, list[int] | None]) -> dict:
    """One uploaded file of a batch, or a range of row groups of a large Parquet file (`item`: chunk
    number, key, path, rows of the file before the range, row groups or None for all), as an executor
    chunk (a local thread or a Ray task): applies the row rules with 1-based row numbers of the file, writes the accepted rows as lake parts (and
    stages their profile-store rows), and returns counts, rejected rows (an ErrorCollector), the
    parts and the file's identity-graph input (distinct identities, and links)."""
    index, key, path, row_no, row_groups = item
    errors = ErrorCollector()
    graph = _GraphInput()
    out = _PartWriter(store, job, index, path)
    run = _EventRun(job.event_run_rows, job.event_run_bytes) if job.to_store and job.events else None
    total = ok = 0
    try:
        for chunk in read_chunks(store, job.bucket, key, job.fmt, job.multiline, job.chunk_rows, row_groups):
            fast = None
            if chunk.arrow is not None:
                try:
                    fast = check_batch(chunk.arrow, job.behaviour, job.ingest_ms, docs=job.to_store and not job.events)
                except Unsupported as exc:
                    log.info("file %s: row-by-row rules (%s)", path, exc)
                    chunk.rows, chunk.sizes = chunk.arrow.to_pylist(), [None] * chunk.arrow.num_rows
            if fast is not None:
                n_rows = chunk.arrow.num_rows
                for i, err in fast.errors:
                    errors.add(err, path, row_no + i + 1)
                row_no += n_rows
                total += n_rows
                if not fast.n_ok:
                    continue
                ok += fast.n_ok
                table = pa.Table.from_batches([chunk.arrow.filter(pa.array(fast.mask, pa.bool_()))]) if fast.errors else pa.Table.from_batches([chunk.arrow])
                if job.to_store:
                    graph.add(fast.keys, *fast.pairs)
                if run is not None:
                    out.add_events(run, table, fast.pkeys, None if fast.single else fast.identities, fast.ts_ms)
                elif job.to_store:
                    out.write(table, fast.n_ok, fast.pkeys, fast.identities, fast.docs)
                else:
                    out.write(table, fast.n_ok)
                continue
            accepted: list[Accepted] = []
            accepted_rows: list[dict] = []
            mask: list[bool] = []
            for row, size in zip(chunk.rows, chunk.sizes):
                row_no += 1
                res = check_row(row, job.behaviour, job.ingest_ms, size, need_doc=run is None)
                if isinstance(res, Accepted):
                    accepted.append(res)
                    accepted_rows.append(row)
                    mask.append(True)
                else:
                    errors.add(res, path, row_no)
                    mask.append(False)
            total += len(chunk.rows)
            if not accepted:
                continue
            ok += len(accepted)
            table = _lake_table(chunk, mask, accepted_rows, accepted)
            single = all(len(a.identities) == 1 for a in accepted)
            if job.to_store:
                if single:
                    graph.add(pa.array([a.pkey for a in accepted], pa.string()), _NO_KEYS, _NO_KEYS)
                else:
                    graph.add_rows([ikeys_of(a.identities) for a in accepted])
            pkeys = pa.array([a.pkey for a in accepted], pa.string())
            if run is not None:
                idents = None if single else pa.array([json.dumps(a.identities) for a in accepted], pa.string())
                out.add_events(run, table, pkeys, idents, np.array([a.ts_ms for a in accepted], np.int64))
            elif job.to_store:
                out.write(table, len(accepted), pkeys, pa.array([json.dumps(a.identities) for a in accepted], pa.string()), pa.array([a.doc for a in accepted], pa.string()))
            else:
                out.write(table, len(accepted))
        if run is not None:
            out.flush_events(run)
    except ObjectStoreError as exc:
        raise TransientJobError("INGEST-1503-503", f"reading or writing files: {exc}") from exc
    except FileNotFoundError as exc:
        raise JobFailure("INGEST-1290-400", f"uploaded file '{path}' is missing") from exc
    keys, pairs = graph.result() if job.to_store else (_NO_KEYS, (_NO_KEYS, _NO_KEYS))
    return {"rows": total, "ok": ok, "errors": errors, "parts": out.parts, "keys": keys, "pairs": pairs}


class IngestService:
    def __init__(self, db, store: ObjectStore, queue: JobQueue, bucket: str, profiles: ProfileStore, chunk_rows: int = 20000, event_run_rows: int = EVENT_RUN_ROWS, event_run_bytes: int = EVENT_RUN_BYTES):
        self.db, self.store, self.queue, self.bucket, self.profiles = db, store, queue, bucket, profiles
        self.chunk_rows = chunk_rows
        self.event_run_rows, self.event_run_bytes = event_run_rows, event_run_bytes
        self.local = LocalExecutor(store)
        self.parquet_chunk_rows = PARQUET_CHUNK_ROWS

    # -- API side ----------------------------------------------------------------------------
    def create_batch(self, t: Tenant, body: Any) -> Batch:
        if not isinstance(body, dict):
            raise InvalidParameter("the body must be a JSON object")
        dataset_id = body.get("datasetId") or body.get("dataSetId")
        if not isinstance(dataset_id, str):
            raise InvalidParameter("datasetId is required")
        fmt_spec = body.get("inputFormat") or {"format": "json"}
        fmt = str(fmt_spec.get("format", "")).lower() if isinstance(fmt_spec, dict) else ""
        if fmt not in FORMATS:
            raise InvalidParameter("inputFormat.format must be one of json, parquet, csv")
        threshold = DEFAULT_THRESHOLD_PCT
        if "partialIngestionPercentage" in body:
            threshold = body["partialIngestionPercentage"]
            if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= 100:
                raise InvalidParameter("partialIngestionPercentage must be an integer from 1 to 100")
        ms = now_ms()
        with self.db.session() as s:
            ds = s.execute(select(Dataset).where(Dataset.id == dataset_id, Dataset.sandbox_id == t.sandbox_id)).scalar_one_or_none()
            if ds is None:
                raise InvalidParameter(f"dataset {dataset_id} not found")
            if ds.behaviour == "union":
                raise InvalidParameter("the union schema is read-only: batches on it are written by export jobs only")
            bid = new_ulid()
            b = Batch(
                id=bid, org_id=t.org_id, sandbox_id=t.sandbox_id, dataset_id=dataset_id, status="loading",
                input_format={**fmt_spec, "format": fmt}, external_id=body.get("externalId") or bid, tags=body.get("tags") or {},
                failure_threshold_pct=threshold, created_client=t.client_id, created_ms=ms, updated_ms=ms,
            )
            s.add(b)
            return b

    def _loading_batch(self, s: Session, t: Tenant, batch_id: str, dataset_id: str | None = None) -> Batch:
        b = s.execute(select(Batch).where(Batch.id == batch_id, Batch.sandbox_id == t.sandbox_id)).scalar_one_or_none()
        if b is None:
            raise NotFound(f"batch {batch_id} not found")
        if dataset_id is not None and b.dataset_id != dataset_id:
            raise NotFound(f"dataset {dataset_id} is not the dataset of batch {batch_id}")
        return b

    def begin_upload(self, t: Tenant, batch_id: str, dataset_id: str, path: str) -> tuple[str, StreamedUpload]:
        try:
            check_object_key(path)
        except InvalidObjectPath:
            raise InvalidParameter(f"invalid file path {path!r}") from None
        with self.db.session() as s:
            b = self._loading_batch(s, t, batch_id, dataset_id)
            if b.status != "loading":
                raise InvalidParameter(f"batch {batch_id} is {b.status}; files can be uploaded while it is loading")
            n = len(s.execute(select(BatchFile.path).where(BatchFile.batch_id == batch_id)).all())
            if n >= MAX_FILES and not s.get(BatchFile, (batch_id, path)):
                raise InvalidParameter(f"a batch holds at most {MAX_FILES} files")
            key = f"{upload_prefix(b)}/{path}"
        return key, StreamedUpload(self.store, self.bucket, key)

    def finish_upload(self, t: Tenant, batch_id: str, path: str, key: str, size: int) -> bool:
        """Records the uploaded file; True if it is new (201), False if it replaced one (200)."""
        with self.db.session() as s:
            b = self._loading_batch(s, t, batch_id)
            if b.status != "loading":
                raise InvalidParameter(f"batch {batch_id} is {b.status}; the upload came too late")
            f = s.get(BatchFile, (batch_id, path))
            if f is None:
                s.add(BatchFile(batch_id=batch_id, path=path, key=key, size=size, created_ms=now_ms()))
                return True
            f.size, f.created_ms = size, now_ms()
            return False

    def complete(self, t: Tenant, batch_id: str) -> Batch:
        with self.db.session() as s:
            b = s.execute(select(Batch).where(Batch.id == batch_id, Batch.sandbox_id == t.sandbox_id).with_for_update()).scalar_one_or_none()
            if b is None:
                raise NotFound(f"batch {batch_id} not found")
            if b.status != "loading":
                raise InvalidParameter(f"batch {batch_id} is {b.status}; only a loading batch can be completed")
            # One ingest job per sandbox at a time: the identity graph is updated by each publication.
            job = self.queue.submit(s, JOB_KIND, f"aep:{t.org_id}", {"batch_id": batch_id}, concurrency_key=f"aep:{t.sandbox_id}:store")
            s.flush()
            ms = now_ms()
            b.status, b.job_id, b.started_ms, b.updated_ms = "staging", job.id, ms, ms
            s.execute(update(Dataset).where(Dataset.id == b.dataset_id).values(last_batch_id=b.id, last_batch_status="staging", updated_ms=ms))
            return b

    def abort(self, t: Tenant, batch_id: str) -> Batch:
        with self.db.session() as s:
            b = s.execute(select(Batch).where(Batch.id == batch_id, Batch.sandbox_id == t.sandbox_id).with_for_update()).scalar_one_or_none()
            if b is None:
                raise NotFound(f"batch {batch_id} not found")
            if b.status not in ("loading", "staging"):
                raise InvalidParameter(f"batch {batch_id} is {b.status}; it can no longer be aborted")
            job_id = b.job_id
            if b.status == "loading":
                self._mark_aborted(s, b)
        if job_id:
            after = self.queue.request_cancel(job_id)
            if after == JobStatus.CANCELLED.value:  # it had not started: no on_fail will run
                with self.db.session() as s:
                    b = s.get(Batch, batch_id)
                    if b.status == "staging":
                        self._mark_aborted(s, b)
        try:
            self.store.delete_prefix(self.bucket, upload_prefix(b))
        except ObjectStoreError:
            log.warning("could not remove the uploads of aborted batch %s", batch_id)
        return self._get(batch_id)

    def revert(self, t: Tenant, batch_id: str) -> Batch:
        """action=REVERT (§6.3): a published batch is withdrawn. Its profile-store contribution is
        removed (graphs recomputed), its lake files are deleted, and it becomes ``inactive`` (AEP then
        garbage-collects it to ``deleted``; here the files are gone at once)."""
        with self.db.session() as s:
            b = s.execute(select(Batch).where(Batch.id == batch_id, Batch.sandbox_id == t.sandbox_id).with_for_update()).scalar_one_or_none()
            if b is None:
                raise NotFound(f"batch {batch_id} not found")
            if b.status != "success":
                raise InvalidParameter(f"batch {batch_id} is {b.status}; only a successful batch can be reverted")
            ms = now_ms()
            b.status, b.updated_ms = "inactive", ms
            s.execute(update(Dataset).where(Dataset.id == b.dataset_id, Dataset.last_batch_id == b.id).values(last_batch_status="inactive", updated_ms=ms))
            s.flush()
            self.profiles.delete_batch(t.sandbox_id, batch_id, session=s)  # one transaction with the status
        try:
            self.store.delete_prefix(self.bucket, lake_root(b))
        except ObjectStoreError:
            log.warning("could not remove the lake files of reverted batch %s", batch_id)
        return self._get(batch_id)

    def _get(self, batch_id: str) -> Batch:
        with self.db.session() as s:
            return s.get(Batch, batch_id)

    @staticmethod
    def _mark_aborted(s: Session, b: Batch) -> None:
        ms = now_ms()
        b.status, b.completed_ms, b.updated_ms = "aborted", ms, ms
        s.execute(update(Dataset).where(Dataset.id == b.dataset_id, Dataset.last_batch_id == b.id).values(last_batch_status="aborted"))

    def delete_dataset_data(self, org_id: str, sandbox_id: str, dataset_id: str) -> None:
        """After a dataset's deletion: its files and everything it gave the profile store."""
        self.profiles.delete_dataset(sandbox_id, dataset_id)
        try:
            root = sandbox_root(org_id, sandbox_id)
            self.store.delete_prefix(self.bucket, f"{root}/lake/{dataset_id}")
        except ObjectStoreError:
            log.warning("could not remove the lake files of dataset %s", dataset_id)

    # -- the job -----------------------------------------------------------------------------
    def register_jobs(self, registry: JobRegistry) -> None:
        registry.register(JOB_KIND, self.run_job, on_abort=self._on_abort, on_fail=self._on_fail)

    def _on_abort(self, ctx: JobContext) -> None:
        with self.db.session() as s:
            b = s.get(Batch, ctx.payload["batch_id"])
        try:
            self.profiles.clear_batch(ctx.payload["batch_id"], ctx.attempt_tag)  # may fail on a full disk (SQLite)
        finally:  # the lake files go regardless; the next attempt clears the batch's invisible rows
            if b is not None:
                self.store.delete_prefix(self.bucket, f"{lake_root(b)}/{ctx.attempt_tag}")

    def _on_fail(self, s: Session, job) -> None:
        b = s.get(Batch, (job.payload or {}).get("batch_id"))
        if b is None:
            return
        ms = now_ms()
        cancelled = job.status == JobStatus.CANCELLED.value
        b.status = "aborted" if cancelled else "failed"
        b.completed_ms = b.updated_ms = ms
        if not cancelled and not b.errors:
            b.errors = [{"code": job.fail_message or "COMMON_ERROR", "description": job.fail_detail or ""}]
        s.execute(update(Dataset).where(Dataset.id == b.dataset_id, Dataset.last_batch_id == b.id).values(last_batch_status=b.status, updated_ms=ms))

    def _plan(self, files: list[BatchFile], fmt: str) -> tuple[list[tuple], list[float]]:
        """The job's chunks (ingest_file items) and the bytes each stands for: a file each, or for a
        large Parquet file ranges of row groups of at least ``parquet_chunk_rows`` rows (from its
        footer; a footer that cannot be read leaves the file whole, and its chunk reports why)."""
        items: list[tuple] = []
        sizes: list[float] = []
        for f in files:
            ranges = None
            if fmt == "parquet" and f.size:
                try:
                    with self.store.open_read(self.bucket, f.key) as fh:
                        meta = pq.ParquetFile(fh).metadata
                    ranges, start, rows = [], 0, 0
                    for g in range(meta.num_row_groups):
                        rows += meta.row_group(g).num_rows
                        if rows >= self.parquet_chunk_rows or g == meta.num_row_groups - 1:
                            ranges.append((start, g + 1, rows))
                            start, rows = g + 1, 0
                except (pa.ArrowInvalid, OSError, ObjectStoreError):
                    ranges = None
            if not ranges or len(ranges) == 1:
                items.append((len(items), f.key, f.path, 0, None))
                sizes.append(f.size)
                continue
            before = 0
            total = sum(r for _, _, r in ranges) or 1
            for a, b, rows in ranges:
                items.append((len(items), f.key, f.path, before, list(range(a, b))))
                sizes.append(f.size * rows / total)
                before += rows
        return items, sizes

    def _executor(self, ctx: JobContext):
        """The services' executor (USERLENS_EXECUTOR); this process's threads without services."""
        return getattr(ctx.services, "executor", None) or self.local

    def _load_stage(self, load_id: int, key: str, events: bool) -> None:
        """Inserts a part's staged profile-store rows (written by its file's chunk)."""
        try:
            with self.store.open_read(self.bucket, key) as f:
                t = pq.read_table(f)
        except ObjectStoreError as exc:
            raise TransientJobError("INGEST-1503-503", f"reading staged rows: {exc}") from exc
        self._insert(load_id, t, events)

    def _insert(self, load_id: int, t: pa.Table, events: bool) -> None:
        """Inserts a part's profile-store rows (record fragments or event groups)."""
        if events:
            self.profiles.insert_event_groups(load_id, list(zip(*(t.column(c).to_pylist() for c in EVENT_STAGE))))
        else:
            self.profiles.insert_records(load_id, t.column("pkey").to_pylist(), t.column("identities").to_pylist(), t.column("doc").to_pylist())

    def run_job(self, ctx: JobContext) -> Outcome:
        batch_id = ctx.payload["batch_id"]
        with self.db.session() as s:
            b = s.get(Batch, batch_id)
            if b is None or b.status != "staging":
                raise JobFailure("INGEST-1291-400", f"batch {batch_id} is no longer staging")
            ds = s.get(Dataset, b.dataset_id)
            if ds is None:
                raise JobFailure("INGEST-1292-400", "the dataset was deleted")
            files = list(s.execute(select(BatchFile).where(BatchFile.batch_id == batch_id).order_by(BatchFile.path)).scalars())
            s.expunge_all()
        if not files:
            raise JobFailure("INGEST-1290-400", "the batch has no files")
        attempt = ctx.attempt_tag
        fmt = b.input_format.get("format", "json")
        to_store = ds.profile_enabled and ds.behaviour in ("record", "time-series")
        events = ds.behaviour == "time-series"
        try:
            self.profiles.clear_batch(batch_id)  # rows of earlier, lost attempts
            for obj in self.store.list(self.bucket, lake_root(b)):
                if not obj.key.startswith(f"{lake_root(b)}/{attempt}/"):
                    self.store.delete(self.bucket, obj.key)
        except ObjectStoreError as exc:
            raise TransientJobError("INGEST-1503-503", str(exc)) from exc

        total_bytes = sum(f.size for f in files) or 1
        done_bytes = 0
        errors = ErrorCollector()
        graph = _GraphInput()
        parts: list[dict] = []
        total = ok = 0
        ingest_ms = now_ms()
        load_id = self.profiles.begin_load(b.sandbox_id, b.dataset_id, batch_id, attempt, ds.behaviour, ingest_ms, f"{lake_root(b)}/{attempt}") if to_store else None
        job = FileJob(self.bucket, f"{lake_root(b)}/{attempt}", fmt, bool(b.input_format.get("isMultiLineJson")), ds.behaviour, ingest_ms, to_store, self.chunk_rows, self.event_run_rows, self.event_run_bytes)
        loader = _Loader(threaded=fmt == "parquet")
        executor = self._executor(ctx)
        if to_store and isinstance(executor, LocalExecutor):
            lock = threading.Lock()  # chunk threads share the loader

            def sink(t: pa.Table) -> None:
                with lock:
                    loader.submit(self._insert, load_id, t, events)

            job = replace(job, sink=sink)

        def on_result(i: int, r: dict) -> None:
            # In the job thread, file by file in order: counts, rejected rows, graph input, SQL rows.
            nonlocal total, ok, done_bytes
            total += r["rows"]
            ok += r["ok"]
            errors.absorb(r["errors"])
            if to_store:
                graph.add(r["keys"], *r["pairs"])
            for p in r["parts"]:
                stage = p.pop("stage", None)
                if stage is not None:
                    loader.submit(self._load_stage, load_id, stage, events)
                parts.append(p)
            r.clear()  # the executor keeps results until the last file: drop the graph input now
            done_bytes += sizes[i]
            ctx.progress(min(0.95, done_bytes / total_bytes), f"{total} rows read, {errors.count} rejected")

        try:
            # Row rules are Python (one thread: the GIL); Parquet input is mostly Arrow, files in parallel.
            items, sizes = self._plan(files, fmt)
            executor.map(ctx, ingest_file, items, shared=job, on_result=on_result, local_threads=None if fmt == "parquet" else 1)
            loader.wait()
        finally:
            loader.close()
        if to_store:
            try:
                self.store.delete_prefix(self.bucket, stage_prefix(job.lake))
            except ObjectStoreError as exc:
                raise TransientJobError("INGEST-1503-503", str(exc)) from exc
        failed = errors.count
        if total == 0:
            raise JobFailure("INGEST-1290-400", "the batch's files hold no rows")
        if failed and failed * 100 >= b.failure_threshold_pct * total:
            entries = [{"code": "INGEST-1299-400", "description": f"{failed} of {total} rows were rejected, at least {b.failure_threshold_pct}% of the batch: the batch fails whole"}] + errors.entries()
            with self.db.session() as s:
                s.execute(update(Batch).where(Batch.id == batch_id).values(errors=entries, failed_record_count=failed, record_count=0))
            raise JobFailure("INGEST-1299-400", f"{failed} of {total} rows rejected (threshold {b.failure_threshold_pct}%)")
        size = sum(p["size"] for p in parts)
        keys, edges = graph.result()
        row_errors = errors.entries()

        def publish(s: Session) -> None:
            # The publication point: the batch, its lake files and its profile rows appear together.
            ms = now_ms()
            s.execute(
                update(Batch).where(Batch.id == batch_id).values(
                    status="success", completed_ms=ms, updated_ms=ms, record_count=ok, failed_record_count=failed, errors=row_errors or None,
                    size=size, lake_files=parts, store_attempt=attempt if to_store else None,
                    metrics={"recordsRead": total, "recordsWritten": ok, "recordsFailed": failed, "startTime": b.started_ms, "endTime": ms, "inputByteSize": total_bytes, "outputByteSize": size},
                )
            )
            s.execute(update(Dataset).where(Dataset.id == b.dataset_id, Dataset.last_batch_id == batch_id).values(last_batch_status="success", updated_ms=ms))
            if load_id is not None:
                self.profiles.publish_load(s, load_id)
            if to_store:
                self.profiles.apply_graph(s, b.sandbox_id, keys, edges)

        return Outcome(result={"records": ok, "failed": failed, "files": len(parts)}, publish=publish)
