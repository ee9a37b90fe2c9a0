"""The console's segments, export jobs and delete requests pages over plain HTTP, on every backend:
the same validation messages as the API, counts after evaluation, membership on the profile page,
export start / cancel / completion with its batch, delete requests created, completed and removed."""

from __future__ import annotations

import re

from console_support import EVENT, EVENTS, PEOPLE, PROFILE, UNION, aep_api, aep_dataset, aep_ingest, alerts, csrf_of


def aep_signed_in(console):
    org = console.svc.orgs.create_org("acme")
    assert console.sign_in_aep(org.client_id, org.client_secret).status_code == 303
    crm, crm_batch = aep_ingest(console.http, org, "crm", PROFILE, PEOPLE, wait=console.run_jobs)
    web, web_batch = aep_ingest(console.http, org, "web", EVENT, EVENTS, wait=console.run_jobs)
    console.extra.update(org=org, crm=crm, crm_batch=crm_batch, web=web, web_batch=web_batch)
    return org


def test_segments_counts_and_membership(console):
    org = aep_signed_in(console)
    tok = csrf_of(console.http.get("/console/aep/segments").text)
    bad = 'loyalty.tier = = "gold"'
    r = console.http.post("/console/aep/segments", data={"csrf": tok, "name": "broken", "expression": bad})
    want = aep_api(console.http, org, "POST", "/data/core/ups/segment/definitions", {"name": "broken", "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/text", "value": bad}})
    assert r.status_code == want.status_code == 400
    assert alerts(r.text) == [want.json()["errors"]["400"][0]["message"]]
    r = console.http.post("/console/aep/segments", data={"csrf": tok, "name": "gold", "expression": 'loyalty.tier = "gold"'}, follow_redirects=False)
    assert r.status_code == 303
    console.http.post("/console/aep/segments", data={"csrf": tok, "name": "buyers", "expression": 'select e from xEvent where e.eventType = "commerce.purchases"'}, follow_redirects=False)
    page = console.http.get("/console/aep/segments").text
    assert "never" in page
    r = console.http.post("/console/aep/segments/evaluate", data={"csrf": tok})
    assert r.status_code == 200 and "Segment job" in alerts(r.text)[0]
    console.run_jobs()
    page = console.http.get("/console/aep/segments").text
    qualified = dict(re.findall(r"<td>(gold|buyers)</td>.*?class=\"c-qualified\">([\d,]+)<", page, re.S))
    assert qualified == {"gold": "1", "buyers": "1"}
    assert "SUCCEEDED" in page
    page = console.http.get("/console/aep/profiles", params={"namespace": "email", "identity": "ana@example.com"}).text
    membership = re.search(r'<table class="compact membership">.*?</table>', page, re.S).group(0)
    assert "gold" in membership and "buyers" in membership and "realized" in membership
    page = console.http.get("/console/aep/profiles", params={"namespace": "email", "identity": "bo@example.com"}).text
    assert "In no evaluated segment." in page


def test_export_start_cancel_and_complete(console):
    org = aep_signed_in(console)
    dest = aep_dataset(console.http, org, "exports", UNION)
    tok = csrf_of(console.http.get("/console/aep/exports").text)
    r = console.http.post("/console/aep/exports", data={"csrf": tok, "dataset_id": ""})
    want = aep_api(console.http, org, "POST", "/data/core/ups/export/jobs", {"destination": {"datasetId": None}, "schema": {"name": "_xdm.context.profile"}})
    assert r.status_code == want.status_code == 400 and alerts(r.text) == [want.json()["errors"]["400"][0]["message"]]
    # Started, then cancelled before a worker takes it: FAILED with the CANCELLED error.
    r = console.http.post("/console/aep/exports", data={"csrf": tok, "dataset_id": dest, "fields": "person.name"}, follow_redirects=False)
    first = int(r.headers["location"].split("started=")[1])
    page = console.http.get("/console/aep/exports").text
    assert f'action="/console/aep/exports/{first}/cancel"' in page
    r = console.http.post(f"/console/aep/exports/{first}/cancel", data={"csrf": tok})
    assert r.status_code == 200 and "cancel requested (now FAILED)" in alerts(r.text)[0]
    assert "was cancelled by request" in r.text
    # Another runs to the end: its batch is linked and readable on the dataset page.
    r = console.http.post("/console/aep/exports", data={"csrf": tok, "dataset_id": dest}, follow_redirects=False)
    second = int(r.headers["location"].split("started=")[1])
    console.run_jobs()
    job = aep_api(console.http, org, "GET", f"/data/core/ups/export/jobs/{second}").json()
    assert job["status"] == "SUCCEEDED"
    page = console.http.get("/console/aep/exports").text
    row = re.search(rf'<tr data-id="{second}".*?</tr>', page, re.S).group(0)
    assert "SUCCEEDED" in row and job["destination"]["batchId"] in row
    assert f"totalExportedProfileCounter: {job['metrics']['totalExportedProfileCounter']}" in row
    assert f"totalTime: {job['metrics']['totalTime']['totalTimeInMs'] / 1000:.3f} s" in row
    assert console.http.get(f"/console/aep/status/exports?id={first}&id={second}").json() == {str(first): {"status": "FAILED", "progress": None}, str(second): {"status": "SUCCEEDED", "progress": None}}
    assert job["destination"]["batchId"] in console.http.get(f"/console/aep/datasets/{dest}").text
    # Another org cannot cancel it.
    other = console.svc.orgs.create_org("other")
    console.sign_in_aep(other.client_id, other.client_secret)
    r = console.http.post(f"/console/aep/exports/{second}/cancel", data={"csrf": csrf_of(console.http.get("/console/aep/exports").text)})
    assert r.status_code == 404


def test_delete_requests(console):
    org = aep_signed_in(console)
    tok = csrf_of(console.http.get("/console/aep/delete-requests").text)
    crm_batch, web = console.extra["crm_batch"], console.extra["web"]
    r = console.http.post("/console/aep/delete-requests", data={"csrf": tok, "batch_id": crm_batch})
    want = aep_api(console.http, org, "POST", "/data/core/ups/system/jobs", {"batchId": crm_batch})
    assert r.status_code == want.status_code == 400 and alerts(r.text) == [want.json()["errors"]["400"][0]["message"]]
    r = console.http.post("/console/aep/delete-requests", data={"csrf": tok, "dataset_id": web}, follow_redirects=False)
    assert r.status_code == 303
    rid = r.headers["location"].split("created=")[1]
    r = console.http.post("/console/aep/delete-requests", data={"csrf": tok, "dataset_id": web})
    assert r.status_code == 422 and "already exists" in alerts(r.text)[0]
    console.run_jobs()
    page = console.http.get("/console/aep/delete-requests").text
    row = re.search(rf'<tr data-id="{rid}".*?</tr>', page, re.S).group(0)
    assert "COMPLETED" in row and "<td>3</td>" in row  # the three events left the profile store
    page = console.http.get("/console/aep/profiles", params={"namespace": "email", "identity": "ana@example.com"}).text
    assert "No events." in page
    r = console.http.post(f"/console/aep/delete-requests/{rid}/remove", data={"csrf": tok})
    assert r.status_code == 200 and f"Delete request {rid} removed." in alerts(r.text)
    assert rid not in console.http.get("/console/aep/delete-requests").text
