"""Batch ingestion (reference §6): create a batch, stream files into it, COMPLETE or ABORT, and the
job ("aep.batch_ingest") that validates, writes the data lake and feeds the profile store.

Status words. The batch row keeps the Catalog word: ``loading`` (accepting files) -> ``staging``
(COMPLETE registered the job; set in the same transaction) -> ``success`` (set by the job's publish
callback, in the transaction that completes the job) or ``failed`` (set by the job's ``on_fail``, in
the transaction that fails it); ``aborted`` on ABORT (before the job ends).

Uploads stream chunk by chunk to the internal bucket (``aep/{org}/{sandbox}/uploads/{batch}/{path}``)
through ``ObjectStore.open_write``: nothing is held whole in memory, and a file appears whole or not.

The job reads every file in chunks of ``chunk_rows`` rows (JSON lines, one JSON array per line as
aepp sends, multi-line JSON, CSV, Parquet record batches), applies the row rules of ``xdm.check_row``
with 1-based row numbers per file (Parquet record batches of the usual shapes go through the same
rules column-wise, ``columnar.check_batch``, and fall back to the row path otherwise), writes the
accepted rows of each chunk as one Parquet part under an attempt-unique folder
``aep/{org}/{sandbox}/lake/{dataset}/{batch}/{attempt}/`` (Parquet input keeps its own Arrow schema:
rows are filtered, never converted), and, for Profile-enabled datasets, inserts them into the profile
store tagged with the attempt (bulk inserts on a background thread, at most two chunks behind:
``_Loader``). Publication makes all of it visible at once.

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
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from userlens.errors import Conflict, InvalidParameter, NotFound
from userlens.jobs.engine import JobContext, JobFailure, JobQueue, JobRegistry, Outcome, TransientJobError
from userlens.jobs.models import JobStatus
from userlens.orgs.service import Tenant
from userlens.profiles.catalog import new_ulid, now_ms
from userlens.profiles.columnar import Unsupported, check_batch
from userlens.profiles.models import Batch, BatchFile, Dataset
from userlens.profiles.store import ProfileStore, UnionFind, ikeys_of
from userlens.profiles.xdm import Accepted, check_row, dumps
from userlens.storage.objectstore import InvalidObjectPath, ObjectStore, ObjectStoreError, check_object_key

log = logging.getLogger("userlens.aep.ingest")

JOB_KIND = "aep.batch_ingest"
FORMATS = ("json", "parquet", "csv")
MAX_FILES = 1500
DEFAULT_THRESHOLD_PCT = 10
MAX_ERROR_RANGES = 100


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


@dataclass
class Chunk:
    rows: list[Any]
    sizes: list[int | None]
    arrow: pa.RecordBatch | None = None


def read_chunks(store: ObjectStore, bucket: str, key: str, fmt: str, multiline: bool, chunk_rows: int) -> Iterator[Chunk]:
    if fmt == "parquet":
        with store.open_read(bucket, key) as f:
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowInvalid, OSError) as exc:
                raise JobFailure("INGEST-1290-400", f"file '{key.rsplit('/', 1)[-1]}' is not a readable Parquet file: {exc}") from exc
            for rb in pf.iter_batches(batch_size=chunk_rows):
                yield Chunk(None, None, rb)  # rows are made only if the column-wise rules cannot apply
        return
    with store.open_read(bucket, key) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        if fmt == "csv":
            rows: list = []
            for rec in csv.DictReader(text):
                rows.append(_nest(rec))
                if len(rows) >= chunk_rows:
                    yield Chunk(rows, [None] * len(rows))
                    rows = []
            if rows:
                yield Chunk(rows, [None] * len(rows))
            return
        if multiline:
            # Multi-line JSON is one document (an array or an object): bounded by the upload size.
            try:
                doc = json.load(text)
            except ValueError:
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
                value = json.loads(line)
            except ValueError:
                value = None
            if isinstance(value, list):  # aepp sends a list as one JSON array
                rows += value
                sizes += [None] * len(value)
            else:
                rows.append(value)
                sizes.append(len(line.encode()))
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
        return pa.table({"_id": [r.get("_id") if isinstance(r.get("_id"), str) else None for r in accepted_rows], "xdm_json": [a.doc for a in accepted]})


class _Loader:
    """Runs the profile-store inserts of a job on one background thread, at most two chunks behind
    the reader, so validating and writing the lake overlap with the database's work (SQLite and
    psycopg release the GIL while they work). Errors surface at the next submit or at wait()."""

    def __init__(self, depth: int = 2):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aep-load")
        self.pending: deque = deque()
        self.depth = depth

    def submit(self, fn, *args, **kwargs) -> None:
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
        self.pool.shutdown(wait=True, cancel_futures=True)


class IngestService:
    def __init__(self, db, store: ObjectStore, queue: JobQueue, bucket: str, profiles: ProfileStore, chunk_rows: int = 20000):
        self.db, self.store, self.queue, self.bucket, self.profiles = db, store, queue, bucket, profiles
        self.chunk_rows = chunk_rows

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
        self.profiles.clear_batch(ctx.payload["batch_id"], ctx.attempt_tag)
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

    def _write_part(self, b: Batch, attempt: str, parts: list[dict], table: pa.Table, records: int) -> None:
        name = f"part-{len(parts):05d}.parquet"
        key = f"{lake_root(b)}/{attempt}/{name}"
        with self.store.open_write(self.bucket, key) as out:
            pq.write_table(table, out, compression="zstd")
        parts.append({"name": name, "key": key, "records": records})

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
        multiline = bool(b.input_format.get("isMultiLineJson"))
        to_store = ds.profile_enabled and ds.behaviour in ("record", "time-series")
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
        uf = UnionFind()
        parts: list[dict] = []
        total = ok = 0
        ingest_ms = now_ms()
        loader = _Loader()
        try:
            for f in files:
                row_no = 0
                try:
                    for chunk in read_chunks(self.store, self.bucket, f.key, fmt, multiline, self.chunk_rows):
                        ctx.check()
                        fast = None
                        if chunk.arrow is not None:
                            try:
                                fast = check_batch(chunk.arrow, ds.behaviour, ingest_ms)
                            except Unsupported as exc:
                                log.info("batch %s: row-by-row rules (%s)", batch_id, exc)
                                chunk.rows, chunk.sizes = chunk.arrow.to_pylist(), [None] * chunk.arrow.num_rows
                        if fast is not None:
                            n_rows = chunk.arrow.num_rows
                            for i, err in fast.errors:
                                errors.add(err, f.path, row_no + i + 1)
                            row_no += n_rows
                            total += n_rows
                            n_ok = len(fast.pkeys)
                            if not n_ok:
                                continue
                            ok += n_ok
                            table = pa.Table.from_batches([chunk.arrow.filter(pa.array(fast.mask, pa.bool_()))]) if fast.errors else pa.Table.from_batches([chunk.arrow])
                            self._write_part(b, attempt, parts, table, n_ok)
                            if to_store:
                                loader.submit(self.profiles.insert_columns, b.sandbox_id, b.dataset_id, batch_id, attempt, ds.behaviour, ingest_ms, pkeys=fast.pkeys, identities=fast.identities, docs=fast.docs, event_ids=fast.event_ids, ts_ms=fast.ts_ms)
                                for k in fast.keys:
                                    uf.find(k)
                                for a, k in fast.pairs:
                                    uf.union(a, k)
                        else:
                            accepted: list[Accepted] = []
                            accepted_rows: list[dict] = []
                            mask: list[bool] = []
                            for row, size in zip(chunk.rows, chunk.sizes):
                                row_no += 1
                                res = check_row(row, ds.behaviour, ingest_ms, size)
                                if isinstance(res, Accepted):
                                    accepted.append(res)
                                    accepted_rows.append(row)
                                    mask.append(True)
                                else:
                                    errors.add(res, f.path, row_no)
                                    mask.append(False)
                            total += len(chunk.rows)
                            if not accepted:
                                continue
                            ok += len(accepted)
                            self._write_part(b, attempt, parts, _lake_table(chunk, mask, accepted_rows, accepted), len(accepted))
                            if to_store:
                                loader.submit(self.profiles.insert_rows, b.sandbox_id, b.dataset_id, batch_id, attempt, ds.behaviour, accepted, ingest_ms)
                                for a in accepted:
                                    uf.add_row(ikeys_of(a.identities))
                        ctx.progress(min(0.95, (done_bytes + f.size * 0.5) / total_bytes), f"{total} rows read, {errors.count} rejected")
                except ObjectStoreError as exc:
                    raise TransientJobError("INGEST-1503-503", f"reading or writing files: {exc}") from exc
                except FileNotFoundError as exc:
                    raise JobFailure("INGEST-1290-400", f"uploaded file '{f.path}' is missing") from exc
                done_bytes += f.size
            loader.wait()
        finally:
            loader.close()
        failed = errors.count
        if total == 0:
            raise JobFailure("INGEST-1290-400", "the batch's files hold no rows")
        if failed and failed * 100 >= b.failure_threshold_pct * total:
            entries = [{"code": "INGEST-1299-400", "description": f"{failed} of {total} rows were rejected, at least {b.failure_threshold_pct}% of the batch: the batch fails whole"}] + errors.entries()
            with self.db.session() as s:
                s.execute(update(Batch).where(Batch.id == batch_id).values(errors=entries, failed_record_count=failed, record_count=0))
            raise JobFailure("INGEST-1299-400", f"{failed} of {total} rows rejected (threshold {b.failure_threshold_pct}%)")
        try:
            for p in parts:
                p["size"] = self.store.size(self.bucket, p["key"])
        except ObjectStoreError as exc:
            raise TransientJobError("INGEST-1503-503", str(exc)) from exc
        size = sum(p["size"] for p in parts)
        components = uf.groups() if to_store else []
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
            if components:
                self.profiles.apply_graph(s, b.sandbox_id, components)

        return Outcome(result={"records": ok, "failed": failed, "files": len(parts)}, publish=publish)
