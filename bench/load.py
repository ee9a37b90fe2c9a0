"""Load benchmark: `python bench/load.py [--clients 100] [--seconds 60] [--repeats 1] [--backends sqlite,postgres]`.

For each metadata database (SQLite file; PostgreSQL at $USERLENS_BENCH_PG_URL, default
postgresql://postgres@127.0.0.1:5432/postgres, a fresh database per run) with the local-folder object store:
seeds one NCLUE account (a completed Feature of 2,000 users and a completed Task) and one AEP org
(2,000 profiles with events, a merge policy, a segment definition), then starts `userlens serve
--workers 0` on a loopback port and two `userlens worker` processes, and runs `--clients` concurrent
clients (asyncio + httpx, one process) for `--seconds`, each pausing `--think-ms` on average between
calls (0, the default: a saturation test, where latency is mostly queueing; 1000: 100 clients each
calling about once a second, the load where the latency target applies):

* reads (both families): NCLUE list/get Features, Tasks, Runs; AEP list/get datasets, batches, merge
  policies, segment definitions and profile look-ups by identity;
* job submissions, two a second in all: an NCLUE Task Run (scores the 2,000 users) and an AEP batch
  ingestion (create batch, upload a small JSON file, COMPLETE), which the two workers run meanwhile.

Baseline in the same run: the same clients against GET /healthz of the same server (a database
round trip, no authentication or domain logic). Reported: requests/s, p50/p99 latency and errors per
kind (an error is any status >= 400, a timeout or a connection failure), min/median/max over repeats,
and the ratio of each kind's throughput to the baseline's. The load generator shares the machine's
cores with the server and the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import console, fmt_stats, save, table  # noqa: E402

from userlens.accounts.signature import make_signature  # noqa: E402

USERS = 2000
PEOPLE = 2000
SUBMIT_EVERY = 0.5  # seconds between job submissions (alternating NCLUE Run / AEP ingestion)
PG_URL = os.environ.get("USERLENS_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- set-up ------------------------------------------------------------------------------------------
def make_pg_database() -> tuple[str, str]:
    import psycopg

    name = f"ul_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    base = PG_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return name, f"{base}/{name}"


def drop_pg_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(env: dict) -> dict:
    """Data of one NCLUE account and one AEP org, made through the API in this process."""
    from fastapi.testclient import TestClient

    from userlens.api.app import create_app
    from userlens.client import NclueClient
    from userlens.config import Settings
    from userlens.samples import sequences as sample
    from userlens.services import build_services
    from userlens.storage.migrate import upgrade

    os.environ.update(env)
    settings = Settings(workers=0)
    upgrade(settings.database_url)
    svc = build_services(settings)
    svc.store.create_bucket(settings.internal_bucket)
    svc.store.create_bucket("bench")
    text, truth = sample.generate(USERS, seed=7)
    svc.store.write_bytes("bench", "seq/users.csv", text.encode())
    svc.store.write_bytes("bench", "answers/beauty.csv", "".join(f"{u}\t{int('beauty' in i)}\n" for u, i in truth.items()).encode())
    creds = svc.accounts.create_key("bench")
    worker = svc.make_worker(1)

    def drain():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and worker.run_one():
            pass

    with TestClient(create_app(settings, svc, start_workers=False)) as http:
        c = NclueClient("http://testserver", creds.access_key, creds.secret_key, http=http)
        fid = c.post("/api/v1/features", {"name": "bench", "source_bucket": "bench", "source_file_path": "seq/users.csv"})["feature_id"]
        drain()
        tid = c.post("/api/v1/tasks", {"name": "beauty", "train_feature_id": fid, "train_bucket": "bench", "train_file_path": "answers/beauty.csv"})["task_id"]
        drain()
        assert c.get(f"/api/v1/tasks/{tid}")["status"] == "completed"
        org = svc.orgs.create_org("bench")
        tok = http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": org.client_id, "client_secret": org.client_secret}).json()["access_token"]
        H = {"Authorization": f"Bearer {tok}", "x-api-key": org.client_id, "x-gw-ims-org-id": org.org_id, "x-sandbox-name": "prod"}
        J = {**H, "Content-Type": "application/json"}

        def post(path, body):
            r = http.post(path, content=json.dumps(body), headers=J)
            assert r.status_code < 300, r.text
            return r.json()

        mp = post("/data/core/ups/config/mergePolicies", {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True})
        datasets = {}
        for name, cls in (("crm", "profile"), ("web", "experienceevent")):
            datasets[name] = post("/data/foundation/catalog/dataSets", {"name": name, "schemaRef": {"id": f"https://ns.adobe.com/xdm/context/{cls}"}, "tags": {"unifiedProfile": ["enabled:true"]}})[0].split("/")[-1]
        rows = {
            "crm": [{"identityMap": {"crmId": [{"id": f"C{i}", "primary": True}]}, "person": {"name": {"firstName": f"N{i}"}}} for i in range(PEOPLE)],
            "web": [{"_id": f"e{i}", "timestamp": "2026-01-01T00:00:00Z", "eventType": "web.webpagedetails.pageViews", "identityMap": {"crmId": [{"id": f"C{i % PEOPLE}", "primary": True}]}} for i in range(PEOPLE * 3)],
        }
        for name, ds in datasets.items():
            bid = post("/data/foundation/import/batches", {"datasetId": ds, "inputFormat": {"format": "json"}})["id"]
            data = "".join(json.dumps(r) + "\n" for r in rows[name]).encode()
            assert http.put(f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/{name}.json", content=data, headers={**H, "Content-Type": "application/octet-stream"}).status_code in (200, 201)
            http.post(f"/data/foundation/import/batches/{bid}?action=COMPLETE", headers=H)
            drain()
        seg = post("/data/core/ups/segment/definitions", {"name": "ns", "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/text", "value": 'person.name.firstName.startsWith("N1")'}})
    svc.close()
    return {"access_key": creds.access_key, "secret_key": creds.secret_key, "feature": fid, "task": tid, "aep_headers": H, "datasets": datasets, "policy": mp["id"], "segment": seg["id"]}


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "userlens.cli", *cmd], env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


# -- load --------------------------------------------------------------------------------------------
class Load:
    def __init__(self, base: str, s: dict, healthz_only: bool, think_ms: float = 0.0):
        self.base, self.s, self.healthz_only, self.think = base, s, healthz_only, think_ms / 1000
        self.lat: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.samples: list[str] = []
        self.next_submit = 0.0
        self.submits = 0
        self.sent = 0  # every request, warm-up included (the server's CPU counts them all)
        self.measure_from = 0.0  # requests started before this (the warm-up) are not counted

    def nclue_headers(self, method: str, uri: str) -> dict:
        ts = str(int(time.time() * 1000))
        ak = self.s["access_key"]
        return {"x-ncp-apigw-timestamp": ts, "x-ncp-iam-access-key": ak, "x-ncp-apigw-signature-v2": make_signature(method, uri, ts, ak, self.s["secret_key"])}

    def reads(self, rng: random.Random) -> tuple[str, str, str, dict | None]:
        s = self.s
        nclue = [
            "/api/v1/features", f"/api/v1/features/{s['feature']}", "/api/v1/tasks?limit=10", f"/api/v1/tasks/{s['task']}", "/api/v1/task-runs?limit=10",
        ]
        ds = s["datasets"]["crm"]
        aep = [
            ("/data/foundation/catalog/dataSets", None), (f"/data/foundation/catalog/dataSets/{ds}", None), ("/data/foundation/catalog/batches", {"limit": "10"}),
            (f"/data/core/ups/config/mergePolicies/{s['policy']}", None), ("/data/core/ups/segment/definitions", {"limit": "10"}),
            ("/data/core/ups/access/entities", {"schema.name": "_xdm.context.profile", "entityId": f"C{rng.randrange(PEOPLE)}", "entityIdNS": "crmId"}),
            ("/data/core/ups/access/entities", {"schema.name": "_xdm.context.profile", "entityId": f"C{rng.randrange(PEOPLE)}", "entityIdNS": "crmId"}),
        ]
        if rng.random() < 0.5:
            return "read nclue", "GET", rng.choice(nclue), None
        path, params = rng.choice(aep)
        return "read aep", "GET", path, params

    async def one(self, c: httpx.AsyncClient, kind: str, method: str, path: str, params=None, **kw) -> httpx.Response | None:
        t = time.perf_counter()
        self.sent += 1
        try:
            if path.startswith("/api/v1"):
                kw["headers"] = {**kw.get("headers", {}), **self.nclue_headers(method, path)}
            elif path.startswith("/data"):
                kw["headers"] = {**self.s["aep_headers"], **kw.get("headers", {})}
            r = await c.request(method, path, params=params, **kw)
            ok = r.status_code < 400
        except httpx.HTTPError as exc:
            r, ok = None, False
            if len(self.samples) < 5:
                self.samples.append(f"{kind} {method} {path}: {type(exc).__name__}")
        d = (time.perf_counter() - t) * 1000
        if time.monotonic() - d / 1000 < self.measure_from:
            return r if ok else None
        self.lat.setdefault(kind, []).append(d)
        if not ok:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if r is not None and len(self.samples) < 5:
                self.samples.append(f"{kind} {method} {path} -> {r.status_code} {r.text[:200]}")
        return r if ok else None

    async def submit(self, c: httpx.AsyncClient) -> None:
        self.submits += 1
        s = self.s
        if self.submits % 2:
            await self.one(c, "submit nclue run", "POST", "/api/v1/task-runs", content=json.dumps({"name": f"r{self.submits}", "task_id": s["task"], "feature_id": s["feature"], "result_bucket": "bench", "result_file_path": "runs/"}), headers={"content-type": "application/json"})
            return
        ds = s["datasets"]["crm"]
        r = await self.one(c, "submit aep batch", "POST", "/data/foundation/import/batches", content=json.dumps({"datasetId": ds, "inputFormat": {"format": "json"}}), headers={"Content-Type": "application/json"})
        if r is None:
            return
        bid = r.json()["id"]
        body = "".join(json.dumps({"identityMap": {"crmId": [{"id": f"C{i}", "primary": True}]}, "loyalty": {"points": self.submits}}) + "\n" for i in range(20)).encode()
        if await self.one(c, "submit aep batch", "PUT", f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/p.json", content=body, headers={"Content-Type": "application/octet-stream"}):
            await self.one(c, "submit aep batch", "POST", f"/data/foundation/import/batches/{bid}", params={"action": "COMPLETE"})

    async def client(self, c: httpx.AsyncClient, seed: int, end: float) -> None:
        rng = random.Random(seed)
        await asyncio.sleep(rng.uniform(0, self.think or 0.01))  # clients start spread out
        while time.monotonic() < end:
            if self.healthz_only:
                await self.one(c, "healthz (baseline)", "GET", "/healthz")
            elif time.monotonic() >= self.next_submit:
                self.next_submit = time.monotonic() + SUBMIT_EVERY
                await self.submit(c)
            else:
                kind, method, path, params = self.reads(rng)
                await self.one(c, kind, method, path, params)
            if self.think:  # a client that waits between calls (jittered, so clients do not march in step)
                await asyncio.sleep(self.think * rng.uniform(0.5, 1.5))

    async def run(self, clients: int, seconds: float, warmup: float = 3.0) -> float:
        """Runs the clients for warm-up + `seconds`; returns the measured seconds. One connection pool
        for all clients, one keep-alive connection each (a client per AsyncClient costs an SSL context
        each on the generator's event loop, which then delays everyone's requests)."""
        # Idle connections are dropped before uvicorn's 5 s keep-alive timeout would close them: a request
        # sent on a connection the server is closing at that moment fails with a ReadError (a race of
        # HTTP keep-alive, not an answer of the server's; seen once in 5,000 requests with 1 s pauses).
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=3.0)
        async with httpx.AsyncClient(base_url=self.base, timeout=30.0, limits=limits) as c:
            t0 = time.monotonic()
            self.next_submit = t0
            self.measure_from = t0 + warmup
            end = self.measure_from + seconds
            await asyncio.gather(*(self.client(c, i, end) for i in range(clients)))
        return time.monotonic() - self.measure_from


def summarize(load: Load, elapsed: float) -> dict:
    out = {}
    for kind, lat in load.lat.items():
        lat = sorted(lat)
        out[kind] = {"requests": len(lat), "rps": len(lat) / elapsed, "p50_ms": statistics.median(lat), "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)], "errors": load.errors.get(kind, 0)}
    return out


def job_states(env: dict) -> dict:
    """Jobs by status when the load stops (the workers keep running the backlog after it; a failed
    one would be an error)."""
    from sqlalchemy import func, select

    from userlens.config import Settings
    from userlens.jobs.models import Job
    from userlens.storage.db import Database

    os.environ.update(env)
    db = Database(Settings().database_url)
    try:
        with db.session() as s:
            return dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    finally:
        db.dispose()


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used: per request, a measure of the server's own
    work that other processes competing for the cores inflate far less than latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile_server(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    """py-spy (if installed) samples the server during the measured load: collapsed stacks, one line
    per stack with its sample count (`--profile DIR`; where the server's time goes)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_backend(db: str, clients: int, seconds: float, baseline_seconds: float, think_ms: float, profile: Path | None = None, worker_nice: int | None = None) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix=f"ul-load-{db}-"))
    env = {"USERLENS_DATA_DIR": str(data_dir), "USERLENS_MASTER_KEY": "bench", "USERLENS_LOG_LEVEL": "WARNING"}
    pg_name = None
    saved_env = dict(os.environ)  # seed() and job_states() set this run's USERLENS_* variables
    if db == "postgres":
        pg_name, env["USERLENS_DATABASE_URL"] = make_pg_database()
    procs: list[subprocess.Popen] = []
    try:
        s = seed(env)
        port = free_port()
        penv = {**os.environ, **env}
        if worker_nice is not None:  # the workers' job threads (USERLENS_WORKER_NICE; default 10)
            penv["USERLENS_WORKER_NICE"] = str(worker_nice)
        procs.append(start(["serve", "--workers", "0", "--port", str(port), "--no-samples"], penv, data_dir / "server.log"))
        for _ in range(2):  # two workers running the submitted jobs
            procs.append(start(["worker", "--threads", "1"], penv, data_dir / "worker.log"))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise SystemExit(f"server did not start; see {data_dir / 'server.log'}")
            time.sleep(0.2)
        result = {}
        base_load = Load(base, s, healthz_only=True, think_ms=think_ms)
        cpu0 = process_cpu_s(procs[0].pid)
        result.update(summarize(base_load, asyncio.run(base_load.run(clients, baseline_seconds))))
        cpu1 = process_cpu_s(procs[0].pid)
        result["healthz (baseline)"]["server_cpu_ms"] = (cpu1 - cpu0) / max(1, base_load.sent) * 1000
        load = Load(base, s, healthz_only=False, think_ms=think_ms)
        spy = profile_server(procs[0].pid, seconds + 3, profile / f"server-{db}-{int(time.time())}.txt") if profile else None
        elapsed = asyncio.run(load.run(clients, seconds))
        cpu2 = process_cpu_s(procs[0].pid)
        if spy is not None:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.terminate()
                spy.wait(10)
        result.update(summarize(load, elapsed))
        reads = sorted(load.lat.get("read nclue", []) + load.lat.get("read aep", []))
        result["reads (both)"] = {"requests": len(reads), "rps": len(reads) / elapsed, "p50_ms": statistics.median(reads), "p99_ms": reads[max(0, int(len(reads) * 0.99) - 1)], "errors": load.errors.get("read nclue", 0) + load.errors.get("read aep", 0)}
        # Server CPU per request over the whole mixed load (reads, submissions and uploads together).
        result["reads (both)"]["server_cpu_ms"] = (cpu2 - cpu1) / max(1, load.sent) * 1000
        result["_samples"] = base_load.samples + load.samples
        result["_jobs"] = job_states(env)
        result["_jobs_submitted"] = load.submits
        result["_loadavg"] = os.getloadavg()
        return result
    finally:
        for p in procs:
            stop(p)
        if pg_name:
            drop_pg_database(pg_name)
        shutil.rmtree(data_dir, ignore_errors=True)
        os.environ.clear()
        os.environ.update(saved_env)


KINDS = ["healthz (baseline)", "reads (both)", "read nclue", "read aep", "submit nclue run", "submit aep batch"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--baseline-seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--profile", type=Path, default=None, help="a folder for py-spy profiles of the server during the load (collapsed stacks)")
    ap.add_argument("--worker-nice", default="", help="comma-separated nice values of the workers' job threads to compare, e.g. 0,10 (default: the setting's, 10)")
    ap.add_argument("--think-ms", type=float, default=0.0, help="mean pause of each client between calls (0: as fast as the server answers, a saturation test)")
    args = ap.parse_args()
    res: dict = {}
    nices = [int(n) for n in args.worker_nice.split(",")] if args.worker_nice else [None]
    # Repeats outermost, so that variants compared with each other see the same drift of other work.
    for i, db, nice in ((i, d, n) for i in range(args.repeats) for d in args.backends.split(",") for n in nices):
        label = db if nice is None else f"{db} nice {nice}"
        console.print(f"{label}: run {i + 1}/{args.repeats}: {args.clients} clients, {args.baseline_seconds:.0f} s baseline + {args.seconds:.0f} s load ...")
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        r = run_backend(db, args.clients, args.seconds, args.baseline_seconds, args.think_ms, args.profile, nice)
        for line in r.pop("_samples"):
            console.print(f"  error sample: {line}")
        console.print(f"  jobs submitted: {r.pop('_jobs_submitted')}; all jobs by status when the load stopped: {r['_jobs']}; load average {'/'.join(f'{x:.1f}' for x in r['_loadavg'])}")
        res.setdefault(label, []).append(r)
    rows = []
    for db, runs in res.items():
        base_rps = statistics.median(r["healthz (baseline)"]["rps"] for r in runs)
        base_p99 = statistics.median(r["healthz (baseline)"]["p99_ms"] for r in runs)
        for kind in KINDS:
            xs = [r[kind] for r in runs if kind in r]
            if not xs:
                continue
            rps = [x["rps"] for x in xs]
            rows.append([f"{db}: {kind}", fmt_stats(rps, digits=0), fmt_stats([x["p50_ms"] for x in xs], " ms", 1), fmt_stats([x["p99_ms"] for x in xs], " ms", 1), str(sum(x["errors"] for x in xs)), str(sum(x["requests"] for x in xs)), f"{statistics.median(rps) / base_rps:.2f}", f"{statistics.median(x['p99_ms'] for x in xs) / base_p99:.2f}",
                         fmt_stats([x["server_cpu_ms"] for x in xs], " ms", 2) if all("server_cpu_ms" in x for x in xs) else ""])
    console.print(table(f"Load: {args.clients} clients, think {args.think_ms:.0f} ms, {args.seconds:.0f} s, loopback, 2 workers; median (min–max) over {args.repeats} run(s); shared 2-core machine", ["backend: kind", "requests/s", "p50", "p99", "errors", "requests", "rps / baseline", "p99 / baseline p99", "server CPU / request"], rows))
    console.print(f"saved {save('load', {'args': {**vars(args), 'profile': str(args.profile or '')}, 'results': res})}")


if __name__ == "__main__":
    main()
