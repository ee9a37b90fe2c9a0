"""Scaling out on Ray (issue 10): a job's throughput on the local executor and on a local Ray with 1
and 2 workers (Ray CPUs), in the same run.

    .venv/bin/python bench/scale.py --users 200000 --repeat 2 [--job feature]

For every repeat, each configuration runs the job once: the local executor as a 1-CPU worker (the
1-worker reference: 1 chunk thread, with Arrow's CPU pool and BLAS at 1 thread), the local executor
on 1 thread with those pools on every core (as a worker's lone job has them), the local executor on
the job's cores (as `userlens worker` runs it) and Ray with num_cpus=1, one after the other while a
local Ray of 1 CPU is up; then Ray with num_cpus=2 on a fresh local Ray of 2 CPUs. A Ray task of 1
CPU runs with OMP_NUM_THREADS=1, which Arrow and OpenBLAS read, so its Parquet decoding and its
matrix products run on one thread; a local chunk thread's use every core unless the pools are set
to 1, hence the 1-CPU reference. Each Ray is started
(bound to 127.0.0.1), warmed up untimed (a small job imports userlens in its workers, a full-size one
grows their memory), left to settle (until its processes use < 10% of a core, at most 30 s: a fresh
Ray keeps starting agents for seconds, which a cluster that runs jobs has long done), then timed.
Times are from the job's claim to its completion (the job engine's work, no HTTP polling). Ratios
are per repeat, so a busy machine slows both sides of a ratio:
  - speed-up 1 -> 2 workers = time(Ray 1) / time(Ray 2)        target >= 1.6x
  - overhead at 1 worker    = time(Ray 1) / time(local, 1 CPU) - 1        target < 20%
    (also given against the local executor on 1 thread with its pools on every core)
On a machine whose cores are busy with other work, wall times mostly measure the contention, so the
same ratios are also given from CPU time: the CPU seconds of every process involved (this one, the
local Ray's GCS, raylet and workers) for the overhead, and those of the busiest process (the critical
path with a free core per process) for the speed-up.

Jobs are registered in JOBS: a function `(env, dataset_path, name) -> dict` that submits one job
through the services, runs it with `run_to_completion(env)` (wall and CPU times) and returns those
times with `units` (what the throughput counts): "feature" (NCLUE Feature), "aep_ingest" (AEP batch
ingestion) and "export" (an AEP profile export job of every profile, the 3-field projection of
bench/export.py's variant (a), read from the lake in executor chunks; the profiles are ingested once
per size, untimed, into an org of their own, and one untimed export builds the sandbox's lake plan,
so the timed exports find it installed as exports do until the graph changes; bench/export.py times
the build).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, Embedded, console, fmt_stats, save, table  # noqa: E402
from synthetic import cached_dataset  # noqa: E402

WARMUP_USERS = 2000
ONE_CPU = "local executor, 1 CPU"  # the 1-worker reference: 1 chunk thread, Arrow and BLAS at 1 thread
ONE_THREAD = "local executor, 1 thread"  # 1 chunk thread, Arrow and BLAS on every core


def cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) so far of this process and each of its descendants (a local
    Ray's GCS, raylet and worker processes are children of the process that started it)."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def settle(quiet_share: float = 0.10, interval: float = 0.5, limit: float = 30.0) -> float:
    """Waits (at most `limit` seconds) until this process's descendants use less than `quiet_share`
    of a core over two intervals in a row; returns the seconds waited. A freshly started local Ray
    keeps starting its agents and workers for seconds after `ray.init` returns: that is the
    cluster's start, not the job's work, and on 2 cores it would slow the timed job."""
    t0 = time.perf_counter()
    me = os.getpid()
    quiet = 0
    prev = cpu_seconds()
    while quiet < 2 and time.perf_counter() - t0 < limit:
        time.sleep(interval)
        cur = cpu_seconds()
        used = sum(v - prev.get(pid, 0.0) for pid, v in cur.items() if pid != me)
        quiet = quiet + 1 if used < quiet_share * interval else 0
        prev = cur
    return time.perf_counter() - t0


def run_to_completion(env: Embedded) -> dict:
    """Runs queued jobs in this thread. Returns the wall seconds, the CPU seconds of every process
    involved, and those of the busiest process: on a machine whose cores are busy with other
    work, wall time says little about parallelism; the busiest process's CPU time is the critical
    path the job would take with a free core per process."""
    import pyarrow as pa
    from threadpoolctl import threadpool_limits

    worker = env.svc.make_worker(1)
    # The pools' threads: every core, as `Worker.start` leaves BLAS for a lone job, or the 1-CPU
    # reference's 1 (the limits are process-wide: set for every run, not left from the one before).
    threads = getattr(env, "pool_threads", 0) or os.cpu_count() or 1
    pa.set_cpu_count(threads)
    threadpool_limits(threads, user_api="blas")
    before = cpu_seconds()
    t0 = time.perf_counter()
    while worker.run_one():
        pass
    seconds = time.perf_counter() - t0
    after = cpu_seconds()
    used = [after[pid] - before.get(pid, 0.0) for pid in after]
    return {"seconds": seconds, "cpu": sum(used), "critical": max(used)}


def feature_job(env: Embedded, path: Path, name: str) -> dict:
    """Creates a Feature of the dataset at `path` (uploaded once as bench/<file>) and runs it."""
    key = f"sequences/{path.name}"
    if not env.svc.store.exists("bench", key):
        env.put_file("bench", key, path)
    f = env.client.post("/api/v1/features", {"name": name, "source_bucket": "bench", "source_file_path": key})
    timing = run_to_completion(env)
    got = env.client.get(f"/api/v1/features/{f['feature_id']}")
    if got["status"] != "completed":
        raise SystemExit(f"feature failed: {got['fail_message']} {got.get('fail_detail')}")
    return {**timing, "units": got["token_count"], "users": got["user_count"]}


AEP_FILES = 4  # files per ingested batch: a JSON file is one executor chunk


def aep_headers(env: Embedded) -> dict:
    """Gateway headers of one AEP org of the embedded userlens (created on first use)."""
    if not getattr(env, "aep_h", None):
        creds = env.svc.orgs.create_org("scale")
        tok = env.client.http.post("/ims/token/v3", data={"client_id": creds.client_id, "client_secret": creds.client_secret}).json()["access_token"]
        env.aep_h = {"Authorization": f"Bearer {tok}", "x-api-key": creds.client_id, "x-gw-ims-org-id": creds.org_id, "x-sandbox-name": "prod"}
    return env.aep_h


def aep_records(users: int) -> list[Path]:
    """`users` profile records (1-3 identities each) as JSON lines in AEP_FILES files, cached."""
    folder = CACHE / f"aep-records-{users}"
    files = [folder / f"part-{i}.json" for i in range(AEP_FILES)]
    if not all(f.exists() for f in files):
        folder.mkdir(parents=True, exist_ok=True)
        for n, f in enumerate(files):
            with open(f, "w") as out:
                for i in range(n, users, AEP_FILES):
                    ids = {"crmId": [{"id": f"C{i}", "primary": True}]}
                    if i % 3:
                        ids["email"] = [{"id": f"p{i}@example.com"}]
                    out.write(json.dumps({"identityMap": ids, "person": {"name": {"firstName": f"N{i}"}}, "loyalty": {"points": i % 997}}) + "\n")
    return files


def aep_ingest_job(env: Embedded, path: Path, name: str) -> dict:
    """AEP batch ingestion: as many profile records as the dataset has users, in AEP_FILES JSON
    files of one batch, into a Profile-enabled dataset (throughput in records)."""
    users = int(path.name.split("-")[1])
    http, H = env.client.http, aep_headers(env)
    J = {**H, "Content-Type": "application/json"}
    ds_body = {"name": name, "schemaRef": {"id": "https://ns.adobe.com/xdm/context/profile"}, "tags": {"unifiedProfile": ["enabled:true"]}}
    ds = http.post("/data/foundation/catalog/dataSets", content=json.dumps(ds_body), headers=J).json()[0].split("/")[-1]
    bid = http.post("/data/foundation/import/batches", content=json.dumps({"datasetId": ds, "inputFormat": {"format": "json"}}), headers=J).json()["id"]
    for f in aep_records(users):
        r = http.put(f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/{f.name}", content=f.read_bytes(), headers={**H, "Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
    http.post(f"/data/foundation/import/batches/{bid}?action=COMPLETE", headers=H)
    timing = run_to_completion(env)
    b = http.get(f"/data/foundation/catalog/batches/{bid}", headers=H).json()[bid]
    if b["status"] != "success":
        raise SystemExit(f"ingestion failed: {b.get('errors')}")
    return {**timing, "units": b["recordCount"], "users": users}


def shopping_intent_job(env: Embedded, path: Path, name: str) -> dict:
    """Shopping Intent: one profile over a reference panel made of the dataset's users (imported
    once per dataset with synthetic attributes, not timed), of a Task trained once on the warm-up
    dataset (throughput in panel users; one chunk per panel part of `feature_chunk_rows` users)."""
    import zlib

    from sqlalchemy import update

    from userlens.understanding.models import ShoppingIntent

    store, cache = env.svc.store, env.__dict__.setdefault("si_cache", {})
    if "task" not in cache:
        warm = cached_dataset(CACHE, WARMUP_USERS)
        key = f"sequences/{warm.name}"
        if not store.exists("bench", key):
            env.put_file("bench", key, warm)
        fid = env.client.post("/api/v1/features", {"name": f"{name}-si-feature", "source_bucket": "bench", "source_file_path": key})["feature_id"]
        run_to_completion(env)
        ids = [line.split("\t", 1)[0] for line in warm.read_text(encoding="utf-8").splitlines() if line]
        env.put_text("bench", "answers/si.csv", "".join(f"{u}\t{zlib.crc32(u.encode()) % 2}\n" for u in ids))
        tid = env.client.post("/api/v1/tasks", {"name": f"{name}-si-task", "train_feature_id": fid, "train_bucket": "bench", "train_file_path": "answers/si.csv"})["task_id"]
        run_to_completion(env)
        if env.client.get(f"/api/v1/tasks/{tid}")["status"] != "completed":
            raise SystemExit("the Shopping Intent bench's Task failed")
        cache["task"] = tid
    if path not in cache:
        key = f"sequences/{path.name}"
        if not store.exists("bench", key):
            env.put_file("bench", key, path)
        interests = [f"Cat{i:02d}" for i in range(30)]
        rows = ["user_id\tgender\tage_group\tinterests"]
        with open(path, encoding="utf-8") as f:
            for line in f:
                u = line.split("\t", 1)[0]
                h = zlib.crc32(u.encode())
                rows.append(f"{u}\t{'FM'[h % 2]}\t{10 * (1 + h // 2 % 6)}s\t{'|'.join(interests[((h >> 8) + j) % 30] for j in range(h // 12 % 3))}")
        env.put_text("bench", f"panels/{path.stem}.tsv", "\n".join(rows) + "\n")
        deps = env.svc.panels.deps
        configured = deps.chunk_rows
        if len(rows) - 1 <= WARMUP_USERS:
            deps.chunk_rows = WARMUP_USERS // 4  # the warm-up panel in 4 parts: it warms every Ray worker
        try:
            cache[path] = env.svc.panels.import_panel(f"bench-{path.stem}", "bench", key, f"panels/{path.stem}.tsv")
        finally:
            deps.chunk_rows = configured
    panel = cache[path]
    pid = env.client.post("/api/v1/profile/shopping-intents", {"name": name, "task_id": cache["task"]})["profile_id"]
    with env.svc.db.session() as s:  # a profile takes its model's newest panel: this dataset's, here
        s.execute(update(ShoppingIntent).where(ShoppingIntent.id == pid).values(panel_id=panel.id, panel_name=panel.name))
    timing = run_to_completion(env)
    got = env.client.get(f"/api/v1/profile/shopping-intents/{pid}")
    if got["status"] != "completed":
        raise SystemExit(f"shopping intent failed: {got['fail_message']} {got.get('fail_detail')}")
    return {**timing, "units": got["line_count"], "users": got["line_count"]}


def export_job(env: Embedded, path: Path, name: str) -> dict:
    """A profile export job of all the profiles of an org filled once with as many profile records
    as the dataset has users (ingested as Parquet, untimed), fields as bench/export.py's (a)."""
    from export import FIELDS, generate  # bench/export.py

    users = int(path.name.split("-")[1])
    orgs = env.__dict__.setdefault("export_orgs", {})
    if users not in orgs:
        folder = CACHE / f"aep-export-{users}"
        if not (folder / "records.parquet").exists():
            folder.mkdir(parents=True, exist_ok=True)
            generate(folder, users, 0)
        creds = env.svc.orgs.create_org(f"export-{users}")
        tok = env.client.http.post("/ims/token/v3", data={"client_id": creds.client_id, "client_secret": creds.client_secret}).json()["access_token"]
        H = {"Authorization": f"Bearer {tok}", "x-api-key": creds.client_id, "x-gw-ims-org-id": creds.org_id, "x-sandbox-name": "prod"}
        J = {**H, "Content-Type": "application/json"}
        http = env.client.http

        def post(route: str, body) -> dict | list:
            r = http.post(route, content=json.dumps(body), headers=J)
            assert r.status_code in (200, 201), r.text
            return r.json()

        mp = post("/data/core/ups/config/mergePolicies", {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True})["id"]
        ds = post("/data/foundation/catalog/dataSets", {"name": "records", "schemaRef": {"id": "https://ns.adobe.com/xdm/context/profile"}, "tags": {"unifiedProfile": ["enabled:true"]}})[0].split("/")[-1]
        bid = post("/data/foundation/import/batches", {"datasetId": ds, "inputFormat": {"format": "parquet"}})["id"]
        r = http.put(f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/records.parquet", content=(folder / "records.parquet").read_bytes(), headers={**H, "Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        http.post(f"/data/foundation/import/batches/{bid}?action=COMPLETE", headers=H)
        run_to_completion(env)  # the ingestion: not timed
        assert http.get(f"/data/foundation/catalog/batches/{bid}", headers=H).json()[bid]["status"] == "success"
        target = post("/data/foundation/catalog/dataSets", {"name": "export", "schemaRef": {"id": "https://ns.adobe.com/xdm/context/profile__union"}})[0].split("/")[-1]
        orgs[users] = (H, J, mp, target)
        if users > WARMUP_USERS:  # the lake plan, built once (untimed), as by an earlier export: timed exports read it
            export_job(env, path, name)
    H, J, mp, target = orgs[users]
    r = env.client.http.post("/data/core/ups/export/jobs", content=json.dumps({"fields": FIELDS, "mergePolicy": {"id": mp}, "destination": {"datasetId": target}, "schema": {"name": "_xdm.context.profile"}}), headers=J)
    assert r.status_code == 200, r.text
    job = r.json()
    from userlens.profiles.scan import LakeExport

    configured = LakeExport.CHUNK_ROWS
    if users <= WARMUP_USERS:
        LakeExport.CHUNK_ROWS = max(1, users // 4)  # the warm-up export in 4 chunks: it warms every Ray worker
    try:
        timing = run_to_completion(env)
    finally:
        LakeExport.CHUNK_ROWS = configured
    done = env.client.http.get(f"/data/core/ups/export/jobs/{job['id']}", headers=H).json()
    if done["status"] != "SUCCEEDED":
        raise SystemExit(f"export failed: {done.get('errors')}")
    return {**timing, "units": done["metrics"]["totalExportedProfileCounter"], "users": users}


# job name -> (run one job of the dataset, the unit its throughput counts)
JOBS: dict[str, tuple[Callable[[Embedded, Path, str], dict], str]] = {
    "feature": (feature_job, "tokens"),
    "aep_ingest": (aep_ingest_job, "records"),
    "shopping_intent": (shopping_intent_job, "panel users"),
    "export": (export_job, "profiles"),
}


def use_executor(env: Embedded, kind: str, cpus: int = 0, pool_threads: int = 0) -> None:
    """Points the services' executor at this process's threads (`cpus` of them, 0: the job's cores)
    or at the local Ray started by `start_ray`; `pool_threads`: the threads of this process's Arrow
    CPU pool and BLAS while its jobs run (0: as a worker sets them, every core for a lone job)."""
    from userlens.jobs.executor import LocalExecutor, RayExecutor, StoreSpec

    executor = LocalExecutor(env.svc.store, threads=cpus or None) if kind == "local" else RayExecutor(StoreSpec.from_settings(env.svc.settings))
    env.svc.executor = executor
    env.svc.features.deps.executor = executor  # NCLUE services share one deps
    env.pool_threads = pool_threads


def start_ray(cpus: int) -> None:
    """A fresh local Ray of `cpus` CPUs (the one before is shut down)."""
    import ray

    from userlens.jobs.executor import start_local_ray

    if ray.is_initialized():
        ray.shutdown()
    start_local_ray(cpus)


# (label, executor, chunk threads or Ray CPUs, Arrow and BLAS threads of this process: 0 = every core)
CONFIGS = [
    (ONE_CPU, "local", 1, 1),
    (ONE_THREAD, "local", 1, 0),
    ("local executor", "local", 0, 0),
    ("Ray, 1 worker", "ray", 1, 0),
    ("Ray, 2 workers", "ray", 2, 0),
]
# Each repeat has one phase per Ray size: the configurations timed while that Ray is up.
PHASES = [(1, [c for c in CONFIGS if c[1] == "local" or c[2] == 1]), (2, [c for c in CONFIGS if c[1] == "ray" and c[2] == 2])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--job", choices=sorted(JOBS), default="feature")
    args = ap.parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    run_job, unit = JOBS[args.job]

    path = cached_dataset(CACHE, args.users)
    warm = cached_dataset(CACHE, WARMUP_USERS)
    console.print(f"dataset: {args.users:,} users, {path.stat().st_size / 1e6:,.0f} MB; load average {os.getloadavg()}")
    env = Embedded.start("scale")
    runs: dict[str, list[dict]] = {c[0]: [] for c in CONFIGS}
    loads = []
    n = 0
    try:
        for rep in range(args.repeat):
            for ray_cpus, configs in PHASES:
                start_ray(ray_cpus)
                # Warm-up, untimed: a small job imports userlens in every Ray worker, then one of full
                # size grows their memory pools (a cluster that runs jobs has done both long ago; so
                # has this process's local path from the first repeat on).
                warm_ups = [c for c in configs if c[1] == "ray"] + ([c for c in configs if c[1] == "local"][:1] if rep == 0 else [])
                for label, kind, cpus, pools in warm_ups:
                    use_executor(env, kind, cpus, pools)
                    n += 1
                    run_job(env, warm, f"warm-{n}")
                    run_job(env, path, f"warm-full-{n}")
                waited = settle()
                for label, kind, cpus, pools in configs:
                    use_executor(env, kind, cpus, pools)
                    n += 1
                    r = run_job(env, path, f"run-{n}")
                    r["settle_s"] = waited
                    runs[label].append(r)
                    loads.append(os.getloadavg()[0])
                    console.print(f"  repeat {rep + 1}: {label}: {r['seconds']:.1f} s ({r['units'] / r['seconds']:,.0f} {unit}/s), CPU {r['cpu']:.1f} s, busiest process {r['critical']:.1f} s, load {loads[-1]:.1f}")
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        env.close()

    units = runs["local executor"][0]["units"]
    rows = [
        [label, fmt_stats([r["seconds"] for r in rs], " s"), fmt_stats([r["units"] / r["seconds"] for r in rs], "", 0), fmt_stats([r["cpu"] for r in rs], " s"), fmt_stats([r["critical"] for r in rs], " s")]
        for label, rs in runs.items()
    ]

    def ratio(a: str, b: str, key: str) -> list[float]:
        return [x[key] / y[key] for x, y in zip(runs[a], runs[b])]

    console.print(table(f"{args.job} job: {args.users:,} users, {units:,} {unit} — median (min–max) of {args.repeat}", ["executor", "wall time", f"{unit}/s", "CPU time (all processes)", "busiest process CPU"], rows))
    speedup, overhead = ratio("Ray, 1 worker", "Ray, 2 workers", "seconds"), [r - 1 for r in ratio("Ray, 1 worker", ONE_CPU, "seconds")]
    cpu_speedup, cpu_overhead = ratio("Ray, 1 worker", "Ray, 2 workers", "critical"), [r - 1 for r in ratio("Ray, 1 worker", ONE_CPU, "cpu")]
    thread_overhead = [r - 1 for r in ratio("Ray, 1 worker", ONE_THREAD, "seconds")]
    console.print(f"speed-up Ray 1 -> 2 workers: wall {fmt_stats(speedup, 'x', 2)}; busiest-process CPU {fmt_stats(cpu_speedup, 'x', 2)} (target >= 1.6x)")
    console.print(f"overhead of Ray at 1 worker vs the local executor as a 1-CPU worker: wall {fmt_stats([o * 100 for o in overhead], '%', 0)}; CPU {fmt_stats([o * 100 for o in cpu_overhead], '%', 0)} (target < 20%)")
    console.print(f"  vs the local executor on 1 thread with Arrow and BLAS on every core: wall {fmt_stats([o * 100 for o in thread_overhead], '%', 0)}")
    console.print(f"load average during the runs: {fmt_stats(loads, '', 1)} on {os.cpu_count()} cores")
    console.print(f"results: {save(f'scale_{args.job}', {'users': args.users, 'runs': runs, 'speedup': speedup, 'overhead': overhead, 'thread_overhead': thread_overhead, 'cpu_speedup': cpu_speedup, 'cpu_overhead': cpu_overhead, 'loads': loads})}")


if __name__ == "__main__":
    main()
