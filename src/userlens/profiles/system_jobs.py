"""Profile system jobs (reference §4.1): delete requests that remove what a dataset, or one batch of
an ExperienceEvent dataset, gave the profile store. The data lake keeps its batches.

A request is a row of ``aep_system_jobs`` (the API's object: status NEW -> PROCESSING -> COMPLETED |
ERROR, records processed, times) and a job of the one engine (``aep.profile_delete``, same id). The
job runs in two steps (design: store.py, "deletion"):

1. *Retire*, one transaction: under the sandbox's graph lock, the target's visible loads are
   recorded in ``aep_store_deletions`` (load -> request) and made invisible, and the identity graphs
   their rows touched are recomputed from what is left. At its commit every reader sees the store
   without the data, at once: entities, links that only that data made, merged attributes, and so
   segment evaluation and export, which read the same visible rows. Before it, readers see the data
   whole. This is the point of no return (AEP: a delete request "cannot be undone").
2. *Purge*: the retired loads' rows are removed in chunks of ``delete_chunk_rows`` rows, each chunk
   with its ``recordsProcessed`` increment in one short transaction; then the load rows and their
   ``aep_store_deletions`` rows go. COMPLETED is set in the transaction that completes the job.

Crash safety: a worker killed during step 1 leaves nothing (the transaction rolls back) and the
next attempt starts over; killed during step 2, the next attempt (the engine re-leases the job)
finds the request's loads in ``aep_store_deletions`` and goes on purging. Requests run at once
without a per-sandbox queue: step 1 of each is serialized with the others and with ingest
publication by the graph lock (a second request sees the first one's loads invisible and leaves them
to it), and step 2 of each touches only its own loads.

Duplicates: a request for a dataset or a batch that a request still NEW or PROCESSING targets gets
422 (reference: "Definition already exists"); ``active_key`` (unique, NULL once the request ends)
makes that check race-free. Removing a request (DELETE) withdraws it from the API; a request not yet
retired is also cancelled, while one past step 1 finishes its clean-up (the data is already gone).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Index, String, Text, delete, func, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from userlens.errors import DomainError, InvalidParameter, NotFound
from userlens.jobs.engine import JobCancelled, JobContext, JobQueue, JobRegistry, LeaseLost, Outcome
from userlens.jobs.models import Job, JobStatus
from userlens.orgs.service import Tenant
from userlens.profiles.catalog import now_ms
from userlens.profiles.models import Batch, Dataset, StoreLoad
from userlens.profiles.store import ProfileStore
from userlens.storage.db import Base, Database

JOB_KIND = "aep.profile_delete"
DEFAULT_CHUNK_ROWS = 50_000
RESUME_ATTEMPTS = 10
NEW, PROCESSING, COMPLETED, ERROR = "NEW", "PROCESSING", "COMPLETED", "ERROR"
# API field -> column, for `sort=field:asc|desc`
SORTABLE = {"createEpoch": "created_ms", "updateEpoch": "updated_ms", "id": "id", "dataSetId": "dataset_id", "batchId": "batch_id", "status": "status", "imsOrgId": "org_id", "jobType": "created_ms"}
MAX_LIMIT = 100


class SystemJob(Base):
    """A delete request (the API object); its job in ``jobs`` has the same id."""

    __tablename__ = "aep_system_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    sandbox_id: Mapped[str] = mapped_column(String(36))
    dataset_id: Mapped[str | None] = mapped_column(String(24), nullable=True, doc="target of a dataset delete")
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True, doc="target of a batch delete")
    status: Mapped[str] = mapped_column(String(16), doc="NEW | PROCESSING | COMPLETED | ERROR")
    active_key: Mapped[str | None] = mapped_column(String(120), nullable=True, unique=True, doc="sandbox:target while NEW or PROCESSING (one active request per target)")
    records_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True, doc="records + events retired in step 1")
    records_processed: Mapped[int] = mapped_column(BigInteger, default=0, doc="records + events purged so far")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)
    started_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (Index("ix_aep_system_jobs_scope", "sandbox_id", "created_ms"),)


class StoreDeletion(Base):
    """A load retired by a delete request and not yet purged (the job's durable to-do list)."""

    __tablename__ = "aep_store_deletions"

    load_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(36))

    __table_args__ = (Index("ix_aep_store_deletions_request", "request_id"),)


class BatchNotEventType(InvalidParameter):
    """A batch of a record (or union) dataset: AEP answers with its legacy 400 body (§2.3)."""

    def __init__(self, batch_id: str):
        super().__init__(f"Batch can only be specified for EE type '{batch_id}'")
        self.batch_id = batch_id


class DuplicateRequest(DomainError):
    name = "ALREADY_EXISTS"


@dataclass(frozen=True)
class Listing:
    """One page of a list: `offset` into the order `sort` (column, descending)."""

    offset: int
    limit: int
    sort: tuple[str, bool]

    def token(self) -> str:
        raw = json.dumps({"o": self.offset, "l": self.limit, "s": f"{self.sort[0]}:{'desc' if self.sort[1] else 'asc'}"}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def parse_token(token: str) -> Listing | None:
    """The Listing a `_page.next` token stands for; None if `token` is not one."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return Listing(int(raw["o"]), int(raw["l"]), parse_sort(raw["s"]))
    except (ValueError, KeyError, TypeError, binascii.Error, InvalidParameter):
        return None


def parse_sort(spec: str | None) -> tuple[str, bool]:
    if not spec:
        return ("createEpoch", True)
    field, _, direction = spec.partition(":")
    direction = (direction or "asc").lower()
    if field not in SORTABLE or direction not in ("asc", "desc"):
        raise InvalidParameter(f"sort must be field:asc or field:desc with field one of {', '.join(SORTABLE)} (got {spec!r})")
    return (field, direction == "desc")


def parse_listing(params: dict) -> Listing:
    """`start` (offset, or a `_page.next` token), `limit` (1-100, default 100), `page` (0-based, in
    pages of `limit`: offset start + page x limit) and `sort` (field:asc|desc, default createEpoch:desc)."""
    start = params.get("start")
    if start and not start.lstrip("-").isdigit():
        listing = parse_token(start)
        if listing is None:
            raise InvalidParameter(f"start must be an offset or a _page.next token (got {start!r})")
        return listing
    try:
        offset = int(start or 0)
        limit = int(params.get("limit") or MAX_LIMIT)
        page = int(params.get("page") or 0)
    except ValueError:
        raise InvalidParameter("start, limit and page must be integers") from None
    if offset < 0 or page < 0 or not 1 <= limit <= MAX_LIMIT:
        raise InvalidParameter(f"start and page must be 0 or more, limit between 1 and {MAX_LIMIT}")
    return Listing(offset + page * limit, limit, parse_sort(params.get("sort")))


def job_body(r: SystemJob) -> dict[str, Any]:
    """The Gen-1 system job object. `metrics` is a JSON string (as AEP sends it), absent while NEW."""
    out: dict[str, Any] = {"id": r.id, "imsOrgId": r.org_id}
    if r.batch_id:
        out["batchId"] = r.batch_id
    else:
        out["dataSetId"] = r.dataset_id
    out["jobType"] = "DELETE"
    out["status"] = r.status
    if r.status != NEW:
        end = r.finished_ms if r.finished_ms is not None else now_ms()
        taken = max(0, (end - (r.started_ms or end)) // 1000)
        out["metrics"] = json.dumps({"recordsProcessed": int(r.records_processed or 0), "timeTakenInSec": int(taken)}, separators=(",", ":"))
    out["createEpoch"] = r.created_ms // 1000
    out["updateEpoch"] = r.updated_ms // 1000
    return out


class SystemJobService:
    def __init__(self, db: Database, queue: JobQueue, profiles: ProfileStore, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        self.db, self.queue, self.profiles = db, queue, profiles
        self.chunk_rows = chunk_rows

    # -- requests ------------------------------------------------------------------------------
    def create(self, t: Tenant, body: Any) -> SystemJob:
        if not isinstance(body, dict):
            raise InvalidParameter("the body must be a JSON object with dataSetId or batchId")
        dataset_id = body.get("dataSetId", body.get("datasetId"))  # Gen-2 spells it datasetId
        batch_id = body.get("batchId")
        for name, value in (("dataSetId", dataset_id), ("batchId", batch_id)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidParameter(f"{name} must be a non-empty string")
        if not dataset_id and not batch_id:
            raise InvalidParameter("dataSetId or batchId is required")
        ms = now_ms()
        with self.db.session() as s:
            if batch_id:
                b = s.execute(select(Batch).where(Batch.id == batch_id, Batch.sandbox_id == t.sandbox_id)).scalar_one_or_none()
                if b is None or (dataset_id and b.dataset_id != dataset_id):
                    raise NotFound(f"Batch '{batch_id}' not found" + (f" in dataSet '{dataset_id}'" if dataset_id and b is not None else ""))
                ds = s.get(Dataset, b.dataset_id)
                if ds is None or ds.behaviour != "time-series":
                    raise BatchNotEventType(batch_id)
                target, key = {"batch_id": batch_id}, f"{t.sandbox_id}:batch:{batch_id}"
            else:
                ds = s.execute(select(Dataset).where(Dataset.id == dataset_id, Dataset.sandbox_id == t.sandbox_id)).scalar_one_or_none()
                if ds is None:
                    raise NotFound(f"DataSet '{dataset_id}' not found")
                target, key = {"dataset_id": dataset_id}, f"{t.sandbox_id}:dataset:{dataset_id}"
        rid = str(uuid.uuid4())
        try:
            with self.db.session() as s:
                r = SystemJob(id=rid, org_id=t.org_id, sandbox_id=t.sandbox_id, status=NEW, active_key=key, records_processed=0, created_ms=ms, updated_ms=ms, **target)
                s.add(r)
                s.flush()  # the unique active_key: a duplicate fails here, before the job exists
                job = self.queue.submit(s, JOB_KIND, f"aep:{t.org_id}", {"request_id": rid, "sandbox_id": t.sandbox_id}, job_id=rid)
                # Resumable and idempotent: worth more attempts than the default when workers die.
                job.max_attempts = max(job.max_attempts, RESUME_ATTEMPTS)
        except IntegrityError:
            raise DuplicateRequest("Delete request (Profile System Job) Definition already exists for this " + ("batch" if batch_id else "dataSet")) from None
        return r

    def get(self, t: Tenant, request_id: str) -> SystemJob:
        with self.db.session() as s:
            r = s.execute(select(SystemJob).where(SystemJob.id == request_id, SystemJob.sandbox_id == t.sandbox_id)).scalar_one_or_none()
            if r is None:
                raise NotFound("Delete request (Profile System Job) not found")
            self._reconcile(s, [r])
            return r

    def list(self, t: Tenant, listing: Listing) -> tuple[int, list[SystemJob]]:
        col = getattr(SystemJob, SORTABLE[listing.sort[0]])
        order = [col.desc() if listing.sort[1] else col.asc(), SystemJob.id.desc() if listing.sort[1] else SystemJob.id.asc()]
        with self.db.session() as s:
            total = s.execute(select(func.count()).select_from(SystemJob).where(SystemJob.sandbox_id == t.sandbox_id)).scalar_one()
            rows = list(s.execute(select(SystemJob).where(SystemJob.sandbox_id == t.sandbox_id).order_by(*order).offset(listing.offset).limit(listing.limit)).scalars())
            self._reconcile(s, rows)
            return total, rows

    @staticmethod
    def _reconcile(s: Session, rows: list[SystemJob]) -> None:
        """ERROR for requests whose job ended without its on_fail hook: the engine fails a job
        whose worker died on its last allowed attempt when another worker finds the lease expired."""
        active = {r.id: r for r in rows if r.status in (NEW, PROCESSING)}
        if not active:
            return
        ended = dict(s.execute(select(Job.id, Job.fail_detail).where(Job.id.in_(list(active)), Job.status.in_([JobStatus.FAILED.value, JobStatus.CANCELLED.value]))).all())
        ms = now_ms()
        for rid, detail in ended.items():
            r = active[rid]
            r.status, r.active_key, r.error, r.finished_ms, r.updated_ms = ERROR, None, (detail or "")[:4000], ms, ms

    def remove(self, t: Tenant, request_id: str) -> None:
        """Withdraws a request: its row goes (a later GET is 404). A job that has not retired its
        loads yet stops without deleting anything (it checks for the row in its step-1 transaction);
        one past step 1 finishes purging rows that are already invisible."""
        with self.db.session() as s:
            n = s.execute(delete(SystemJob).where(SystemJob.id == request_id, SystemJob.sandbox_id == t.sandbox_id)).rowcount
            if not n:
                raise NotFound("Delete request (Profile System Job) not found")

    # -- the job -------------------------------------------------------------------------------
    def register_jobs(self, registry: JobRegistry) -> None:
        registry.register(JOB_KIND, self.run_job, on_fail=self._on_fail)

    def _on_fail(self, s: Session, job: Job) -> None:
        ms = now_ms()
        s.execute(
            update(SystemJob)
            .where(SystemJob.id == job.id)
            .values(status=ERROR, active_key=None, error=f"{job.fail_message}: {job.fail_detail or ''}"[:4000], finished_ms=ms, updated_ms=ms)
        )

    def _pending_loads(self, request_id: str) -> list[int]:
        with self.db.session() as s:
            return list(s.execute(select(StoreDeletion.load_id).where(StoreDeletion.request_id == request_id).order_by(StoreDeletion.load_id)).scalars())

    def run_job(self, ctx: JobContext) -> Outcome:
        rid = ctx.payload["request_id"]
        sandbox_id = ctx.payload["sandbox_id"]
        settings = getattr(ctx.services, "settings", None)
        chunk_rows = max(1, int(getattr(settings, "delete_chunk_rows", 0) or self.chunk_rows))
        slow_ms = int(getattr(settings, "fault_slow_chunk_ms", 0) or 0)
        loads = self._pending_loads(rid)
        with self.db.session() as s:
            r = s.get(SystemJob, rid)
            if r is None and not loads:
                raise JobCancelled(rid)  # withdrawn before it retired anything: nothing to do
            # records_total is set in the step-1 transaction: set means retired (maybe zero loads)
            retire = r is not None and r.records_total is None
            if r is not None and r.status == NEW:
                ms = now_ms()
                r.status, r.started_ms, r.updated_ms = PROCESSING, ms, ms
        if retire:
            ctx.check()
            self._retire(ctx, rid, sandbox_id)
            loads = self._pending_loads(rid)
        ctx.progress(0.0, "purging retired rows")
        with self.db.session() as s:
            total = s.execute(select(SystemJob.records_total).where(SystemJob.id == rid)).scalar_one_or_none() or 0
        for load_id in loads:
            done = False
            while not done:
                with self.profiles.purge_session() as s:
                    n, done = self.profiles.purge_chunk(s, load_id, chunk_rows)
                    s.execute(update(SystemJob).where(SystemJob.id == rid).values(records_processed=SystemJob.records_processed + n, updated_ms=now_ms()))
                    processed = s.execute(select(SystemJob.records_processed).where(SystemJob.id == rid)).scalar_one_or_none() or 0
                if slow_ms:
                    time.sleep(slow_ms / 1000)  # fault injection (tests): widen the window between chunks
                ctx.progress(min(1.0, processed / total) if total else None)
        with self.db.session() as s:
            self.profiles.drop_load_rows(s, loads)
            s.execute(delete(StoreDeletion).where(StoreDeletion.request_id == rid))

        def publish(s: Session) -> None:
            ms = now_ms()
            s.execute(update(SystemJob).where(SystemJob.id == rid).values(status=COMPLETED, active_key=None, finished_ms=ms, updated_ms=ms))

        return Outcome(result={"loads": len(loads)}, publish=publish)

    def _retire(self, ctx: JobContext, rid: str, sandbox_id: str) -> None:
        """Step 1, one transaction: record the target's visible loads for this request, hide them and
        recompute the graphs (store.retire_loads)."""
        with self.db.session() as s:
            target = s.execute(select(SystemJob.dataset_id, SystemJob.batch_id).where(SystemJob.id == rid)).first()
        if target is None:
            raise JobCancelled(rid)  # withdrawn: nothing was deleted
        dataset_id, batch_id = target
        with self.db.session() as s:
            self.profiles.graph_lock(s, sandbox_id)  # PostgreSQL; on SQLite the first write below serializes
            q = select(StoreLoad.id, literal(rid, String(36))).where(StoreLoad.sandbox_id == sandbox_id, StoreLoad.visible.is_(True))
            q = q.where(StoreLoad.batch_id == batch_id) if batch_id else q.where(StoreLoad.dataset_id == dataset_id)
            # INSERT ... SELECT first: on SQLite the transaction then holds the write lock before it
            # reads anything, so what it reads next is current and stays so until it commits.
            s.execute(StoreDeletion.__table__.insert().from_select(["load_id", "request_id"], q))
            r = s.execute(select(SystemJob).where(SystemJob.id == rid).with_for_update()).scalar_one_or_none()
            if r is None:
                raise JobCancelled(rid)  # withdrawn meanwhile: the rollback leaves the store as it was
            if s.execute(select(Job.lease_owner).where(Job.id == rid)).scalar_one_or_none() != ctx.worker_id:
                raise LeaseLost(rid)  # another worker took the job over; it does step 1
            ids = list(s.execute(select(StoreDeletion.load_id).where(StoreDeletion.request_id == rid).order_by(StoreDeletion.load_id)).scalars())
            r.records_total = self.profiles.retire_loads(s, sandbox_id, ids)
            r.updated_ms = now_ms()
