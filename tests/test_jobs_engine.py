"""The job engine on SQLite and PostgreSQL: states, FIFO concurrency keys, leases, retries, cancel, races."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from userlens.jobs.engine import JobFailure, JobQueue, JobRegistry, Outcome, TransientJobError
from userlens.jobs.models import Job
from userlens.jobs.worker import Worker


def make_queue(database, **kw) -> JobQueue:
    kw.setdefault("lease_seconds", 5.0)
    kw.setdefault("retry_backoff_seconds", 0.01)
    return JobQueue(database, **kw)


def submit(q: JobQueue, kind="t.echo", payload=None, key=None) -> str:
    with q.db.session() as s:
        job = q.submit(s, kind, "test:acct", payload or {}, concurrency_key=key)
        return job.id


def status(q: JobQueue, job_id: str) -> Job:
    return q.get(job_id)


def test_lifecycle_registered_pending_in_progress_completed(database):
    q = make_queue(database)
    jid = submit(q)
    assert status(q, jid).status == "registered"
    assert q.promote() == 1
    assert status(q, jid).status == "pending"
    job = q.claim("w1", ["t.echo"])
    assert job.id == jid and job.status == "in_progress" and job.attempts == 1 and job.lease_owner == "w1"
    published = []
    assert q.complete(jid, "w1", Outcome({"n": 1}, publish=lambda s: published.append(True)))
    done = status(q, jid)
    assert (done.status, done.result, done.progress, done.lease_owner) == ("completed", {"n": 1}, 1.0, None)
    assert done.finished_at is not None and published == [True]


def test_claim_takes_only_registered_kinds_and_oldest_first(database):
    q = make_queue(database)
    a = submit(q, "t.a")
    time.sleep(0.01)
    b = submit(q, "t.a")
    submit(q, "t.other")
    assert q.claim("w", ["t.a"]).id == a
    assert q.claim("w", ["t.a"]).id == b
    assert q.claim("w", ["t.a"]) is None


def test_concurrency_key_runs_one_at_a_time_fifo(database):
    q = make_queue(database)
    ids = []
    for _ in range(3):
        ids.append(submit(q, key="task:acct1"))
        time.sleep(0.01)
    free = submit(q)  # no key: never blocked by the keyed jobs
    first = q.claim("w1", ["t.echo"])
    assert first.id == ids[0]
    # The key is busy: the next claim skips the other keyed jobs and takes the free one.
    assert q.claim("w2", ["t.echo"]).id == free
    assert q.claim("w2", ["t.echo"]) is None
    assert status(q, ids[1]).status == "pending"
    q.complete(ids[0], "w1", Outcome())
    assert q.claim("w2", ["t.echo"]).id == ids[1]


def test_expired_lease_is_reclaimed_and_the_old_owner_cannot_publish(database):
    q = make_queue(database, lease_seconds=0.3, max_attempts=3)
    jid = submit(q)
    assert q.claim("dead", ["t.echo"]).id == jid
    assert q.claim("w2", ["t.echo"]) is None  # lease still valid
    time.sleep(0.4)
    again = q.claim("w2", ["t.echo"])
    assert again.id == jid and again.attempts == 2 and again.lease_owner == "w2"
    assert not q.complete(jid, "dead", Outcome())  # fenced out
    assert q.heartbeat(jid, "dead") == (False, False)
    assert q.complete(jid, "w2", Outcome())
    assert status(q, jid).status == "completed"


def test_job_whose_worker_keeps_dying_fails_with_a_reason(database):
    q = make_queue(database, lease_seconds=0.1, max_attempts=2)
    jid = submit(q)
    for w in ("dead1", "dead2"):
        assert q.claim(w, ["t.echo"]).id == jid
        time.sleep(0.15)
    assert q.claim("w3", ["t.echo"]) is None
    job = status(q, jid)
    assert job.status == "failed" and job.fail_message == "COMMON_ERROR"
    assert "lease expired" in job.fail_detail and job.attempts == 2


def run_with(database, handler, **kw) -> tuple[JobQueue, str]:
    q = make_queue(database, **kw)
    reg = JobRegistry()
    reg.register("t.echo", handler)
    jid = submit(q)
    w = Worker(q, reg, worker_id="w")
    deadline = time.monotonic() + 10
    while status(q, jid).status not in ("completed", "failed", "cancelled") and time.monotonic() < deadline:
        w.run_one() or time.sleep(0.02)
    return q, jid


def test_handler_failure_code_is_recorded(database):
    def boom(ctx):
        raise JobFailure("UNEXPECTED_TXT_FORMAT", "line 3: no tab")

    q, jid = run_with(database, boom)
    job = status(q, jid)
    assert (job.status, job.fail_message, job.fail_detail, job.attempts) == ("failed", "UNEXPECTED_TXT_FORMAT", "line 3: no tab", 1)


def test_transient_errors_are_retried_then_fail_with_their_code(database):
    calls = []

    def flaky(ctx):
        calls.append(ctx.attempt)
        raise TransientJobError("OBS_DOWNLOAD_FAILED", "connection refused")

    q, jid = run_with(database, flaky, max_attempts=3)
    job = status(q, jid)
    assert calls == [1, 2, 3]
    assert (job.status, job.fail_message) == ("failed", "OBS_DOWNLOAD_FAILED")


def test_transient_error_then_success(database):
    def once_flaky(ctx):
        if ctx.attempt == 1:
            raise TransientJobError("OBS_DOWNLOAD_FAILED", "timeout")
        return Outcome({"attempt": ctx.attempt})

    q, jid = run_with(database, once_flaky)
    assert status(q, jid).status == "completed" and status(q, jid).result == {"attempt": 2}


def test_unexpected_exception_is_common_error(database):
    def crash(ctx):
        raise ZeroDivisionError("oops")

    q, jid = run_with(database, crash)
    job = status(q, jid)
    assert job.fail_message == "COMMON_ERROR" and "ZeroDivisionError" in job.fail_detail


def test_cancel_registered_job_never_runs(database):
    q = make_queue(database)
    jid = submit(q)
    with database.session() as s:
        assert q.cancel_registered(s, jid)
    assert status(q, jid).status == "cancelled"
    assert q.claim("w", ["t.echo"]) is None
    with database.session() as s:
        assert not q.cancel_registered(s, jid)


def test_cancel_running_job_stops_it(database):
    q = make_queue(database, lease_seconds=0.3)
    reg = JobRegistry()
    started = threading.Event()
    aborted = []

    def slow(ctx):
        started.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ctx.progress(0.5, "working")
            time.sleep(0.02)
        return Outcome()

    reg.register("t.echo", slow, on_abort=lambda ctx: aborted.append(ctx.job_id))
    jid = submit(q)
    w = Worker(q, reg, worker_id="w")
    t = threading.Thread(target=w.run_one)
    t.start()
    assert started.wait(5)
    assert q.request_cancel(jid) == "in_progress"
    t.join(10)
    job = status(q, jid)
    assert job.status == "cancelled" and aborted == [jid]


def test_progress_is_recorded_by_heartbeat(database):
    seen = []

    def reporting(ctx):
        ctx.progress(0.25, "a quarter")
        time.sleep(0.3)  # several heartbeats (every lease/3 = 0.05 s)
        job = ctx.queue.get(ctx.job_id)
        seen.append((job.progress, job.progress_message))
        return Outcome()

    q, jid = run_with(database, reporting, lease_seconds=0.15)
    assert status(q, jid).status == "completed"
    assert seen == [(0.25, "a quarter")]


def test_two_workers_racing_never_run_a_job_twice(database):
    q = make_queue(database)
    runs = Counter()
    lock = threading.Lock()

    def count(ctx):
        with lock:
            runs[ctx.job_id] += 1
        time.sleep(0.005)
        return Outcome()

    reg = JobRegistry()
    reg.register("t.echo", count)
    ids = [submit(q) for _ in range(40)]
    workers = [Worker(q, reg, threads=2, poll_interval=0.01, worker_id=f"racer{i}") for i in range(2)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            with database.session() as s:
                left = s.execute(select(Job.id).where(Job.status != "completed")).all()
            if not left:
                break
            time.sleep(0.05)
    finally:
        for w in workers:
            w.stop()
    assert set(runs) == set(ids)
    assert all(n == 1 for n in runs.values()), runs


def test_workers_share_the_cores_for_blas():
    """Two jobs each running BLAS on every core would oversubscribe them (see limit_blas_threads)."""
    import numpy  # noqa: F401 - loads the BLAS library that the limit applies to
    from threadpoolctl import threadpool_info, threadpool_limits

    from userlens.jobs.worker import limit_blas_threads

    before = threadpool_info()
    try:
        assert limit_blas_threads(2, cores=2) == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
        assert limit_blas_threads(1, cores=2) == 2
    finally:
        threadpool_limits({p["prefix"]: p["num_threads"] for p in before})


def test_running_jobs_split_the_cores(database):
    """A lone job may keep every core busy, two running jobs one each; a job sees the share through
    its context."""
    from userlens.jobs.worker import CORES, CoreShare

    share = CoreShare(cores=2)
    share.job_started()
    assert share.share() == 2
    share.job_started()
    assert share.share() == 1
    share.job_ended()
    assert share.share() == 2
    share.job_ended()
    assert share.running == 0 and CoreShare(cores=5).share() == 5

    seen = []
    run_with(database, lambda ctx: seen.append((ctx.cores(), max(1, CORES.cores // CORES.running), CORES.running)) or Outcome())
    (given, expected, running), = seen
    assert running >= 1 and given == expected


@pytest.mark.parametrize("error", [JobFailure("BAD", "no"), TransientJobError("FLAKY", "later"), RuntimeError("bug")])
def test_an_attempts_output_is_discarded_before_the_job_says_it_ended(database, error):
    """A client polling the job never sees "failed" (or the retry's next attempt) while the failed
    attempt's output still exists: on_abort runs while the job is still in progress."""
    q = make_queue(database)
    reg = JobRegistry()
    seen = []

    def failing(ctx):
        raise error

    reg.register("t.echo", failing, on_abort=lambda ctx: seen.append(q.get(ctx.job_id).status))
    jid = submit(q)
    q.promote()
    Worker(q, reg, worker_id="w").run_one()
    assert seen == ["in_progress"]
    assert status(q, jid).status in ("failed", "pending", "registered")


def test_a_cleanup_that_failed_is_tried_again_by_the_worker(database, monkeypatch):
    """The object store was away when the attempt ended: its on_abort raised. The worker tries it
    again later (and gives up after CLEANUP_GIVE_UP_SECONDS, leaving it to fsck)."""
    import userlens.jobs.worker as worker_module

    monkeypatch.setattr(worker_module, "CLEANUP_RETRY_SECONDS", 0.0)
    q = make_queue(database)
    reg = JobRegistry()
    tries = []

    def failing(ctx):
        raise JobFailure("BAD", "no")

    def flaky_abort(ctx):
        tries.append(ctx.attempt_tag)
        if len(tries) < 3:
            raise OSError("the store is away")

    reg.register("t.echo", failing, on_abort=flaky_abort)
    submit(q)
    q.promote()
    w = Worker(q, reg, worker_id="w")
    w.run_one()
    assert len(tries) == 1 and w.retry_cleanups() == 1 and len(tries) == 2
    assert w.retry_cleanups() == 0 and len(tries) == 3 and len(set(tries)) == 1  # the same attempt's output
    assert w.retry_cleanups() == 0 and len(tries) == 3

    monkeypatch.setattr(worker_module, "CLEANUP_GIVE_UP_SECONDS", 0.0)
    reg.register("t.echo", failing, on_abort=lambda ctx: (_ for _ in ()).throw(OSError("still away")))
    submit(q)
    q.promote()
    w.run_one()
    assert w.retry_cleanups() == 0  # given up: fsck reports what is left
