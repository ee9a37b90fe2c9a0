"""Profile export benchmark: `python bench/export.py [--people 1000000] [--repeats 3] [--sizes 250000]`.

Fills an embedded userlens (SQLite + local folder, like `make serve`) through the HTTP API with
`--people` profiles (one record each: crmId primary, an email for half of them, first name, loyalty
points, country; 10% live in "CA") and as many ExperienceEvents (people drawn at random), ingested as
Parquet, then times export jobs (the job handler, run in this process by a worker slot, from claim
to SUCCEEDED: scan, Parquet files, publication):

  (a)  all profiles, fields=identityMap,person.name.firstName,loyalty.points, with the sandbox's
       lake plan installed (built by an untimed first export after the fill: as every export finds
       it until the identity graph or the visible loads change; profiles/lakeplan.py)
  (a) after a change: the same after a one-record batch was ingested (untimed), so the export
       builds the lake plan anew (reads the identity graph from SQL, joins it to the sidecars)
  (b)  the profiles of one segment (homeAddress.country = "CA", about 10%), same fields
  (a+e), (b+e)  the same with additionalFields.eventList (eventType, timestamp)

Baseline in the same run: a bare DuckDB query over the same lake Parquet the store was fed from
(the ingested records, and events for the +e variants, joined on the primary identity) that writes
the same rows and columns to a Parquet file (zstd). It is the lower bound: no merge policy, no
identity graph, no store. Reports profiles/s, seconds, the ratio to the baseline and the export's
peak memory (VmHWM reset before each export; also shown as the growth over the RSS the process had
when the export started, which is what the export itself costs). `--sizes` adds smaller stores to show memory does not
grow with the store ((a) reads the records from the lake in executor chunks of 50,000 rows with their
plan rows; building the plan, the job's DuckDB, capped at 256 MB, joins only the parts' primary
identities to the graph; the SQL scan of the other variants reads pages of 100,000 identities).
"""

from __future__ import annotations

import argparse
import json
import os
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
from common import aep_org_in_process, console, fmt_stats, peak_rss_mb, save, table  # noqa: E402

ID_T = pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())]))
SCHEMA_R = pa.schema([
    ("identityMap", pa.map_(pa.string(), ID_T)),
    ("person", pa.struct([("name", pa.struct([("firstName", pa.string())]))])),
    ("loyalty", pa.struct([("points", pa.int64())])),
    ("homeAddress", pa.struct([("country", pa.string())])),
])
SCHEMA_E = pa.schema([("_id", pa.string()), ("timestamp", pa.string()), ("eventType", pa.string()), ("identityMap", pa.map_(pa.string(), ID_T))])
FIELDS = "identityMap,person.name.firstName,loyalty.points"


def generate(folder: Path, people: int, events: int) -> None:
    """Column-wise (numpy/Arrow) so that a million people take seconds, not minutes."""
    rng = np.random.default_rng(7)
    i = np.arange(people)
    crm = pa.array(np.char.add("C", i.astype(str)), pa.string())
    email = pa.array(np.char.add(np.char.add("p", i.astype(str)), "@example.com"), pa.string())
    two = (i % 2 == 0)
    n_ids = np.where(two, 2, 1)
    offs = np.zeros(people + 1, np.int32)
    np.cumsum(n_ids, out=offs[1:])
    keys = np.empty(offs[-1], object)
    keys[offs[:-1]] = "crmId"
    keys[offs[:-1][two] + 1] = "email"
    item_id = np.empty(offs[-1], object)
    item_id[offs[:-1]] = np.asarray(crm.to_pylist(), object)
    item_id[offs[:-1][two] + 1] = np.asarray(email.to_pylist(), object)[two]
    prim = np.zeros(offs[-1], bool)
    prim[offs[:-1]] = True
    items = pa.StructArray.from_arrays([pa.array(item_id, pa.string()), pa.array(prim)], ["id", "primary"])
    one = pa.ListArray.from_arrays(pa.array(np.arange(offs[-1] + 1, dtype=np.int32)), items)
    imap = pa.MapArray.from_arrays(pa.array(offs), pa.array(keys, pa.string()), one, type=SCHEMA_R.field("identityMap").type)
    first = pa.StructArray.from_arrays([pa.StructArray.from_arrays([pa.array(np.char.add("N", i.astype(str)), pa.string())], ["firstName"])], ["name"])
    loyalty = pa.StructArray.from_arrays([pa.array(i % 997, pa.int64())], ["points"])
    country = pa.StructArray.from_arrays([pa.array(np.where(rng.random(people) < 0.1, "CA", "US"), pa.string())], ["country"])
    pq.write_table(pa.Table.from_arrays([imap, first, loyalty, country], schema=SCHEMA_R), folder / "records.parquet", row_group_size=100_000)
    who = rng.integers(0, people, events)
    ts = 1_700_000_000 + rng.integers(0, 10_000_000, events)
    e_offs = np.arange(events + 1, dtype=np.int32)
    e_items = pa.StructArray.from_arrays([pa.array(np.char.add("C", who.astype(str)), pa.string()), pa.array(np.ones(events, bool))], ["id", "primary"])
    e_map = pa.MapArray.from_arrays(pa.array(e_offs), pa.array(["crmId"] * events, pa.string()), pa.ListArray.from_arrays(pa.array(e_offs), e_items), type=SCHEMA_E.field("identityMap").type)
    stamps = pa.array(ts * 1000, pa.int64()).cast(pa.timestamp("ms", "UTC")).cast(pa.string())
    stamps = pa.array([s.replace(" ", "T").replace("+0000", "Z").replace(".000", "") for s in stamps.to_pylist()], pa.string())
    etype = pa.array(np.where(rng.random(events) < 0.2, "commerce.purchases", "web.webpagedetails.pageViews"), pa.string())
    pq.write_table(pa.Table.from_arrays([pa.array(np.char.add("e", np.arange(events).astype(str)), pa.string()), stamps, etype, e_map], schema=SCHEMA_E), folder / "events.parquet", row_group_size=100_000)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class Store:
    """An embedded userlens filled with the generated data."""

    def __init__(self, folder: Path):
        self.data_dir, self.svc, self.http, self.H = aep_org_in_process("ul-bench-export-")
        self.J = {**self.H, "Content-Type": "application/json"}
        self.worker = self.svc.make_worker(1)
        mp = {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True}
        self.policy = self.post("/data/core/ups/config/mergePolicies", mp)["id"]
        t0 = time.perf_counter()
        for name, cls in (("records", "profile"), ("events", "experienceevent")):
            ds = self.post("/data/foundation/catalog/dataSets", {"name": name, "schemaRef": {"id": f"https://ns.adobe.com/xdm/context/{cls}"}, "tags": {"unifiedProfile": ["enabled:true"]}})[0].split("/")[-1]
            if name == "records":
                self.records = ds
            bid = self.post("/data/foundation/import/batches", {"datasetId": ds, "inputFormat": {"format": "parquet"}})["id"]
            with open(folder / f"{name}.parquet", "rb") as f:
                r = self.http.put(f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/{name}.parquet", content=iter(lambda: f.read(1 << 20), b""), headers={**self.H, "Content-Type": "application/octet-stream"})
                assert r.status_code == 201, r.text
            self.http.post(f"/data/foundation/import/batches/{bid}?action=COMPLETE", headers=self.H)
            self.drain()
            assert self.http.get(f"/data/foundation/catalog/batches/{bid}", headers=self.H).json()[bid]["status"] == "success"
        self.fill_s = time.perf_counter() - t0
        self.target = self.post("/data/foundation/catalog/dataSets", {"name": "export", "schemaRef": {"id": "https://ns.adobe.com/xdm/context/profile__union"}})[0].split("/")[-1]
        seg = {"name": "canada", "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/text", "value": 'homeAddress.country = "CA"'}, "mergePolicyId": self.policy}
        self.segment = self.post("/data/core/ups/segment/definitions", seg)["id"]
        job = self.post("/data/core/ups/segment/jobs", [{"segmentId": self.segment}])
        t0 = time.perf_counter()
        self.drain()
        self.segment_s = time.perf_counter() - t0
        done = self.http.get(f"/data/core/ups/segment/jobs/{job['id']}", headers=self.H).json()
        assert done["status"] == "SUCCEEDED", done
        self.segment_members = done["metrics"]["segmentedProfileCounter"][self.segment]
        # The first lake export builds the sandbox's lake plan; the "(a)" runs find it installed (as
        # every export does until the graph changes), "(a) after a change" runs build it anew.
        self.plan_s = self.export(False, False)["seconds"]

    def post(self, path: str, body):
        r = self.http.post(path, content=json.dumps(body), headers=self.J)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def drain(self) -> None:
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline and self.worker.run_one():
            pass

    def change(self) -> None:
        """A new batch of one new person (untimed): the identity graph's version moves, so the next
        lake export builds a new lake plan."""
        self.changes = getattr(self, "changes", 0) + 1
        rec = {"identityMap": {"crmId": [{"id": f"X{self.changes}", "primary": True}]}, "person": {"name": {"firstName": f"X{self.changes}"}}, "loyalty": {"points": 1}, "homeAddress": {"country": "US"}}
        bid = self.post("/data/foundation/import/batches", {"datasetId": self.records, "inputFormat": {"format": "json"}})["id"]
        r = self.http.put(f"/data/foundation/import/batches/{bid}/datasets/{self.records}/files/x.json", content=json.dumps(rec).encode() + b"\n", headers={**self.H, "Content-Type": "application/octet-stream"})
        assert r.status_code == 201, r.text
        self.http.post(f"/data/foundation/import/batches/{bid}?action=COMPLETE", headers=self.H)
        self.drain()

    def export(self, segment: bool, events: bool, cold: bool = False) -> dict:
        if cold:
            self.change()
        body = {"fields": FIELDS, "mergePolicy": {"id": self.policy}, "destination": {"datasetId": self.target}, "schema": {"name": "_xdm.context.profile"}}
        if segment:
            body["filter"] = {"segments": [{"segmentId": self.segment}]}
        if events:
            body["additionalFields"] = {"eventList": {"fields": "eventType,timestamp"}}
        job = self.post("/data/core/ups/export/jobs", body)
        reset_peak_rss()
        before = rss_mb()
        t0 = time.perf_counter()
        self.drain()
        seconds = time.perf_counter() - t0
        peak = peak_rss_mb(os.getpid())
        done = self.http.get(f"/data/core/ups/export/jobs/{job['id']}", headers=self.H).json()
        assert done["status"] == "SUCCEEDED", done
        return {"seconds": seconds, "profiles": done["metrics"]["totalExportedProfileCounter"], "peak_mb": peak, "extra_mb": peak - before}

    def close(self) -> None:
        self.svc.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def baseline(folder: Path, segment: bool, events: bool) -> dict:
    """Bare DuckDB: the same rows and columns from the lake Parquet, written to one Parquet file."""
    import duckdb

    out = folder / "baseline.parquet"
    where = "WHERE r.homeAddress.country = 'CA'" if segment else ""
    cols = "r.identityMap, {'name': {'firstName': r.person.name.firstName}} AS person, {'points': r.loyalty.points} AS loyalty"
    if events:
        q = (
            f"WITH e AS (SELECT identityMap['crmId'][1].id AS crm, list({{'eventType': eventType, 'timestamp': timestamp}} ORDER BY timestamp) AS eventList FROM read_parquet('{folder}/events.parquet') GROUP BY 1)"
            f" SELECT {cols}, e.eventList FROM read_parquet('{folder}/records.parquet') r LEFT JOIN e ON e.crm = r.identityMap['crmId'][1].id {where}"
        )
    else:
        q = f"SELECT {cols} FROM read_parquet('{folder}/records.parquet') r {where}"
    con = duckdb.connect()
    reset_peak_rss()
    before = rss_mb()
    t0 = time.perf_counter()
    con.execute(f"COPY ({q}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
    seconds = time.perf_counter() - t0
    n = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
    con.close()
    out.unlink()
    return {"seconds": seconds, "profiles": n, "peak_mb": peak_rss_mb(os.getpid()), "extra_mb": peak_rss_mb(os.getpid()) - before}


VARIANTS = [("(a) all", False, False, False), ("(a) all, after a change (builds the lake plan)", False, False, True), ("(b) segment ~10%", True, False, False), ("(a+e) all + eventList", False, True, False), ("(b+e) segment + eventList", True, True, False)]


def run_size(people: int, repeats: int, variants) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="ul-bench-export-data-"))
    console.print(f"generating {people:,} people and {people:,} events ...")
    generate(folder, people, people)
    console.print("filling the store through the API ...")
    store = Store(folder)
    console.print(f"filled in {store.fill_s:.1f}s; segment job over {people:,} profiles: {store.segment_s:.1f}s ({store.segment_members:,} members)")
    res: dict = {"fill_s": store.fill_s, "segment_job_s": store.segment_s, "segment_members": store.segment_members, "plan_s": store.plan_s, "variants": {}}
    for name, seg, ev, cold in variants:
        runs, base = [], []
        for _ in range(repeats):
            base.append(baseline(folder, seg, ev))
            runs.append(store.export(seg, ev, cold))
            console.print(f"  {name}: userlens {runs[-1]['seconds']:.2f}s ({runs[-1]['profiles']:,} profiles, {runs[-1]['peak_mb']:.0f} MiB), DuckDB {base[-1]['seconds']:.2f}s ({base[-1]['profiles']:,} rows)")
        res["variants"][name] = {"userlens": runs, "baseline": base}
    store.close()
    shutil.rmtree(folder, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--people", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=str, default="250000", help="smaller stores (comma-separated) for the memory comparison, variant (a) only; '' for none")
    ap.add_argument("--no-events", action="store_true", help="skip the eventList variants")
    args = ap.parse_args()
    variants = [v for v in VARIANTS if not (args.no_events and v[2])]
    results = {"people": args.people, "main": run_size(args.people, args.repeats, variants), "sizes": {}}
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
        results["sizes"][size] = run_size(size, args.repeats, variants[:2])
    rows = []
    for name, _, _, _ in variants:
        r = results["main"]["variants"][name]
        u, b = r["userlens"], r["baseline"]
        ratio = statistics.median(x["seconds"] for x in u) / statistics.median(x["seconds"] for x in b)
        rows.append([f"{name}: userlens export job", fmt_stats([x["seconds"] for x in u], "s", 2), fmt_stats([x["profiles"] / x["seconds"] for x in u], digits=0), fmt_stats([x["peak_mb"] for x in u], " MiB", 0), fmt_stats([x.get("extra_mb", float("nan")) for x in u], " MiB", 0), f"{ratio:.2f}x"])
        rows.append([f"{name}: bare DuckDB query (baseline)", fmt_stats([x["seconds"] for x in b], "s", 2), fmt_stats([x["profiles"] / x["seconds"] for x in b], digits=0), fmt_stats([x["peak_mb"] for x in b], " MiB", 0), fmt_stats([x.get("extra_mb", float("nan")) for x in b], " MiB", 0), "1.00x"])
    for size, r in results["sizes"].items():
        for name, _, _, cold in VARIANTS[:2]:
            u = r["variants"][name]["userlens"]
            label = f"(a){' after a change' if cold else ''} with {size:,} profiles in the store"
            rows.append([label, fmt_stats([x["seconds"] for x in u], "s", 2), fmt_stats([x["profiles"] / x["seconds"] for x in u], digits=0), fmt_stats([x["peak_mb"] for x in u], " MiB", 0), fmt_stats([x.get("extra_mb", float("nan")) for x in u], " MiB", 0), ""])
    console.print(table(f"Profile export, {args.people:,} profiles + {args.people:,} events (SQLite + local folder), median (min–max) over {args.repeats} run(s)", ["run", "seconds", "profiles/s", "peak RSS", "peak − RSS before", "time ratio to baseline"], rows))
    console.print(f"store filled in {results['main']['fill_s']:.1f}s; segment job {results['main']['segment_job_s']:.1f}s; first export (builds the lake plan) {results['main']['plan_s']:.2f}s")
    console.print(f"saved {save('export', results)}")


if __name__ == "__main__":
    main()
