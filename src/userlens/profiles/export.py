"""Profile export jobs (reference §3, seed 001): ``/data/core/ups/export/jobs``.

An export job ("aep.profile_export" on the one job engine) scans the sandbox's merged profiles
(``scan.ProfileScan``), keeps those the request's filters select, projects them to ``fields`` and
writes them as Parquet files of a new Catalog batch of the target dataset (one batch per segment with
``destination.segmentPerBatch``). The batch ids are drawn when the job is created (the seed shows
them on a NEW job) but the Catalog batches are inserted, already ``success`` with their files, by the
job's publish callback, in the transaction that completes the job: a batch is visible whole or not at
all. Files go under an attempt-unique folder of the batch's lake folder (``.../lake/{dataset}/{batch}/
{attempt}/part-NNNNN.parquet``, the layout of ingested batches, so the Data Access API serves them);
an attempt that ends without publishing removes its folder (``on_abort``).

Where it runs: without segments, events or memberships (identity graph ``pdg``) the records are read
from the lake in chunks of the services' executor (``export_lake_chunk``: local threads, or Ray tasks
that read and write the object store themselves; ``scan.LakeExport``), guided by the sandbox's lake
plan (``lakeplan``: built by the first such export after the graph changes, reused by the next); the
job keeps the state, progress, the SQL scan of merged profiles and the publication. An attempt that
ends without publishing also removes the lake plan it built unless it installed it (``on_abort``). A chunk writes its own parts
(``part-{chunk}.parquet``, ``part-{chunk}-{n}.parquet`` when the schema changes); the SQL scan's
parts are numbered after the chunks'. Other exports scan SQL in the job's thread.

Rows: one per exported profile: the merged attributes (``identityMap`` and ``_id`` of stored records
replaced by the graph's ``identities`` and ``identityMap``), ``segmentMembership`` when the profile has
memberships and ``additionalFields.eventList`` as a nested ``eventList`` of the profile's events.
``fields`` keeps the dotted paths given (through lists of objects, so ``identities.id`` keeps the
``id`` of each identity). Columns are typed by Arrow's JSON reader per page of profiles; when a page's
schema differs from the one of the part being written (a field seen first, or of another type), the
part is closed and a new one starts, so each file has one schema (read the batch with
``union_by_name`` in DuckDB or pandas' ``pyarrow`` engine on the folder).

Statuses: NEW (queued) -> PROCESSING -> SUCCEEDED | FAILED. A target dataset that is missing or not
on the union schema fails the job (FAILED with an ``errors`` entry; creation already answers 400 only
for malformed requests). ``DELETE`` cancels: a queued job at once, a running one at its next page;
no batch is published, and the job ends FAILED with the error ``{"code": "CANCELLED", ...}`` (the
reference's status enum has no CANCELLED for export jobs). DELETE of a finished job changes nothing.

Choices where the reference is silent: ``filter.fromIngestTimestamp`` compares with the latest
ingestion time of the profile's record fragments (of its events too when events are read for
``emptyProfiles`` or ``eventList``); ``segmentQualificationTime`` bounds are inclusive and apply to the
membership's lastQualificationTime; segments of namespaces other than ``ups`` are refused (400); a
missing ``mergePolicy`` takes the first filtered segment's policy, else the sandbox default, else the
built-in ``timestampOrdered-none-mp``; ``exportedProfileByNamespaceCounter`` counts each profile once
per namespace among its identities.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import JSON, BigInteger, Index, Integer, String, select, tuple_, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from userlens.errors import InvalidParameter, NotFound
from userlens.jobs.engine import JobContext, JobFailure, JobQueue, JobRegistry, Outcome, TransientJobError
from userlens.jobs.models import Job, JobStatus
from userlens.orgs.service import Tenant
from userlens.profiles.catalog import new_ulid, now_ms
from userlens.profiles import lakeplan
from userlens.profiles.ingest import sandbox_root
from userlens.profiles.lakeplan import plan_folder
from userlens.profiles.merge import BUILTIN, MergePolicyService
from userlens.profiles.models import Batch, Dataset
from userlens.jobs.executor import LocalExecutor
from userlens.profiles.scan import LakeChunk, LakeExport, ProfileScan, ScanPage, attributes_table, identity_columns, json_table, lake_chunk_pages, namespace_counts
from userlens.profiles.segments import SegmentDefinition, SegmentService, iso
from userlens.profiles.store import ProfileStore
from userlens.profiles.xdm import parse_timestamp_ms
from userlens.storage.db import Base, Database
from userlens.storage.objectstore import ObjectStore, ObjectStoreError, is_full

log = logging.getLogger("userlens.aep.export")

JOB_KIND = "aep.profile_export"
STATUSES = ("realized", "existing", "exited")
BUILTIN_POLICY_ID = "timestampOrdered-none-mp"
PART_ROWS = 1_000_000  # rows per Parquet file of an export batch ("large exports are split across several files")
ROW_GROUP = 128 * 1024


class ExportJob(Base):
    __tablename__ = "aep_export_jobs"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64))
    sandbox_id: Mapped[str] = mapped_column(String(36))
    job_id: Mapped[str] = mapped_column(String(36))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    merge_policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    destination: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    compute: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    errors: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    request_id: Mapped[str] = mapped_column(String(40))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_aep_export_scope", "sandbox_id", "created_ms"),)


# -- request ----------------------------------------------------------------------------------------
def parse_fields(value: Any, name: str) -> list[tuple[str, ...]] | None:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise InvalidParameter(f"{name} must be a comma-separated string of dotted field paths")
    out = [tuple(p for p in f.strip().split(".")) for f in value.split(",") if f.strip()]
    if any(not all(out_part for out_part in f) for f in out):
        raise InvalidParameter(f"{name}: empty path component in {value!r}")
    return out or None


def _ts(value: Any, name: str) -> int | None:
    if value is None:
        return None
    ms = parse_timestamp_ms(value) if isinstance(value, str) else None
    if ms is None:
        raise InvalidParameter(f"{name} must be an RFC 3339 timestamp (got {value!r})")
    return ms


@dataclass
class SegmentFilter:
    segment_id: str
    ns: str
    statuses: tuple[str, ...]


@dataclass
class ExportRequest:
    fields: list[tuple[str, ...]] | None
    segments: list[SegmentFilter]
    qual_start: int | None
    qual_end: int | None
    from_ingest: int | None
    empty_profiles: bool
    event_list: bool
    event_fields: list[tuple[str, ...]] | None
    event_from: int | None
    event_to: int | None
    dataset_id: str
    segment_per_batch: bool
    schema_name: str
    segmentation: bool
    policy_id: str | None
    policy_version: int | None

    @classmethod
    def parse(cls, body: Any) -> "ExportRequest":
        if not isinstance(body, dict):
            raise InvalidParameter("the body must be a JSON object")
        dest = body.get("destination")
        if not isinstance(dest, dict):
            raise InvalidParameter("destination is required: {\"datasetId\": ...}")
        ds = dest.get("datasetId") or dest.get("dataSetId")
        if not isinstance(ds, str) or not ds:
            raise InvalidParameter("destination.datasetId is required")
        spb = dest.get("segmentPerBatch", False)
        if not isinstance(spb, bool):
            raise InvalidParameter("destination.segmentPerBatch must be a boolean")
        schema = body.get("schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str) or not schema["name"]:
            raise InvalidParameter("schema.name is required (e.g. _xdm.context.profile)")
        mp = body.get("mergePolicy")
        if mp is not None and (not isinstance(mp, dict) or not isinstance(mp.get("id"), str)):
            raise InvalidParameter("mergePolicy must be {\"id\": ..., \"version\": ...}")
        version = (mp or {}).get("version")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
            raise InvalidParameter("mergePolicy.version must be an integer")
        flt = body.get("filter") or {}
        if not isinstance(flt, dict):
            raise InvalidParameter("filter must be an object")
        segs = []
        raw_segs = flt.get("segments")
        if raw_segs is not None:
            if not isinstance(raw_segs, list) or not raw_segs:
                raise InvalidParameter("filter.segments must be a non-empty array of {segmentId, segmentNs, status}")
            for s in raw_segs:
                if not isinstance(s, dict) or not isinstance(s.get("segmentId"), str) or not s["segmentId"]:
                    raise InvalidParameter("filter.segments[].segmentId is required")
                ns = s.get("segmentNs", "ups") or "ups"
                if not isinstance(ns, str) or ns.lower() != "ups":
                    raise InvalidParameter(f"filter.segments[].segmentNs {ns!r} is not supported: userlens exports segments it evaluates itself (namespace ups)")
                st = s.get("status", ["realized", "existing"])
                if isinstance(st, str):
                    st = [st]
                if not isinstance(st, list) or not st or any(x not in STATUSES for x in st):
                    raise InvalidParameter(f"filter.segments[].status must be an array of {', '.join(STATUSES)}")
                segs.append(SegmentFilter(s["segmentId"], "ups", tuple(st)))
        sqt = flt.get("segmentQualificationTime") or {}
        if not isinstance(sqt, dict):
            raise InvalidParameter("filter.segmentQualificationTime must be {startTime, endTime}")
        empty = flt.get("emptyProfiles", False)
        if not isinstance(empty, bool):
            raise InvalidParameter("filter.emptyProfiles must be a boolean")
        add = body.get("additionalFields") or {}
        if not isinstance(add, dict):
            raise InvalidParameter("additionalFields must be an object")
        el = add.get("eventList")
        if el is not None and not isinstance(el, dict):
            raise InvalidParameter("additionalFields.eventList must be an object")
        el_filter = (el or {}).get("filter") or {}
        if not isinstance(el_filter, dict):
            raise InvalidParameter("additionalFields.eventList.filter must be an object")
        ev = body.get("evaluationInfo") or {}
        segmentation = ev.get("segmentation", False) if isinstance(ev, dict) else False
        if not isinstance(segmentation, bool):
            raise InvalidParameter("evaluationInfo.segmentation must be a boolean")
        if segmentation and not segs:
            raise InvalidParameter("evaluationInfo.segmentation needs filter.segments (the segments to evaluate)")
        return cls(
            fields=parse_fields(body.get("fields"), "fields"),
            segments=segs,
            qual_start=_ts(sqt.get("startTime"), "filter.segmentQualificationTime.startTime"),
            qual_end=_ts(sqt.get("endTime"), "filter.segmentQualificationTime.endTime"),
            from_ingest=_ts(flt.get("fromIngestTimestamp"), "filter.fromIngestTimestamp"),
            empty_profiles=empty,
            event_list=el is not None,
            event_fields=parse_fields((el or {}).get("fields"), "additionalFields.eventList.fields"),
            event_from=_ts(el_filter.get("fromIngestTimestamp"), "additionalFields.eventList.filter.fromIngestTimestamp"),
            event_to=_ts(el_filter.get("toIngestTimestamp"), "additionalFields.eventList.filter.toIngestTimestamp"),
            dataset_id=ds,
            segment_per_batch=spb,
            schema_name=schema["name"],
            segmentation=segmentation,
            policy_id=(mp or {}).get("id"),
            policy_version=version,
        )


# -- projection ---------------------------------------------------------------------------------------
def _group(paths: list[tuple[str, ...]]) -> dict[str, list[tuple[str, ...]]]:
    out: dict[str, list[tuple[str, ...]]] = {}
    for p in paths:
        out.setdefault(p[0], []).append(p[1:])
    return out


def project_array(arr: pa.Array, paths: list[tuple[str, ...]]) -> pa.Array | None:
    """The parts of `arr` the paths name (relative to it); None if none exists. A path into a list
    of objects projects each item; a path into a map keeps the map whole."""
    if any(len(p) == 0 for p in paths):
        return arr
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_struct(t):
        names, children = [], []
        for name, rest in _group(paths).items():
            i = t.get_field_index(name)
            if i < 0:
                continue
            child = project_array(pc.struct_field(arr, [i]), rest)
            if child is not None:
                names.append(name)
                children.append(child)
        if not children:
            return None
        return pa.StructArray.from_arrays(children, names, mask=pc.is_null(arr) if arr.null_count else None)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        flat_offsets = pc.subtract(arr.offsets, arr.offsets[0]) if len(arr) else arr.offsets
        values = arr.values.slice(arr.offsets[0].as_py(), arr.offsets[-1].as_py() - arr.offsets[0].as_py()) if len(arr) else arr.values
        inner = project_array(values, paths)
        if inner is None:
            return None
        cls = pa.LargeListArray if pa.types.is_large_list(t) else pa.ListArray
        return cls.from_arrays(flat_offsets, inner, mask=pc.is_null(arr) if arr.null_count else None)
    if pa.types.is_map(t):
        return arr
    return None


def project_table(table: pa.Table, paths: list[tuple[str, ...]]) -> pa.Table:
    cols, names = [], []
    for name, rest in _group(paths).items():
        if name not in table.column_names:
            continue
        arr = project_array(table.column(name), rest)
        if arr is not None:
            names.append(name)
            cols.append(arr)
    if not cols:
        return pa.table({"__empty": pa.nulls(table.num_rows)}).drop(["__empty"])
    return pa.Table.from_arrays(cols, names)


def project_dict(doc: Any, paths: list[tuple[str, ...]]) -> Any:
    """`project_array` for one JSON value (events of eventList)."""
    if any(len(p) == 0 for p in paths):
        return doc
    if isinstance(doc, list):
        items = [project_dict(x, paths) for x in doc]
        return [x for x in items if x is not None] or None
    if not isinstance(doc, dict):
        return None
    out = {}
    for name, rest in _group(paths).items():
        if name in doc:
            v = project_dict(doc[name], rest)
            if v is not None:
                out[name] = v
    return out or None


def _json_column(name: str, values: list[Any]) -> pa.Array | None:
    """A column from Python values (JSON-like), typed by Arrow's JSON reader like the attributes."""
    lines = pa.array([json.dumps({name: v}, separators=(",", ":"), ensure_ascii=False) if v is not None else "{}" for v in values], pa.string())
    t = json_table(lines)
    return t.column(name) if name in t.column_names else None


# -- output ------------------------------------------------------------------------------------------
class _BatchWriter:
    """The Parquet parts of one export batch: a new part when the schema changes or a part is full."""

    def __init__(self, store: ObjectStore, bucket: str, prefix: str, first: int = 0):
        self.store, self.bucket, self.prefix = store, bucket, prefix
        self.first = first  # the number of its first part (a lake chunk's parts are numbered from its own)
        self.parts: list[dict] = []
        self._cm = self._f = self._w = None
        self._schema: pa.Schema | None = None
        self._rows = 0
        self.records = 0
        self.write_s = 0.0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        t0 = time.perf_counter()
        if self._w is not None and (not table.schema.equals(self._schema) or self._rows >= PART_ROWS):
            self._close()
        if self._w is None:
            name = f"part-{self.first:05d}.parquet" if not self.parts else f"part-{self.first:05d}-{len(self.parts):03d}.parquet"
            key = f"{self.prefix}/{name}"
            self._cm = self.store.open_write(self.bucket, key)
            self._f = self._cm.__enter__()
            self._w = pq.ParquetWriter(self._f, table.schema, compression="zstd")
            self._schema = table.schema
            self._rows = 0
            self.parts.append({"name": name, "key": key, "records": 0})
        self._w.write_table(table, row_group_size=ROW_GROUP)
        self._rows += table.num_rows
        self.records += table.num_rows
        self.parts[-1]["records"] += table.num_rows
        self.write_s += time.perf_counter() - t0

    def _close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._cm.__exit__(None, None, None)
            self._w = self._f = self._cm = None

    def close(self) -> None:
        t0 = time.perf_counter()
        self._close()
        for p in self.parts:
            p["size"] = self.store.size(self.bucket, p["key"])
        self.write_s += time.perf_counter() - t0

    def abort(self) -> None:
        if self._w is not None:
            try:
                self._w.close()
            except Exception:  # e.g. the disk is full: the object is discarded anyway
                pass
            try:
                self._cm.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except Exception:
                pass
            self._w = self._f = self._cm = None


@dataclass
class _Counters:
    profiles: int = 0
    by_ns: dict[str, int] = field(default_factory=dict)

    def merge(self, profiles: int, by_ns: dict[str, int]) -> None:
        self.profiles += profiles
        for code, n in by_ns.items():
            self.by_ns[code] = self.by_ns.get(code, 0) + n

    def add(self, page: ScanPage) -> None:
        self.merge(len(page), namespace_counts(page.members, np.zeros(len(page), np.int64), 1)[0])


def _has_empty_struct(t: pa.DataType) -> bool:
    if pa.types.is_struct(t):
        return t.num_fields == 0 or any(_has_empty_struct(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_empty_struct(t.value_type)
    if pa.types.is_map(t):
        return _has_empty_struct(t.item_type)
    return False


def parquet_safe(table: pa.Table) -> pa.Table:
    """Parquet cannot hold a struct without fields (JSON `{}` everywhere in a page): such a column
    becomes JSON text."""
    for i, f in enumerate(table.schema):
        if _has_empty_struct(f.type):
            values = [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in table.column(i).to_pylist()]
            table = table.set_column(i, f.name, pa.array(values, pa.string()))
    return table


def lake_folder(org_id: str, sandbox_id: str, dataset_id: str, batch_id: str) -> str:
    return f"{sandbox_root(org_id, sandbox_id)}/lake/{dataset_id}/{batch_id}"


@dataclass(frozen=True)
class LakeChunkJob:
    """What every chunk of a lake export shares (sent once to each executor task)."""

    bucket: str
    prefix: str  # the attempt's folder of the batch
    schema: pa.Schema  # the attribute columns to read, typed as the parts read as one table
    req: ExportRequest
    want_ids: bool


def write_error(exc: BaseException, prefix: str) -> TransientJobError | None:
    """Parquet writes go straight to the open object: a full disk arrives as a bare OSError. An error
    a chunk already classified is left as it is (not wrapped a second time by the job)."""
    if isinstance(exc, (TransientJobError, JobFailure)):
        return None
    if isinstance(exc, ObjectStoreError) or is_full(exc):
        return TransientJobError("0090000009", f"Error writing profiles to output path '{prefix}': {exc}")
    return None


def export_lake_chunk(store: ObjectStore, job: LakeChunkJob, chunk: LakeChunk) -> dict:
    """One chunk of a lake export (a local thread or a Ray task; no database): its profiles
    (``scan.lake_chunk_pages``) as rows of the request, written as the batch's parts numbered from
    the chunk's. Returns the parts and counters for the job."""
    w = _BatchWriter(store, job.bucket, job.prefix, first=chunk.index)
    profiles = 0
    try:
        for page in lake_chunk_pages(store, job.bucket, chunk, job.schema, ids=job.want_ids):
            w.write(ExportService._rows(None, page, job.req, job.want_ids, False))
            profiles += len(page)
        w.close()
    except BaseException as exc:
        w.abort()
        err = write_error(exc, job.prefix)
        if err is not None:
            raise err from exc
        raise
    return {"parts": w.parts, "records": w.records, "profiles": profiles, "by_ns": dict(chunk.by_ns), "write_s": w.write_s}


class ExportService:
    def __init__(self, db: Database, objects: ObjectStore, queue: JobQueue, bucket: str, store: ProfileStore, policies: MergePolicyService, segments: SegmentService):
        self.db, self.objects, self.queue, self.bucket = db, objects, queue, bucket
        self.store, self.policies, self.segments = store, policies, segments
        self.local = LocalExecutor(objects)

    # -- API ---------------------------------------------------------------------------------------
    def create(self, t: Tenant, body: Any) -> ExportJob:
        req = ExportRequest.parse(body)
        with self.db.session() as s:
            defs = {}
            if req.segments:
                ids = [x.segment_id for x in req.segments]
                defs = {d.id: d for d in s.execute(select(SegmentDefinition).where(SegmentDefinition.sandbox_id == t.sandbox_id, SegmentDefinition.id.in_(ids))).scalars()}
                missing = [i for i in ids if i not in defs]
                if missing:
                    raise InvalidParameter(f"filter.segments: unknown segment definition(s) {', '.join(missing)}")
        if req.policy_id:
            try:
                mp = self.policies.get(t.sandbox_id, req.policy_id)
            except NotFound:
                raise InvalidParameter(f"mergePolicy.id: merge policy '{req.policy_id}' not found") from None
            if req.policy_version is not None and req.policy_version != mp.version:
                raise InvalidParameter(f"mergePolicy.version {req.policy_version}: the policy is at version {mp.version} (userlens keeps the latest version only)")
            policy = {"id": mp.id, "version": mp.version}
        else:
            seg_policy = next((defs[x.segment_id].merge_policy_id for x in req.segments if defs[x.segment_id].merge_policy_id), None)
            if seg_policy:
                mp = self.policies.get(t.sandbox_id, seg_policy)
                policy = {"id": mp.id, "version": mp.version}
            else:
                mp = self.policies.default(t.sandbox_id)
                policy = {"id": mp.id, "version": mp.version} if mp else {"id": BUILTIN_POLICY_ID, "version": 1}
        if req.segment_per_batch and req.segments:
            dest = {"datasetId": req.dataset_id, "segmentPerBatch": True, "batches": [{"segmentId": x.segment_id, "segmentNs": x.ns, "status": list(x.statuses), "batchId": new_ulid()} for x in req.segments]}
        else:
            dest = {"datasetId": req.dataset_id, "segmentPerBatch": req.segment_per_batch, "batchId": new_ulid()}
        ms = now_ms()
        with self.db.session() as s:
            job = self.queue.submit(s, JOB_KIND, f"aep:{t.sandbox_id}", {"sandbox_id": t.sandbox_id})
            row = ExportJob(org_id=t.org_id, sandbox_id=t.sandbox_id, job_id=job.id, request=body, status="NEW", merge_policy=policy, destination=dest, metrics={"totalTime": {"startTimeInMs": ms}}, compute={}, errors=None, request_id=uuid.uuid4().hex, created_ms=ms, updated_ms=ms)
            s.add(row)
            s.flush()
            # The batch ids and target stay in the payload: a failed job blanks them in `destination`, and the clean-up of an attempt still needs them.
            job.payload = {"sandbox_id": t.sandbox_id, "export_id": row.id, "dataset_id": req.dataset_id, "batch_ids": _batch_ids(dest)}
            return row

    def get(self, sandbox_id: str, export_id: int) -> ExportJob:
        with self.db.session() as s:
            row = s.execute(select(ExportJob).where(ExportJob.sandbox_id == sandbox_id, ExportJob.id == export_id)).scalar_one_or_none()
            if row is None:
                raise NotFound(f"Export job '{export_id}' not found")
            return row

    def list(self, sandbox_id: str, *, limit: int, after: tuple[int, int] | None, skip: int, status: str | None, sort: tuple[str, bool]) -> tuple[list[ExportJob], bool]:
        col = {"createdTime": ExportJob.created_ms, "creationTime": ExportJob.created_ms, "updateTime": ExportJob.updated_ms}[sort[0]]
        with self.db.session() as s:
            q = select(ExportJob).where(ExportJob.sandbox_id == sandbox_id)
            if status:
                q = q.where(ExportJob.status == status)
            if after is not None:
                q = q.where(tuple_(ExportJob.created_ms, ExportJob.id) < tuple_(*after)) if sort[1] else q.where(tuple_(ExportJob.created_ms, ExportJob.id) > tuple_(*after))
            q = q.order_by(col.desc() if sort[1] else col, ExportJob.id.desc() if sort[1] else ExportJob.id).offset(skip).limit(limit + 1)
            rows = list(s.execute(q).scalars())
            return rows[:limit], len(rows) > limit

    def cancel(self, sandbox_id: str, export_id: int) -> None:
        row = self.get(sandbox_id, export_id)
        if row.status in ("SUCCEEDED", "FAILED"):
            return
        after = self.queue.request_cancel(row.job_id)
        if after == JobStatus.CANCELLED.value:
            with self.db.session() as s:
                r = s.get(ExportJob, row.id)
                if r.status not in ("SUCCEEDED", "FAILED"):
                    self._mark_failed(r, [_cancel_error(r.id)])

    # -- the job -----------------------------------------------------------------------------------
    def register_jobs(self, registry: JobRegistry) -> None:
        registry.register(JOB_KIND, self.run_job, on_abort=self._on_abort, on_fail=self._on_fail)

    @staticmethod
    def _mark_failed(r: ExportJob, errors: list[dict]) -> None:
        ms = now_ms()
        r.status, r.updated_ms, r.errors = "FAILED", ms, errors
        m = dict(r.metrics or {})
        tt = dict(m.get("totalTime") or {"startTimeInMs": r.created_ms})
        tt.update(endTimeInMs=ms, totalTimeInMs=ms - tt["startTimeInMs"])
        m["totalTime"] = tt
        r.metrics = m
        d = dict(r.destination)
        if "batches" in d:
            d["batches"] = [{**b, "batchId": ""} for b in d["batches"]]
        else:
            d["batchId"] = ""
        r.destination = d

    def _on_fail(self, s: Session, job: Job) -> None:
        r = s.get(ExportJob, (job.payload or {}).get("export_id"))
        if r is None or r.status in ("SUCCEEDED", "FAILED"):
            return
        if job.status == JobStatus.CANCELLED.value:
            errors = [_cancel_error(r.id)]
        else:
            errors = [{"code": job.fail_message or "unknown", "msg": job.fail_detail or "", "callStack": "userlens.profiles.export"}, {"code": "unknown", "msg": "Job aborted.", "callStack": "userlens.jobs.engine"}]
        self._mark_failed(r, errors)

    def _on_abort(self, ctx: JobContext) -> None:
        with self.db.session() as s:
            r = s.get(ExportJob, ctx.payload.get("export_id"))
        if r is None:
            return
        for bid in ctx.payload.get("batch_ids") or []:
            self.objects.delete_prefix(self.bucket, f"{lake_folder(r.org_id, r.sandbox_id, ctx.payload['dataset_id'], bid)}/{ctx.attempt_tag}")
        plan = plan_folder(r.org_id, r.sandbox_id, ctx.job_id, ctx.attempt_tag)
        with self.db.session() as s:
            installed = plan in lakeplan.referenced(s, [r.sandbox_id])
        if not installed:  # a lake plan the attempt built and did not install (an installed one serves later exports)
            self.objects.delete_prefix(self.bucket, plan)

    def run_job(self, ctx: JobContext) -> Outcome:
        eid = ctx.payload["export_id"]
        t_start = now_ms()
        with self.db.session() as s:
            r = s.get(ExportJob, eid)
            if r is None:
                raise JobFailure("0090000404", f"export job {eid} is gone")
            r.status, r.updated_ms = "PROCESSING", t_start
            r.compute = {"exportJob": ctx.job_id}
            org_id, sandbox_id, body, dest, policy_ref, metrics = r.org_id, r.sandbox_id, r.request, dict(r.destination), dict(r.merge_policy), dict(r.metrics or {})
            ds = s.execute(select(Dataset).where(Dataset.id == dest["datasetId"], Dataset.sandbox_id == sandbox_id)).scalar_one_or_none()
            if ds is None:
                raise JobFailure("0090000400", f"the destination dataset '{dest['datasetId']}' does not exist in this sandbox")
            if ds.behaviour != "union":
                raise JobFailure("0090000400", f"the destination dataset '{ds.id}' is not based on the XDM Individual Profile union schema (https://ns.adobe.com/xdm/context/profile__union); its schema is {ds.schema_ref.get('id')!r}")
        req = ExportRequest.parse(body)
        try:
            policy = BUILTIN if policy_ref["id"] == BUILTIN_POLICY_ID else self.policies.resolve(sandbox_id, policy_ref["id"])
        except NotFound:
            raise JobFailure("0090000400", f"merge policy '{policy_ref['id']}' no longer exists") from None
        if req.segmentation:
            self.segments.evaluate_now(ctx, sandbox_id, [x.segment_id for x in req.segments])
        out_fields = req.fields
        want_membership = bool(req.segments) or out_fields is None or any(p[0] == "segmentMembership" for p in out_fields)
        want_ids = out_fields is None or any(p[0] in ("identities", "identityMap") for p in out_fields)
        members_of = [(x.segment_id, x.statuses) for x in req.segments] if req.segments else None
        lake = None
        if not (req.segments or req.event_list or req.empty_profiles or want_membership):
            # Records read from the lake in executor chunks; graphs with several fragments from SQL (scan.LakeExport).
            lake = LakeExport.open(
                self.store, self.objects, self.bucket, sandbox_id, policy, columns=sorted({p[0] for p in out_fields}) if out_fields else None, from_ingest_ms=req.from_ingest,
                folder=plan_folder(org_id, sandbox_id, ctx.job_id, ctx.attempt_tag), check=ctx.check,
            )
        batch_ids = _batch_ids(dest)
        seg_of_batch = [b["segmentId"] for b in dest["batches"]] if "batches" in dest else [None]
        prefixes = [f"{lake_folder(org_id, sandbox_id, dest['datasetId'], bid)}/{ctx.attempt_tag}" for bid in batch_ids]
        counters = _Counters()
        t_scan0 = now_ms()
        chunk_parts: list[dict] = []  # the lake chunks' parts (of the one batch: no segments on this path)
        chunk_records = 0
        chunk_write_s = 0.0
        first_part = 0
        if lake is not None:
            try:
                chunks = lake.chunks()
                first_part = len(chunks)

                def on_result(i: int, r: dict) -> None:
                    # In the job thread, chunk by chunk in order: parts and counters.
                    nonlocal chunk_records, chunk_write_s
                    chunk_parts.extend(r["parts"])
                    chunk_records += r["records"]
                    chunk_write_s += r["write_s"]
                    counters.merge(r["profiles"], r["by_ns"])
                    ctx.progress(0.9 * (i + 1) / len(chunks), f"{counters.profiles} profiles exported")

                executor = getattr(ctx.services, "executor", None) or self.local
                executor.map(ctx, export_lake_chunk, chunks, shared=LakeChunkJob(self.bucket, prefixes[0], lake.attr_schema, req, want_ids), on_result=on_result)
            except BaseException as exc:
                err = write_error(exc, prefixes[0])
                if err is not None:
                    raise err from exc
                raise
            finally:
                lake.close()
        scan = ProfileScan(self.store, sandbox_id, policy, events=req.event_list, empty_profiles=req.empty_profiles, memberships=want_membership, members_of=members_of, xids=lake.rest() if lake is not None else None)
        writers = [_BatchWriter(self.objects, self.bucket, prefix, first=first_part) for prefix in prefixes]
        try:
            for page in scan.pages():
                ctx.check()
                keep = self._select(page, req)
                if not len(keep):
                    continue
                if len(keep) < len(page):
                    page = page.take(keep)
                table = self._rows(scan, page, req, want_ids, want_membership)
                counters.add(page)
                for w, seg in zip(writers, seg_of_batch):
                    if seg is None:
                        w.write(table)
                    else:
                        mask = self._in_segments(page, [x for x in req.segments if x.segment_id == seg], req)
                        if mask.any():
                            w.write(table.filter(pa.array(mask)))
                ctx.progress(None, f"{counters.profiles} profiles exported")
            t_scan1 = now_ms()
            for w in writers:
                w.close()
        except BaseException as exc:
            for w in writers:
                w.abort()
            err = write_error(exc, writers[0].prefix)
            if err is not None:
                raise err from exc
            raise
        writers[0].parts[:0] = chunk_parts
        writers[0].records += chunk_records
        writers[0].write_s += chunk_write_s
        t_end = now_ms()
        write_ms = min(int(sum(w.write_s for w in writers) * 1000), t_end - t_scan0)  # chunks write in parallel: at most the export's time

        def publish(s: Session) -> None:
            # The publication point: the batches appear (already successful) with the job's SUCCEEDED.
            ms = now_ms()
            for bid, w in zip(batch_ids, writers):
                size = sum(p["size"] for p in w.parts)
                s.add(Batch(
                    id=bid, org_id=org_id, sandbox_id=sandbox_id, dataset_id=dest["datasetId"], status="success", input_format={"format": "parquet"}, tags={"acp_producer": ["userlens-profile-export"]},
                    failure_threshold_pct=0, job_id=ctx.job_id, created_client="userlens-export", created_ms=t_start, updated_ms=ms, started_ms=t_start, completed_ms=ms,
                    record_count=w.records, failed_record_count=0, errors=None, size=size, lake_files=w.parts, store_attempt=None,
                    metrics={"recordsRead": w.records, "recordsWritten": w.records, "startTime": t_start, "endTime": ms, "outputByteSize": size},
                ))
            s.flush()
            s.execute(update(Dataset).where(Dataset.id == dest["datasetId"]).values(last_batch_id=batch_ids[-1], last_batch_status="success", updated_ms=ms))
            r = s.get(ExportJob, eid)
            tt = dict(metrics.get("totalTime") or {"startTimeInMs": r.created_ms})
            tt.update(endTimeInMs=ms, totalTimeInMs=ms - tt["startTimeInMs"])
            r.metrics = {
                "totalTime": tt,
                "profileExportTime": {"startTimeInMs": t_scan0, "endTimeInMs": t_scan1, "totalTimeInMs": t_scan1 - t_scan0},
                "aCPDatasetWriteTime": {"startTimeInMs": t_end - write_ms, "endTimeInMs": t_end, "totalTimeInMs": write_ms},
                "totalExportedProfileCounter": counters.profiles,
                "exportedProfileByNamespaceCounter": counters.by_ns,
            }
            r.compute = {"exportJob": ctx.job_id, "pushJob": str(uuid.uuid5(uuid.NAMESPACE_URL, f"userlens:{ctx.job_id}:{ctx.attempt_tag}"))}
            r.status, r.updated_ms = "SUCCEEDED", ms

        return Outcome(result={"profiles": counters.profiles, "batches": batch_ids}, publish=publish)

    # -- per page ----------------------------------------------------------------------------------
    def _in_segments(self, page: ScanPage, segs: list, req: ExportRequest) -> np.ndarray:
        out = np.zeros(len(page), bool)
        for i, m in enumerate(page.memberships):
            for x in segs:
                hit = m.get(x.segment_id)
                if hit is None or hit[0] not in x.statuses:
                    continue
                if req.qual_start is not None and hit[1] < req.qual_start:
                    continue
                if req.qual_end is not None and hit[1] > req.qual_end:
                    continue
                out[i] = True
                break
        return out

    def _select(self, page: ScanPage, req: ExportRequest) -> np.ndarray:
        mask = np.ones(len(page), bool) if req.empty_profiles else page.has_record.copy()
        if req.from_ingest is not None:
            mask &= page.last_ms > req.from_ingest
        if req.segments:
            mask &= self._in_segments(page, req.segments, req)
        return np.flatnonzero(mask)

    @staticmethod
    def _rows(scan: ProfileScan | None, page: ScanPage, req: ExportRequest, want_ids: bool, want_membership: bool) -> pa.Table:
        t = attributes_table(page)
        extra: dict[str, pa.Array] = {}
        if want_ids:
            extra["identities"], extra["identityMap"] = identity_columns(page)
        if want_membership and page.memberships is not None and any(page.memberships):
            values = [{"ups": {sid: {"status": st, "lastQualificationTime": iso(ms), "version": v} for sid, (st, ms, v) in sorted(m.items())}} if m else None for m in page.memberships]
            col = _json_column("segmentMembership", values)
            if col is not None:
                extra["segmentMembership"] = col
        for name, col in extra.items():
            if name in t.column_names:
                t = t.drop([name])
            t = t.append_column(name, col)
        if req.fields:
            t = project_table(t, req.fields)
        if req.event_list:  # eventList has its own projection (additionalFields.eventList.fields)
            col = scan.event_lists(page, from_ingest_ms=req.event_from, to_ingest_ms=req.event_to, fields=req.event_fields, project=project_table)
            if col is None:  # events this path cannot take column-wise: row by row
                events = scan.read_events(page, from_ingest_ms=req.event_from, to_ingest_ms=req.event_to)
                if req.event_fields:
                    events = [[e for e in (project_dict(d, req.event_fields) for d in evs) if e is not None] for evs in events]
                col = _json_column("eventList", events)
            if col is not None:
                if "eventList" in t.column_names:
                    t = t.drop(["eventList"])
                t = t.append_column("eventList", col) if t.num_columns else pa.table({"eventList": col})
        if t.num_columns == 0:  # nothing of the projection exists on these profiles: keep the rows
            t = pa.table({"identities": identity_columns(page)[0]}) if want_ids else pa.table({"_id": pa.array(page.keys)})
        return parquet_safe(t)


def _batch_ids(dest: dict) -> list[str]:
    if "batches" in dest:
        return [b["batchId"] for b in dest["batches"]]
    return [dest["batchId"]]


def _cancel_error(export_id: int) -> dict:
    return {"code": "CANCELLED", "msg": f"Export job {export_id} was cancelled by request (DELETE /export/jobs/{export_id}); no batch was published.", "callStack": "userlens.profiles.export"}


def export_body(r: ExportJob) -> dict:
    req = r.request if isinstance(r.request, dict) else {}
    out: dict[str, Any] = {"profileInstanceId": "ups", "jobType": "BATCH", "id": r.id}
    for k in ("fields", "filter", "additionalFields"):
        if k in req:
            out[k] = req[k]
    out.update(
        schema=req.get("schema", {}),
        mergePolicy=r.merge_policy,
        status=r.status,
        requestId=r.request_id,
        computeGatewayJobId=r.compute or {},
        metrics=r.metrics or {},
        destination=r.destination,
    )
    if "evaluationInfo" in req:
        out["evaluationInfo"] = req["evaluationInfo"]
    if r.errors:
        out["errors"] = r.errors
    out.update(updateTime=r.updated_ms, imsOrgId=r.org_id, creationTime=r.created_ms)
    return out
