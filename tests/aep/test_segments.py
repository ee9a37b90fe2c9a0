"""Segment definitions (CRUD, the PQL subset and its 400s), segment jobs (statuses, metrics, cancel,
listing) and membership transitions (realized -> existing -> exited) shown on the profile."""

from __future__ import annotations

import time

from conftest import EVENT, ev

DEF = "/data/core/ups/segment/definitions"
JOBS = "/data/core/ups/segment/jobs"
ENT = "/data/core/ups/access/entities"
MP = "/data/core/ups/config/mergePolicies"


def pdg_default(c):
    return c.post(MP, {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True}, expect=200)


def person(i, country="US", age=30, **extra):
    return {"identityMap": {"crmId": [{"id": f"C{i}", "primary": True}], "email": [{"id": f"p{i}@x.com"}]}, "person": {"name": {"firstName": f"N{i}"}, "age": age}, "homeAddress": {"country": country}, **extra}


def segment(c, name, pql, expect=200, **extra):
    r = c.request("POST", DEF, body={"name": name, "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/text", "value": pql}, **extra})
    assert r.status_code == expect, r.text
    return r.json()


def run_segments(aep, ids):
    c = aep.client
    job = c.post(JOBS, [{"segmentId": i} for i in ids], expect=200)
    assert job["status"] == "NEW"
    aep.run_jobs()
    return c.get(f"{JOBS}/{job['id']}")


def membership(c, ns, value):
    (p,) = c.get(ENT, params={"schema.name": "_xdm.context.profile", "entityId": value, "entityIdNS": ns}).values()
    return p["entity"].get("segmentMembership", {}).get("ups", {})


def test_definitions_crud_and_pql_errors(aep):
    c = aep.client
    s = segment(c, "us", 'homeAddress.country = "US"', description="in the US")
    assert s["expression"] == {"type": "PQL", "format": "pql/text", "value": 'homeAddress.country = "US"'} and s["schema"] == {"name": "_xdm.context.profile"}
    assert s["sandbox"]["sandboxName"] == "prod" and isinstance(s["creationTime"], int) and s["dataGovernancePolicy"] == {"excludeOptOut": True}
    assert c.get(f"{DEF}/{s['id']}")["name"] == "us"
    segment(c, "adults", "person.age >= 18 and not person.name.firstName.startsWith(\"X\")")
    dup = c.request("POST", DEF, body={"name": "us", "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/text", "value": "person.age > 1"}})
    assert dup.status_code == 422 and "already exists" in dup.json()["title"]
    listing = c.get(DEF, params={"limit": 1, "sort": "name:asc"})
    assert [x["name"] for x in listing["segments"]] == ["adults"] and listing["page"]["totalCount"] == 2 and listing["page"]["totalPages"] == 2
    assert "start=1" in listing["link"]["next"]
    assert c.get(DEF, params={"start": 1, "limit": 1, "sort": "name:asc"})["link"] == {}
    # Unsupported PQL: a 400 that names the unsupported part.
    for pql, part in (
        ('chain(xEvent, timestamp, [A: WHAT(eventType.equals("x", false))])', "chain"),
        ('person.name.firstName.like("J%")', "like"),
        ("person.age + 1 > 2", "'+'"),
        ('homeAddress.country = "US" and person.age', "person.age"),
    ):
        r = c.request("POST", DEF, body={"name": f"bad-{part}", "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/text", "value": pql}})
        assert r.status_code == 400 and part in r.json()["title"], (pql, r.text)
    r = c.request("POST", DEF, body={"name": "json", "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/json", "value": "{}"}})
    assert r.status_code == 400 and "pql/json" in r.json()["title"]
    assert c.request("DELETE", f"{DEF}/{s['id']}").json()["status"] is True
    assert c.request("GET", f"{DEF}/{s['id']}").status_code == 404
    assert aep.new_org().request("GET", f"{DEF}/{listing['segments'][0]['id']}").status_code == 404


def test_segment_job_membership_transitions(aep):
    c = aep.client
    pdg_default(c)
    crm = c.dataset("crm")
    aep.ingest(crm, [person(1, "US", 40), person(2, "US", 15), person(3, "FR", 50)])
    us = segment(c, "us-adults", 'homeAddress.country in ["US", "CA"] and person.age >= 18')
    fr = segment(c, "not-us", 'not homeAddress.country = "US"')
    job = run_segments(aep, [us["id"], fr["id"]])
    assert job["status"] == "SUCCEEDED", job
    m = job["metrics"]
    assert m["totalProfiles"] == 3 and m["segmentedProfileCounter"] == {us["id"]: 1, fr["id"]: 1}
    assert m["segmentedProfileByStatusCounter"][us["id"]] == {"realized": 1, "existing": 0, "exited": 0}
    assert m["segmentedProfileByNamespaceCounter"][us["id"]] == {"crmId": 1, "email": 1}
    assert m["totalTime"]["totalTimeInMs"] >= 0 and "profileSegmentationTime" in m
    first = membership(c, "crmId", "C1")[us["id"]]
    assert first["status"] == "realized" and first["lastQualificationTime"].endswith("Z")
    assert us["id"] not in membership(c, "email", "p2@x.com") and membership(c, "crmId", "C3")[fr["id"]]["status"] == "realized"
    # Person 1 moves to France, person 2 turns 18: exited / existing / realized.
    time.sleep(0.01)
    aep.ingest(crm, [person(1, "FR", 40), person(2, "US", 18)])
    job = run_segments(aep, [us["id"], fr["id"]])
    assert job["metrics"]["segmentedProfileByStatusCounter"][us["id"]] == {"realized": 1, "existing": 0, "exited": 1}
    assert job["metrics"]["segmentedProfileByStatusCounter"][fr["id"]] == {"realized": 1, "existing": 1, "exited": 0}
    assert membership(c, "crmId", "C1")[us["id"]]["status"] == "exited"
    assert membership(c, "crmId", "C1")[fr["id"]]["status"] == "realized"
    assert membership(c, "crmId", "C2")[us["id"]]["status"] == "realized"
    assert membership(c, "crmId", "C3")[fr["id"]]["status"] == "existing"
    exited_at = membership(c, "crmId", "C1")[us["id"]]["lastQualificationTime"]
    run_segments(aep, [us["id"]])  # still out: stays exited with its exit time
    assert membership(c, "crmId", "C1")[us["id"]] == {"status": "exited", "lastQualificationTime": exited_at, "version": 1}
    assert membership(c, "crmId", "C2")[us["id"]]["status"] == "existing"


def test_event_conditions(aep):
    c = aep.client
    pdg_default(c)
    crm, web = c.dataset("crm"), c.dataset("web", EVENT)
    aep.ingest(crm, [person(i) for i in range(1, 4)])
    now = time.time()
    iso = lambda days: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - days * 86400))  # noqa: E731
    cid = lambda i: {"crmId": [{"id": f"C{i}", "primary": True}]}  # noqa: E731
    aep.ingest(web, [
        ev("e1", iso(1), cid(1), eventType="commerce.purchases"), ev("e2", iso(2), cid(1), eventType="commerce.purchases"),
        ev("e3", iso(30), cid(2), eventType="commerce.purchases"), ev("e4", iso(1), cid(2), eventType="web.webpagedetails.pageViews"),
        ev("e1", iso(1), cid(1), eventType="commerce.purchases"),  # a duplicate _id: counted once
    ])
    recent = segment(c, "recent-buyers", 'select X from xEvent where X.eventType = "commerce.purchases" and X.timestamp occurs <= 7 days before now')
    twice = segment(c, "twice", '(select X from xEvent where X.eventType.equals("COMMERCE.PURCHASES", false)).count() >= 2')
    busy = segment(c, "busy", "xEvent.count() > 2")
    job = run_segments(aep, [recent["id"], twice["id"], busy["id"]])
    assert job["status"] == "SUCCEEDED", job
    assert job["metrics"]["segmentedProfileCounter"] == {recent["id"]: 1, twice["id"]: 1, busy["id"]: 0}
    assert set(membership(c, "crmId", "C1")) == {recent["id"], twice["id"]}
    assert membership(c, "crmId", "C2") == {} and membership(c, "crmId", "C3") == {}  # C2: one purchase 30 days ago


def test_segment_jobs_listing_cancel_and_errors(aep):
    c = aep.client
    s = segment(c, "all", "person.age.exists()")
    a = c.post(JOBS, [{"segmentId": s["id"]}], expect=200)
    assert a["_links"]["cancel"]["method"] == "DELETE" and a["segments"][0]["segment"]["expression"]["value"] == "person.age.exists()"
    b = c.post(JOBS, {"schema": {"name": "_xdm.context.profile"}, "segments": [{"segmentId": "*"}]}, expect=200)
    r = c.request("DELETE", f"{JOBS}/{a['id']}")
    assert r.status_code == 204 and c.get(f"{JOBS}/{a['id']}")["status"] == "CANCELLED"
    listing = c.get(JOBS, params={"limit": 1})
    assert listing["_page"] == {"totalCount": 2, "pageSize": 1} and listing["children"][0]["id"] == b["id"] and listing["_links"]["next"]["href"]
    assert c.get(JOBS, params={"status": "CANCELLED"})["children"][0]["id"] == a["id"]
    aep.run_jobs()
    assert c.get(f"{JOBS}/{b['id']}")["status"] == "SUCCEEDED"
    bad = c.request("POST", JOBS, body=[{"segmentId": "nope"}])
    assert bad.status_code == 400 and "nope" in bad.json()["title"]
    assert c.request("GET", f"{JOBS}/nope").status_code == 404
