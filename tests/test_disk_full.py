"""A full disk and an exhausted quota in the middle of a job.

The object store is a local folder on a small tmpfs (mounted for the test; it needs root, else the
tests are skipped), so a write fails with a real ENOSPC from the kernel: no fault is injected in
userlens. The metadata database is the backend's (SQLite or PostgreSQL). On S3, a proxy in front of the test's
seaweedfs answers uploads as MinIO does with full drives (507 XMinioStorageFull): S3 answers that name
a full store or a quota map to the same ObjectStoreFull (objectstore.FULL_MARKERS).

For a Feature, a Run, an AEP batch ingestion and an AEP export, with the disk filled so that the
job's first writes fit and a later one does not: the job fails with the documented code once its
attempts run out (DISK_SPACE_SHORTAGE for NCLUE, the batch's / export's transient store code for AEP)
with a detail naming the full store; the API answers meanwhile; no partial output or hidden
temporary is left on the disk; `userlens fsck` is clean; and once space is freed, the same request
completes with no manual step. A Feature submitted while the disk is full keeps retrying and
completes by itself when space is freed. The per-account quota running out mid-Feature fails it
with DISK_SPACE_SHORTAGE after some parts were written, and removes them.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import update
from test_crash_recovery import wait_for
from test_fsck import EVENT, PROFILE, UNION, Aep, events, records

from userlens.fsck import run_fsck
from userlens.jobs.models import Job
from userlens.samples import sequences as sample

DISK_MB = 24
N_USERS = 600  # 2 KiB of vectors per user: parts of 100 users are ~200 KiB


class SmallDisk:
    """A tmpfs of DISK_MB MiB; `fill(leave)` leaves about `leave` bytes free, `free()` undoes it."""

    def __init__(self, mnt: Path):
        self.mnt = mnt
        self.filler = mnt / "filler.bin"

    def available(self) -> int:
        st = os.statvfs(self.mnt)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int) -> None:
        self.free()
        n = max(0, self.available() - leave)
        with open(self.filler, "wb") as f:
            while n > 0:
                f.write(b"\0" * min(n, 1 << 20))
                n -= min(n, 1 << 20)
        assert abs(self.available() - leave) < 64 * 1024, (self.available(), leave)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def temporaries(self) -> list[str]:
        return [os.path.join(d, f) for d, _, files in os.walk(self.mnt) for f in files if f.startswith(".tmp-")]


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"a full disk needs a tmpfs mount (root): {r.stderr.strip()}")
    try:
        yield SmallDisk(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def on_small_disk(backend, small_disk):
    """The app on the backend's database with its object store on the small disk; a worker thread
    runs jobs, retrying store errors after 0.2 s, 0.4 s, ..."""
    from infra.nclue_env import running_nclue
    from userlens.config import Settings

    kw = {**backend.settings_kwargs(), "object_store": "local", "storage_root": small_disk.mnt / "buckets"}
    settings = Settings(**kw, workers=0, internal_bucket=f"internal-{uuid.uuid4().hex[:10]}", lease_seconds=5, retry_backoff_seconds=0.2, max_attempts=2,
                        master_key="test-master-key", task_candidates="logreg:0.001", feature_chunk_rows=100)
    with running_nclue(settings, worker_threads=1) as env:
        env.extra["disk"] = small_disk
        try:
            yield env
        finally:
            small_disk.free()  # before the worker stops: a job retrying on the full disk can end


def job(w, job_id: str) -> Job:
    return w.svc.queue.get(job_id)


def job_id_of(w, model, rid) -> str:
    with w.svc.db.session() as s:
        return s.get(model, rid).job_id


def ended(w, job_id: str, timeout: float = 90) -> Job:
    return wait_for(lambda: (lambda j: j if j.terminal else None)(job(w, job_id)), timeout, f"job {job_id}")


def assert_nothing_half_written(w) -> None:
    disk = w.extra["disk"]
    assert disk.temporaries() == []
    assert w.client.get("/api/v1/features")["total"] >= 0  # the service answers
    report = run_fsck(w.svc)
    assert report.clean, report.render()


def test_a_full_disk_mid_job_fails_with_the_documented_code_and_recovers(on_small_disk):
    from userlens.profiles.export import ExportJob
    from userlens.profiles.models import Batch
    from userlens.understanding.models import Feature, Task, TaskRun

    w, disk = on_small_disk, on_small_disk.extra["disk"]
    c, a = w.client, Aep(w)
    text, truth = sample.generate(N_USERS, seed=5)
    w.put("seq/users.csv", text)
    w.put("answers/a.csv", "".join(f"{u}\t{int('beauty' in i)}\n" for u, i in truth.items()))
    fid = c.post("/api/v1/features", {"name": "f0", "source_bucket": w.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    assert ended(w, job_id_of(w, Feature, fid)).status == "completed"
    tid = c.post("/api/v1/tasks", {"name": "t0", "train_feature_id": fid, "train_bucket": w.bucket, "train_file_path": "answers/a.csv"})["task_id"]
    assert ended(w, job_id_of(w, Task, tid)).status == "completed"
    people, union = a.dataset("people", PROFILE), a.dataset("export", UNION, profile=False)
    web = a.dataset("web", EVENT)
    first = a.batch(people, records(400, "p"))
    assert ended(w, job_id_of(w, Batch, first)).status == "completed"

    # Each submit takes `full`: called just before the job is queued (it fills the disk, or not).
    def feature(full):
        full()
        fid_ = c.post("/api/v1/features", {"name": f"f-{uuid.uuid4().hex[:6]}", "source_bucket": w.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
        return job_id_of(w, Feature, fid_), lambda: c.get(f"/api/v1/features/{fid_}")["user_count"] == N_USERS

    def run(full):
        full()
        rid = c.post("/api/v1/task-runs", {"name": f"r-{uuid.uuid4().hex[:6]}", "task_id": tid, "feature_id": fid, "result_bucket": w.bucket, "result_file_path": f"run-{uuid.uuid4().hex[:6]}/"})["run_id"]
        return job_id_of(w, TaskRun, rid), lambda: c.get(f"/api/v1/task-runs/{rid}")["line_count"] == N_USERS

    def ingest(full):
        # The upload is an API request made while there is room; the job then writes the lake.
        bid = a.batch(people, records(3000, f"q{uuid.uuid4().hex[:4]}-"), complete=False)
        full()
        a.call("POST", f"/data/foundation/import/batches/{bid}", params={"action": "COMPLETE"}, expect=(200,))
        return job_id_of(w, Batch, bid), lambda: (a.get_batch(bid)["status"], a.get_batch(bid)["recordCount"]) == ("success", 3000)

    def export(full):
        full()
        eid = a.call("POST", "/data/core/ups/export/jobs", {"destination": {"datasetId": union}, "schema": {"name": "_xdm.context.profile"}}, expect=(200,))["id"]

        def done():
            with w.svc.db.session() as s:
                return s.get(ExportJob, eid).status == "SUCCEEDED"

        return job_id_of(w, ExportJob, eid), done

    w.svc.ingest.chunk_rows = 300  # one lake part per 300 records
    # (job, bytes left free, the codes its failure may carry): the job's first writes fit, a later one not.
    cases = [("feature", feature, 300_000, {"DISK_SPACE_SHORTAGE"}), ("run", run, 12_000, {"DISK_SPACE_SHORTAGE"}),
             ("ingest", ingest, 24_000, {"INGEST-1503-503"}), ("export", export, 8_000, {"0090000009"})]
    for name, submit, leave, codes in cases:
        job_id, ok = submit(lambda: disk.fill(leave))
        j = ended(w, job_id)
        assert j.status == "failed" and j.fail_message in codes, (name, j.status, j.fail_message, j.fail_detail)
        assert ("store is full" in j.fail_detail or "No space left" in j.fail_detail) and j.attempts == 2, (name, j.fail_detail, j.attempts)
        assert_nothing_half_written(w)
        disk.free()
        job_id, ok = submit(lambda: None)  # the same request once space is freed: no manual step
        j = ended(w, job_id)
        assert j.status == "completed", (name, j.fail_message, j.fail_detail)
        assert ok(), name
    assert_nothing_half_written(w)


def test_a_job_retrying_on_a_full_disk_completes_once_space_is_freed(on_small_disk):
    from userlens.understanding.models import Feature

    w, disk = on_small_disk, on_small_disk.extra["disk"]
    c = w.client
    text, _ = sample.generate(N_USERS, seed=6)
    w.put("seq/users.csv", text)
    disk.fill(300_000)
    fid = c.post("/api/v1/features", {"name": "f", "source_bucket": w.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    job_id = job_id_of(w, Feature, fid)
    with w.svc.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(max_attempts=20))
    # Two attempts failed for lack of space (each removed its parts: the third finds the same room).
    wait_for(lambda: job(w, job_id).attempts >= 3, 60, "a third attempt")
    assert not job(w, job_id).terminal
    assert c.get(f"/api/v1/features/{fid}")["status"] in ("pending", "in_progress")
    disk.free()
    j = ended(w, job_id)
    assert j.status == "completed", (j.fail_message, j.fail_detail)
    assert c.get(f"/api/v1/features/{fid}")["user_count"] == N_USERS
    assert_nothing_half_written(w)


def test_the_account_quota_running_out_mid_feature(on_small_disk):
    """The quota is checked after each vector part: parts were written, then the Feature fails with
    DISK_SPACE_SHORTAGE and its parts go. Raised again, the next Feature completes."""
    from userlens.understanding.models import Feature

    w = on_small_disk
    c, deps = w.client, w.svc.features.deps
    text, _ = sample.generate(N_USERS, seed=7)
    w.put("seq/users.csv", text)
    deps.quota_bytes = 450_000  # two ~200 KiB parts fit, the third does not
    fid = c.post("/api/v1/features", {"name": "f", "source_bucket": w.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    j = ended(w, job_id_of(w, Feature, fid))
    assert (j.status, j.fail_message) == ("failed", "DISK_SPACE_SHORTAGE") and "quota" in j.fail_detail, (j.status, j.fail_message, j.fail_detail)
    written = int(re.search(r"needs more than (\d+)", j.fail_detail).group(1))
    assert written > 200_000 and j.attempts == 1  # mid-job (parts were written), not retried: the quota is the account's to raise
    assert w.store.list(w.settings.internal_bucket, f"nclue/{w.account_id}") == []
    assert_nothing_half_written(w)
    deps.quota_bytes = 10 * 1024 * 1024
    gid = c.post("/api/v1/features", {"name": "g", "source_bucket": w.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    assert ended(w, job_id_of(w, Feature, gid)).status == "completed"
    assert c.get(f"/api/v1/features/{gid}")["user_count"] == N_USERS
    assert_nothing_half_written(w)


@pytest.mark.parametrize("error,full", [
    (OSError(28, "No space left on device"), True),
    (OSError(122, "Disk quota exceeded"), True),
    (OSError("An error occurred (XMinioStorageFull) when calling the PutObject operation: Storage backend has reached its minimum free drive threshold."), True),
    (OSError("An error occurred (QuotaExceeded) when calling the UploadPart operation"), True),
    (OSError("An error occurred (InternalError) when calling the PutObject operation"), False),
    (ConnectionError("Connection refused"), False),
])
def test_store_errors_naming_a_full_store_are_object_store_full(error, full):
    """S3 servers say 'full' in their error codes (MinIO's 507 XMinioStorageFull, quota errors)."""
    from userlens.storage.objectstore import LocalObjectStore, ObjectStoreError, ObjectStoreFull

    def fail():
        raise error

    with pytest.raises(ObjectStoreError) as got:
        LocalObjectStore.__new__(LocalObjectStore)._guard(fail)
    assert isinstance(got.value, ObjectStoreFull) is full


# -- S3: a server answering "storage full" -----------------------------------------------------------
class FullS3Proxy:
    """An HTTP proxy in front of the S3 server that, while `full`, answers every upload (PUT, POST but
    DeleteObjects) as MinIO does when its drives are full: 507 XMinioStorageFull. Reads and deletes pass.
    Requests are forwarded unchanged (the Host header too, so signatures still verify)."""

    FULL = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>XMinioStorageFull</Code><Message>Storage backend has reached '
            b"its minimum free drive threshold. Please delete a few objects to proceed.</Message><RequestId>0</RequestId></Error>")

    def __init__(self, target: tuple[str, int]):
        import http.client
        import http.server

        proxy = self
        self.full = False
        self.refused = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                deleting = self.command == "POST" and "delete" in self.path.partition("?")[2].split("&")  # DeleteObjects
                if proxy.full and self.command in ("PUT", "POST") and not deleting:
                    proxy.refused += 1
                    self.send_response(507)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(proxy.FULL)))
                    self.end_headers()
                    self.wfile.write(proxy.FULL)
                    return
                up = http.client.HTTPConnection(*target, timeout=60)
                try:
                    up.request(self.command, self.path, body=body, headers={k: v for k, v in self.headers.items()})
                    r = up.getresponse()
                    data = r.read()
                    self.send_response(r.status, r.reason)
                    for k, v in r.getheaders():  # a HEAD keeps the object's Content-Length
                        if k.lower() not in ("transfer-encoding", "connection") and (k.lower() != "content-length" or self.command == "HEAD"):
                            self.send_header(k, v)
                    if self.command != "HEAD":
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    up.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_s3_store_answering_storage_full_mid_job(backend):
    """The same on S3: uploads refused with 507 XMinioStorageFull after a Feature wrote its first part.
    The job retries, fails with DISK_SPACE_SHORTAGE, leaves no object or open multipart upload, fsck is
    clean; once the server takes uploads again the same request completes."""
    from urllib.parse import urlsplit

    from infra.nclue_env import running_nclue
    from userlens.config import Settings
    from userlens.understanding.models import Feature

    if backend.s3 is None:
        pytest.skip("needs the S3 backend")
    target = urlsplit(backend.s3.endpoint_url)
    proxy = FullS3Proxy((target.hostname, target.port))
    kw = {**backend.settings_kwargs(), "s3_endpoint_url": proxy.url}
    settings = Settings(**kw, workers=0, internal_bucket=f"internal-{uuid.uuid4().hex[:10]}", lease_seconds=5, retry_backoff_seconds=0.2, max_attempts=2,
                        master_key="test-master-key", task_candidates="logreg:0.001", feature_chunk_rows=100, fault_slow_check_ms=300)
    try:
        with running_nclue(settings, worker_threads=1) as w:
            c = w.client
            text, _ = sample.generate(1500, seed=8)  # 15 parts, 0.3 s each at least
            w.put("seq/users.csv", text)
            body = {"name": "f", "source_bucket": w.bucket, "source_file_path": "seq/users.csv"}
            job_id = job_id_of(w, Feature, c.post("/api/v1/features", body)["feature_id"])
            wait_for(lambda: w.store.list(settings.internal_bucket, "nclue"), 60, "the first vector part")
            proxy.full = True
            j = ended(w, job_id)
            assert (j.status, j.fail_message, j.attempts) == ("failed", "DISK_SPACE_SHORTAGE", 2), (j.status, j.fail_message, j.fail_detail)
            assert "XMinioStorageFull" in j.fail_detail and proxy.refused >= 2
            assert c.get("/api/v1/features")["total"] == 1  # the API answers (reads pass)
            assert w.store.list(settings.internal_bucket, "nclue") == []
            assert backend.s3.s3_client().list_multipart_uploads(Bucket=settings.internal_bucket).get("Uploads", []) == []
            report = run_fsck(w.svc)
            assert report.clean, report.render()
            proxy.full = False
            j = ended(w, job_id_of(w, Feature, c.post("/api/v1/features", {**body, "name": "g"})["feature_id"]))
            assert j.status == "completed", (j.fail_message, j.fail_detail)
            assert run_fsck(w.svc).clean
    finally:
        proxy.close()
