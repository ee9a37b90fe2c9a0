"""What every NCLUE resource shares: a name unique in the account, one job, list/get/delete with
the dependency rules, and the account's share of internal storage.

A resource model has `id`, `account_id`, `name`, `job_id`, `job` (joined) and `created_at`.
Subclasses set `model`, `kind` and `label`, define `run_job`, and set `storage_folder` if their job
stores internal data: it then lives under `nclue/{account}/{storage_folder}/{id}/{attempt}/`, a lost
attempt's folder is removed when the attempt ends, and the whole folder when the resource is deleted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from userlens.errors import Conflict, DomainError, NotFound
from userlens.jobs.engine import JobContext, JobQueue, JobRegistry
from userlens.jobs.executor import LocalExecutor
from userlens.jobs.models import Job, JobStatus
from userlens.storage.objectstore import ObjectStore, ObjectStoreError

RUNNING = (JobStatus.PENDING.value, JobStatus.IN_PROGRESS.value)
ACTIVE = (JobStatus.REGISTERED.value, *RUNNING)
COMPLETED = JobStatus.COMPLETED.value


def account_scope(account_id: str) -> str:
    return f"nclue:{account_id}"


@dataclass
class NclueDeps:
    """What NCLUE services need; built once by the app or the worker."""

    db: Any
    store: ObjectStore
    queue: JobQueue
    internal_bucket: str
    quota_bytes: int
    chunk_rows: int = 16384
    chunk_bytes: int = 64 * 1024 * 1024  # Feature input per executor chunk
    executor: Any = None  # jobs.executor.Executor: where heavy jobs' chunks run (local threads or Ray)
    fault_slow_chunk_ms: int = 0
    model_name: str = ""
    task_candidates: tuple[str, ...] = ("logreg", "mlp")

    def __post_init__(self) -> None:
        if self.executor is None:
            self.executor = LocalExecutor(self.store)


# A check names the active resources that depend on a given resource id (they block its deletion).
DependentCheck = Callable[[Session, str], list[str]]


class ResourceService:
    model: Any
    kind: str
    label: str

    def __init__(self, deps: NclueDeps):
        self.deps = deps
        self.dependent_checks: list[DependentCheck] = []

    # -- create helpers --------------------------------------------------------------------------
    def check_unique(self, s: Session, account_id: str, name: str) -> None:
        if s.execute(select(self.model.id).where(self.model.account_id == account_id, self.model.name == name)).first():
            raise DomainError(f"a {self.label} named {name!r} already exists", name="DUPLICATE_NAME")

    def submit(self, s: Session, account_id: str, row_id: str, concurrency_key: str | None = None) -> Job:
        job = self.deps.queue.submit(s, self.kind, account_scope(account_id), {"id": row_id, "account_id": account_id}, concurrency_key=concurrency_key)
        s.flush()
        return job

    @staticmethod
    def new_id() -> str:
        return str(uuid.uuid4())

    # -- read ----------------------------------------------------------------------------------
    def get(self, account_id: str, row_id: str):
        with self.deps.db.read_session() as s:
            return self.get_in(s, account_id, row_id)

    def get_in(self, s: Session, account_id: str, row_id: str, lock: bool = False):
        q = select(self.model).where(self.model.id == row_id, self.model.account_id == account_id)
        if lock:
            q = q.with_for_update(of=self.model)
        row = s.execute(q).scalar_one_or_none()
        if row is None:
            raise NotFound(f"{self.label.lower()} {row_id} not found")
        return row

    def list(self, account_id: str, index: int, limit: int) -> tuple[int, list]:
        m = self.model
        with self.deps.db.read_session() as s:
            # The page and the total in one query (one round trip); a page past the end has no row to
            # carry the total, so only then is it counted apart.
            q = select(m, func.count().over()).where(m.account_id == account_id).order_by(m.created_at.desc(), m.id.desc()).offset(index).limit(limit)
            rows = s.execute(q).all()
            if rows:
                return rows[0][1], [r[0] for r in rows]
            total = 0 if index == 0 else s.execute(select(func.count()).select_from(m).where(m.account_id == account_id)).scalar_one()
            return total, []

    def require_completed(self, s: Session, account_id: str, row_id: object, field: str):
        """An input resource: it must exist in the account (404) and be completed (409)."""
        if not isinstance(row_id, str) or not row_id:
            from userlens.errors import InvalidParameter

            raise InvalidParameter(f"{field} is required")
        row = self.get_in(s, account_id, row_id)
        if row.job.status != COMPLETED:
            raise Conflict(f"{self.label.lower()} {row_id} is {row.job.status}; only a completed {self.label} can be used")
        return row

    # -- dependency rules ------------------------------------------------------------------------
    def active_where(self, s: Session, *conditions) -> list[str]:
        """Descriptions of this resource's rows that match and whose job is still active."""
        rows = s.execute(select(self.model.id, Job.status).join(Job, Job.id == self.model.job_id).where(*conditions, Job.status.in_(ACTIVE))).all()
        return [f"{self.label} {rid} ({status})" for rid, status in rows]

    # -- delete --------------------------------------------------------------------------------
    def delete(self, account_id: str, row_id: str) -> str:
        d = self.deps
        with d.db.session() as s:
            row = self.get_in(s, account_id, row_id, lock=True)
            status = row.job.status
            if status in RUNNING:
                raise Conflict(f"{self.label.lower()} {row_id} is {status}; it can be deleted once it is completed or failed")
            dependents = [dep for check in self.dependent_checks for dep in check(s, row_id)]
            if dependents:
                raise Conflict(f"{self.label.lower()} {row_id} is used by jobs that have not finished: {', '.join(dependents)}", name="RESOURCE_IN_USE")
            if status == JobStatus.REGISTERED.value and not d.queue.cancel_registered(s, row.job_id):
                raise Conflict(f"{self.label.lower()} {row_id} has just been queued; it can be deleted once it is completed or failed")
            s.delete(row)
        # The row is gone, so readers see a consistent state; stored data goes next. A failure here
        # leaves orphans for `userlens fsck` to report, never a resource pointing at missing data.
        self.remove_outputs(account_id, row_id)
        return row_id

    storage_folder: str | None = None

    def output_root(self, account_id: str, row_id: str) -> str:
        """The folder of a resource's internal data (one sub-folder per job attempt)."""
        return f"nclue/{account_id}/{self.storage_folder}/{row_id}"

    def register_jobs(self, registry: JobRegistry) -> None:
        registry.register(self.kind, self.run_job, on_abort=self.discard_attempt if self.storage_folder else None)

    def discard_attempt(self, ctx: JobContext) -> None:
        """What an attempt that did not complete wrote (readers never saw it)."""
        root = self.output_root(ctx.payload["account_id"], ctx.payload["id"])
        self.deps.store.delete_prefix(self.deps.internal_bucket, f"{root}/{ctx.attempt_tag}")

    def remove_outputs(self, account_id: str, row_id: str) -> None:
        """Internal data of a deleted resource."""
        if self.storage_folder is None:
            return
        try:
            self.deps.store.delete_prefix(self.deps.internal_bucket, self.output_root(account_id, row_id))
        except ObjectStoreError:
            pass  # orphans are reported by `userlens fsck`, never a resource pointing at missing data


def account_storage_used(s: Session, account_id: str) -> int:
    """Bytes of internal storage the account's resources use (Features, Tasks, profiles)."""
    from userlens.understanding.models import STORED_MODELS

    total = 0
    for m in STORED_MODELS:
        total += int(s.execute(select(func.coalesce(func.sum(m.disk_usage), 0)).where(m.account_id == account_id)).scalar_one())
    return total
