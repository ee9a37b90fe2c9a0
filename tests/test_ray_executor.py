"""The chunk executors (jobs/executor.py) on their own: local threads and Ray tasks give the same
results in input order, a chunk's JobFailure fails with its code and detail (the first failing chunk
in input order), and a cancel stops the outstanding Ray tasks before the handler returns."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from userlens.jobs.engine import JobCancelled, JobFailure, TransientJobError
from userlens.jobs.executor import LocalExecutor, RayExecutor, StoreSpec
from userlens.storage.objectstore import LocalObjectStore


class FakeCtx:
    """The part of JobContext an executor uses: check() and cores()."""

    def __init__(self, cancel_after: float | None = None):
        self.started = time.monotonic()
        self.cancel_after = cancel_after

    def cores(self) -> int:
        return 2

    def check(self) -> None:
        if self.cancel_after is not None and time.monotonic() - self.started > self.cancel_after:
            raise JobCancelled("job")


def write_square(store, shared, item):
    """A chunk: writes its output object and returns small metadata."""
    bucket, i = item
    if i == shared.get("bad"):
        raise JobFailure("UNEXPECTED_TXT_FORMAT", f"chunk {i} is bad")
    if i == shared.get("flaky"):
        raise TransientJobError("OBS_DOWNLOAD_FAILED", f"chunk {i} could not read")
    time.sleep(shared.get("sleep", 0))
    store.write_bytes(bucket, f"out/{i:03d}", str(i * i).encode())
    return {"i": i, "value": i * i}


@pytest.fixture(params=["local", "ray"])
def executor(request, tmp_path):
    root = tmp_path / "buckets"
    store = LocalObjectStore(Path(root))
    store.create_bucket("bkt-1")
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        import ray.cloudpickle

        # Ray workers cannot import test modules: ship this module's chunk functions by value.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        return RayExecutor(StoreSpec("local", root=str(root))), store
    return LocalExecutor(store), store


def test_results_in_input_order_and_outputs_written(executor):
    ex, store = executor
    seen: list[int] = []
    out = ex.map(FakeCtx(), write_square, [("bkt-1", i) for i in range(7)], shared={}, on_result=lambda i, r: seen.append(i))
    assert [r["value"] for r in out] == [i * i for i in range(7)]
    assert seen == list(range(7))
    assert [store.read_bytes("bkt-1", f"out/{i:03d}") for i in range(7)] == [str(i * i).encode() for i in range(7)]


def test_first_failing_chunk_fails_with_its_code(executor):
    ex, _ = executor
    with pytest.raises(JobFailure) as err:
        ex.map(FakeCtx(), write_square, [("bkt-1", i) for i in range(6)], shared={"bad": 3})
    assert (type(err.value), err.value.code, err.value.detail) == (JobFailure, "UNEXPECTED_TXT_FORMAT", "chunk 3 is bad")
    with pytest.raises(TransientJobError) as err:
        ex.map(FakeCtx(), write_square, [("bkt-1", i) for i in range(6)], shared={"flaky": 1, "bad": 4})
    assert (err.value.code, err.value.detail) == ("OBS_DOWNLOAD_FAILED", "chunk 1 could not read")


def test_cancel_stops_outstanding_chunks(executor):
    ex, store = executor
    t0 = time.monotonic()
    with pytest.raises(JobCancelled):
        ex.map(FakeCtx(cancel_after=0.3), write_square, [("bkt-1", i) for i in range(40)], shared={"sleep": 0.5})
    # Ray cancels queued and running tasks (and waits for them); threads finish the running ones.
    assert time.monotonic() - t0 < 15
    written = len(store.list("bkt-1", "out"))
    assert written < 40
    time.sleep(1.0)
    assert len(store.list("bkt-1", "out")) == written  # nothing still running writes after map returned


def track_concurrency(store, shared, item):
    """A chunk that records how many chunks run at once."""
    with shared["lock"]:
        shared["now"] += 1
        shared["peak"] = max(shared["peak"], shared["now"])
    time.sleep(0.05)
    with shared["lock"]:
        shared["now"] -= 1
    return item


@pytest.mark.parametrize("threads, peak", [(1, 1), (None, 2)])
def test_local_executor_runs_its_fixed_threads_else_the_jobs_cores(tmp_path, threads, peak):
    """LocalExecutor(threads=1) is bench/scale.py's 1-worker reference: one chunk at a time, whatever
    the job's cores; without it, ctx.cores() chunks run at once."""
    import threading

    store = LocalObjectStore(tmp_path / "buckets")
    shared = {"lock": threading.Lock(), "now": 0, "peak": 0}
    assert LocalExecutor(store, threads=threads).map(FakeCtx(), track_concurrency, list(range(8)), shared=shared) == list(range(8))
    assert shared["peak"] == peak
