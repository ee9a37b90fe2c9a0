"""Profile export jobs: the job object and its statuses, every request field of §3.1, the Parquet
output (Data Access, pandas, DuckDB), paging, cancel and failed exports."""

from __future__ import annotations

import io
import threading
import time

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import EVENT, ev
from test_segments import person, pdg_default, run_segments, segment

EXP = "/data/core/ups/export/jobs"
UNION = "https://ns.adobe.com/xdm/context/profile__union"


def union_dataset(c, name="export"):
    return c.dataset(name, UNION, profile=False)


def export(c, ds, **body):
    body = {"destination": {"datasetId": ds}, "schema": {"name": "_xdm.context.profile"}, **body}
    return c.post(EXP, body, expect=200)


def finished(aep, job):
    aep.run_jobs()
    return aep.client.get(f"{EXP}/{job['id']}")


def read_batch(c, batch_id) -> pd.DataFrame:
    """Downloads every file of the batch through the Data Access API and reads it with pandas."""
    files = c.get(f"/data/foundation/export/batches/{batch_id}/files")["data"]
    frames = []
    for f in files:
        fid = f["dataSetFileId"]
        (entry,) = c.get(f"/data/foundation/export/files/{fid}")["data"]
        raw = c.request("GET", f"/data/foundation/export/files/{fid}", params={"path": entry["name"]}).content
        frames.append(pd.read_parquet(io.BytesIO(raw)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@pytest.fixture
def people(aep):
    """Four people in two record datasets (person 1 in both) and events for persons 1, 2 and 4 (4 has
    no record: an "empty profile")."""
    c = aep.client
    pdg_default(c)
    crm, loyalty, web = c.dataset("crm"), c.dataset("loyalty"), c.dataset("web", EVENT)
    aep.ingest(crm, [person(1, "US", 40, personalEmail={"address": "one@x.com"}), person(2, "US", 15), person(3, "FR", 50)])
    aep.ingest(loyalty, [{"identityMap": {"loyaltyId": [{"id": "L1", "primary": True}], "email": [{"id": "p1@x.com"}]}, "loyalty": {"tier": "gold"}}])
    now = time.time()
    iso = lambda days: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - days * 86400))  # noqa: E731
    batch = aep.ingest(web, [
        ev("e1", iso(1), {"crmId": [{"id": "C1", "primary": True}]}, eventType="commerce.purchases", environment={"browserDetails": {"name": "Firefox", "version": "120"}}),
        ev("e2", iso(2), {"crmId": [{"id": "C2", "primary": True}]}, eventType="web.webpagedetails.pageViews"),
        ev("e9", iso(3), {"ECID": [{"id": "9" * 38, "primary": True}]}, eventType="web.webpagedetails.pageViews"),
    ])
    return {"crm": crm, "loyalty": loyalty, "web": web, "events_ingested": batch["completed"]}


def test_export_all_profiles_projection_and_job_object(aep, people):
    c = aep.client
    ds = union_dataset(c)
    job = export(c, ds, fields="identities.id,person.name.firstName,loyalty")
    assert job["status"] == "NEW" and isinstance(job["id"], int) and job["jobType"] == "BATCH" and job["profileInstanceId"] == "ups"
    assert job["destination"]["datasetId"] == ds and job["destination"]["segmentPerBatch"] is False and job["destination"]["batchId"]
    assert job["metrics"] == {"totalTime": {"startTimeInMs": job["creationTime"]}} and job["computeGatewayJobId"] == {} and job["fields"] == "identities.id,person.name.firstName,loyalty"
    assert job["mergePolicy"]["id"] and job["imsOrgId"] == c.org_id and job["schema"] == {"name": "_xdm.context.profile"}
    bid = job["destination"]["batchId"]
    assert c.request("GET", f"/data/foundation/catalog/batches/{bid}").status_code == 404  # not visible before completion
    done = finished(aep, job)
    assert done["status"] == "SUCCEEDED", done
    m = done["metrics"]
    assert m["totalExportedProfileCounter"] == 3 and m["exportedProfileByNamespaceCounter"] == {"crmId": 3, "email": 3, "loyaltyId": 1}
    for k in ("totalTime", "profileExportTime", "aCPDatasetWriteTime"):
        assert m[k]["totalTimeInMs"] == m[k]["endTimeInMs"] - m[k]["startTimeInMs"] >= 0
    assert set(done["computeGatewayJobId"]) == {"exportJob", "pushJob"} and done["updateTime"] >= done["creationTime"]
    b = c.get_batch(bid)
    assert b["status"] == "success" and b["recordCount"] == 3 and bid in c.get("/data/foundation/catalog/batches", params={"dataSet": ds})
    df = read_batch(c, bid)
    assert set(df.columns) == {"identities", "person", "loyalty"}
    rows = {r["person"]["name"]["firstName"]: r for r in df.to_dict("records")}
    assert set(rows) == {"N1", "N2", "N3"}
    assert sorted(i["id"] for i in rows["N1"]["identities"]) == ["C1", "L1", "p1@x.com"] and rows["N1"]["loyalty"] == {"tier": "gold"}
    assert set(rows["N1"]["identities"][0]) == {"id"}  # identities.id keeps only the id of each identity
    assert rows["N2"]["loyalty"] is None and "age" not in rows["N1"]["person"]


def test_parquet_is_readable_by_duckdb_and_pandas(aep, people, tmp_path):
    c = aep.client
    ds = union_dataset(c)
    job = finished(aep, export(c, ds))  # no fields: everything
    bid = job["destination"]["batchId"]
    files = c.get(f"/data/foundation/export/batches/{bid}/files")["data"]
    paths = []
    for f in files:
        (entry,) = c.get(f"/data/foundation/export/files/{f['dataSetFileId']}")["data"]
        p = tmp_path / entry["name"]
        p.write_bytes(c.request("GET", f"/data/foundation/export/files/{f['dataSetFileId']}", params={"path": entry["name"]}).content)
        paths.append(str(p))
    con = duckdb.connect()
    n, = con.execute(f"SELECT count(*) FROM read_parquet({paths!r}, union_by_name=true)").fetchone()
    assert n == 3
    names = {r[0] for r in con.execute(f"SELECT person.name.firstName FROM read_parquet({paths!r}, union_by_name=true)").fetchall()}
    assert names == {"N1", "N2", "N3"}
    df = pd.read_parquet(paths[0])
    assert {"identities", "identityMap", "person", "homeAddress"} <= set(df.columns)
    im = dict(df[df.person.map(lambda p: p["name"]["firstName"] == "N1")].identityMap.iloc[0])
    assert sorted(im) == ["crmId", "email", "loyaltyId"] and [x["id"] for x in im["crmId"]] == ["C1"] and im["crmId"][0]["primary"]
    assert pq.read_schema(paths[0]).field("identityMap").type.num_fields == 1  # a real MAP column


def test_filters_segments_status_time_and_segment_per_batch(aep, people):
    c = aep.client
    us = segment(c, "us", 'homeAddress.country = "US"')
    adults = segment(c, "adults", "person.age >= 18")
    assert run_segments(aep, [us["id"], adults["id"]])["status"] == "SUCCEEDED"
    ds = union_dataset(c)
    # default status realized+existing
    j = finished(aep, export(c, ds, fields="person.name.firstName", filter={"segments": [{"segmentId": us["id"]}]}))
    assert sorted(r["person"]["name"]["firstName"] for r in read_batch(c, j["destination"]["batchId"]).to_dict("records")) == ["N1", "N2"]
    # exited only: person 3 never qualified for "us": nothing; after a re-evaluation where N2 moves, N2 exits
    aep.ingest(people["crm"], [person(2, "CA", 15)])
    run_segments(aep, [us["id"]])
    j = finished(aep, export(c, ds, fields="person.name.firstName,segmentMembership", filter={"segments": [{"segmentId": us["id"], "segmentNs": "ups", "status": ["exited"]}]}))
    df = read_batch(c, j["destination"]["batchId"])
    assert [r["person"]["name"]["firstName"] for r in df.to_dict("records")] == ["N2"]
    assert df.segmentMembership.iloc[0]["ups"][us["id"]]["status"] == "exited"
    # segmentQualificationTime: a window in the past selects nobody, one around now everybody qualified
    j = finished(aep, export(c, ds, filter={"segments": [{"segmentId": adults["id"]}], "segmentQualificationTime": {"startTime": "2019-09-01T00:00:00Z", "endTime": "2019-09-02T00:00:00Z"}}))
    assert j["status"] == "SUCCEEDED" and j["metrics"]["totalExportedProfileCounter"] == 0
    j = finished(aep, export(c, ds, filter={"segments": [{"segmentId": adults["id"]}], "segmentQualificationTime": {"startTime": "2019-09-01T00:00:00Z"}}))
    assert j["metrics"]["totalExportedProfileCounter"] == 2
    # segmentPerBatch: one batch per segment
    j = finished(aep, export(c, ds, fields="person.name.firstName", filter={"segments": [{"segmentId": us["id"]}, {"segmentId": adults["id"]}]}, destination={"datasetId": ds, "segmentPerBatch": True}))
    batches = j["destination"]["batches"]
    assert [b["segmentId"] for b in batches] == [us["id"], adults["id"]] and batches[0]["status"] == ["realized", "existing"] and "batchId" not in j["destination"]
    got = [sorted(r["person"]["name"]["firstName"] for r in read_batch(c, b["batchId"]).to_dict("records")) for b in batches]
    assert got == [["N1"], ["N1", "N3"]]


def test_evaluation_info_segmentation_runs_the_segments_first(aep, people):
    c = aep.client
    us = segment(c, "us", 'homeAddress.country = "US"')
    ds = union_dataset(c)
    j = finished(aep, export(c, ds, fields="person.name.firstName", filter={"segments": [{"segmentId": us["id"]}]}))
    assert j["metrics"]["totalExportedProfileCounter"] == 0  # never evaluated
    j = finished(aep, export(c, ds, fields="person.name.firstName", filter={"segments": [{"segmentId": us["id"]}]}, evaluationInfo={"segmentation": True}))
    assert j["metrics"]["totalExportedProfileCounter"] == 2 and j["evaluationInfo"] == {"segmentation": True}


def test_from_ingest_timestamp_and_empty_profiles(aep, people):
    c = aep.client
    ds = union_dataset(c)
    time.sleep(0.05)
    now = time.time()
    cut = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    time.sleep(0.05)
    aep.ingest(people["crm"], [person(3, "FR", 51)])
    j = finished(aep, export(c, ds, fields="person.age", filter={"fromIngestTimestamp": cut}))
    assert [r["person"]["age"] for r in read_batch(c, j["destination"]["batchId"]).to_dict("records")] == [51]
    j = finished(aep, export(c, ds, fields="identities.id", filter={"emptyProfiles": False}))
    assert j["metrics"]["totalExportedProfileCounter"] == 3
    j = finished(aep, export(c, ds, fields="identities.id", filter={"emptyProfiles": True}))
    assert j["metrics"]["totalExportedProfileCounter"] == 4 and j["metrics"]["exportedProfileByNamespaceCounter"]["ECID"] == 1
    ids = sorted(i["id"] for r in read_batch(c, j["destination"]["batchId"]).to_dict("records") for i in r["identities"])
    assert "9" * 38 in ids


def test_event_list_fields_and_ingest_filter(aep, people):
    c = aep.client
    ds = union_dataset(c)
    j = finished(aep, export(c, ds, fields="person.name.firstName", additionalFields={"eventList": {"fields": "eventType,environment.browserDetails.name"}}))
    rows = {r["person"]["name"]["firstName"]: r for r in read_batch(c, j["destination"]["batchId"]).to_dict("records")}
    assert [e["eventType"] for e in rows["N1"]["eventList"]] == ["commerce.purchases"] and rows["N1"]["eventList"][0]["environment"] == {"browserDetails": {"name": "Firefox"}}
    assert [e["eventType"] for e in rows["N2"]["eventList"]] == ["web.webpagedetails.pageViews"] and len(rows["N3"]["eventList"]) == 0
    assert "_id" not in rows["N1"]["eventList"][0]
    # events ingested before the filter time are left out
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(people["events_ingested"] / 1000 + 1))
    j = finished(aep, export(c, ds, fields="person.name.firstName", additionalFields={"eventList": {"filter": {"fromIngestTimestamp": later}}}))
    df = read_batch(c, j["destination"]["batchId"])
    assert all(len(x) == 0 for x in df.eventList) if "eventList" in df.columns else True
    j = finished(aep, export(c, ds, fields="identityMap", additionalFields={"eventList": {}}))  # "only events": identityMap + eventList
    df = read_batch(c, j["destination"]["batchId"])
    assert set(df.columns) == {"identityMap", "eventList"} and sorted(len(x) for x in df.eventList) == [0, 1, 1]
    full = [e for x in df.eventList for e in x]
    assert {e["_id"] for e in full} == {"e1", "e2"} and all("timestamp" in e for e in full)


def test_merge_policy_field_and_errors(aep, people):
    c = aep.client
    ds = union_dataset(c)
    none = c.post("/data/core/ups/config/mergePolicies", {"name": "none", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "none"}, "attributeMerge": {"type": "timestampOrdered"}}, expect=200)
    j = finished(aep, export(c, ds, fields="identities.id", mergePolicy={"id": none["id"], "version": 1}))
    assert j["mergePolicy"] == {"id": none["id"], "version": 1} and j["metrics"]["totalExportedProfileCounter"] == 4  # crm C1..C3 and loyalty L1 apart
    for body, part in (
        ({"schema": {"name": "_xdm.context.profile"}}, "destination"),
        ({"destination": {"datasetId": ds}}, "schema.name"),
        ({"destination": {"datasetId": ds}, "schema": {"name": "_xdm.context.profile"}, "filter": {"segments": [{"segmentId": "x", "segmentNs": "AAM"}]}}, "AAM"),
        ({"destination": {"datasetId": ds}, "schema": {"name": "_xdm.context.profile"}, "filter": {"segments": [{"segmentId": "nope"}]}}, "nope"),
        ({"destination": {"datasetId": ds}, "schema": {"name": "_xdm.context.profile"}, "filter": {"segments": [{"segmentId": "x", "status": ["gone"]}]}}, "status"),
        ({"destination": {"datasetId": ds}, "schema": {"name": "_xdm.context.profile"}, "filter": {"fromIngestTimestamp": "yesterday"}}, "fromIngestTimestamp"),
        ({"destination": {"datasetId": ds}, "schema": {"name": "_xdm.context.profile"}, "mergePolicy": {"id": "nope"}}, "nope"),
    ):
        r = c.request("POST", EXP, body=body)
        assert r.status_code == 400 and part in r.json()["title"], (body, r.text)
    # A target that is missing, or not on the union schema: the job fails with an error entry.
    for target, words in ((people["crm"], "union schema"), ("0" * 24, "does not exist")):
        j = finished(aep, export(c, target))
        assert j["status"] == "FAILED" and words in j["errors"][0]["msg"] and j["destination"]["batchId"] == "", j
        assert {"code", "msg", "callStack"} <= set(j["errors"][0]) and j["metrics"]["totalTime"]["endTimeInMs"] >= j["creationTime"]
    assert c.request("GET", f"{EXP}/999999").status_code == 404 and c.request("GET", f"{EXP}/abc").status_code == 404
    assert aep.new_org().request("GET", f"{EXP}/{j['id']}").status_code == 404


def test_listing_pages(aep):
    c = aep.client
    ds = union_dataset(c)
    ids = [export(c, ds)["id"] for _ in range(5)]
    page = c.get(EXP, params={"limit": 2})
    assert [r["id"] for r in page["records"]] == ids[::-1][:2]
    last = page["records"][-1]
    assert page["page"] == {"sortField": "createdTime", "sort": "desc", "pageOffset": f"{last['creationTime']}_{last['id']}", "pageSize": 2}
    seen = [r["id"] for r in page["records"]]
    while page["link"]["next"]:
        offset = page["link"]["next"].split("offset=")[1].split("&")[0]
        page = c.get(EXP, params={"limit": 2, "offset": offset})
        seen += [r["id"] for r in page["records"]]
    assert seen == ids[::-1] and page["link"]["next"] == "" and page["page"]["pageSize"] == 1
    assert [r["id"] for r in c.get(EXP, params={"limit": 2, "offset": 3})["records"]] == ids[::-1][3:5]
    assert [r["id"] for r in c.get(EXP, params={"sort": "createdTime:asc", "limit": 1})["records"]] == ids[:1]
    assert c.get(EXP, params={"status": "SUCCEEDED"})["records"] == []
    assert c.request("GET", EXP, params={"limit": 0}).status_code == 400
    assert aep.new_org().get(EXP)["records"] == []


def test_cancel_queued_and_running(aep, people, monkeypatch):
    c = aep.client
    ds = union_dataset(c)
    queued = export(c, ds)
    r = c.request("DELETE", f"{EXP}/{queued['id']}")
    assert r.status_code == 204 and r.content == b""
    j = c.get(f"{EXP}/{queued['id']}")
    assert j["status"] == "FAILED" and j["errors"][0]["code"] == "CANCELLED" and j["destination"]["batchId"] == ""
    aep.run_jobs()
    assert c.get(f"{EXP}/{queued['id']}")["status"] == "FAILED"
    assert c.request("GET", f"/data/foundation/catalog/batches/{queued['destination']['batchId']}").status_code == 404
    # A running job: pages of 51 identities, each slowed down, so the cancel arrives mid-way.
    from userlens.profiles import export as export_mod
    from userlens.profiles import scan as scan_mod

    aep.ingest(people["crm"], [person(i) for i in range(10, 200)])
    monkeypatch.setattr(scan_mod, "PAGE", 51)
    slow = export_mod.ExportService._rows

    def rows(*a, **k):
        time.sleep(0.4)
        return slow(*a, **k)

    monkeypatch.setattr(export_mod.ExportService, "_rows", staticmethod(rows))
    running = export(c, ds)
    t = threading.Thread(target=aep.run_jobs, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while c.get(f"{EXP}/{running['id']}")["status"] != "PROCESSING" and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    assert c.request("DELETE", f"{EXP}/{running['id']}").status_code == 204
    t.join(30)
    j = c.get(f"{EXP}/{running['id']}")
    assert j["status"] == "FAILED" and j["errors"][0]["code"] == "CANCELLED" and time.monotonic() - t0 < 10, j
    bid = running["destination"]["batchId"]
    assert c.request("GET", f"/data/foundation/catalog/batches/{bid}").status_code == 404
    svc = aep.svc
    left = [o.key for o in svc.store.list(svc.settings.internal_bucket, "aep/") if f"/{bid}/" in o.key]
    assert left == []  # the attempt's partial files are removed
    assert c.request("DELETE", f"{EXP}/{running['id']}").status_code == 204  # again: nothing changes


def test_a_write_error_is_classified_once():
    """A chunk's full-disk error reaches the job already as 0090000009: not wrapped again."""
    import errno

    from userlens.jobs.engine import TransientJobError
    from userlens.profiles.export import write_error

    first = write_error(OSError(errno.ENOSPC, "No space left on device"), "lake/b/a1")
    assert isinstance(first, TransientJobError) and first.code == "0090000009" and "No space left" in first.detail
    assert write_error(first, "lake/b/a1") is None
    assert write_error(ValueError("a bug"), "lake/b/a1") is None
