"""Real `userlens worker` processes for crash tests: started on a test's settings, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

WORKER = [sys.executable, "-m", "userlens.cli", "worker"]


def worker_env(settings, **extra) -> dict:
    """The environment of a worker process that shares `settings`' database and object store."""
    env = dict(os.environ)
    env.update(
        USERLENS_DATABASE_URL=settings.database_url,
        USERLENS_DATA_DIR=str(settings.data_dir),
        USERLENS_OBJECT_STORE=settings.object_store,
        USERLENS_STORAGE_ROOT=str(settings.storage_root),
        USERLENS_S3_ENDPOINT_URL=settings.s3_endpoint_url,
        USERLENS_S3_ACCESS_KEY=settings.s3_access_key,
        USERLENS_S3_SECRET_KEY=settings.s3_secret_key.get_secret_value(),
        USERLENS_INTERNAL_BUCKET=settings.internal_bucket,
        USERLENS_MASTER_KEY="test-master-key",
        USERLENS_LEASE_SECONDS="1.5",
        USERLENS_POLL_INTERVAL="0.05",
        USERLENS_LOG_LEVEL="WARNING",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_worker(settings, log_path, **extra) -> subprocess.Popen:
    return subprocess.Popen(WORKER, env=worker_env(settings, **extra), stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
