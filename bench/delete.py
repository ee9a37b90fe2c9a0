"""Profile-store delete benchmark: `python bench/delete.py [--scale 1.0] [--repeats 1]`.

Data (deterministic, seed 7, as bench/ingest_profiles.py): 200,000 x scale people with 1-3
identities each (crmId, email, phone) and one profile record each, in one record dataset; 1,000,000 x
scale ExperienceEvents (crmId only) in 10 batches of one event dataset. Both Profile-enabled, ingested
as Parquet through the HTTP API into an embedded userlens (SQLite + local folder).

Per repeat, on one store: (1) a delete request for one event batch, then (2) one for the whole event
dataset (the 9 batches left); on a second store: (3) one for the record dataset (200k records: every
email and phone identity goes, every graph is recomputed). Each is timed from the POST to COMPLETED
(the job runs in a worker in this process) and reports the job's own `recordsProcessed`.
Baseline in the same run: ingesting, into a fresh store, what the store holds without that data (the
other way to get rid of it: rebuild the store). Ratio = baseline time / delete time (> 1: the delete
is that many times faster than the rebuild). Target (issue 7): a dataset delete under 10 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import aep_org_in_process, console, fmt_stats, save, table  # noqa: E402
from ingest_profiles import SCHEMA_E, SCHEMA_R, identities  # noqa: E402

BATCHES = 10


def generate(folder: Path, people: int, events: int) -> None:
    rng = np.random.default_rng(7)
    k = rng.integers(1, 4, people)
    rec = [{"identityMap": identities(i, int(k[i])), "person": {"name": {"firstName": f"N{i}"}}, "loyalty": {"points": int(i % 997)}} for i in range(people)]
    pq.write_table(pa.Table.from_pylist(rec, schema=SCHEMA_R), folder / "records.parquet", row_group_size=100_000)
    who = rng.integers(0, people, events)
    ts = 1_700_000_000 + rng.integers(0, 10_000_000, events)
    per = -(-events // BATCHES)
    for b in range(BATCHES):
        lo, hi = b * per, min(events, (b + 1) * per)
        rows = [{"_id": f"e{j}", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ts[j]))), "eventType": "web.webpagedetails.pageViews", "identityMap": [("crmId", [{"id": f"C{int(who[j])}", "primary": True}])]} for j in range(lo, hi)]
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA_E), folder / f"events-{b}.parquet", row_group_size=100_000)


class Store:
    """An embedded userlens with an org, the two datasets and a worker run in this thread."""

    def __init__(self):
        self.data_dir, self.svc, self.http, self.H = aep_org_in_process("ul-bench-delete-")
        self.J = {**self.H, "Content-Type": "application/json"}
        self.worker = self.svc.make_worker(1)
        mp = {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True}
        self.http.post("/data/core/ups/config/mergePolicies", content=json.dumps(mp), headers=self.J)
        self.ds = {name: self._dataset(name, cls) for name, cls in (("records", "profile"), ("events", "experienceevent"))}

    def _dataset(self, name: str, cls: str) -> str:
        body = {"name": name, "schemaRef": {"id": f"https://ns.adobe.com/xdm/context/{cls}"}, "tags": {"unifiedProfile": ["enabled:true"]}}
        return self.http.post("/data/foundation/catalog/dataSets", content=json.dumps(body), headers=self.J).json()[0].split("/")[-1]

    def run_jobs(self) -> None:
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline and self.worker.run_one():
            pass

    def ingest(self, dataset: str, path: Path) -> str:
        ds = self.ds[dataset]
        bid = self.http.post("/data/foundation/import/batches", content=json.dumps({"datasetId": ds, "inputFormat": {"format": "parquet"}}), headers=self.J).json()["id"]
        with open(path, "rb") as f:
            r = self.http.put(f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/{path.name}", content=iter(lambda: f.read(1 << 20), b""), headers={**self.H, "Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
        self.http.post(f"/data/foundation/import/batches/{bid}?action=COMPLETE", headers=self.H)
        self.run_jobs()
        b = self.http.get(f"/data/foundation/catalog/batches/{bid}", headers=self.H).json()[bid]
        assert b["status"] == "success", b
        return bid

    def fill(self, folder: Path, records: bool = True, event_batches: range = range(BATCHES)) -> tuple[float, list[str]]:
        """Ingests the data (records first, then the event batches); returns (seconds, event batch ids)."""
        t0 = time.perf_counter()
        if records:
            self.ingest("records", folder / "records.parquet")
        bids = [self.ingest("events", folder / f"events-{b}.parquet") for b in event_batches]
        return time.perf_counter() - t0, bids

    def delete(self, body: dict) -> dict:
        """POST a delete request, run it, and read it back: (seconds, recordsProcessed)."""
        t0 = time.perf_counter()
        r = self.http.post("/data/core/ups/system/jobs", content=json.dumps(body), headers=self.J)
        assert r.status_code == 200, r.text
        self.run_jobs()
        job = self.http.get(f"/data/core/ups/system/jobs/{r.json()['id']}", headers=self.H).json()
        seconds = time.perf_counter() - t0
        assert job["status"] == "COMPLETED", job
        return {"seconds": seconds, "records": json.loads(job["metrics"])["recordsProcessed"]}

    def lookup(self, ns: str, value: str) -> int:
        return self.http.get("/data/core/ups/access/entities", params={"schema.name": "_xdm.context.profile", "entityId": value, "entityIdNS": ns}, headers=self.H).status_code

    def close(self) -> None:
        self.svc.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def run_once(folder: Path, people: int) -> dict:
    out: dict = {}
    s = Store()
    try:
        out["fill_s"], bids = s.fill(folder)
        out["batch"] = s.delete({"batchId": bids[0]})
        out["events_dataset"] = s.delete({"dataSetId": s.ds["events"]})
        assert s.lookup("crmId", "C1") == 200  # the records stay
    finally:
        s.close()
    s = Store()
    try:
        s.fill(folder)
        out["records_dataset"] = s.delete({"dataSetId": s.ds["records"]})
    finally:
        s.close()
    # Baselines: a fresh store filled with what is left after each delete.
    for key, kwargs in (("batch", {"event_batches": range(1, BATCHES)}), ("events_dataset", {"event_batches": range(0)}), ("records_dataset", {"records": False})):
        b = Store()
        try:
            out[key]["baseline_s"] = b.fill(folder, **kwargs)[0]
        finally:
            b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 200,000 people / 1,000,000 events in 10 batches")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    people, events = int(200_000 * args.scale), int(1_000_000 * args.scale)
    folder = Path(tempfile.mkdtemp(prefix="ul-bench-data-"))
    console.print(f"generating {people:,} people, {events:,} events in {BATCHES} batches ...")
    generate(folder, people, events)
    runs = []
    for i in range(args.repeats):
        runs.append(run_once(folder, people))
        console.print(f"run {i + 1}: " + ", ".join(f"{k} {v['seconds']:.2f}s ({v['records']:,} rows) vs {v['baseline_s']:.2f}s" for k, v in runs[-1].items() if isinstance(v, dict)))
    labels = {"batch": "delete 1 event batch", "events_dataset": "delete the event dataset (9 batches left)", "records_dataset": "delete the record dataset"}
    rows = []
    for key, label in labels.items():
        r = [x[key] for x in runs]
        rows.append([label, fmt_stats([x["records"] for x in r], digits=0), fmt_stats([x["seconds"] for x in r], "s", 2), fmt_stats([x["records"] / x["seconds"] for x in r], digits=0), fmt_stats([x["baseline_s"] for x in r], "s", 2), f"{statistics.median([x['baseline_s'] / x['seconds'] for x in r]):.2f}"])
    console.print(table(f"Profile-store deletes: {people:,} records + {events:,} events, median (min–max) over {args.repeats} run(s)", ["request", "recordsProcessed", "POST → COMPLETED", "rows/s", "re-ingest without it (baseline)", "ratio baseline/delete"], rows))
    console.print(f"filling the full store took {fmt_stats([x['fill_s'] for x in runs], 's')}")
    console.print(f"saved {save('delete', {'scale': args.scale, 'people': people, 'events': events, 'runs': runs})}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
