"""aepp 0.6.0 (unpatched, pointed at a userlens served over loopback) creates a segment, runs it,
creates, polls, lists and cancels profile export jobs, and reads the exported batch's files."""

from __future__ import annotations

import io
import time

import httpx
import pandas as pd
import pytest

from test_aepp_client import served  # noqa: F401  (the uvicorn-served userlens fixture)

aepp = pytest.importorskip("aepp")


def test_aepp_export_jobs(served):  # noqa: F811
    from aepp import catalog, dataaccess, ingestion, segmentation

    svc, base = served
    creds = svc.orgs.create_org("aepp-export")
    token = httpx.post(f"{base}/ims/token/v3", data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}).json()["access_token"]
    aepp.configure(org_id=creds.org_id, client_id=creds.client_id, secret="unused", environment="support", endpoint=base, accesstoken=token, sandbox="prod")
    aepp.config.config_object["connectionType"] = "support"
    aepp.config.config_object["date_limit"] = time.time() + 10 * 365 * 86400

    cat = catalog.Catalog()
    ds_id = cat.createDataSet(name="people", schemaId="https://ns.adobe.com/xdm/context/profile", profileEnabled=True)[0].split("/")[-1]
    target = cat.createDataSet(name="Profile Data Export", schemaId="https://ns.adobe.com/xdm/context/profile__union")[0].split("/")[-1]
    ing = ingestion.DataIngestion()
    bid = ing.createBatch(datasetId=ds_id, format="json")["id"]
    rows = [{"identityMap": {"email": [{"id": f"user{i}@example.com", "primary": True}]}, "person": {"name": {"firstName": f"User{i}"}}, "personalEmail": {"address": f"user{i}@example.com"}} for i in range(6)]
    ing.uploadSmallFile(batchId=bid, datasetId=ds_id, filePath="people.json", data=rows)
    ing.uploadSmallFileFinish(batchId=bid, action="COMPLETE")

    def wait(fn, done, seconds=60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            out = fn()
            if done(out):
                return out
            time.sleep(0.2)
        raise AssertionError(out)

    wait(lambda: cat.getBatch(bid)[bid], lambda b: b["status"] == "success")
    seg = segmentation.Segmentation()
    s = seg.createSegment({"name": "users-1-3", "description": "", "ttlInDays": 30, "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/text", "value": 'person.name.firstName in ["User1", "User3"]'}})
    job = seg.createJob([s["id"]])
    wait(lambda: seg.getJob(job["id"]), lambda j: j["status"] == "SUCCEEDED")

    export = seg.createExport({"fields": "identities.id,personalEmail.address", "filter": {"segments": [{"segmentId": s["id"], "segmentNs": "ups"}]}, "destination": {"datasetId": target, "segmentPerBatch": False}, "schema": {"name": "_xdm.context.profile"}})
    assert export["status"] == "NEW" and isinstance(export["id"], int)
    done = wait(lambda: seg.getExport(export["id"]), lambda j: j["status"] in ("SUCCEEDED", "FAILED"))
    assert done["status"] == "SUCCEEDED" and done["metrics"]["totalExportedProfileCounter"] == 2, done
    files = dataaccess.DataAccess().getBatchFiles(done["destination"]["batchId"])
    raw = httpx.get(f"{base}/data/foundation/export/files/{files[0]['dataSetFileId']}", params={"path": "part-00000.parquet"}, headers={"Authorization": f"Bearer {token}", "x-api-key": creds.client_id, "x-gw-ims-org-id": creds.org_id}).content
    df = pd.read_parquet(io.BytesIO(raw))
    assert sorted(r["address"] for r in df.personalEmail) == ["user1@example.com", "user3@example.com"]
    # listing walks link.next with limit/offset; cancel answers 204 and the job ends FAILED
    for _ in range(2):
        seg.createExport({"destination": {"datasetId": target}, "schema": {"name": "_xdm.context.profile"}})
    jobs = seg.getExportJobs(limit=2)
    assert len(jobs) == 3 and jobs[-1]["id"] == export["id"]
    last = jobs[0]["id"]
    seg.deleteExport(last)
    cancelled = wait(lambda: seg.getExport(last), lambda j: j["status"] in ("SUCCEEDED", "FAILED"))
    assert cancelled["status"] in ("FAILED", "SUCCEEDED")  # a worker may have finished it first
    if cancelled["status"] == "FAILED":
        assert cancelled["errors"][0]["code"] == "CANCELLED"
