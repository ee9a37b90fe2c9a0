"""Batch ingestion and segment evaluation on Ray (issue 10): the same inputs give the same outcome
with USERLENS_EXECUTOR=local and =ray (batch status, counts, rejected rows, lake parts, merged
profiles and their events, segment membership over two evaluations), a bad file fails through Ray
with its documented code, and cancelling a segment job on Ray publishes nothing."""

from __future__ import annotations

import io
import json
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import EVENT, aep_env, ev
from infra.jobs import drain_jobs

DEF = "/data/core/ups/segment/definitions"
JOBS = "/data/core/ups/segment/jobs"
ENT = "/data/core/ups/access/entities"
MP = "/data/core/ups/config/mergePolicies"
SEGMENTS = {
    "us-adults": 'homeAddress.country = "US" and person.age >= 18',
    "buyers": 'select X from xEvent where X.eventType = "commerce.purchases"',
}


def person(i: int, country: str = "US", age: int = 30, link: str | None = None) -> dict:
    ids = {"crmId": [{"id": f"C{i}", "primary": True}], "email": [{"id": f"p{i}@x.com"}]}
    if link:  # an identity another file's row holds too: the graph merges the two
        ids["loyaltyId"] = [{"id": link}]
    return {"identityMap": ids, "person": {"name": {"firstName": f"N{i}"}, "age": age}, "homeAddress": {"country": country}}


def lines(rows: list) -> bytes:
    return b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in rows)


def batch(env, dataset_id: str, files: dict[str, bytes], fmt: str = "json", threshold: int | None = None) -> dict:
    c = env.client
    bid = c.batch(dataset_id, fmt, **({"partialIngestionPercentage": threshold} if threshold else {}))
    for path, data in files.items():
        c.upload(bid, dataset_id, path, data)
    c.post(f"/data/foundation/import/batches/{bid}", params={"action": "COMPLETE"}, expect=200)
    env.run_jobs()
    b = c.get_batch(bid)
    listing = c.get(f"/data/foundation/export/batches/{bid}/files")["data"]
    names = sorted(n["name"] for f in listing for n in c.get(f"/data/foundation/export/files/{f['dataSetFileId']}")["data"])
    metrics = {k: v for k, v in (b.get("metrics") or {}).items() if k not in ("startTime", "endTime")}
    return {"status": b["status"], "records": b.get("recordCount"), "failed": b.get("failedRecordCount"), "errors": b.get("errors"), "metrics": metrics, "files": names}


def profile(c, ns: str, value: str) -> dict | None:
    r = c.request("GET", ENT, params={"schema.name": "_xdm.context.profile", "entityId": value, "entityIdNS": ns})
    if r.status_code == 404:
        return None
    (p,) = r.json().values()
    return {"entity": p["entity"], "identities": sorted(json.dumps(i, sort_keys=True) for i in p.get("identities") or p["entity"].get("identities") or [])}


def events_of(c, ns: str, value: str) -> list:
    params = {"schema.name": "_xdm.context.experienceevent", "relatedSchema.name": "_xdm.context.profile", "relatedEntityId": value, "relatedEntityIdNS": ns, "limit": 100}
    return sorted((e["entity"]["_id"], e["timestamp"]) for e in c.get(ENT, params=params)["children"])


def run_segments(env, ids: dict[str, str]) -> dict:
    c = env.client
    job = c.post(JOBS, [{"segmentId": i} for i in ids.values()], expect=200)
    env.run_jobs()
    m = c.get(f"{JOBS}/{job['id']}")
    assert m["status"] == "SUCCEEDED", m
    by_name = {v: k for k, v in ids.items()}
    metrics = m["metrics"]
    return {
        "total": metrics["totalProfiles"],
        "qualified": {by_name[k]: v for k, v in metrics["segmentedProfileCounter"].items()},
        "by_status": {by_name[k]: v for k, v in metrics["segmentedProfileByStatusCounter"].items()},
        "by_ns": {by_name[k]: v for k, v in metrics["segmentedProfileByNamespaceCounter"].items()},
    }


def membership(c, ids: dict[str, str], n: int) -> dict:
    """Each person's memberships by segment name: (status, whether the time is set)."""
    by_name = {v: k for k, v in ids.items()}
    out = {}
    for i in range(1, n + 1):
        r = c.request("GET", ENT, params={"schema.name": "_xdm.context.profile", "entityId": f"C{i}", "entityIdNS": "crmId"})
        if r.status_code == 404:
            out[i] = None
            continue
        (p,) = r.json().values()
        ups = p["entity"].get("segmentMembership", {}).get("ups", {})
        out[i] = {by_name[k]: (v["status"], v["lastQualificationTime"].endswith("Z")) for k, v in ups.items()}
    return out


def scenario(env) -> dict:
    """Ingestion (JSON records over two files with bad rows, Parquet, events over two files, a batch
    over the failure threshold) and two segment evaluations; returns what a client sees."""
    c = env.client
    env.svc.ingest.chunk_rows = 4  # several lake parts per file
    env.svc.segments.chunk_profiles = 3  # several executor chunks per scan page
    c.post(MP, {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True}, expect=200)
    crm, web = c.dataset("crm"), c.dataset("web", EVENT)
    out: dict = {}
    a = [person(i, "US" if i % 3 else "FR", 5 + 2 * i, link="L1" if i == 2 else None) for i in range(1, 21)] + ["{not json", {"person": {"age": 3}}]
    b = [person(i, "US", 40, link="L1" if i == 21 else None) for i in range(21, 41)] + [{"identityMap": {"crmId": [{"id": "", "primary": True}]}}]
    out["records"] = batch(env, crm, {"a.json": lines(a), "b.json": lines(b)})
    env.svc.ingest.parquet_chunk_rows = 4  # a Parquet file of 3 row groups of 3 rows: chunks of 2 groups, 1 group
    rows = [person(i, "CA", 50) for i in range(41, 50)]
    rows[7]["identityMap"]["crmId"][0]["id"] = ""  # row 8, in the second chunk
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=3)
    out["parquet"] = batch(env, crm, {"p.parquet": buf.getvalue()}, "parquet", threshold=20)
    cid = lambda i: {"crmId": [{"id": f"C{i}", "primary": True}]}  # noqa: E731
    e1 = [ev(f"e{i}", f"2024-01-0{1 + i % 5}T00:00:00Z", cid(i % 7 + 1), eventType="commerce.purchases" if i % 2 else "web.pageViews") for i in range(12)]
    e2 = [ev(f"f{i}", f"2024-02-0{1 + i % 5}T00:00:00Z", cid(i % 5 + 1), eventType="web.pageViews") for i in range(9)] + [{"_id": "x", "timestamp": "never"}]
    out["events"] = batch(env, web, {"e1.json": lines(e1), "e2.json": lines(e2)})
    out["over_threshold"] = batch(env, crm, {"bad.json": lines([person(50), "nope", "nope", {"x": 1}])})
    out["profiles"] = {f"{ns}:{v}": profile(c, ns, v) for ns, v in [("crmId", "C1"), ("crmId", "C2"), ("loyaltyId", "L1"), ("crmId", "C21"), ("crmId", "C42"), ("crmId", "C48"), ("crmId", "C50")]}
    out["events_of"] = {i: events_of(c, "crmId", f"C{i}") for i in (1, 2, 5)}
    ids = {name: c.post(DEF, {"name": name, "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/text", "value": pql}}, expect=200)["id"] for name, pql in SEGMENTS.items()}
    out["segments_1"] = run_segments(env, ids)
    out["members_1"] = membership(c, ids, 49)
    # Person 7 moves to France, person 4 comes of age: exited / realized / existing.
    batch(env, crm, {"c.json": lines([person(7, "FR", 40), person(4, "US", 30)])})
    out["segments_2"] = run_segments(env, ids)
    out["members_2"] = membership(c, ids, 49)
    return out


@pytest.mark.timeout(600)
def test_ingestion_and_segments_on_ray_equal_local(backend, ray_cluster):
    with aep_env(backend) as env:
        local = scenario(env)
    with aep_env(backend, org="ray-org", executor="ray") as env:
        assert env.svc.executor.name == "ray"
        on_ray = scenario(env)
    # What the local executor gives is what the row rules said before chunks (checked here, not
    # just equality): row numbers per file, the threshold, graph merge across files.
    rec = local["records"]
    assert rec["status"] == "success" and (rec["records"], rec["failed"]) == (40, 3)
    assert [(e["code"], e["file"], e["rows"]) for e in rec["errors"]] == [("INGEST-1207-400", "a.json", ["21"]), ("INGEST-1201-400", "a.json", ["22"]), ("INGEST-1202-400", "b.json", ["21"])]
    assert rec["files"] == [f"part-{n:05d}.parquet" for n in (0, 1, 2, 3, 4, 10000, 10001, 10002, 10003, 10004)]  # 5 parts a file, numbered by file
    over = local["over_threshold"]
    assert over["status"] == "failed" and [(e["code"], e.get("rows")) for e in over["errors"]] == [("INGEST-1299-400", None), ("INGEST-1207-400", ["2-3"]), ("INGEST-1201-400", ["4"])]
    assert local["events"]["status"] == "success" and (local["events"]["records"], local["events"]["failed"]) == (21, 1)
    assert local["profiles"]["loyaltyId:L1"] is not None and local["profiles"]["loyaltyId:L1"] == local["profiles"]["crmId:C2"] == local["profiles"]["crmId:C21"]  # one graph over two files
    par = local["parquet"]
    assert (par["status"], par["records"], par["failed"]) == ("success", 8, 1) and [(e["file"], e["rows"]) for e in par["errors"]] == [("p.parquet", ["8"])]
    assert par["files"] == [f"part-{n:05d}.parquet" for n in (0, 1, 10000)]  # chunk 0: rows 1-4, 5-6; chunk 1: rows 7-9
    assert local["profiles"]["crmId:C42"] is not None and local["profiles"]["crmId:C48"] is None and local["profiles"]["crmId:C50"] is None  # a rejected row; a batch that failed whole
    assert local["events_of"][1] and local["events_of"][2]
    assert local["segments_1"]["total"] == 47 and local["segments_1"]["qualified"] == {"us-adults": 30, "buyers": 6}
    assert local["members_1"][7] == {"us-adults": ("realized", True)} and local["members_1"][4] == {"buyers": ("realized", True)}
    assert local["segments_2"]["by_status"]["us-adults"] == {"realized": 1, "existing": 29, "exited": 1}
    assert local["members_2"][7]["us-adults"] == ("exited", True) and local["members_2"][4]["us-adults"] == ("realized", True)
    for key in local:
        assert on_ray[key] == local[key], key


def test_a_bad_file_through_ray_fails_with_its_code(backend, ray_cluster):
    with aep_env(backend, executor="ray") as env:
        c = env.client
        crm = c.dataset("crm")
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([person(i) for i in range(20)]), buf)
        out = batch(env, crm, {"good.parquet": buf.getvalue(), "truncated.parquet": buf.getvalue()[:-100]}, "parquet")
        assert out["status"] == "failed" and out["errors"][0]["code"] == "INGEST-1290-400"
        assert "truncated.parquet" in out["errors"][0]["description"] and out["files"] == []
        # Nothing of the failed attempt is left in the lake (the good file's parts included).
        assert not [o.key for o in env.svc.store.list(env.svc.settings.internal_bucket, "aep/") if "/lake/" in o.key]


def test_cancelling_a_segment_job_on_ray_publishes_nothing(backend, ray_cluster):
    with aep_env(backend, executor="ray", fault_slow_chunk_ms=1500) as env:
        c = env.client
        env.svc.segments.chunk_profiles = 2  # 6 slow chunks on 2 Ray CPUs
        crm = c.dataset("crm")
        batch(env, crm, {"a.json": lines([person(i) for i in range(1, 13)])})
        seg = c.post(DEF, {"name": "all", "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/text", "value": "person.age.exists()"}}, expect=200)
        job = c.post(JOBS, [{"segmentId": seg["id"]}], expect=200)
        runner = threading.Thread(target=drain_jobs, args=(env.svc, 120.0), daemon=True)
        runner.start()
        deadline = time.monotonic() + 60
        while c.get(f"{JOBS}/{job['id']}")["status"] != "PROCESSING" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # Ray tasks are running
        assert c.request("DELETE", f"{JOBS}/{job['id']}").status_code == 204
        runner.join(120)
        assert not runner.is_alive()
        done = c.get(f"{JOBS}/{job['id']}")
        assert done["status"] == "CANCELLED" and "segmentedProfileCounter" not in done["metrics"]
        assert env.svc.queue.get(done["computeJobId"]).status == "cancelled"
        (p,) = c.get(ENT, params={"schema.name": "_xdm.context.profile", "entityId": "C1", "entityIdNS": "crmId"}).values()
        assert "segmentMembership" not in p["entity"]
