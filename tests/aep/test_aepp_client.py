"""The third-party client aepp 0.6.0, pointed at a userlens served over loopback by uvicorn, creates
datasets, ingests a batch and reads the profile back. Nothing of aepp is patched: it is configured
through its own configure(environment="support", endpoint=..., accesstoken=...) and its config dict
gets connectionType "support" and a far-future expiry, as the issue prescribes."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import httpx
import pytest

from userlens.config import Settings

aepp = pytest.importorskip("aepp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(backend):
    import uvicorn

    from userlens.api.app import create_app
    from userlens.services import build_services

    settings = Settings(**backend.settings_kwargs(), workers=1, poll_interval=0.05, internal_bucket=f"internal-{uuid.uuid4().hex[:10]}", master_key="test-master-key")
    svc = build_services(settings)
    svc.store.create_bucket(settings.internal_bucket)
    app = create_app(settings, svc, start_workers=True)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    try:
        yield svc, base
    finally:
        server.should_exit = True
        thread.join(30)
        svc.close()


def test_aepp_creates_datasets_ingests_and_reads_a_profile(served):
    from aepp import catalog, customerprofile, dataaccess, ingestion

    svc, base = served
    creds = svc.orgs.create_org("aepp-org")
    token = httpx.post(f"{base}/ims/token/v3", data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}).json()["access_token"]
    aepp.configure(org_id=creds.org_id, client_id=creds.client_id, secret="unused", environment="support", endpoint=base, accesstoken=token, sandbox="prod")
    aepp.config.config_object["connectionType"] = "support"
    aepp.config.config_object["date_limit"] = time.time() + 10 * 365 * 86400

    cat = catalog.Catalog()
    created = cat.createDataSet(name="aepp-profiles", schemaId="https://ns.adobe.com/xdm/context/profile", profileEnabled=True)
    ds_id = created[0].split("/")[-1]
    cat.createDataSet(name="aepp-events", schemaId="https://ns.adobe.com/xdm/context/experienceevent", profileEnabled=True)
    datasets = cat.getDataSets()
    assert ds_id in datasets and {d["name"] for d in datasets.values()} == {"aepp-profiles", "aepp-events"}
    assert cat.getDataSet(ds_id)[ds_id]["name"] == "aepp-profiles"

    ing = ingestion.DataIngestion()
    batch = ing.createBatch(datasetId=ds_id, format="json")
    bid = batch["id"]
    rows = [{"identityMap": {"email": [{"id": f"user{i}@example.com", "primary": True}]}, "person": {"name": {"firstName": f"User{i}"}}} for i in range(5)]
    ing.uploadSmallFile(batchId=bid, datasetId=ds_id, filePath="people.json", data=rows)
    ing.uploadSmallFileFinish(batchId=bid, action="COMPLETE")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        b = cat.getBatch(bid)[bid]
        if b["status"] in ("success", "failed"):
            break
        time.sleep(0.2)
    assert b["status"] == "success" and b["recordCount"] == 5, b
    assert bid in cat.getBatches(dataSet=ds_id)

    files = dataaccess.DataAccess().getBatchFiles(bid)
    assert files[0]["records"] == 5  # aepp returns the `data` list

    prof = customerprofile.Profile()
    entity = prof.getEntity(entityId="user3@example.com", entityIdNS="email")
    (body,) = entity.values()
    assert body["entity"]["person"]["name"]["firstName"] == "User3"


def test_aepp_creates_polls_lists_and_removes_delete_requests(served):
    """Profile system jobs (issue 7): aepp's createDeleteSystemJob, getDeleteSystemJob,
    getDeleteSystemJobs (which pages with page/limit until `_page.next` is "") and
    deleteDeleteSystemJob."""
    import json

    from aepp import catalog, customerprofile, ingestion

    svc, base = served

    creds = svc.orgs.create_org("aepp-delete")
    token = httpx.post(f"{base}/ims/token/v3", data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}).json()["access_token"]
    aepp.configure(org_id=creds.org_id, client_id=creds.client_id, secret="unused", environment="support", endpoint=base, accesstoken=token, sandbox="prod")
    aepp.config.config_object["connectionType"] = "support"
    aepp.config.config_object["date_limit"] = time.time() + 10 * 365 * 86400
    cat = catalog.Catalog()
    people = cat.createDataSet(name="people", schemaId="https://ns.adobe.com/xdm/context/profile", profileEnabled=True)[0].split("/")[-1]
    web = cat.createDataSet(name="web", schemaId="https://ns.adobe.com/xdm/context/experienceevent", profileEnabled=True)[0].split("/")[-1]
    ing = ingestion.DataIngestion()

    def ingest(ds, rows) -> str:
        bid = ing.createBatch(datasetId=ds, format="json")["id"]
        ing.uploadSmallFile(batchId=bid, datasetId=ds, filePath="rows.json", data=rows)
        ing.uploadSmallFileFinish(batchId=bid, action="COMPLETE")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and cat.getBatch(bid)[bid]["status"] not in ("success", "failed"):
            time.sleep(0.1)
        assert cat.getBatch(bid)[bid]["status"] == "success"
        return bid

    ingest(people, [{"identityMap": {"email": [{"id": f"u{i}@x", "primary": True}]}, "person": {"name": {"firstName": f"U{i}"}}} for i in range(3)])
    ev_batch = ingest(web, [{"_id": f"e{i}", "timestamp": "2024-01-01T00:00:00Z", "identityMap": {"email": [{"id": f"u{i}@x", "primary": True}]}} for i in range(3)])
    prof = customerprofile.Profile()
    created = prof.createDeleteSystemJob(dataSetId=people)
    assert created["status"] == "NEW" and created["dataSetId"] == people and created["jobType"] == "DELETE"
    by_batch = prof.createDeleteSystemJob(batchId=ev_batch)
    assert by_batch["batchId"] == ev_batch
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = [prof.getDeleteSystemJob(j["id"]) for j in (created, by_batch)]
        if all(j["status"] in ("COMPLETED", "ERROR") for j in jobs):
            break
        time.sleep(0.1)
    assert [j["status"] for j in jobs] == ["COMPLETED", "COMPLETED"]
    assert [json.loads(j["metrics"])["recordsProcessed"] for j in jobs] == [3, 3]
    listed = prof.getDeleteSystemJobs(limit=1)  # aepp follows `next` page by page
    assert {j["id"] for j in listed} == {created["id"], by_batch["id"]}
    prof.deleteDeleteSystemJob(created["id"])
    assert {j["id"] for j in prof.getDeleteSystemJobs()} == {by_batch["id"]}
