"""Real worker processes: kill -9 one mid-job and let another finish it; two processes racing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from userlens.samples import sequences as sample

WORKER = [sys.executable, "-m", "userlens.cli", "worker"]


def worker_env(nclue, **extra) -> dict:
    s = nclue.settings
    env = dict(os.environ)
    env.update(
        USERLENS_DATABASE_URL=s.database_url,
        USERLENS_DATA_DIR=str(s.data_dir),
        USERLENS_OBJECT_STORE=s.object_store,
        USERLENS_STORAGE_ROOT=str(s.storage_root),
        USERLENS_S3_ENDPOINT_URL=s.s3_endpoint_url,
        USERLENS_S3_ACCESS_KEY=s.s3_access_key,
        USERLENS_S3_SECRET_KEY=s.s3_secret_key.get_secret_value(),
        USERLENS_INTERNAL_BUCKET=s.internal_bucket,
        USERLENS_MASTER_KEY="test-master-key",
        USERLENS_LEASE_SECONDS="1.5",
        USERLENS_POLL_INTERVAL="0.05",
        USERLENS_LOG_LEVEL="WARNING",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_worker(nclue, log_path, **extra) -> subprocess.Popen:
    return subprocess.Popen(WORKER, env=worker_env(nclue, **extra), stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_job_is_finished_by_another(nclue, tmp_path):
    text, _ = sample.generate(1200)
    nclue.put("seq/users.csv", text)
    fid = nclue.client.post("/api/v1/features", {"name": "crash", "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    slow = {"USERLENS_FEATURE_CHUNK_ROWS": 100, "USERLENS_FAULT_SLOW_CHUNK_MS": 150}
    a = start_worker(nclue, tmp_path / "a.log", **slow)
    try:
        wait_for(lambda: (nclue.job_of(fid).progress or 0) > 0.15, 60, "worker A to make progress")
        os.kill(a.pid, signal.SIGKILL)
        a.wait(10)
    finally:
        stop(a)
    job = nclue.job_of(fid)
    assert job.status == "in_progress" and job.attempts == 1
    root = f"nclue/{nclue.account_id}/features/{fid}"
    assert nclue.store.list(nclue.settings.internal_bucket, root), "worker A wrote parts before dying"

    b = start_worker(nclue, tmp_path / "b.log", **slow)
    try:
        wait_for(lambda: nclue.job_of(fid).status in ("completed", "failed"), 90, "worker B to finish the job")
    finally:
        stop(b)
    f = nclue.client.get(f"/api/v1/features/{fid}")
    assert (f["status"], f["user_count"]) == ("completed", 1200), (tmp_path / "b.log").read_text()[-2000:]
    assert nclue.job_of(fid).attempts == 2
    # Only the published attempt remains: the dead attempt's partial parts were removed.
    attempts = {o.key[len(root) + 1 :].split("/")[0] for o in nclue.store.list(nclue.settings.internal_bucket, root)}
    assert len(attempts) == 1
    from userlens.understanding.models import Feature

    with nclue.svc.db.session() as s:
        assert s.get(Feature, fid).vectors_prefix == f"{root}/{attempts.pop()}"


def test_two_worker_processes_share_the_queue_without_running_a_job_twice(nclue, tmp_path):
    text, _ = sample.generate(300)
    nclue.put("seq/users.csv", text)
    ids = [nclue.client.post("/api/v1/features", {"name": f"race{i}", "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"})["feature_id"] for i in range(6)]
    procs = [start_worker(nclue, tmp_path / f"w{i}.log", USERLENS_FEATURE_CHUNK_ROWS=100, USERLENS_FAULT_SLOW_CHUNK_MS=20) for i in range(2)]
    try:
        wait_for(lambda: all(nclue.job_of(i).status == "completed" for i in ids), 120, "all jobs to complete")
    finally:
        for p in procs:
            stop(p)
    jobs = [nclue.job_of(i) for i in ids]
    assert all(j.attempts == 1 for j in jobs)
    owners = {j.started_at for j in jobs}
    assert len(owners) == 6
    for i in ids:
        assert nclue.client.get(f"/api/v1/features/{i}")["user_count"] == 300
