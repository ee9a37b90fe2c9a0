"""The NCLUE test environment (the `nclue` fixture of tests/conftest.py): a module of its own so that
tests can import it whatever `conftest` module another folder has loaded."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from infra.jobs import drain_jobs

from userlens.config import Settings


@dataclass
class NclueEnv:
    """A running userlens (app + services) with a signed client, and helpers for tests."""

    svc: object
    app: object
    client: object
    account_id: str
    bucket: str
    http: object
    extra: dict = field(default_factory=dict)

    @property
    def store(self):
        return self.svc.store

    @property
    def settings(self) -> Settings:
        return self.svc.settings

    def put(self, key: str, data: bytes | str) -> None:
        self.store.write_bytes(self.bucket, key, data.encode() if isinstance(data, str) else data)

    def run_jobs(self, timeout: float = 60.0) -> int:
        return drain_jobs(self.svc, timeout)

    def job_of(self, feature_id: str):
        from userlens.understanding.models import Feature

        with self.svc.db.session() as s:
            return s.get(Feature, feature_id).job

    def other_client(self):
        from userlens.client import NclueClient

        creds = self.svc.accounts.create_key(f"other-{uuid.uuid4().hex[:6]}")
        return NclueClient("http://testserver", creds.access_key, creds.secret_key, http=self.http)

    def tmp_copy(self, key: str, text: str) -> str:
        """A local copy of an object (for tools that read files, like DuckDB without extensions)."""
        import tempfile

        path = os.path.join(tempfile.mkdtemp(), key.replace("/", "_"))
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def settings_chunk_rows(self, n: int) -> None:
        self.svc.features.deps.chunk_rows = n


@contextmanager
def running_nclue(settings: Settings, worker_threads: int = 0) -> Iterator[NclueEnv]:
    """The app on `settings` with its internal bucket, a customer bucket and one access key, and
    `worker_threads` worker threads running jobs meanwhile (0: none; tests run them with run_jobs)."""
    from fastapi.testclient import TestClient

    from userlens.api.app import create_app
    from userlens.client import NclueClient
    from userlens.services import build_services

    svc = build_services(settings)
    worker = None
    try:
        svc.store.create_bucket(settings.internal_bucket)
        bucket = f"t-{uuid.uuid4().hex[:12]}"
        svc.store.create_bucket(bucket)
        creds = svc.accounts.create_key(f"acct-{uuid.uuid4().hex[:8]}")
        app = create_app(settings, svc, start_workers=False)
        if worker_threads:
            worker = svc.make_worker(worker_threads)
            worker.start()
        with TestClient(app) as http:
            yield NclueEnv(svc, app, NclueClient("http://testserver", creds.access_key, creds.secret_key, http=http), creds.account_id, bucket, http)
    finally:
        if worker is not None:
            worker.stop(15)
        svc.close()
