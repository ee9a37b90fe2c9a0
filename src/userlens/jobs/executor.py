"""Where a job's chunks run: in this process (threads) or as Ray tasks on a cluster.

A handler splits its input into chunks (small, picklable descriptions: a file and a byte range, a
vector part) and calls `executor.map(ctx, fn, items, shared=...)`. `fn` is a module-level function
`fn(store, shared, item) -> small result`: it reads its input from the object store, writes its
outputs under attempt-unique keys itself, and returns small metadata (counts, sizes). On Ray, the
store is rebuilt inside the task from `StoreSpec` (serialisable settings; cached per Ray worker
process), so chunk data never passes through the job's process.

The job engine keeps everything else: the job's state, progress (`on_result` is called in the job's
thread as each chunk finishes, in input order), cancellation (`ctx.check()` between results; on
JobCancelled or LeaseLost the outstanding Ray tasks are cancelled and waited for, so nothing writes
after the attempt's clean-up) and the one-time publication in the completing transaction.

Failures: a chunk that raises JobFailure (a bad line, a quota) fails the job with that code and
detail, the first failing chunk in input order winning, as in a sequential read; a TransientJobError
stays transient (the engine retries the job). Ray retries a task whose worker or node died
(`ray_max_retries`); once retries run out the job gets a TransientJobError (COMMON_ERROR).

Settings: USERLENS_EXECUTOR=local|ray, USERLENS_RAY_ADDRESS (or RAY_ADDRESS; empty: a local Ray
bound to 127.0.0.1 is started by the first Ray job, or by `userlens worker --ray`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from userlens.jobs.engine import COMMON_ERROR, JobCancelled, JobContext, JobFailure, LeaseLost, TransientJobError
from userlens.storage.objectstore import LocalObjectStore, ObjectStore, S3ObjectStore

log = logging.getLogger("userlens.executor")

ChunkFn = Callable[[ObjectStore, Any, Any], Any]
_END = object()
POLL_SECONDS = 0.2  # how often a waiting job checks for cancel / a lost lease
CANCEL_WAIT_SECONDS = 30.0  # how long cancelled Ray tasks get to stop before the attempt's clean-up


@dataclass(frozen=True)
class StoreSpec:
    """What a Ray task needs to open the same object store: serialisable, no live connections."""

    kind: str  # "local" | "s3"
    root: str = ""
    endpoint_url: str = ""
    access_key: str = ""
    secret_key: str = ""
    region: str = "us-east-1"

    @classmethod
    def from_settings(cls, settings) -> "StoreSpec":
        if settings.object_store == "s3":
            return cls("s3", endpoint_url=settings.s3_endpoint_url, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key.get_secret_value(), region=settings.s3_region)
        return cls("local", root=str(settings.storage_root))

    def open(self) -> ObjectStore:
        return _open_store(self)


@functools.lru_cache(maxsize=8)
def _open_store(spec: StoreSpec) -> ObjectStore:
    """One store per spec and process: a Ray worker runs many chunks with one S3 connection pool."""
    if spec.kind == "s3":
        return S3ObjectStore(spec.endpoint_url, spec.access_key, spec.secret_key, spec.region)
    from pathlib import Path

    return LocalObjectStore(Path(spec.root))


@dataclass(frozen=True)
class _ChunkError:
    """A chunk's JobFailure, returned instead of raised: exceptions with custom constructors do not
    survive pickling through Ray, and an application error must not be retried as a system one."""

    transient: bool
    code: str
    detail: str

    def reraise(self):
        raise (TransientJobError if self.transient else JobFailure)(self.code, self.detail)


def _run_chunk(fn: ChunkFn, store: ObjectStore, shared: Any, item: Any) -> Any:
    try:
        return fn(store, shared, item)
    except JobFailure as exc:
        return _ChunkError(isinstance(exc, TransientJobError), exc.code, exc.detail)


def _settle(result: Any) -> Any:
    if isinstance(result, _ChunkError):
        result.reraise()
    return result


class Executor:
    """Runs `fn(store, shared, item)` for every item; returns the results in input order."""

    name = "base"

    def map(
        self,
        ctx: JobContext,
        fn: ChunkFn,
        items: Sequence[Any],
        *,
        shared: Any = None,
        on_result: Callable[[int, Any], None] | None = None,
        local_threads: int | None = None,
    ) -> list[Any]:
        """`on_result(i, result)` runs in the caller's thread as chunk i finishes (in input order;
        it may raise JobFailure to stop the job, e.g. over a quota). `local_threads`: chunks run at
        once by the local executor (default: the job's core share); 1 for GIL-bound chunk work."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalExecutor(Executor):
    """Chunks on this process's threads, `local_threads` (default: `threads`, else ctx.cores()) at a time."""

    name = "local"

    def __init__(self, store: ObjectStore, threads: int | None = None):
        self.store = store
        self.threads = threads  # a fixed number of threads (bench/scale.py's 1-thread reference), else the job's cores

    def map(self, ctx, fn, items, *, shared=None, on_result=None, local_threads=None):
        threads = max(1, local_threads or self.threads or ctx.cores())
        results: list[Any] = []
        pending: deque[Future] = deque()
        todo = iter(items)
        with ThreadPoolExecutor(threads, thread_name_prefix="chunk") as pool:
            try:
                while True:
                    while len(pending) < threads + 1:  # one queued ahead keeps every thread busy
                        nxt = next(todo, _END)
                        if nxt is _END:
                            break
                        pending.append(pool.submit(_run_chunk, fn, self.store, shared, nxt))
                    if not pending:
                        return results
                    future = pending[0]
                    while True:
                        ctx.check()
                        try:
                            result = _settle(future.result(timeout=POLL_SECONDS))
                            break
                        except FutureTimeout:
                            continue
                    pending.popleft()
                    results.append(result)
                    if on_result is not None:
                        on_result(len(results) - 1, result)
            finally:
                for f in pending:
                    f.cancel()  # queued ones never start; running ones finish before the pool closes


class RayExecutor(Executor):
    """Chunks as Ray tasks (one CPU each) on the cluster at `address` (empty: a local Ray)."""

    name = "ray"

    def __init__(self, store_spec: StoreSpec, address: str = "", num_cpus: int | None = None, max_retries: int = 3, in_flight_per_cpu: int = 2):
        self.store_spec = store_spec
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.in_flight_per_cpu = in_flight_per_cpu
        self._lock = threading.Lock()
        self._remote = None

    def _ray(self):
        import ray

        with self._lock:
            if not ray.is_initialized():
                _init_ray(self.address, self.num_cpus)
            if self._remote is None:
                self._remote = ray.remote(num_cpus=1)(_ray_chunk)
        return ray

    def map(self, ctx, fn, items, *, shared=None, on_result=None, local_threads=None):
        ray = self._ray()
        task = self._remote.options(max_retries=self.max_retries, retry_exceptions=False)
        shared_ref = ray.put(shared)  # sent once, not with every chunk
        window = max(1, int(ray.cluster_resources().get("CPU", 1)) * self.in_flight_per_cpu)
        results: list[Any] = []
        pending: deque = deque()
        todo = iter(items)
        try:
            while True:
                while len(pending) < window:
                    nxt = next(todo, _END)
                    if nxt is _END:
                        break
                    pending.append(task.remote(fn, self.store_spec, shared_ref, nxt))
                if not pending:
                    return results
                ref = pending[0]
                while True:
                    ctx.check()
                    ready, _ = ray.wait([ref], timeout=POLL_SECONDS)
                    if ready:
                        break
                pending.popleft()
                results.append(_settle(self._get(ray, ref)))
                if on_result is not None:
                    on_result(len(results) - 1, results[-1])
        except BaseException as exc:
            if pending:
                self._cancel(ray, list(pending), exc)
            raise

    @staticmethod
    def _get(ray, ref):
        from ray.exceptions import RayError, RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as exc:  # fn raised something other than JobFailure: a bug, not retried
            cause = getattr(exc, "cause", None)
            raise JobFailure(COMMON_ERROR, f"chunk failed: {type(cause).__name__ if cause else 'error'}: {cause or exc}") from exc
        except RayError as exc:  # worker/node died past max_retries, object lost: worth a later retry
            raise TransientJobError(COMMON_ERROR, f"Ray task failed: {type(exc).__name__}: {exc}"[:2000]) from exc

    @staticmethod
    def _cancel(ray, refs: list, why: BaseException) -> None:
        """Cancels outstanding tasks and waits (bounded) until none runs: the attempt's clean-up
        follows, and a task still writing after it would leave an orphan."""
        if isinstance(why, (JobCancelled, LeaseLost)):
            log.info("cancelling %d Ray task(s): %s", len(refs), type(why).__name__)
        for ref in refs:
            try:
                ray.cancel(ref, force=False)
            except Exception:  # already finished
                pass
        ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_SECONDS)


def _ray_chunk(fn: ChunkFn, spec: StoreSpec, shared: Any, item: Any) -> Any:
    """The Ray task: opens (or reuses) the store from its spec and runs one chunk."""
    return _run_chunk(fn, spec.open(), shared, item)


def start_local_ray(num_cpus: int | None = None, object_store_mb: int = 256) -> None:
    """A single-node Ray on loopback, without dashboard (tests, `userlens worker --ray`)."""
    # Ray picks the node's address from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (loopback), read once
    # when ray is imported (and by each process it starts): `_node_ip_address="127.0.0.1"` alone is
    # turned back into the machine's address. So set it first, and in an already imported ray too.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        object_store_memory=object_store_mb * 1024 * 1024,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )


def _ray_address(settings) -> str:
    return settings.ray_address or os.environ.get("RAY_ADDRESS", "")


def _init_ray(address: str, num_cpus: int | None) -> None:
    import ray

    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        start_local_ray(num_cpus)


def connect_ray(settings) -> str:
    """Joins the cluster the settings name, or starts a local Ray (`userlens worker --ray`);
    returns a line describing it."""
    import ray

    address = _ray_address(settings)
    if not ray.is_initialized():
        _init_ray(address, settings.ray_num_cpus)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return f"joined {address} ({cpus} CPUs)" if address else f"local Ray on 127.0.0.1 ({cpus} CPUs)"


def make_executor(settings, store: ObjectStore) -> Executor:
    """The executor the settings ask for (USERLENS_EXECUTOR)."""
    if getattr(settings, "executor", "local") == "ray":
        return RayExecutor(StoreSpec.from_settings(settings), address=_ray_address(settings), num_cpus=settings.ray_num_cpus, max_retries=settings.ray_max_retries)
    return LocalExecutor(store)
