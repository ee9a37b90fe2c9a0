"""Workers: threads that claim jobs, run their handlers under a heartbeat, and record the ending.

`userlens serve` starts them in-process; `userlens worker` runs them as a separate process. Any number
of workers, in any number of processes, may share one database.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

from sqlalchemy.exc import InterfaceError, OperationalError

from userlens.jobs.engine import (
    COMMON_ERROR,
    JobCancelled,
    JobContext,
    JobFailure,
    JobQueue,
    JobRegistry,
    LeaseLost,
    TransientJobError,
)
from userlens.jobs.models import Job, JobStatus

log = logging.getLogger("userlens.worker")

CLEANUP_RETRY_SECONDS = 5.0  # between tries of a cleanup that failed
CLEANUP_GIVE_UP_SECONDS = 3600.0


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Heartbeat(threading.Thread):
    """Keeps the lease alive and relays progress and cancel requests while a handler runs."""

    def __init__(self, queue: JobQueue, ctx: JobContext):
        super().__init__(daemon=True, name=f"heartbeat-{ctx.job_id[:8]}")
        self.queue, self.ctx = queue, ctx
        self.stop_event = threading.Event()
        self.interval = max(0.05, queue.lease_seconds / 3)

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        try:
            fraction, message = self.ctx._progress
            owner, cancel = self.queue.heartbeat(self.ctx.job_id, self.ctx.worker_id, fraction, message)
        except Exception as exc:  # database briefly unreachable: keep trying until the lease runs out
            log.warning("heartbeat of job %s failed: %s", self.ctx.job_id, exc)
            return
        if not owner:
            self.ctx._lost.set()
        if cancel:
            self.ctx._cancel.set()


def limit_blas_threads(job_threads: int, cores: int | None = None) -> int:
    """Gives each job thread an equal share of the cores for BLAS (NumPy, scikit-learn) and returns it.

    OpenBLAS threads spin while they wait: with more BLAS threads than cores (two jobs each using
    every core, or another process busy) they slow each other by several times. Measured on this
    2-core machine under load: an MLP fit of a Task took 200 s with 2 BLAS threads, 84 s with 1, and
    one epoch of it 4.3 s with 2 threads against 1.5 s with 1 while other processes were busy. So
    the BLAS share stays fixed; a job that can use more cores does so with its own threads (CoreShare).
    The limit is process-wide, so a process's workers share it."""
    from threadpoolctl import threadpool_limits

    share = max(1, (cores or os.cpu_count() or 1) // max(1, job_threads))
    threadpool_limits(share, user_api="blas")
    return share


class CoreShare:
    """How many cores a job of this process may keep busy now: the cores split evenly among the
    running jobs (a lone job gets all of them, two jobs one each on two cores).

    Jobs whose work splits into independent blocks (scoring a Feature) run that many blocks at
    once on their own threads, each block single-threaded in BLAS: unlike OpenBLAS's spinning
    threads, ordinary threads lose nothing when a job that starts later shares the cores. `cores`
    (setting `worker_cores`) is what this process may use: set it when several worker processes
    share one machine. One instance per process, since every worker of the process shares the cores."""

    def __init__(self, cores: int | None = None):
        self.cores = max(1, cores or os.cpu_count() or 1)
        self.running = 0
        self._lock = threading.Lock()

    def job_started(self) -> None:
        with self._lock:
            self.running += 1

    def job_ended(self) -> None:
        with self._lock:
            self.running = max(0, self.running - 1)

    def share(self) -> int:
        return max(1, self.cores // max(1, self.running))


CORES = CoreShare()


def lower_priority(nice: int) -> None:
    """Runs the calling thread (and the threads it starts: Linux threads inherit their creator's nice
    value) at `nice`, so that API requests and the database win the cores over job work (setting
    worker_nice). Never raises the priority; a no-op where per-thread priorities do not exist."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        log.warning("could not lower the priority of worker thread to nice %d", nice)


class Worker:
    def __init__(self, queue: JobQueue, registry: JobRegistry, services: Any = None, *, threads: int = 1, poll_interval: float = 0.2, worker_id: str | None = None, nice: int = 0):
        self.queue, self.registry, self.services = queue, registry, services
        self.threads = threads
        self.nice = nice
        self.poll_interval = poll_interval
        self.worker_id = worker_id or new_worker_id()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Cleanups (on_abort) that failed, e.g. while the object store was away: the loop tries them
        # again every CLEANUP_RETRY_SECONDS for CLEANUP_GIVE_UP_SECONDS; what is still left after that
        # is reported (and removed with --repair) by `userlens fsck`.
        self._cleanups: list[list] = []  # [give_up_at, next_try_at, fn, what]
        self._cleanups_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        limit_blas_threads(self.threads, CORES.cores)
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, args=(f"{self.worker_id}/{i}",), daemon=True, name=f"worker-{i}")
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    def _loop(self, slot_id: str) -> None:
        lower_priority(self.nice)
        while not self._stop.is_set():
            try:
                self.retry_cleanups()
                ran = self.run_one(slot_id)
            except Exception:  # never let one bad job or a database blip end the worker
                log.exception("worker loop error")
                ran = False
            if not ran:
                self._stop.wait(self.poll_interval)

    # -- cleanups ------------------------------------------------------------------------------
    def _clean(self, fn: Callable[[], None], what: str) -> None:
        try:
            fn()
        except Exception:
            log.warning("%s failed; it will be tried again", what, exc_info=True)
            now = time.monotonic()
            with self._cleanups_lock:
                self._cleanups.append([now + CLEANUP_GIVE_UP_SECONDS, now + CLEANUP_RETRY_SECONDS, fn, what])

    def retry_cleanups(self) -> int:
        """Tries the failed cleanups that are due once more; returns how many are still pending."""
        now = time.monotonic()
        with self._cleanups_lock:
            due = [c for c in self._cleanups if c[1] <= now]
        for c in due:
            try:
                c[2]()
            except Exception as exc:
                c[1] = time.monotonic() + CLEANUP_RETRY_SECONDS
                if c[0] > now:
                    continue
                log.warning("%s: giving up (%s); `userlens fsck --repair` removes what is left", c[3], exc)
            with self._cleanups_lock:
                self._cleanups.remove(c)
        with self._cleanups_lock:
            return len(self._cleanups)

    # -- one job -------------------------------------------------------------------------------
    def run_one(self, slot_id: str | None = None) -> bool:
        """Claims and runs at most one job. Returns whether a job was run."""
        slot_id = slot_id or self.worker_id
        dead: list = []
        kinds = self.registry.kinds
        job = self.queue.claim(slot_id, list(kinds), on_fail=lambda k: kinds[k].on_fail if k in kinds else None, dead=dead)
        for lost, owner, attempt in dead:
            self._discard_dead_attempt(lost, owner, attempt)
        if job is None:
            return False
        self._run(job, slot_id)
        return True

    def _discard_dead_attempt(self, job: Job, owner: str | None, attempt: int) -> None:
        """A worker died (or stalled past its lease) during `attempt`: what it wrote under its
        attempt tag is removed now, as its own on_abort would have done (fsck finds none of it)."""
        kind = self.registry.kinds.get(job.kind)
        if kind is None or kind.on_abort is None or not owner:
            return
        ctx = JobContext(job.id, job.kind, job.scope, dict(job.payload or {}), attempt, job.checkpoint, self.queue, owner, self.services)
        self._clean(lambda: kind.on_abort(ctx), f"cleanup of dead attempt {attempt} of job {job.id}")

    def _run(self, job: Job, slot_id: str) -> None:
        kind = self.registry.kinds[job.kind]
        ctx = JobContext(job.id, job.kind, job.scope, dict(job.payload or {}), job.attempts, job.checkpoint, self.queue, slot_id, self.services, cores=CORES.share)
        hb = Heartbeat(self.queue, ctx)
        hb.start()
        CORES.job_started()
        started = time.monotonic()
        log.info("job %s (%s) attempt %d started", job.id, job.kind, job.attempts)
        ending = "failed"

        def discard() -> None:
            # What the attempt wrote goes before the job says it ended: a client that sees
            # "failed" (or a retry's next attempt) never finds the attempt's leftovers.
            if kind.on_abort is not None:
                self._clean(lambda: kind.on_abort(ctx), f"cleanup after attempt {job.attempts} of job {job.id}")

        try:
            try:
                outcome = kind.handler(ctx)
                ctx.check()
                hb.beat()
                ctx.check()
            except BaseException:
                discard()
                raise
            if self.queue.complete(job.id, slot_id, outcome):
                ending = "completed"
            else:
                ending = "lease lost before publishing"
                discard()
        except LeaseLost:
            ending = "lease lost"
        except JobCancelled:
            self.queue.fail(job.id, slot_id, "CANCELLED", "cancelled while running", kind.on_fail, status=JobStatus.CANCELLED)
            ending = "cancelled"
        except TransientJobError as exc:
            if job.attempts < job.max_attempts and self.queue.retry_later(job.id, slot_id, str(exc), job.attempts):
                ending = f"will retry ({exc.code})"
            else:
                self.queue.fail(job.id, slot_id, exc.code, exc.detail, kind.on_fail)
                ending = f"failed {exc.code}"
        except JobFailure as exc:
            self.queue.fail(job.id, slot_id, exc.code, exc.detail, kind.on_fail)
            ending = f"failed {exc.code}"
        except (OperationalError, InterfaceError) as exc:
            # The database went away under the job (restart, killed connection): transient, like an
            # unreachable object store. The pool's pre-ping gives the retry a fresh connection.
            log.warning("job %s: database error: %s", job.id, exc)
            if job.attempts < job.max_attempts and self.queue.retry_later(job.id, slot_id, f"database unavailable: {exc}", job.attempts):
                ending = "will retry (database unavailable)"
            else:
                self.queue.fail(job.id, slot_id, COMMON_ERROR, f"database unavailable: {exc}"[:4000], kind.on_fail)
                ending = f"failed {COMMON_ERROR}"
        except Exception as exc:
            log.exception("job %s crashed", job.id)
            self.queue.fail(job.id, slot_id, COMMON_ERROR, f"{type(exc).__name__}: {exc}", kind.on_fail)
            ending = f"failed {COMMON_ERROR}"
        finally:
            CORES.job_ended()
            hb.stop_event.set()
            hb.join(5)
        log.info("job %s (%s) attempt %d %s in %.2fs", job.id, job.kind, job.attempts, ending, time.monotonic() - started)
