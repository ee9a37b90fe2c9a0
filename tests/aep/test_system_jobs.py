"""Profile system jobs (delete requests, §4.1): bodies and status paths (ERROR included), the legacy
400 of a record dataset's batch, duplicates, list paging and sorting, what a completed delete leaves
(compared with a sandbox that never had the data, with graphs recomputed both ways), removal of a
request, two deletes at once, a reader that sees a profile whole before or whole after, and a worker
killed in the middle of a delete. (aepp: tests/aep/test_aepp_client.py; segments and export after a
delete: tests/aep/test_delete_segments_export.py.)"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest
from sqlalchemy import func, select

from conftest import EVENT, ev, ident
from infra.workers import start_worker, stop
from userlens.jobs.models import Job
from userlens.profiles.models import EventGroup, Identity, ProfileFragment, StoreLoad
from userlens.profiles.system_jobs import StoreDeletion

SJ = "/data/core/ups/system/jobs"
ENT = "/data/core/ups/access/entities"
T = 1_700_000_000_000


def profile(c, ns, value, expect=200):
    r = c.request("GET", ENT, params={"schema.name": "_xdm.context.profile", "entityId": value, "entityIdNS": ns})
    assert r.status_code == expect, r.text
    return next(iter(r.json().values())) if expect == 200 else r.json()


def events_of(c, ns, value) -> list[str]:
    q = {"schema.name": "_xdm.context.experienceevent", "relatedSchema.name": "_xdm.context.profile", "relatedEntityId": value, "relatedEntityIdNS": ns}
    return sorted(e["entityId"] for e in c.get(ENT, params=q)["children"])


def members(c, ns, value) -> set[str]:
    body = profile(c, ns, value)
    return {f"{k}:{i['id']}" for k, ids in body["entity"]["identityMap"].items() for i in ids}


def sandbox_of(c, dataset_id: str) -> str:
    return c.get("/data/foundation/catalog/dataSets")[dataset_id]["sandboxId"]


def count(aep, model, *where) -> int:
    with aep.svc.db.session() as s:
        return s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def graph(aep, sandbox_id: str) -> set[tuple[str, str]]:
    with aep.svc.db.session() as s:
        return set(s.execute(select(Identity.ikey, Identity.xid).where(Identity.sandbox_id == sandbox_id)).all())


def wait_status(c, rid: str, statuses=("COMPLETED", "ERROR"), timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = c.get(f"{SJ}/{rid}")
        if body["status"] in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"request {rid} still {body['status']}")


def pdg(c) -> None:
    """A default merge policy that stitches graphs (the built-in one looks at one identity)."""
    c.post("/data/core/ups/config/mergePolicies", {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True}, expect=200)


def build(aep, c, with_deleted: bool) -> dict:
    """People (records), extra (records: links and attributes that only it gives), web events in two
    batches (the first links an ECID and brings a person of its own). `with_deleted=False` ingests only
    what survives deleting `extra` and the first web batch."""
    pdg(c)
    people, extra, web = c.dataset("people"), c.dataset("extra"), c.dataset("web", EVENT)
    aep.ingest(people, [
        {"identityMap": {"crm": [{"id": "a", "primary": True}], "email": [{"id": "a@x"}]}, "person": {"name": {"firstName": "Ann"}}},
        {"identityMap": {"crm": [{"id": "b", "primary": True}]}, "person": {"name": {"firstName": "Bob"}}},
    ], client=c)
    out = {"people": people, "extra": extra, "web": web}
    if with_deleted:
        aep.ingest(extra, [
            {"identityMap": {"crm": [{"id": "a", "primary": True}], "phone": [{"id": "555"}]}, "loyalty": {"tier": "gold"}},
            {"identityMap": {"crm": [{"id": "c", "primary": True}]}, "person": {"name": {"firstName": "Cy"}}},
            {"identityMap": {"crm": [{"id": "b", "primary": True}], "email": [{"id": "a@x"}]}, "person": {"name": {"firstName": "Bobby"}}},
        ], client=c)
        out["b1"] = aep.ingest(web, [ev("e1", T, {"crm": [{"id": "a", "primary": True}], "device": [{"id": "D1"}]}), ev("e2", T + 1, ident("crm", "z", True))], client=c)["id"]
    out["b2"] = aep.ingest(web, [ev("e3", T + 2, ident("crm", "a", True)), ev("e4", T + 3, ident("crm", "b", True))], client=c)["id"]
    assert all(c.get_batch(out[b])["status"] == "success" for b in ("b1", "b2") if b in out)
    return out


def assert_same_store(aep, c, ref, mine: dict, theirs: dict) -> None:
    """The sandbox after its deletes equals one that never had the data: graph (XIDs too: they are
    the smallest native XID of each graph), counts, profiles and events."""
    sb, ref_sb = sandbox_of(c, mine["people"]), sandbox_of(ref, theirs["people"])
    assert graph(aep, sb) == graph(aep, ref_sb)
    assert aep.svc.profile_store.counts(sb) == aep.svc.profile_store.counts(ref_sb)
    for client in (c, ref):
        assert members(client, "crm", "a") == {"crm:a", "email:a@x"}
        assert members(client, "crm", "b") == {"crm:b"}
        assert profile(client, "crm", "a")["entity"].get("loyalty") is None
        assert profile(client, "crm", "b")["entity"]["person"]["name"]["firstName"] == "Bob"
        profile(client, "crm", "c", expect=404)
        profile(client, "crm", "z", expect=404)
        profile(client, "phone", "555", expect=404)
        profile(client, "device", "D1", expect=404)
        assert events_of(client, "crm", "a") == ["e3"] and events_of(client, "crm", "b") == ["e4"]


# regraph reads few graphs by key and many by one pass over the sandbox: test both ways
BY_KEY, BY_SCAN = 0, 10**9


@pytest.fixture(params=[BY_KEY, BY_SCAN], ids=["regraph-by-key", "regraph-by-scan"])
def regraph_mode(request, aep, monkeypatch):
    monkeypatch.setattr(aep.svc.profile_store, "regraph_scan_ratio", request.param)
    return request.param


def test_dataset_and_batch_delete_bodies_status_path_and_what_is_left(aep, regraph_mode):
    c = aep.client
    d = build(aep, c, with_deleted=True)
    assert members(c, "crm", "a") == {"crm:a", "email:a@x", "phone:555", "device:D1", "crm:b"}  # before: one graph through a@x
    r = c.request("POST", SJ, body={"dataSetId": d["extra"]})
    assert r.status_code == 200, r.text
    job = r.json()
    assert set(job) == {"id", "imsOrgId", "dataSetId", "jobType", "status", "createEpoch", "updateEpoch"}
    assert uuid.UUID(job["id"]) and job["imsOrgId"] == c.org_id and job["dataSetId"] == d["extra"]
    assert (job["jobType"], job["status"]) == ("DELETE", "NEW")
    assert abs(job["createEpoch"] - time.time()) < 60 and job["updateEpoch"] >= job["createEpoch"]
    assert c.get(f"{SJ}/{job['id']}") == job  # NEW until a worker takes it
    batch_job = c.post(SJ, {"batchId": d["b1"]}, expect=200)
    assert set(batch_job) == {"id", "imsOrgId", "batchId", "jobType", "status", "createEpoch", "updateEpoch"} and batch_job["batchId"] == d["b1"]
    aep.run_jobs()
    done = c.get(f"{SJ}/{job['id']}")
    assert set(done) == set(job) | {"metrics"} and done["status"] == "COMPLETED"
    assert isinstance(done["metrics"], str) and json.loads(done["metrics"]) == {"recordsProcessed": 3, "timeTakenInSec": json.loads(done["metrics"])["timeTakenInSec"]}
    assert json.loads(c.get(f"{SJ}/{batch_job['id']}")["metrics"])["recordsProcessed"] == 2
    # Nothing of the retired loads is left in SQL; the lake keeps both batches.
    assert count(aep, StoreLoad, StoreLoad.dataset_id == d["extra"]) == 0 and count(aep, StoreLoad, StoreLoad.batch_id == d["b1"]) == 0
    assert count(aep, StoreDeletion) == 0
    assert c.get_batch(d["b1"])["status"] == "success"
    files = c.get(f"/data/foundation/export/batches/{d['b1']}/files")["data"]
    assert files and c.request("GET", f"/data/foundation/export/files/{files[0]['dataSetFileId']}").status_code == 200
    ref = aep.new_org()
    assert_same_store(aep, c, ref, d, build(aep, ref, with_deleted=False))
    # Removing a finished request: 200 with an empty body, then 404.
    r = c.request("DELETE", f"{SJ}/{job['id']}")
    assert (r.status_code, r.content) == (200, b"")
    r = c.request("GET", f"{SJ}/{job['id']}")
    assert r.status_code == 404 and r.json()["errors"]["404"][0]["message"] == "Delete request (Profile System Job) not found"
    assert c.request("DELETE", f"{SJ}/{job['id']}").status_code == 404


def test_batch_of_a_record_dataset_gets_the_legacy_400_body(aep):
    c = aep.client
    people = c.dataset("people")
    bid = aep.ingest(people, [{"identityMap": ident("crm", "a", True)}])["id"]
    r = c.request("POST", SJ, body={"batchId": bid})
    assert r.status_code == 400
    body = r.json()
    assert list(body) == ["requestId", "errors"] and uuid.UUID(body["requestId"])
    assert body["errors"] == {"400": [{"code": "500", "message": f"Batch can only be specified for EE type '{bid}'"}]}
    assert count(aep, Job, Job.kind == "aep.profile_delete") == 0


def test_errors_duplicates_and_isolation(aep):
    c = aep.client
    web = c.dataset("web", EVENT)
    bid = aep.ingest(web, [ev("e1", T, ident("crm", "a", True))])["id"]
    for body, status in (({"dataSetId": "0" * 24}, 404), ({"batchId": "NOSUCHBATCH"}, 404), ({}, 400), ({"dataSetId": 5}, 400), ([web], 400)):
        r = c.request("POST", SJ, body=body)
        assert r.status_code == status, (body, r.text)
        assert str(status) in r.json()["errors"]
    r = c.request("POST", SJ, content=b'{"dataSetId": "x"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 400
    r = c.request("POST", SJ, body={"datasetId": web, "batchId": "OTHER"})  # Gen-2 body, batch not in that dataset
    assert r.status_code == 404
    first = c.post(SJ, {"dataSetId": web}, expect=200)
    dup = c.request("POST", SJ, body={"dataSetId": web})
    assert dup.status_code == 422 and "already exists" in dup.json()["errors"]["422"][0]["message"]
    assert c.post(SJ, {"batchId": bid}, expect=200)["status"] == "NEW"  # another target: not a duplicate
    assert c.request("POST", SJ, body={"batchId": bid}).status_code == 422
    other = aep.new_org()
    assert other.request("GET", f"{SJ}/{first['id']}").status_code == 404
    assert other.request("POST", SJ, body={"dataSetId": web}).status_code == 404
    assert other.get(SJ)["_page"]["count"] == 0
    aep.run_jobs()
    assert c.get(f"{SJ}/{first['id']}")["status"] == "COMPLETED"
    assert c.post(SJ, {"dataSetId": web}, expect=200)["status"] == "NEW"  # finished: a new request is fine


def test_list_paging_and_sorting(aep):
    c = aep.client
    ds = [c.dataset(f"ds{i}") for i in range(5)]
    ids = []
    for d in ds:
        ids.append(c.post(SJ, {"dataSetId": d}, expect=200)["id"])
        time.sleep(0.01)
    full = c.get(SJ)
    assert full["_page"] == {"count": 5, "next": ""} and len(full["children"]) == 5
    assert [j["createEpoch"] for j in full["children"]] == sorted((j["createEpoch"] for j in full["children"]), reverse=True)
    # Follow `next` both ways: as ?start= and in place of the id (the docs' wording).
    seen, page = [], c.get(SJ, params={"limit": 2, "sort": "dataSetId:asc"})
    assert page["_page"]["count"] == 5 and page["_page"]["next"]
    while True:
        seen += [j["dataSetId"] for j in page["children"]]
        nxt = page["_page"]["next"]
        if not nxt:
            break
        page = c.get(f"{SJ}/{nxt}") if len(seen) == 2 else c.get(SJ, params={"start": nxt})
    assert seen == sorted(ds)
    desc = [j["dataSetId"] for j in c.get(SJ, params={"sort": "dataSetId:desc"})["children"]]
    assert desc == sorted(ds, reverse=True)
    # page is 0-based in pages of `limit`; start is an offset
    assert [j["dataSetId"] for j in c.get(SJ, params={"sort": "dataSetId:asc", "limit": 2, "page": 1})["children"]] == sorted(ds)[2:4]
    assert [j["dataSetId"] for j in c.get(SJ, params={"sort": "dataSetId:asc", "start": 4})["children"]] == sorted(ds)[4:]
    assert {j["id"] for j in c.get(SJ, params={"sort": "id:asc"})["children"]} == set(ids)
    for bad in ({"sort": "nope:asc"}, {"sort": "id:sideways"}, {"limit": 0}, {"limit": 101}, {"start": -1}, {"start": "!!"}, {"page": "x"}):
        r = c.request("GET", SJ, params=bad)
        assert r.status_code == 400, bad


def test_removing_a_new_request_cancels_it_and_deletes_nothing(aep):
    c = aep.client
    people = c.dataset("people")
    aep.ingest(people, [{"identityMap": ident("crm", "a", True), "person": {"name": {"firstName": "Ann"}}}])
    rid = c.post(SJ, {"dataSetId": people}, expect=200)["id"]
    assert c.request("DELETE", f"{SJ}/{rid}").status_code == 200
    aep.run_jobs()
    assert profile(c, "crm", "a")["entity"]["person"]["name"]["firstName"] == "Ann"
    assert aep.svc.queue.get(rid).status == "cancelled"
    assert c.post(SJ, {"dataSetId": people}, expect=200)["status"] == "NEW"  # no longer a duplicate


def test_two_deletes_at_once_on_overlapping_graphs(aep, regraph_mode):
    c = aep.client
    d = build(aep, c, with_deleted=True)
    rids = [c.post(SJ, {"dataSetId": d["extra"]}, expect=200)["id"], c.post(SJ, {"batchId": d["b1"]}, expect=200)["id"]]
    worker = aep.svc.make_worker(2)
    worker.start()
    try:
        done = [wait_status(c, rid) for rid in rids]
    finally:
        worker.stop()
    assert [j["status"] for j in done] == ["COMPLETED", "COMPLETED"]
    assert [json.loads(j["metrics"])["recordsProcessed"] for j in done] == [3, 2]
    ref = aep.new_org()
    assert_same_store(aep, c, ref, d, build(aep, ref, with_deleted=False))


# -- a worker process killed mid-delete --------------------------------------------------------------


def processed(aep, rid: str) -> int:
    from userlens.profiles.system_jobs import SystemJob

    with aep.svc.db.session() as s:
        return s.get(SystemJob, rid).records_processed


def test_a_worker_killed_mid_delete_is_finished_by_another(aep, tmp_path):
    c = aep.client
    pdg(c)
    people, web = c.dataset("people"), c.dataset("web", EVENT)
    n = 24
    aep.ingest(people, [{"identityMap": {"crm": [{"id": f"p{i}", "primary": True}], "email": [{"id": f"p{i}@x"}]}, "person": {"name": {"firstName": f"P{i}"}}} for i in range(n)])
    aep.ingest(web, [ev(f"e{i}", T + i, ident("crm", f"p{i}", True)) for i in range(n)])
    rid = c.post(SJ, {"dataSetId": people}, expect=200)["id"]
    slow = {"USERLENS_DELETE_CHUNK_ROWS": 3, "USERLENS_FAULT_SLOW_CHUNK_MS": 250}
    a = start_worker(aep.svc.settings, tmp_path / "a.log", **slow)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not processed(aep, rid):
            time.sleep(0.02)
        os.kill(a.pid, signal.SIGKILL)
        a.wait(10)
    finally:
        stop(a)
    left = count(aep, ProfileFragment)
    assert 0 < processed(aep, rid) < n and 0 < left < n, (tmp_path / "a.log").read_text()[-2000:]
    # Mid-purge, readers already see the store without the dataset: no half-deleted profile.
    assert c.get(f"{SJ}/{rid}")["status"] == "PROCESSING"
    for i in (0, n - 1):
        profile(c, "email", f"p{i}@x", expect=404)
        body = profile(c, "crm", f"p{i}")
        assert "person" not in body["entity"] and set(body["entity"]["identityMap"]) == {"crm"}
        assert events_of(c, "crm", f"p{i}") == [f"e{i}"]
    b = start_worker(aep.svc.settings, tmp_path / "b.log", **slow)
    try:
        done = wait_status(c, rid, timeout=90)
    finally:
        stop(b)
    assert done["status"] == "COMPLETED", (tmp_path / "b.log").read_text()[-2000:]
    assert json.loads(done["metrics"])["recordsProcessed"] == n  # each row counted once across both attempts
    assert aep.svc.queue.get(rid).attempts == 2
    assert count(aep, ProfileFragment) == 0 and count(aep, StoreDeletion) == 0 and count(aep, StoreLoad, StoreLoad.dataset_id == people) == 0
    assert count(aep, EventGroup) == n



def test_a_failed_delete_is_error_and_frees_its_target(aep, monkeypatch):
    c = aep.client
    people = c.dataset("people")
    aep.ingest(people, [{"identityMap": ident("crm", "a", True)}])
    from userlens.jobs.engine import JobFailure

    def broken(*_args, **_kwargs):
        raise JobFailure("COMMON_ERROR", "the store refused")

    monkeypatch.setattr(aep.svc.profile_store, "retire_loads", broken)
    rid = c.post(SJ, {"dataSetId": people}, expect=200)["id"]
    aep.run_jobs()
    job = c.get(f"{SJ}/{rid}")
    assert job["status"] == "ERROR" and json.loads(job["metrics"])["recordsProcessed"] == 0
    assert profile(c, "crm", "a")["entity"]["identityMap"] == {"crm": [{"id": "a", "primary": True}]}  # step 1 rolled back
    assert count(aep, StoreDeletion) == 0
    monkeypatch.undo()
    assert c.post(SJ, {"dataSetId": people}, expect=200)["status"] == "NEW"  # not a duplicate of a failed one


def test_a_job_the_engine_gave_up_on_reads_as_error(aep):
    """A worker that dies on the job's last attempt: the engine fails the job when the lease runs
    out, without the kind's on_fail hook; the request then reads as ERROR."""
    from sqlalchemy import update

    c = aep.client
    people = c.dataset("people")
    rid = c.post(SJ, {"dataSetId": people}, expect=200)["id"]
    with aep.svc.db.session() as s:
        s.execute(update(Job).where(Job.id == rid).values(status="failed", fail_message="COMMON_ERROR", fail_detail="worker lost during attempt 10 of 10 (lease expired)"))
    assert c.get(f"{SJ}/{rid}")["status"] == "ERROR"
    assert c.get(SJ)["children"][0]["status"] == "ERROR"
    assert c.post(SJ, {"dataSetId": people}, expect=200)["status"] == "NEW"


def test_readers_see_the_profile_whole_before_or_whole_after(aep, monkeypatch):
    """A reader polling a profile while its data is deleted (purged one row at a time, slowly) sees
    exactly one of two states: all of it, or none of it."""
    c = aep.client
    d = build(aep, c, with_deleted=True)
    monkeypatch.setattr(aep.svc.settings, "delete_chunk_rows", 1)
    monkeypatch.setattr(aep.svc.settings, "fault_slow_chunk_ms", 40)

    def state():
        e = profile(c, "crm", "a")["entity"]
        return (frozenset(f"{k}:{i['id']}" for k, ids in e["identityMap"].items() for i in ids), e.get("loyalty", {}).get("tier"), e["person"]["name"]["firstName"])

    before = state()
    assert before == (frozenset({"crm:a", "email:a@x", "phone:555", "device:D1", "crm:b"}), "gold", "Bobby")
    after = (frozenset({"crm:a", "email:a@x", "device:D1"}), None, "Ann")
    rid = c.post(SJ, {"dataSetId": d["extra"]}, expect=200)["id"]
    worker = aep.svc.make_worker(1)
    worker.start()
    seen = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen.append(state())
            if c.get(f"{SJ}/{rid}")["status"] in ("COMPLETED", "ERROR"):
                break
    finally:
        worker.stop()
    assert c.get(f"{SJ}/{rid}")["status"] == "COMPLETED" and state() == after
    assert set(seen) <= {before, after} and after in seen and len(seen) > 5
