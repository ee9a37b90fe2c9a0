"""Profile ingestion benchmark: `python bench/ingest_profiles.py [--scale 1.0] [--repeats 1]`.

Generates (deterministically, seed 7) 200,000 x scale people with 1-3 identities each, one profile
record per person and 1,000,000 x scale ExperienceEvents, as Parquet and as JSON lines. For each
format it ingests records then events through the HTTP API (upload, COMPLETE) into an embedded
userlens (SQLite + local folder) and runs the ingest jobs in a worker thread, then measures entity
look-ups over loopback HTTP (uvicorn, 4 client threads, 5 s). Baseline in the same run: a bare
pyarrow read + Parquet write of the same files (what the lake copy alone costs).
Reports records/s, seconds until profiles are queryable, look-up p50/p99 and peak memory (VmHWM of
the run: reset before each run, so the data generation does not count).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import console, fmt_stats, peak_rss_mb, save, table  # noqa: E402

ID_T = pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())]))
SCHEMA_R = pa.schema([("identityMap", pa.map_(pa.string(), ID_T)), ("person", pa.struct([("name", pa.struct([("firstName", pa.string())]))])), ("loyalty", pa.struct([("points", pa.int64())]))])
SCHEMA_E = pa.schema([("_id", pa.string()), ("timestamp", pa.string()), ("eventType", pa.string()), ("identityMap", pa.map_(pa.string(), ID_T))])


def identities(i: int, k: int) -> list:
    out = [("crmId", [{"id": f"C{i}", "primary": True}])]
    if k >= 2:
        out.append(("email", [{"id": f"p{i}@example.com", "primary": False}]))
    if k >= 3:
        out.append(("phone", [{"id": f"+1555{i:07d}", "primary": False}]))
    return out


def generate(folder: Path, people: int, events: int) -> dict:
    rng = np.random.default_rng(7)
    k = rng.integers(1, 4, people)
    rec_rows = [{"identityMap": identities(i, int(k[i])), "person": {"name": {"firstName": f"N{i}"}}, "loyalty": {"points": int(i % 997)}} for i in range(people)]
    who = rng.integers(0, people, events)
    ts = 1_700_000_000 + rng.integers(0, 10_000_000, events)
    ev_rows = [{"_id": f"e{j}", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ts[j]))), "eventType": "web.webpagedetails.pageViews", "identityMap": [identities(int(who[j]), 1)[0]]} for j in range(events)]
    files = {}
    for name, rows, schema in (("records", rec_rows, SCHEMA_R), ("events", ev_rows, SCHEMA_E)):
        t = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(t, folder / f"{name}.parquet", row_group_size=100_000)
        with open(folder / f"{name}.json", "w") as f:
            for r in rows:
                r = dict(r, identityMap={ns: ids for ns, ids in r["identityMap"]})
                f.write(json.dumps(r) + "\n")
        files[name] = len(rows)
    return files


def baseline(folder: Path) -> float:
    """Bare lake copy: read every Parquet file in record batches and write it again."""
    t0 = time.perf_counter()
    rows = 0
    for name in ("records", "events"):
        pf = pq.ParquetFile(folder / f"{name}.parquet")
        with pq.ParquetWriter(io.BytesIO(), pf.schema_arrow, compression="zstd") as w:
            for rb in pf.iter_batches(batch_size=20000):
                w.write_batch(rb)
                rows += rb.num_rows
    return rows / (time.perf_counter() - t0)


def reset_peak_rss() -> None:
    """Resets VmHWM (Linux: writing 5 to /proc/self/clear_refs), so peak_rss_mb measures what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def run_one(folder: Path, fmt: str) -> dict:
    from fastapi.testclient import TestClient

    from userlens.api.app import create_app
    from userlens.config import Settings
    from userlens.services import build_services
    from userlens.storage.migrate import upgrade

    reset_peak_rss()  # the peak of this run, not of the data generation before it
    data_dir = Path(tempfile.mkdtemp(prefix="ul-bench-"))
    settings = Settings(data_dir=data_dir, workers=0, master_key="bench", log_level="WARNING")
    upgrade(settings.database_url)
    svc = build_services(settings)
    svc.store.create_bucket(settings.internal_bucket)
    app = create_app(settings, svc, start_workers=False)
    http = TestClient(app)
    creds = svc.orgs.create_org("bench")
    tok = http.post("/ims/token/v3", data={"client_id": creds.client_id, "client_secret": creds.client_secret}).json()["access_token"]
    H = {"Authorization": f"Bearer {tok}", "x-api-key": creds.client_id, "x-gw-ims-org-id": creds.org_id, "x-sandbox-name": "prod"}
    J = {**H, "Content-Type": "application/json"}
    mp = {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True}
    http.post("/data/core/ups/config/mergePolicies", content=json.dumps(mp), headers=J)
    total_rows, t0 = 0, time.perf_counter()
    worker = svc.make_worker(1)
    for name, cls in (("records", "profile"), ("events", "experienceevent")):
        ds = http.post("/data/foundation/catalog/dataSets", content=json.dumps({"name": name, "schemaRef": {"id": f"https://ns.adobe.com/xdm/context/{cls}"}, "tags": {"unifiedProfile": ["enabled:true"]}}), headers=J).json()[0].split("/")[-1]
        bid = http.post("/data/foundation/import/batches", content=json.dumps({"datasetId": ds, "inputFormat": {"format": fmt}}), headers=J).json()["id"]
        with open(folder / f"{name}.{fmt}", "rb") as f:
            r = http.put(f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/{name}.{fmt}", content=iter(lambda: f.read(1 << 20), b""), headers={**H, "Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
        http.post(f"/data/foundation/import/batches/{bid}?action=COMPLETE", headers=H)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline and worker.run_one():
            pass
        b = http.get(f"/data/foundation/catalog/batches/{bid}", headers=H).json()[bid]
        assert b["status"] == "success", b
        total_rows += b["recordCount"]
    queryable_s = time.perf_counter() - t0
    lat = lookups(app, H, people=LOOKUP_PEOPLE[0])
    svc.close()
    peak = peak_rss_mb(os.getpid())
    shutil.rmtree(data_dir, ignore_errors=True)
    return {"rows": total_rows, "seconds": queryable_s, "rps": total_rows / queryable_s, **lat, "peak_mb": peak}


def lookups(app, headers: dict, people: int, seconds: float = 5.0, threads: int = 4) -> dict:
    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{base}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    n_people = LOOKUP_PEOPLE[0]
    lat: list[float] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(seed: int):
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=base, headers=headers) as c:
            while time.monotonic() < end:
                i = int(rng.integers(0, n_people))
                t = time.perf_counter()
                r = c.get("/data/core/ups/access/entities", params={"schema.name": "_xdm.context.profile", "entityId": f"C{i}", "entityIdNS": "crmId"})
                d = (time.perf_counter() - t) * 1000
                assert r.status_code == 200, r.text
                with lock:
                    lat.append(d)

    ts = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 30)
    server.should_exit = True
    th.join(30)
    lat.sort()
    return {"p50_ms": statistics.median(lat), "p99_ms": lat[int(len(lat) * 0.99) - 1], "lookups": len(lat)}


LOOKUP_PEOPLE = [0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 200,000 people / 1,000,000 events")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    people, events = int(200_000 * args.scale), int(1_000_000 * args.scale)
    LOOKUP_PEOPLE[0] = people
    folder = Path(tempfile.mkdtemp(prefix="ul-bench-data-"))
    console.print(f"generating {people:,} people, {events:,} events ...")
    generate(folder, people, events)
    res: dict = {"baseline": [], "parquet": [], "json": []}
    for _ in range(args.repeats):
        res["baseline"].append(baseline(folder))
        for fmt in ("parquet", "json"):
            res[fmt].append(run_one(folder, fmt))
    rows = [["bare pyarrow read+write (baseline)", fmt_stats(res["baseline"], digits=0), "", "", "", "", "1.00"]]
    base_med = statistics.median(res["baseline"])
    for fmt in ("parquet", "json"):
        r = res[fmt]
        rows.append([f"userlens ingest ({fmt})", fmt_stats([x["rps"] for x in r], digits=0), fmt_stats([x["seconds"] for x in r], "s"), fmt_stats([x["p50_ms"] for x in r], "ms", 2), fmt_stats([x["p99_ms"] for x in r], "ms", 2), fmt_stats([x["peak_mb"] for x in r], " MiB", 0), f"{statistics.median([x['rps'] for x in r]) / base_med:.3f}"])
    console.print(table(f"Profile ingestion: {people:,} records + {events:,} events, median (min–max) over {args.repeats} run(s)", ["run", "records/s", "until queryable", "look-up p50", "look-up p99", "peak RSS", "ratio to baseline"], rows))
    console.print(f"saved {save('ingest_profiles', {'scale': args.scale, 'people': people, 'events': events, 'results': res})}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
