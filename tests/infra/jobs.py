"""Running queued jobs synchronously in tests."""

from __future__ import annotations

import time


def drain_jobs(svc, timeout: float = 60.0) -> int:
    """Runs queued jobs in this thread until none is active (bounded in time); returns how many ran.

    Keeps polling while a job is still active, since retried jobs wait out their backoff."""
    worker = svc.make_worker(1)
    n = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.run_one():
            n += 1
            continue
        with svc.db.session() as s:
            if not svc.queue.active_count(s):
                return n
        time.sleep(0.02)
    raise TimeoutError("jobs still active")
