"""Wiring: builds the database, object store, job engine and domain services from Settings.

Used by the HTTP app, `userlens worker` and the CLI, so all three see the same objects."""

from __future__ import annotations

from dataclasses import dataclass

from userlens.accounts.service import AccountService, load_master_key
from userlens.config import Settings
from userlens.jobs.engine import JobQueue, JobRegistry
from userlens.jobs.executor import Executor, make_executor
from userlens.jobs.worker import CORES, Worker
from userlens.profiles.wiring import build_aep
from userlens.storage.db import Database
from userlens.storage.objectstore import ObjectStore, make_object_store
from userlens.understanding.custom_attributes import CustomAttributesService
from userlens.understanding.features import FeatureService
from userlens.understanding.panels import PanelService
from userlens.understanding.resources import NclueDeps
from userlens.understanding.runs import RunService
from userlens.understanding.shopping_intents import ShoppingIntentService
from userlens.understanding.tasks import TaskService


@dataclass
class Services:
    settings: Settings
    db: Database
    store: ObjectStore
    queue: JobQueue
    registry: JobRegistry
    accounts: AccountService
    features: FeatureService
    tasks: TaskService
    runs: RunService
    custom_attributes: CustomAttributesService
    panels: PanelService
    shopping_intents: ShoppingIntentService
    # AEP (built by profiles/wiring.py)
    orgs: object = None
    catalog: object = None
    ingest: object = None
    merge_policies: object = None
    profile_store: object = None
    profile_access: object = None
    segments: object = None
    exports: object = None
    system_jobs: object = None
    executor: Executor | None = None  # where heavy jobs' chunks run (USERLENS_EXECUTOR)

    def make_worker(self, threads: int | None = None) -> Worker:
        if self.settings.worker_cores:
            CORES.cores = self.settings.worker_cores
        return Worker(self.queue, self.registry, self, threads=threads if threads is not None else max(1, self.settings.workers), poll_interval=self.settings.poll_interval, nice=self.settings.worker_nice)

    def close(self) -> None:
        self.db.dispose()


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    store = make_object_store(settings)
    queue = JobQueue(db, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts, retry_backoff_seconds=settings.retry_backoff_seconds, fault_slow_check_ms=settings.fault_slow_check_ms)
    registry = JobRegistry()
    executor = make_executor(settings, store)
    master = load_master_key(settings.data_dir, settings.master_key.get_secret_value() if settings.master_key else None)
    accounts = AccountService(db, master)
    nclue = NclueDeps(
        db=db,
        store=store,
        queue=queue,
        internal_bucket=settings.internal_bucket,
        quota_bytes=settings.storage_quota_bytes,
        chunk_rows=settings.feature_chunk_rows,
        chunk_bytes=settings.feature_chunk_bytes,
        executor=executor,
        fault_slow_chunk_ms=settings.fault_slow_chunk_ms,
        model_name=settings.nclue_model,
        task_candidates=tuple(c.strip() for c in settings.task_candidates.split(",") if c.strip()),
    )
    features = FeatureService(nclue)
    tasks = TaskService(nclue, features)
    runs = RunService(nclue, features, tasks)
    custom_attributes = CustomAttributesService(nclue, features)
    panels = PanelService(nclue)
    shopping_intents = ShoppingIntentService(nclue, tasks, panels)
    for service in (features, tasks, runs, custom_attributes, shopping_intents):
        service.register_jobs(registry)
    aep = build_aep(db, store, queue, registry, settings.internal_bucket, segment_chunk_profiles=settings.segment_chunk_profiles)
    return Services(settings, db, store, queue, registry, accounts, features, tasks, runs, custom_attributes, panels, shopping_intents, **aep, executor=executor)
