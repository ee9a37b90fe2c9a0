"""After a completed delete request, segment evaluation and profile export see the store without the
deleted data: attributes, events and whole profiles that only it gave are gone from both."""

from __future__ import annotations

import time

from conftest import EVENT, ev
from test_export import export, finished, read_batch, union_dataset
from test_segments import membership, pdg_default, person, run_segments, segment

SJ = "/data/core/ups/system/jobs"


def test_segments_and_exports_reflect_deletes(aep):
    c = aep.client
    pdg_default(c)
    crm, extra, web = c.dataset("crm"), c.dataset("extra"), c.dataset("web", EVENT)
    aep.ingest(crm, [person(1, "US", 40), person(2, "US", 15)])
    time.sleep(0.01)
    # "extra" makes person 2 an adult (newer record wins) and brings person 3 alone
    aep.ingest(extra, [{"identityMap": {"crmId": [{"id": "C2", "primary": True}]}, "person": {"age": 30}}, person(3, "US", 50)])
    iso = lambda days: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - days * 86400))  # noqa: E731
    keep = aep.ingest(web, [ev("e1", iso(1), {"crmId": [{"id": "C1", "primary": True}]}, eventType="commerce.purchases")])["id"]
    gone = aep.ingest(web, [ev("e2", iso(1), {"crmId": [{"id": "C2", "primary": True}]}, eventType="commerce.purchases")])["id"]
    adults = segment(c, "us-adults", 'homeAddress.country = "US" and person.age >= 18')
    buyers = segment(c, "buyers", 'select X from xEvent where X.eventType = "commerce.purchases" and X.timestamp occurs <= 7 days before now')
    job = run_segments(aep, [adults["id"], buyers["id"]])
    assert job["metrics"]["segmentedProfileCounter"] == {adults["id"]: 3, buyers["id"]: 2}
    out = union_dataset(c)
    before = finished(aep, export(c, out, fields="person.name.firstName,person.age"))
    assert before["metrics"]["totalExportedProfileCounter"] == 3

    for body in ({"dataSetId": extra}, {"batchId": gone}):
        c.post(SJ, body, expect=200)
    aep.run_jobs()
    assert all(j["status"] == "COMPLETED" for j in c.get(SJ)["children"])

    job = run_segments(aep, [adults["id"], buyers["id"]])
    assert job["status"] == "SUCCEEDED", job
    assert job["metrics"]["segmentedProfileCounter"] == {adults["id"]: 1, buyers["id"]: 1}
    assert job["metrics"]["totalProfiles"] == 2  # person 3 is gone with "extra"
    assert membership(c, "crmId", "C2")[adults["id"]]["status"] == "exited"  # 15 again without "extra"
    assert membership(c, "crmId", "C2")[buyers["id"]]["status"] == "exited"  # its only purchase was in the deleted batch
    assert membership(c, "crmId", "C1")[buyers["id"]]["status"] == "existing"
    after = finished(aep, export(c, out, fields="person.name.firstName,person.age", additionalFields={"eventList": {"fields": "eventType"}}))
    assert after["status"] == "SUCCEEDED", after
    rows = {r["person"]["name"]["firstName"]: r for r in read_batch(c, after["destination"]["batchId"]).to_dict("records")}
    assert set(rows) == {"N1", "N2"} and rows["N2"]["person"]["age"] == 15
    assert [e["eventType"] for e in rows["N1"]["eventList"]] == ["commerce.purchases"] and len(rows["N2"]["eventList"]) == 0
    assert c.get_batch(keep)["status"] == c.get_batch(gone)["status"] == "success"  # the lake keeps both batches
