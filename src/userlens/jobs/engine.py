"""The job engine: submit, claim with a lease, heartbeat, publish or fail, retry, cancel.

It knows nothing of HTTP or of any domain. A domain registers a handler per job kind; the handler
does the work and returns an `Outcome` whose `publish` callback runs in the same transaction that
marks the job completed. That transaction is the publication point: outputs are written first under
attempt-unique names, and only the commit that holds a still-valid lease makes them visible. A worker
that lost its lease (it stalled and another worker took the job) cannot publish.

Claiming is a compare-and-set UPDATE on every backend; PostgreSQL additionally picks candidates with
SELECT ... FOR UPDATE SKIP LOCKED so concurrent workers do not queue on one row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from userlens.jobs.models import ACTIVE, Job, JobStatus
from userlens.storage.db import Database, utcnow

log = logging.getLogger("userlens.jobs")

COMMON_ERROR = "COMMON_ERROR"


class JobFailure(Exception):
    """Permanent failure: the job fails with `code` (a documented fail_message) and `detail`."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class TransientJobError(JobFailure):
    """Worth retrying (object store or database unreachable); fails with `code` once retries run out."""


class JobCancelled(Exception):
    pass


class LeaseLost(Exception):
    """Another worker owns the job now; this attempt must stop without publishing."""


@dataclass
class Outcome:
    result: dict[str, Any] | None = None
    publish: Callable[[Session], None] | None = None


@dataclass
class JobKind:
    handler: Callable[["JobContext"], Outcome]
    # Called (best effort) when an attempt ends without publishing: remove its partial outputs.
    on_abort: Callable[["JobContext"], None] | None = None
    # Called in the transaction that marks the job failed or cancelled (e.g. to release resources).
    on_fail: Callable[[Session, Job], None] | None = None


class JobRegistry:
    def __init__(self) -> None:
        self.kinds: dict[str, JobKind] = {}

    def register(self, kind: str, handler, on_abort=None, on_fail=None) -> None:
        self.kinds[kind] = JobKind(handler, on_abort, on_fail)


@dataclass
class JobContext:
    """What a handler sees of its job. `check()` raises if the job was cancelled or the lease lost."""

    job_id: str
    kind: str
    scope: str
    payload: dict[str, Any]
    attempt: int
    checkpoint: dict[str, Any] | None
    queue: "JobQueue"
    worker_id: str
    services: Any = None  # the domain's service bundle (object store, settings, ...)
    cores: Callable[[], int] = lambda: 1  # how many cores the job may keep busy now (worker.CoreShare)
    _lost: threading.Event = field(default_factory=threading.Event)
    _cancel: threading.Event = field(default_factory=threading.Event)
    _progress: tuple[float | None, str | None] = (None, None)

    @property
    def attempt_tag(self) -> str:
        """Unique per attempt: outputs written under it never collide with another attempt's."""
        return f"a{self.attempt}-{hashlib.sha1(self.worker_id.encode()).hexdigest()[:10]}"

    def progress(self, fraction: float | None, message: str | None = None) -> None:
        self._progress = (None if fraction is None else max(0.0, min(1.0, fraction)), message)
        self.check()

    def check(self) -> None:
        if self.queue.fault_slow_check_ms:  # fault injection (tests): widen the window a kill can hit
            time.sleep(self.queue.fault_slow_check_ms / 1000)
        if self._lost.is_set():
            raise LeaseLost(self.job_id)
        if self._cancel.is_set():
            raise JobCancelled(self.job_id)

    def save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.queue.save_checkpoint(self.job_id, self.worker_id, checkpoint):
            self._lost.set()
        self.checkpoint = checkpoint
        self.check()


class JobQueue:
    def __init__(self, db: Database, *, lease_seconds: float = 30.0, max_attempts: int = 3, retry_backoff_seconds: float = 2.0, fault_slow_check_ms: int = 0):
        self.db = db
        self.fault_slow_check_ms = fault_slow_check_ms
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.retry_backoff_seconds = retry_backoff_seconds

    # -- submission ----------------------------------------------------------------------------
    def submit(self, session: Session, kind: str, scope: str, payload: dict[str, Any], *, concurrency_key: str | None = None, job_id: str | None = None) -> Job:
        """Adds a registered job to the caller's transaction, so the job and its resource commit together."""
        now = utcnow()
        job = Job(
            id=job_id or str(uuid.uuid4()),
            kind=kind,
            scope=scope,
            payload=payload,
            concurrency_key=concurrency_key,
            status=JobStatus.REGISTERED.value,
            max_attempts=self.max_attempts,
            created_at=now,
            updated_at=now,
        )
        session.add(job)
        return job

    def cancel_registered(self, session: Session, job_id: str) -> bool:
        """Cancels a job that has not been queued yet; False if it already moved on."""
        now = utcnow()
        res = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.REGISTERED.value)
            .values(status=JobStatus.CANCELLED.value, fail_message="CANCELLED", fail_detail="cancelled before it started", finished_at=now, updated_at=now)
        )
        return res.rowcount == 1

    def request_cancel(self, job_id: str) -> str | None:
        """Cancels a job in any active state: at once if not running, else at its next check(). Returns the status after."""
        now = utcnow()
        with self.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_([JobStatus.REGISTERED.value, JobStatus.PENDING.value]))
                .values(status=JobStatus.CANCELLED.value, fail_message="CANCELLED", fail_detail="cancelled by request", finished_at=now, updated_at=now)
            )
            s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.IN_PROGRESS.value).values(cancel_requested=True, updated_at=now))
            job = s.get(Job, job_id)
            return job.status if job else None

    # -- claiming ------------------------------------------------------------------------------
    def promote(self) -> int:
        """registered -> pending: the job enters the queue."""
        now = utcnow()
        with self.db.session() as s:
            res = s.execute(update(Job).where(Job.status == JobStatus.REGISTERED.value).values(status=JobStatus.PENDING.value, updated_at=now))
            return res.rowcount or 0

    def claim(self, worker_id: str, kinds: list[str], on_fail: Callable[[str], Any] | None = None, dead: list | None = None) -> Job | None:
        """Takes the oldest runnable job (or one whose lease expired) and leases it to `worker_id`.

        A job whose worker died on its last attempt is failed here: `on_fail(kind)` gives the kind's
        on_fail hook, run in that transaction (so the resource's status follows the job's). Every
        attempt found dead (reclaimed or failed) is appended to `dead` as (job, owner, attempt), for
        the caller to run the kind's on_abort on it: its partial outputs go before the next attempt."""
        if not kinds:
            return None
        self.promote()
        for _ in range(8):  # bounded: each round either claims or loses a race to another worker
            now = utcnow()
            with self.db.session() as s:
                candidate = self._candidate(s, kinds, now)
                if candidate is None:
                    return None
                cid, cstatus, cowner, cattempts, cmax = candidate
                if cstatus == JobStatus.IN_PROGRESS.value and cattempts >= cmax:
                    # Its worker died on the last allowed attempt: fail it with the reason.
                    res = s.execute(
                        update(Job)
                        .where(Job.id == cid, Job.status == cstatus, Job.lease_owner == cowner)
                        .values(status=JobStatus.FAILED.value, fail_message=COMMON_ERROR, fail_detail=f"worker lost during attempt {cattempts} of {cmax} (lease expired)", finished_at=now, updated_at=now, lease_owner=None)
                    )
                    if res.rowcount == 1:
                        failed = s.get(Job, cid, populate_existing=True)
                        hook = on_fail(failed.kind) if on_fail is not None else None
                        if hook is not None:
                            hook(s, failed)
                        if dead is not None:
                            dead.append((failed, cowner, cattempts))
                    continue
                cond = [Job.id == cid, Job.status == cstatus]
                cond.append(Job.lease_owner == cowner if cowner is not None else Job.lease_owner.is_(None))
                res = s.execute(
                    update(Job)
                    .where(*cond)
                    .values(
                        status=JobStatus.IN_PROGRESS.value,
                        lease_owner=worker_id,
                        lease_expires_at=now + dt.timedelta(seconds=self.lease_seconds),
                        attempts=Job.attempts + 1,
                        started_at=now,
                        updated_at=now,
                    )
                )
                if res.rowcount == 1:
                    job = s.get(Job, cid, populate_existing=True)
                    if cstatus == JobStatus.IN_PROGRESS.value:
                        log.warning("job %s: lease of %s expired; reclaimed by %s", cid, cowner, worker_id)
                        if dead is not None:
                            dead.append((job, cowner, cattempts))
                    return job
        return None

    def _candidate(self, s: Session, kinds: list[str], now: dt.datetime):
        other = aliased(Job)
        runnable = and_(
            Job.status == JobStatus.PENDING.value,
            or_(Job.not_before.is_(None), Job.not_before <= now),
            # One job per concurrency key at a time, and the oldest of the key first (FIFO).
            or_(
                Job.concurrency_key.is_(None),
                ~exists().where(
                    other.concurrency_key == Job.concurrency_key,
                    other.id != Job.id,
                    or_(other.status == JobStatus.IN_PROGRESS.value, and_(other.status.in_([JobStatus.PENDING.value, JobStatus.REGISTERED.value]), other.created_at < Job.created_at)),
                ),
            ),
        )
        expired = and_(Job.status == JobStatus.IN_PROGRESS.value, Job.lease_expires_at < now)
        q = (
            select(Job.id, Job.status, Job.lease_owner, Job.attempts, Job.max_attempts)
            .where(Job.kind.in_(kinds), or_(runnable, expired))
            .order_by(Job.created_at, Job.id)
            .limit(1)
        )
        if self.db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True, of=Job)
        return s.execute(q).first()

    # -- while running -------------------------------------------------------------------------
    def heartbeat(self, job_id: str, worker_id: str, progress: float | None = None, message: str | None = None) -> tuple[bool, bool]:
        """Extends the lease. Returns (still_owner, cancel_requested)."""
        now = utcnow()
        values: dict[str, Any] = {"lease_expires_at": now + dt.timedelta(seconds=self.lease_seconds), "updated_at": now}
        if progress is not None:
            values["progress"] = progress
        if message is not None:
            values["progress_message"] = message[:200]
        with self.db.session() as s:
            res = s.execute(update(Job).where(Job.id == job_id, Job.lease_owner == worker_id, Job.status == JobStatus.IN_PROGRESS.value).values(**values))
            if res.rowcount != 1:
                return False, False
            cancel = s.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one()
            return True, bool(cancel)

    def save_checkpoint(self, job_id: str, worker_id: str, checkpoint: dict[str, Any]) -> bool:
        with self.db.session() as s:
            res = s.execute(update(Job).where(Job.id == job_id, Job.lease_owner == worker_id, Job.status == JobStatus.IN_PROGRESS.value).values(checkpoint=checkpoint, updated_at=utcnow()))
            return res.rowcount == 1

    # -- endings -------------------------------------------------------------------------------
    def _owned(self, job_id: str, worker_id: str):
        return [Job.id == job_id, Job.lease_owner == worker_id, Job.status == JobStatus.IN_PROGRESS.value]

    def complete(self, job_id: str, worker_id: str, outcome: Outcome) -> bool:
        now = utcnow()
        with self.db.session() as s:
            res = s.execute(
                update(Job)
                .where(*self._owned(job_id, worker_id))
                .values(status=JobStatus.COMPLETED.value, result=outcome.result, progress=1.0, finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None)
            )
            if res.rowcount != 1:
                s.rollback()
                return False
            if outcome.publish is not None:
                outcome.publish(s)
            return True

    def fail(self, job_id: str, worker_id: str, code: str, detail: str, on_fail=None, status: JobStatus = JobStatus.FAILED) -> bool:
        now = utcnow()
        with self.db.session() as s:
            res = s.execute(
                update(Job)
                .where(*self._owned(job_id, worker_id))
                .values(status=status.value, fail_message=code, fail_detail=detail[:4000], finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None)
            )
            if res.rowcount != 1:
                return False
            if on_fail is not None:
                on_fail(s, s.get(Job, job_id))
            return True

    def retry_later(self, job_id: str, worker_id: str, detail: str, attempt: int) -> bool:
        now = utcnow()
        delay = self.retry_backoff_seconds * (2 ** max(0, attempt - 1))
        with self.db.session() as s:
            res = s.execute(
                update(Job)
                .where(*self._owned(job_id, worker_id))
                .values(status=JobStatus.PENDING.value, not_before=now + dt.timedelta(seconds=delay), fail_detail=f"retrying: {detail}"[:4000], updated_at=now, lease_owner=None, lease_expires_at=None)
            )
            return res.rowcount == 1

    # -- reading -------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self.db.session() as s:
            return s.get(Job, job_id)

    def active_count(self, session: Session, scope: str | None = None) -> int:
        q = select(Job.id).where(Job.status.in_([a.value for a in ACTIVE]))
        if scope:
            q = q.where(Job.scope == scope)
        return len(session.execute(q).all())
