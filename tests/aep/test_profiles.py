"""Identity graph, merge policies (CRUD and both attribute merges, both graph types), merged
profiles across namespaces and datasets, event de-duplication and paging, the 50-identity 422,
and deletion of a dataset's contribution."""

from __future__ import annotations

from conftest import EVENT, ev, ident

MP = "/data/core/ups/config/mergePolicies"
ENT = "/data/core/ups/access/entities"


def policy(c, name, graph="pdg", merge="timestampOrdered", order=None, default=False):
    body = {"name": name, "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": graph}, "attributeMerge": {"type": merge, **({"order": order} if order else {})}, "default": default}
    return c.post(MP, body, expect=200)


def profile(c, ns, value, policy_id=None, expect=200):
    params = {"schema.name": "_xdm.context.profile", "entityId": value, "entityIdNS": ns}
    if policy_id:
        params["mergePolicyId"] = policy_id
    r = c.request("GET", ENT, params=params)
    assert r.status_code == expect, r.text
    return r.json()


def test_merge_policy_crud(aep):
    c = aep.client
    a = policy(c, "a-pol", default=True)
    assert a["version"] == 1 and a["default"] is True and a["identityGraph"] == {"type": "pdg"} and a["sandbox"]["sandboxName"] == "prod"
    b = policy(c, "b-pol", graph="none", default=True)
    assert c.get(f"{MP}/{a['id']}")["default"] is False  # one default per sandbox
    listing = c.get(MP, params={"limit": 1})
    assert listing["_page"] == {"totalCount": 2, "pageSize": 1} and listing["children"][0]["name"] == "a-pol"
    assert listing["_links"]["next"]["href"].startswith("@/mergePolicies?start=1")
    assert c.get(MP, params={"default": "true"})["children"][0]["id"] == b["id"]
    patched = c.request("PATCH", f"{MP}/{a['id']}", body=[{"op": "add", "path": "/name", "value": "renamed"}]).json()
    assert patched["name"] == "renamed" and patched["version"] == 2
    bad = c.request("POST", MP, body={"name": "x", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "magic"}, "attributeMerge": {"type": "timestampOrdered"}})
    assert bad.status_code == 400 and "400" in bad.json()["errors"] and bad.json()["status"] == 400
    bad = c.request("POST", MP, body={"name": "x", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "dataSetPrecedence"}})
    assert bad.status_code == 400
    bulk = c.request("POST", f"{MP}/bulk-get", body={"ids": [{"id": a["id"]}, {"id": b["id"]}]})
    assert bulk.status_code == 207 and set(bulk.json()["results"]) == {a["id"], b["id"]}
    assert c.request("DELETE", f"{MP}/{a['id']}").status_code == 200
    r = c.request("GET", f"{MP}/{a['id']}")
    assert r.status_code == 404 and r.json()["status"] == 404
    other = aep.new_org()
    assert other.request("GET", f"{MP}/{b['id']}").status_code == 404


def test_merge_across_namespaces_and_datasets(aep):
    c = aep.client
    crm = c.dataset("crm")
    loyalty = c.dataset("loyalty")
    events = c.dataset("web", EVENT)
    # CRM knows email + crm id; loyalty knows the loyalty id + email; the web events carry ECID + loyalty id.
    aep.ingest(crm, [{"identityMap": {"crmId": [{"id": "C1", "primary": True}], "email": [{"id": "jane@x.com"}]}, "person": {"name": {"firstName": "Jane", "lastName": "Doe"}}, "tier": "crm-silver"}])
    aep.ingest(loyalty, [{"identityMap": {"loyaltyId": [{"id": "L1", "primary": True}], "email": [{"id": "jane@x.com"}]}, "person": {"name": {"firstName": "Janet"}}, "tier": "gold"}])
    ecid = "1" * 38
    aep.ingest(events, [ev("ev1", "2024-01-01T00:00:00Z", {"ECID": [{"id": ecid, "primary": True}], "loyaltyId": [{"id": "L1"}]}, eventType="web.webpagedetails.pageViews")])
    ts = policy(c, "ts", default=True)
    out = profile(c, "ECID", ecid)
    (xid, p), = out.items()
    assert p["entityId"] == xid and sorted(p["sources"]) == sorted([crm, loyalty, events])
    ids = {(i["namespace"]["code"], i["id"]) for i in p["entity"]["identities"]}
    assert ids == {("crmId", "C1"), ("email", "jane@x.com"), ("loyaltyId", "L1"), ("ECID", ecid)}
    # timestampOrdered: loyalty was ingested last: its firstName and tier win, lastName survives from CRM
    assert p["entity"]["person"]["name"] == {"firstName": "Janet", "lastName": "Doe"} and p["entity"]["tier"] == "gold"
    assert p["mergePolicy"] == {"id": ts["id"]} and p["lastModifiedAt"].endswith("Z")
    assert profile(c, "crmId", "C1") == out  # any identity of the graph gives the same profile
    # dataSetPrecedence: CRM first
    prec = policy(c, "prec", merge="dataSetPrecedence", order=[crm, loyalty])
    p2 = profile(c, "email", "jane@x.com", prec["id"])[xid]
    assert p2["entity"]["person"]["name"]["firstName"] == "Jane" and p2["entity"]["tier"] == "crm-silver"
    only_loyalty = policy(c, "only-loyalty", merge="dataSetPrecedence", order=[loyalty])
    p3 = profile(c, "email", "jane@x.com", only_loyalty["id"])[xid]
    assert "lastName" not in p3["entity"]["person"]["name"]  # datasets not listed are not merged
    # identityGraph none: only the requested identity's own fragments
    none = policy(c, "none", graph="none")
    pn = profile(c, "crmId", "C1", none["id"])
    (pn,) = pn.values()
    assert pn["sources"] == [crm] and pn["entity"]["person"]["name"]["firstName"] == "Jane"
    profile(c, "loyaltyId", "nobody", expect=404)
    # fields selection, and POST for several identities
    sel = c.get(ENT, params={"schema.name": "_xdm.context.profile", "entityId": "C1", "entityIdNS": "crmId", "fields": "person.name.lastName"})
    assert sel[xid]["entity"] == {"person": {"name": {"lastName": "Doe"}}}
    many = c.post(ENT, {"schema": {"name": "_xdm.context.profile"}, "identities": [{"entityId": "C1", "entityIdNS": {"code": "crmId"}}, {"entityId": "ghost", "entityIdNS": {"code": "email"}}]}, expect=200)
    assert many[xid]["entity"]["tier"] == "gold"
    ghost = [v for k, v in many.items() if k != xid][0]
    assert ghost == {"entityId": "ghost", "sources": [""], "entity": {}, "lastModifiedAt": "1970-01-01T00:00:00Z"}
    # deleting the loyalty dataset removes its data and its links: CRM and the events are separate again
    assert c.request("DELETE", f"/data/foundation/catalog/dataSets/{loyalty}").status_code == 200
    after = profile(c, "crmId", "C1")
    (pa,) = after.values()
    assert pa["sources"] == [crm] and pa["entity"]["tier"] == "crm-silver"
    assert {i["namespace"]["code"] for i in pa["entity"]["identities"]} == {"crmId", "email"}


def test_record_upsert_overwrite_and_isolation(aep):
    c = aep.client
    plain = c.dataset("plain")
    ups = c.dataset("ups", upsert=True)
    none = policy(c, "none", graph="none", default=True)
    aep.ingest(plain, [{"identityMap": ident("crm", "A", True), "a": 1, "b": 1}])
    aep.ingest(plain, [{"identityMap": ident("crm", "A", True), "a": 2}])
    assert profile(c, "crm", "A")
    ent = list(profile(c, "crm", "A").values())[0]["entity"]
    assert ent["a"] == 2 and "b" not in ent  # a record replaces the older one of its dataset
    aep.ingest(ups, [{"identityMap": ident("crm", "U", True), "a": 1, "b": 1}])
    aep.ingest(ups, [{"identityMap": ident("crm", "U", True), "a": 2}])
    ent = list(profile(c, "crm", "U").values())[0]["entity"]
    assert ent["a"] == 2 and ent["b"] == 1  # isUpsert patches
    other = aep.new_org()
    other.get("/data/foundation/catalog/dataSets")
    r = other.request("GET", ENT, params={"schema.name": "_xdm.context.profile", "entityId": "A", "entityIdNS": "crm"})
    assert r.status_code == 404 and r.json()["statusCode"] == "404"
    assert none["default"]


def test_events_dedup_paging_and_time_filter(aep):
    c = aep.client
    ds = c.dataset("web", EVENT)
    me = ident("email", "p@x.com", True)
    rows = [ev(f"e{i}", 1_700_000_000_000 + i * 1000, me, n=i) for i in range(7)]
    aep.ingest(ds, rows)
    b2 = aep.ingest(ds, rows[:3] + [ev("e7", 1_700_000_007_000, me, n=7)])  # e0-e2 again: stored once
    assert b2["status"] == "success"
    params = {"schema.name": "_xdm.context.experienceevent", "relatedSchema.name": "_xdm.context.profile", "relatedEntityId": "p@x.com", "relatedEntityIdNS": "email", "limit": 3}
    seen, page, pages = [], c.get(ENT, params=params), 0
    while True:
        pages += 1
        seen += [ch["entityId"] for ch in page["children"]]
        assert page["_page"]["count"] == len(page["children"])
        if not page["_page"]["next"]:
            assert page["_links"]["next"]["href"] == ""
            break
        href = page["_links"]["next"]["href"]
        assert href.startswith("/entities?start=")
        page = c.get("/data/core/ups/access" + href)
    assert seen == [f"e{i}" for i in range(8)] and pages == 3
    child = c.get(ENT, params={**params, "limit": 1})["children"][0]
    assert child["timestamp"] == 1_700_000_000_000 and child["entity"]["n"] == 0 and child["relatedEntityId"]
    desc = c.get(ENT, params={**params, "orderby": "-timestamp", "startTime": 1_700_000_002_000, "endTime": 1_700_000_005_000})
    assert [ch["entityId"] for ch in desc["children"]] == ["e4", "e3", "e2"]
    assert aep.svc.profile_store.counts(c.get("/data/foundation/catalog/dataSets")[ds]["sandboxId"])["events"] == 8


def test_graph_over_50_identities_is_422(aep):
    c = aep.client
    ds = c.dataset("people")
    policy(c, "pdg", default=True)
    # a chain of 60 identities linked two by two
    rows = [{"identityMap": {"crm": [{"id": f"k{i}", "primary": True}, {"id": f"k{i + 1}"}]}} for i in range(60)]
    assert aep.ingest(ds, rows)["status"] == "success"
    r = c.request("GET", ENT, params={"schema.name": "_xdm.context.profile", "entityId": "k5", "entityIdNS": "crm"})
    assert r.status_code == 422 and r.json()["statusCode"] == "422" and "Too many related identities" in r.json()["message"]
