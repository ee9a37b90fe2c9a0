"""Shared benchmark plumbing: an embedded userlens (SQLite + local folder by default), a separate
worker process whose peak memory is read from /proc, timing statistics and result tables."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
RESULTS = ROOT / "results"
console = Console(width=150)


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stats(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def fmt_stats(values: list[float], unit: str = "", digits: int = 1) -> str:
    s = stats(values)
    return f"{s['median']:,.{digits}f}{unit} ({s['min']:,.{digits}f}–{s['max']:,.{digits}f})"


def table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        t.add_row(*r)
    return t


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def aep_org_in_process(prefix: str):
    """A fresh in-process userlens (SQLite + local folder in a temp folder, no workers) with one AEP
    org: (data_dir, services, TestClient, gateway headers of its prod sandbox)."""
    import tempfile

    from fastapi.testclient import TestClient

    from userlens.api.app import create_app
    from userlens.config import Settings
    from userlens.services import build_services
    from userlens.storage.migrate import upgrade

    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    settings = Settings(data_dir=data_dir, workers=0, master_key="bench", log_level="WARNING")
    upgrade(settings.database_url)
    svc = build_services(settings)
    svc.store.create_bucket(settings.internal_bucket)
    http = TestClient(create_app(settings, svc, start_workers=False))
    creds = svc.orgs.create_org("bench")
    tok = http.post("/ims/token/v3", data={"client_id": creds.client_id, "client_secret": creds.client_secret}).json()["access_token"]
    headers = {"Authorization": f"Bearer {tok}", "x-api-key": creds.client_id, "x-gw-ims-org-id": creds.org_id, "x-sandbox-name": "prod"}
    return data_dir, svc, http, headers


@dataclass
class Embedded:
    """userlens with its own data dir; the API runs in this process, jobs in a worker process."""

    data_dir: Path
    env: dict
    svc: object
    client: object
    worker: subprocess.Popen | None = None

    @classmethod
    def start(cls, name: str, database_url: str | None = None) -> "Embedded":
        from fastapi.testclient import TestClient

        from userlens.api.app import create_app
        from userlens.client import NclueClient
        from userlens.config import Settings
        from userlens.services import build_services
        from userlens.storage.migrate import upgrade

        data_dir = CACHE / "runs" / f"{name}-{uuid.uuid4().hex[:6]}"
        data_dir.mkdir(parents=True)
        env = {"USERLENS_DATA_DIR": str(data_dir), "USERLENS_MASTER_KEY": "bench", "USERLENS_LOG_LEVEL": "WARNING"}
        if database_url:
            env["USERLENS_DATABASE_URL"] = database_url
        os.environ.update(env)
        settings = Settings(workers=0)
        upgrade(settings.database_url)
        svc = build_services(settings)
        svc.store.create_bucket(settings.internal_bucket)
        creds = svc.accounts.create_key("bench")
        http = TestClient(create_app(settings, svc, start_workers=False))
        return cls(data_dir, env, svc, NclueClient("http://testserver", creds.access_key, creds.secret_key, http=http))

    def start_worker(self, **extra) -> subprocess.Popen:
        env = {**os.environ, **self.env, **{k: str(v) for k, v in extra.items()}}
        self.worker = subprocess.Popen([sys.executable, "-m", "userlens.cli", "worker"], env=env, stdout=open(self.data_dir / "worker.log", "ab"), stderr=subprocess.STDOUT)
        return self.worker

    def stop_worker(self) -> None:
        if self.worker and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(10)

    def start_inline_worker(self, threads: int = 1):
        """Workers in this process (for benchmarks that measure results, not speed)."""
        self._inline = self.svc.make_worker(threads)
        self._inline.start()
        return self._inline

    def make_feature(self, name: str, bucket: str, key: str, model: str | None = None, timeout: float = 1800) -> dict:
        """POST a Feature and poll it to completion through the API."""
        body = {"name": name, "source_bucket": bucket, "source_file_path": key}
        if model:
            body["nclue_model"] = model
        fid = self.client.post("/api/v1/features", body)["feature_id"]
        f = self.client.wait(f"/api/v1/features/{fid}", timeout=timeout, interval=0.2)
        if f["status"] != "completed":
            raise SystemExit(f"feature failed: {f['fail_message']} {f.get('fail_detail')}")
        return f

    def feature_matrix(self, feature_id: str, user_ids: list[str]):
        """The stored vectors of a Feature, read back from the object store, in `user_ids` order."""
        import numpy as np

        from userlens.understanding.models import Feature
        from userlens.understanding.vectors import iter_vectors

        with self.svc.db.session() as s:
            prefix = s.get(Feature, feature_id).vectors_prefix
        rows = {}
        for ids, mat in iter_vectors(self.svc.store, self.svc.settings.internal_bucket, prefix):
            rows.update(zip(ids, mat))
        return np.stack([rows[u] for u in user_ids])

    def put_text(self, bucket: str, key: str, text: str) -> None:
        self.svc.store.create_bucket(bucket)
        self.svc.store.write_bytes(bucket, key, text.encode("utf-8"))

    def put_file(self, bucket: str, key: str, path: Path) -> None:
        self.svc.store.create_bucket(bucket)
        with open(path, "rb") as src, self.svc.store.open_write(bucket, key) as dst:
            shutil.copyfileobj(src, dst, 16 * 1024 * 1024)

    def close(self, keep: bool = False) -> None:
        self.stop_worker()
        if getattr(self, "_inline", None) is not None:
            self._inline.stop()
        self.svc.close()
        if not keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)
