"""Worker kills for every job kind: `userlens worker` processes are SIGKILLed at seeded random
points while they run Feature, Task, Run, Custom Attributes, Shopping Intent, batch ingestion (record
and event datasets), segment, export and delete jobs; then the jobs are finished. Every job must end
completed / SUCCEEDED / COMPLETED (or failed with a reason), none may stay in progress, every output
is whole and published once, and `userlens fsck` must find nothing: no dangling reference, no status
disagreement, and no orphan either (a dead attempt's outputs are removed by the kind's on_abort,
which the worker that reclaims or fails the dead job runs for it).

`make test` kills a few times per stage (USERLENS_FAULT_KILLS, default 2). Soak: USERLENS_SOAK=1
(8 kills per stage and three rounds of the workload, seeds USERLENS_FAULT_SEED, +1, +2). Every job
sleeps `USERLENS_FAULT_SLOW_CHECK_MS` at each progress/cancel check so kills land mid-job.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import time

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select, update
from infra.soak import SOAK, scaled
from infra.workers import WORKER, start_worker, stop, worker_env
from test_crash_recovery import wait_for
from test_fsck import EVENT, PROFILE, UNION, Aep, events, records

from userlens.fsck import run_fsck
from userlens.jobs.models import Job
from userlens.samples import sequences as sample

KILLS = int(os.environ.get("USERLENS_FAULT_KILLS", scaled(2, 8)))
ROUNDS = scaled(1, 3)
SEED = int(os.environ.get("USERLENS_FAULT_SEED", "20261122"))
N_USERS = 600
SLOW = {"USERLENS_FAULT_SLOW_CHECK_MS": 120, "USERLENS_FEATURE_CHUNK_ROWS": 100, "USERLENS_DELETE_CHUNK_ROWS": 5, "USERLENS_SEGMENT_CHUNK_PROFILES": 20}
TERMINAL = ("completed", "failed", "cancelled")


def start_workers(w, log_path, threads: int = 6, **extra):
    """One `userlens worker` process running every job of a stage at once, so a kill hits them all."""
    import subprocess

    return subprocess.Popen(WORKER + ["--threads", str(threads)], env=worker_env(w.settings, **extra), stdout=open(log_path, "ab"), stderr=subprocess.STDOUT)


def owned(w, pid: int) -> list[str]:
    with w.svc.db.session() as s:
        return [k for k, in s.execute(select(Job.kind).where(Job.status == "in_progress", Job.lease_owner.like(f"%:{pid}:%")))]


def all_done(w, job_ids) -> bool:
    with w.svc.db.session() as s:
        return all(st in TERMINAL for st, in s.execute(select(Job.status).where(Job.id.in_(job_ids))))


def no_retry_limit(w, job_ids) -> None:
    """The kills must not use up the attempts (a job dying on its last attempt is tested apart)."""
    with w.svc.db.session() as s:
        s.execute(update(Job).where(Job.id.in_(job_ids)).values(max_attempts=1000))


def kill_loop(w, tmp_path, job_ids: list[str], rng: random.Random, hits: collections.Counter, tag: str) -> None:
    """Start a worker, let it run a seeded random while once it holds a job, SIGKILL it; KILLS times
    (or until the jobs are done). Then an in-process worker finishes what is left."""
    no_retry_limit(w, job_ids)
    for i in range(KILLS):
        if all_done(w, job_ids):
            break
        p = start_workers(w, tmp_path / f"{tag}-{i}.log", USERLENS_WORKER_CORES=2, **SLOW)
        try:
            held = wait_for(lambda: owned(w, p.pid) or all_done(w, job_ids) or p.poll() is not None, 90, f"worker {tag}-{i} to take a job")
            if held is True or p.poll() is not None:
                break
            time.sleep(rng.uniform(0.0, 1.2))
            kinds = owned(w, p.pid)
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
            hits.update(kinds)
        finally:
            stop(p)
    w.run_jobs(timeout=120)  # reclaims the dead workers' jobs once their leases (1.5 s) expire
    assert all_done(w, job_ids)


def job_of(w, model, rid):
    with w.svc.db.session() as s:
        return s.get(model, rid).job


def check_tsv(w, folder: str, users: int, line_count: int) -> None:
    """The result file of a Run / Custom Attributes profile: one, whole, every user once."""
    objs = w.store.list(w.bucket, folder)
    assert len(objs) == 1, objs
    lines = w.store.read_bytes(w.bucket, objs[0].key).decode().splitlines()
    assert lines[0] == "user_id\tscore" and line_count == users == len(lines) - 1
    assert len({ln.split("\t")[0] for ln in lines[1:]}) == users


def one_round(w, tmp_path, rng: random.Random, hits: collections.Counter, r: int) -> None:
    from userlens.profiles.export import ExportJob
    from userlens.profiles.models import Batch, EventGroup, ProfileFragment, StoreLoad
    from userlens.profiles.segments import SegmentJob
    from userlens.profiles.system_jobs import SystemJob
    from userlens.understanding.models import CustomAttributes, Feature, ShoppingIntent, Task, TaskRun

    c, a = w.client, w.extra["aep"]
    text, truth = sample.generate(N_USERS, seed=11)
    w.put(f"seq{r}/users.csv", text)
    w.put(f"answers{r}/a.csv", "".join(f"{u}\t{int('beauty' in i)}\n" for u, i in truth.items()))

    # Stage 1: a Feature, and batches of a record and an event dataset (and one to delete later).
    fid = c.post("/api/v1/features", {"name": f"f{r}", "source_bucket": w.bucket, "source_file_path": f"seq{r}/users.csv"})["feature_id"]
    people, web, doomed = a.dataset(f"people{r}", PROFILE), a.dataset(f"web{r}", EVENT), a.dataset(f"doomed{r}", PROFILE)
    b_rec, b_ev, b_doomed = a.batch(people, records(300, f"p{r}-")), a.batch(web, events(400, f"p{r}-")), a.batch(doomed, records(50, f"d{r}-"))
    with w.svc.db.session() as s:
        stage1 = [s.get(Feature, fid).job_id] + [s.get(Batch, b).job_id for b in (b_rec, b_ev, b_doomed)]
    kill_loop(w, tmp_path, stage1, rng, hits, f"r{r}s1")

    # Stage 2: a Task, a Custom Attributes profile, a segment job, an export and a delete request.
    tid = c.post("/api/v1/tasks", {"name": f"t{r}", "train_feature_id": fid, "train_bucket": w.bucket, "train_file_path": f"answers{r}/a.csv"})["task_id"]
    caid = c.post("/api/v1/profile/custom-attributes", {"name": f"ca{r}", "feature_id": fid, "keyword_set": "beauty\nlipstick", "result_bucket": w.bucket, "result_file_path": f"ca{r}/"})["profile_id"]
    seg = a.call("POST", "/data/core/ups/segment/definitions", {"name": f"named{r}", "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/text", "value": 'person.name = "n1"'}}, expect=(200,))
    sjob = a.call("POST", "/data/core/ups/segment/jobs", [{"segmentId": seg["id"]}], expect=(200,))
    exp = a.call("POST", "/data/core/ups/export/jobs", {"destination": {"datasetId": w.extra["union"]}, "schema": {"name": "_xdm.context.profile"}}, expect=(200,))
    # and one the lake serves (a projection without segmentMembership): its first attempt builds the lake plan
    exp_lake = a.call("POST", "/data/core/ups/export/jobs", {"fields": "identityMap,person", "destination": {"datasetId": w.extra["union"]}, "schema": {"name": "_xdm.context.profile"}}, expect=(200,))
    rid = a.call("POST", "/data/core/ups/system/jobs", {"dataSetId": doomed}, expect=(200,))["id"]
    with w.svc.db.session() as s:
        stage2 = [s.get(Task, tid).job_id, s.get(CustomAttributes, caid).job_id, s.get(SegmentJob, sjob["id"]).job_id, s.get(ExportJob, exp["id"]).job_id, s.get(ExportJob, exp_lake["id"]).job_id, rid]
    kill_loop(w, tmp_path, stage2, rng, hits, f"r{r}s2")

    # Stage 3: a Run and a Shopping Intent profile of the Task.
    assert job_of(w, Task, tid).status == "completed", job_of(w, Task, tid).fail_detail
    run_id = c.post("/api/v1/task-runs", {"name": f"r{r}", "task_id": tid, "feature_id": fid, "result_bucket": w.bucket, "result_file_path": f"run{r}/"})["run_id"]
    si = c.post("/api/v1/profile/shopping-intents", {"name": f"si{r}", "task_id": tid})["profile_id"]
    with w.svc.db.session() as s:
        stage3 = [s.get(TaskRun, run_id).job_id, s.get(ShoppingIntent, si).job_id]
    kill_loop(w, tmp_path, stage3, rng, hits, f"r{r}s3")

    # Every job completed, once, with whole outputs.
    for model, rid_ in ((Feature, fid), (Task, tid), (CustomAttributes, caid), (TaskRun, run_id), (ShoppingIntent, si)):
        job = job_of(w, model, rid_)
        assert job.status == "completed", (model.__name__, job.status, job.fail_message, job.fail_detail)
    assert c.get(f"/api/v1/features/{fid}")["user_count"] == N_USERS
    check_tsv(w, f"run{r}/", N_USERS, c.get(f"/api/v1/task-runs/{run_id}")["line_count"])
    check_tsv(w, f"ca{r}/", N_USERS, c.get(f"/api/v1/profile/custom-attributes/{caid}")["line_count"])
    assert c.get(f"/api/v1/profile/shopping-intents/{si}")["status"] == "completed"
    with w.svc.db.session() as s:
        for bid, n in ((b_rec, 300), (b_ev, 400), (b_doomed, 50)):
            b = s.get(Batch, bid)
            assert (b.status, b.record_count) == ("success", n), (bid, b.status, b.errors)
            loads = list(s.execute(select(StoreLoad).where(StoreLoad.batch_id == bid)).scalars())
            if bid == b_doomed:
                assert loads == []  # deleted by the request
                continue
            assert [l.visible for l in loads] == [True], "one published load per batch"
        frags = s.execute(select(func.count()).select_from(ProfileFragment).join(StoreLoad, StoreLoad.id == ProfileFragment.load_id).where(StoreLoad.batch_id == b_rec)).scalar_one()
        evs = s.execute(select(func.coalesce(func.sum(EventGroup.n), 0)).join(StoreLoad, StoreLoad.id == EventGroup.load_id).where(StoreLoad.batch_id == b_ev)).scalar_one()
        assert (frags, evs) == (300, 400), "rows published exactly once"
        assert s.get(SegmentJob, sjob["id"]).status == "SUCCEEDED"
        sj = s.get(SystemJob, rid)
        assert sj.status == "COMPLETED" and sj.records_processed == sj.records_total == 50, (sj.status, sj.error)
        exports = [s.get(ExportJob, x["id"]) for x in (exp, exp_lake)]
        outs = [s.get(Batch, e.destination["batchId"]) for e in exports]
    for e, out in zip(exports, outs):
        assert e.status == "SUCCEEDED", e.errors
        rows = 0
        for part in out.lake_files:
            with w.store.open_read(w.settings.internal_bucket, part["key"]) as f:
                rows += pq.read_metadata(f).num_rows
        assert rows == out.record_count == e.metrics["totalExportedProfileCounter"] > 0


@pytest.mark.timeout(3600 if SOAK else 300)
def test_workers_killed_at_random_points_lose_nothing(nclue, tmp_path):
    w = nclue
    w.extra["aep"] = aep = Aep(w)
    w.extra["union"] = aep.dataset("export", UNION, profile=False)
    hits: collections.Counter = collections.Counter()
    for r in range(ROUNDS):
        one_round(w, tmp_path, random.Random(SEED + r), hits, r)
    with w.svc.db.session() as s:
        stuck = s.execute(select(Job.id, Job.kind, Job.status).where(Job.status.not_in(TERMINAL))).all()
    assert not stuck
    report = run_fsck(w.svc)
    assert report.clean, report.render()
    print(f"\nfaults: {sum(hits.values())} job attempts killed over {ROUNDS} round(s), by kind: {dict(sorted(hits.items()))}")
    assert sum(hits.values()) >= 3 * ROUNDS  # every stage killed at least one running job


def test_a_worker_dying_on_the_last_attempt_fails_the_job_with_a_reason(nclue, tmp_path):
    """The engine fails the job when the lease of its last attempt runs out: the batch reads failed
    with the reason (the kind's on_fail runs), and the dead attempt's lake files and store rows go."""
    from userlens.profiles.models import Batch, StoreLoad

    w = nclue
    a = Aep(w)
    people = a.dataset("people", PROFILE)
    bid = a.batch(people, records(200, "z"))
    with w.svc.db.session() as s:
        job_id = s.get(Batch, bid).job_id
        s.execute(update(Job).where(Job.id == job_id).values(max_attempts=1))
    # Each check sleeps 1.5 s: after the lake part appears, the attempt waits in its progress call.
    p = start_worker(w.settings, tmp_path / "w.log", **{**SLOW, "USERLENS_FAULT_SLOW_CHECK_MS": 1500})
    try:
        wait_for(lambda: owned(w, p.pid), 90, "the worker to take the batch")
        wait_for(lambda: [o for o in w.store.list(w.settings.internal_bucket, "aep") if "/lake/" in o.key], 30, "the attempt to write its lake part")
        assert owned(w, p.pid)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        stop(p)
    w.run_jobs(timeout=60)
    batch = a.get_batch(bid)
    job = w.svc.queue.get(job_id)
    assert (job.status, job.fail_message) == ("failed", "COMMON_ERROR") and "worker lost" in job.fail_detail
    assert batch["status"] == "failed" and "worker lost" in batch["errors"][0]["description"], batch
    with w.svc.db.session() as s:
        assert not s.execute(select(StoreLoad).where(StoreLoad.batch_id == bid)).all()
    report = run_fsck(w.svc)
    assert report.clean, report.render()


# -- outages --------------------------------------------------------------------------------------
class TcpProxy:
    """A loopback TCP forwarder in front of the S3 server: `down()` closes every connection and
    refuses new ones (to the client the server has gone), `up()` listens again on the same port.
    The session's seaweedfs server itself keeps running for the other tests."""

    def __init__(self, target: tuple[str, int]):
        import socket

        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.listener = None
        self.conns: list = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        import socket
        import threading

        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

    def down(self) -> None:
        import socket

        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the other thread
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        for sock in self.conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass
        self.conns = []


@pytest.fixture
def through_proxy(backend, tmp_path):
    """An app whose object store is reached through a TcpProxy (S3 backends only), with a worker
    thread running, retries that back off 0.5 s, 1 s, ... and slow jobs."""
    import uuid
    from urllib.parse import urlsplit

    from infra.nclue_env import running_nclue
    from userlens.config import Settings

    if backend.s3 is None:
        pytest.skip("an object-store outage needs the S3 backend")
    target = urlsplit(backend.s3.endpoint_url)
    proxy = TcpProxy((target.hostname, target.port))
    proxy.up()
    kw = {**backend.settings_kwargs(), "s3_endpoint_url": proxy.url}
    settings = Settings(**kw, workers=0, internal_bucket=f"internal-{uuid.uuid4().hex[:10]}", lease_seconds=3, retry_backoff_seconds=0.5, max_attempts=6,
                        master_key="test-master-key", task_candidates="logreg:0.001", fault_slow_check_ms=300, feature_chunk_rows=100)
    try:
        with running_nclue(settings, worker_threads=2) as env:
            env.extra["proxy"] = proxy
            try:
                yield env
            finally:
                proxy.up() if proxy.listener is None else None  # so the worker can stop cleanly
    finally:
        proxy.down()


def wait_job(w, model, rid, pred, timeout=90):
    return wait_for(lambda: (lambda j: j if pred(j) else None)(job_of(w, model, rid)), timeout, f"{model.__name__} {rid}")


def test_object_store_outage_mid_job_retries_and_recovers(through_proxy):
    from userlens.understanding.models import Feature

    w, proxy = through_proxy, through_proxy.extra["proxy"]
    c = w.client
    text, _ = sample.generate(N_USERS, seed=3)
    w.put("seq/users.csv", text)
    fid = c.post("/api/v1/features", {"name": "f", "source_bucket": w.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    wait_job(w, Feature, fid, lambda j: (j.progress or 0) > 0)
    proxy.down()
    time.sleep(3.0)  # longer than the S3 client's own retries
    # The service stays up: metadata reads answer while the store is gone.
    assert c.get(f"/api/v1/features/{fid}")["status"] in ("pending", "in_progress")
    assert c.get("/api/v1/features")["total"] == 1
    proxy.up()
    job = wait_job(w, Feature, fid, lambda j: j.terminal)
    assert job.status == "completed" and job.attempts >= 2, (job.status, job.fail_message, job.fail_detail)
    assert c.get(f"/api/v1/features/{fid}")["user_count"] == N_USERS

    # A longer outage: the job runs out of attempts and fails with the documented OBS_* code.
    g = c.post("/api/v1/features", {"name": "g", "source_bucket": w.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    with w.svc.db.session() as s:
        s.execute(update(Job).where(Job.id == s.get(Feature, g).job_id).values(max_attempts=2))
    wait_job(w, Feature, g, lambda j: (j.progress or 0) > 0)  # a part is written: its cleanup needs the store
    proxy.down()
    job = wait_job(w, Feature, g, lambda j: j.terminal)
    assert job.status == "failed" and job.fail_message in ("OBS_DOWNLOAD_FAILED", "OBS_UPLOAD_FAILED"), (job.status, job.fail_message, job.fail_detail)
    proxy.up()
    # Recovery without manual steps: the next job completes, and store and metadata agree.
    h = c.post("/api/v1/features", {"name": "h", "source_bucket": w.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    assert wait_job(w, Feature, h, lambda j: j.terminal).status == "completed"
    # g's last attempt could not remove its parts while the store was away: the worker tries that
    # cleanup again every few seconds, so store and metadata agree soon after the store is back.
    deadline = time.monotonic() + 60
    while not (report := run_fsck(w.svc)).clean and time.monotonic() < deadline:
        time.sleep(1.0)
    assert report.clean, report.render()


def test_database_connections_killed_mid_job(through_proxy):
    """PostgreSQL restarting, simulated without touching the shared server: every connection to
    this test's own database is terminated while an ingest job (which writes SQL as it goes) runs."""
    import psycopg

    from userlens.profiles.models import Batch

    w = through_proxy
    if not w.settings.database_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL")
    a = Aep(w)
    ds = a.dataset("people", PROFILE)
    bid = a.batch(ds, records(3000, "k"))
    with w.svc.db.session() as s:
        job_id = s.get(Batch, bid).job_id
    wait_for(lambda: w.svc.queue.get(job_id).status == "in_progress", 60, "the ingest job to start")
    url = w.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    killed = 0
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(3):
            time.sleep(0.3)
            killed += len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchall())
    assert killed > 0
    wait_for(lambda: w.svc.queue.get(job_id).terminal, 90, "the ingest job to end")
    b = a.get_batch(bid)
    assert (b["status"], b["recordCount"]) == ("success", 3000), b
    assert w.client.get("/api/v1/features")["total"] == 0  # the service answers
    report = run_fsck(w.svc)
    assert report.clean, report.render()


def test_job_threads_run_at_a_lower_priority_than_requests(nclue):
    """Worker threads (and the threads their jobs start) run at nice `worker_nice` (10), so that on a
    busy machine API requests and the database get the cores first; the serving threads keep theirs."""
    import threading

    from userlens.jobs.engine import Outcome

    svc = nclue.svc
    seen = {}

    def handler(ctx):
        seen["job"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        child = threading.Thread(target=lambda: seen.setdefault("child", os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        child.start()
        child.join()
        return Outcome()

    svc.registry.register("test.priority", handler)
    with svc.db.session() as s:
        job_id = svc.queue.submit(s, "test.priority", "test", {}).id
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    w = svc.make_worker(1)
    w.start()
    try:
        wait_for(lambda: svc.queue.get(job_id).terminal, 30, "the job")
    finally:
        w.stop(10)
    assert svc.queue.get(job_id).status == "completed"
    assert seen == {"job": max(mine, svc.settings.worker_nice), "child": max(mine, svc.settings.worker_nice)} and svc.settings.worker_nice == 10
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    assert nclue.client.get("/api/v1/features")["total"] == 0
