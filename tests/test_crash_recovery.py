"""Real worker processes: kill -9 one mid-job and let another finish it; two processes racing."""

from __future__ import annotations

import os
import signal
import time

from infra.workers import start_worker, stop

from userlens.samples import sequences as sample



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
    a = start_worker(nclue.settings, tmp_path / "a.log", **slow)
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

    b = start_worker(nclue.settings, tmp_path / "b.log", **slow)
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
    procs = [start_worker(nclue.settings, tmp_path / f"w{i}.log", USERLENS_FEATURE_CHUNK_ROWS=100, USERLENS_FAULT_SLOW_CHUNK_MS=20) for i in range(2)]
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
