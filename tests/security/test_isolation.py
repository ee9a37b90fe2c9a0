"""The isolation matrix: for every resource endpoint of both API families, another NCLUE account's or
another AEP org's / sandbox's resource is invisible (the same 404 as an id that never existed, in the
family's documented body) and untouchable (DELETE / PUT / PATCH / actions refused the same way, and the
owner sees exactly what it saw before).

The list of endpoints comes from the app's route table: a new route fails
`test_every_route_is_in_the_matrix` until it is given a probe here or is listed in NOT_SCOPED with a reason.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from fastapi.routing import APIRoute

from aep_fixtures import EVENT, ev, ident  # registered by tests/security/conftest.py
from infra.soak import scaled
from userlens.samples import sequences as sample

NOT_FOUND_ID = "00000000-0000-4000-8000-000000000000"
INTRUDERS = scaled(1, 5)  # per kind of intruder (another account; another org; another sandbox)

# Routes that name no resource of a tenant (or are another surface with its own tests), with why.
NOT_SCOPED: dict[tuple[str, str], str] = {
    ("POST", "/ims/token/v3"): "issues a token for the client credentials it is given (tests/security/test_auth_attacks.py)",
    ("GET", "/healthz"): "service liveness; no tenant data",
    ("POST", "/data/foundation/catalog/dataSets"): "creates in the caller's own sandbox; names no other resource",
    ("POST", "/data/core/ups/config/mergePolicies"): "creates in the caller's own sandbox; names no other resource",
    ("POST", "/data/core/ups/segment/definitions"): "creates in the caller's own sandbox; names no other resource",
}
NOT_SCOPED_PREFIXES: dict[str, str] = {
    "/console": "the web console: signed session cookies over the same services (tests/console/)",
    "/docs": "API documentation",
    "/redoc": "API documentation",
    "/openapi.json": "API documentation",
}

# Every (method, route) the matrix probes; filled by the decorators below.
COVERED: set[tuple[str, str]] = set()


def covers(*routes: str):
    for r in routes:
        method, _, path = r.partition(" ")
        COVERED.add((method, path))
    return lambda fn: fn


def app_routes(app) -> set[tuple[str, str]]:
    """(method, path template) of every route, walking included routers (the route table itself,
    not the OpenAPI document, so hidden routes count too)."""
    out: set[tuple[str, str]] = set()

    def walk(routes, prefix=""):
        for r in routes:
            if hasattr(r, "original_router"):  # FastAPI's lazily included router
                walk(r.original_router.routes, prefix + (r.include_context.prefix or ""))
            elif hasattr(r, "routes") and not hasattr(r, "methods"):  # a mounted sub-app / router
                walk(r.routes, prefix + getattr(r, "path", ""))
            else:
                for m in getattr(r, "methods", None) or {"GET"}:
                    if m != "HEAD" or isinstance(r, APIRoute):  # Starlette adds HEAD to every GET route itself
                        out.add((m, prefix + r.path))
    walk(app.routes)
    return out


def neutral(body, *ids: str):
    """A body with the probed ids and per-request values blanked, so that the answer for a foreign id
    can be compared with the answer for an id that never existed."""
    text = re.sub(r'"requestId": "[0-9a-f]+"', '"requestId": "<R>"', json.dumps(body, sort_keys=True))
    for i in sorted(ids, key=len, reverse=True):  # whole ids only (an export id is a small number)
        text = re.sub(rf"(?<![0-9A-Za-z]){re.escape(i)}(?![0-9A-Za-z])", "<ID>", text)
    return json.loads(text)


def assert_invisible(foreign, missing, foreign_ids, missing_ids, status=404):
    """The foreign resource's answer is the documented 404 and is indistinguishable from a miss."""
    assert foreign.status_code == status, (foreign.request.method, foreign.request.url, foreign.text)
    assert missing.status_code == status, (missing.request.method, missing.request.url, missing.text)
    if not foreign.content:
        assert not missing.content
        return
    assert neutral(foreign.json(), *foreign_ids) == neutral(missing.json(), *missing_ids), (foreign.text, missing.text)


# -- NCLUE -------------------------------------------------------------------------------------------
NCLUE_DOC_404 = {"code": 19404, "message": "RESOURCE_NOT_FOUND"}


@pytest.fixture
def nclue_world(nclue):
    """Account A owns a completed Feature, a completed Task, a Run, a Custom Attributes profile and a
    completed Shopping Intent profile; account B is another account of the same server."""
    text, truth = sample.generate(600, seed=11)
    nclue.put("seq/users.csv", text)
    nclue.put("answers/beauty.csv", "".join(f"{u}\t{int('beauty' in i)}\n" for u, i in truth.items()))
    c = nclue.client
    fid = c.post("/api/v1/features", {"name": "f", "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    nclue.run_jobs()
    tid = c.post("/api/v1/tasks", {"name": "t", "train_feature_id": fid, "train_bucket": nclue.bucket, "train_file_path": "answers/beauty.csv"})["task_id"]
    nclue.run_jobs()
    pid = c.post("/api/v1/profile/shopping-intents", {"name": "si", "task_id": tid})["profile_id"]
    rid = c.post("/api/v1/task-runs", {"name": "r", "task_id": tid, "feature_id": fid, "result_bucket": nclue.bucket, "result_file_path": "out/"})["run_id"]
    aid = c.post("/api/v1/profile/custom-attributes", {"name": "ca", "feature_id": fid, "keyword_set": "running", "result_bucket": nclue.bucket, "result_file_path": "attrs/"})["profile_id"]
    nclue.run_jobs()
    assert c.get(f"/api/v1/profile/shopping-intents/{pid}")["status"] == "completed"
    nclue.extra.update(feature=fid, task=tid, run=rid, attr=aid, intent=pid, other=nclue.other_client())
    return nclue


NCLUE_RESOURCES = {  # route template -> (fixture key, list key in the list body)
    "/api/v1/features": ("feature", "features"),
    "/api/v1/tasks": ("task", "tasks"),
    "/api/v1/task-runs": ("run", "runs"),
    "/api/v1/profile/custom-attributes": ("attr", "profiles"),
    "/api/v1/profile/shopping-intents": ("intent", "profiles"),
}
NCLUE_ID_PARAM = {"features": "feature_id", "tasks": "task_id", "task-runs": "run_id", "custom-attributes": "profile_id", "shopping-intents": "profile_id"}


def nclue_snapshot(w) -> dict:
    c = w.client
    snap = {base: c.get(f"{base}/{w.extra[key]}") for base, (key, _) in NCLUE_RESOURCES.items()}
    snap["download"] = c.raw("GET", f"/api/v1/profile/shopping-intents-download/{w.extra['intent']}").content
    snap["lists"] = {base: c.get(base) for base in NCLUE_RESOURCES}
    return snap


@covers(
    "GET /api/v1/features", "GET /api/v1/features/{feature_id}", "DELETE /api/v1/features/{feature_id}",
    "GET /api/v1/tasks", "GET /api/v1/tasks/{task_id}", "DELETE /api/v1/tasks/{task_id}",
    "GET /api/v1/task-runs", "GET /api/v1/task-runs/{run_id}", "DELETE /api/v1/task-runs/{run_id}",
    "GET /api/v1/profile/custom-attributes", "GET /api/v1/profile/custom-attributes/{profile_id}", "DELETE /api/v1/profile/custom-attributes/{profile_id}",
    "GET /api/v1/profile/shopping-intents", "GET /api/v1/profile/shopping-intents/{profile_id}", "DELETE /api/v1/profile/shopping-intents/{profile_id}",
    "GET /api/v1/profile/shopping-intents-download/{profile_id}",
    "POST /api/v1/tasks", "POST /api/v1/task-runs", "POST /api/v1/profile/custom-attributes", "POST /api/v1/profile/shopping-intents",
    "POST /api/v1/features",
)
def test_nclue_another_accounts_resources_are_invisible_and_untouchable(nclue_world):
    w = nclue_world
    before = nclue_snapshot(w)
    # Soak (USERLENS_SOAK=1): more intruding accounts, each comparing with another never-existing id.
    intruders = [(w.extra["other"], NOT_FOUND_ID)] + [(w.other_client(), str(uuid.uuid4())) for _ in range(INTRUDERS - 1)]
    probes = sum(nclue_probe(w, other, missing) for other, missing in intruders)
    w.run_jobs()
    assert nclue_snapshot(w) == before  # nothing of A changed
    for other, _ in intruders:
        for base, (_key, list_key) in NCLUE_RESOURCES.items():
            assert other.get(base)["total"] == 0
    assert probes >= 19 * len(intruders)


def nclue_probe(w, other, missing_id: str) -> int:
    """Account `other` probes every NCLUE route with A's ids and with `missing_id`; returns the count."""
    probes = 0
    # Lists: B sees none of A's resources, and its totals are its own (zero).
    for base, (_key, list_key) in NCLUE_RESOURCES.items():
        listing = other.get(base)
        assert listing[list_key] == [] and listing["total"] == 0, (base, listing)
        probes += 1
    # GET / DELETE by id, and the download: exactly the answer for an id that never existed.
    for base, (key, _) in NCLUE_RESOURCES.items():
        rid = w.extra[key]
        for method in ("GET", "DELETE"):
            foreign, missing = other.raw(method, f"{base}/{rid}"), other.raw(method, f"{base}/{missing_id}")
            assert_invisible(foreign, missing, [rid], [missing_id])
            assert foreign.json()["code"] == 19404 and foreign.json()["message"] == "RESOURCE_NOT_FOUND"
            probes += 1
    dl = "/api/v1/profile/shopping-intents-download"
    assert_invisible(other.raw("GET", f"{dl}/{w.extra['intent']}"), other.raw("GET", f"{dl}/{missing_id}"), [w.extra["intent"]], [missing_id])
    # Creation that names A's resources: refused as if they did not exist; B gets nothing new.
    b = w.bucket
    creates = [
        ("/api/v1/tasks", {"name": "x", "train_feature_id": "{feature}", "train_bucket": b, "train_file_path": "answers/beauty.csv"}),
        ("/api/v1/task-runs", {"name": "x", "task_id": "{task}", "feature_id": "{feature}", "result_bucket": b, "result_file_path": "steal/"}),
        ("/api/v1/profile/custom-attributes", {"name": "x", "feature_id": "{feature}", "keyword_set": "running", "result_bucket": b, "result_file_path": "steal/"}),
        ("/api/v1/profile/shopping-intents", {"name": "x", "task_id": "{task}"}),
    ]
    for path, body in creates:
        owned = {k: (w.extra[v[1:-1]] if isinstance(v, str) and v.startswith("{") else v) for k, v in body.items()}
        ghost = {k: (missing_id if isinstance(v, str) and v.startswith("{") else v) for k, v in body.items()}
        ids = [w.extra[v[1:-1]] for v in body.values() if isinstance(v, str) and v.startswith("{")]
        assert_invisible(other.raw("POST", path, body=owned), other.raw("POST", path, body=ghost), ids, [missing_id])
        probes += 1
    # A Feature cannot read userlens's internal bucket, where A's vectors live under A's prefix.
    internal = w.settings.internal_bucket
    r = other.raw("POST", "/api/v1/features", body={"name": "peek", "source_bucket": internal, "source_file_path": "accounts/"})
    assert r.status_code == 404 and r.json()["code"] == 10106, r.text  # as a missing bucket
    return probes


# -- AEP ---------------------------------------------------------------------------------------------
DS = "/data/foundation/catalog/dataSets"
BATCHES = "/data/foundation/catalog/batches"
IMPORT = "/data/foundation/import/batches"
EXPORT = "/data/foundation/export"
MP = "/data/core/ups/config/mergePolicies"
ENT = "/data/core/ups/access/entities"
DEF = "/data/core/ups/segment/definitions"
SEGJOBS = "/data/core/ups/segment/jobs"
EXP = "/data/core/ups/export/jobs"
SJ = "/data/core/ups/system/jobs"
PROFILE_Q = {"schema.name": "_xdm.context.profile", "entityId": "C1", "entityIdNS": "crmId"}


@pytest.fixture
def aep_world(aep):
    """Org A (prod) owns datasets, a completed batch with a file, an open batch, a merge policy, a
    profile with events, a segment definition and job, an export job and a delete request."""
    c = aep.client
    mp = c.post(MP, {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True}, expect=200)
    crm, web = c.dataset("crm"), c.dataset("web", EVENT)
    done = aep.ingest(crm, [{"identityMap": ident("crmId", "C1", True), "person": {"name": {"firstName": "Ann"}}}])
    aep.ingest(web, [ev("e1", "2026-01-01T00:00:00Z", ident("crmId", "C1", True), eventType="web.webpagedetails.pageViews")])
    open_batch = c.batch(crm)
    seg = c.post(DEF, {"name": "ann", "schema": {"name": "_xdm.context.profile"}, "expression": {"type": "PQL", "format": "pql/text", "value": 'person.name.firstName = "Ann"'}}, expect=200)
    segjob = c.post(SEGJOBS, [{"segmentId": seg["id"]}], expect=200)
    union = c.dataset("export", "https://ns.adobe.com/xdm/context/profile__union", profile=False)
    exp = c.post(EXP, {"destination": {"datasetId": union}, "schema": {"name": "_xdm.context.profile"}}, expect=200)
    sj = c.post(SJ, {"dataSetId": web}, expect=200)
    aep.run_jobs()  # A's jobs finish first: whatever changes after this is B's doing
    files = c.get(f"{EXPORT}/batches/{done['id']}/files")["data"]
    assert files
    ids = {"dataset": crm, "web": web, "batch": done["id"], "open_batch": open_batch, "file": files[0]["dataSetFileId"], "policy": mp["id"], "segment": seg["id"], "segjob": segjob["id"], "export": str(exp["id"]), "sysjob": sj["id"], "union": union}
    return aep, ids


def aep_snapshot(c, ids) -> dict:
    def get(path, params=None):
        r = c.request("GET", path, params=params)
        return r.status_code, r.json() if r.content else None

    return {
        "datasets": get(DS), "dataset": get(f"{DS}/{ids['dataset']}"), "batches": get(BATCHES),
        "batch": get(f"{BATCHES}/{ids['batch']}"), "open_batch": get(f"{BATCHES}/{ids['open_batch']}"),
        "files": get(f"{EXPORT}/batches/{ids['batch']}/files"), "file": get(f"{EXPORT}/files/{ids['file']}"),
        "policies": get(MP), "policy": get(f"{MP}/{ids['policy']}"), "profile": get(ENT, PROFILE_Q),
        "segment": get(f"{DEF}/{ids['segment']}"), "segjob": get(f"{SEGJOBS}/{ids['segjob']}"),
        "export": get(f"{EXP}/{ids['export']}"), "sysjob": get(f"{SJ}/{ids['sysjob']}"),
    }


def aep_probes(ids: dict, fake: dict):
    """(method, path, kwargs, expected status) for every id-scoped AEP route, with A's ids or with ids
    that never existed (`fake`)."""
    i = {k: fake.get(k, v) for k, v in ids.items()} if fake else ids
    mp_body = {"name": "stolen", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "none"}, "attributeMerge": {"type": "timestampOrdered"}}
    return [
        ("GET", f"{DS}/{i['dataset']}", {}),
        ("PUT", f"{DS}/{i['dataset']}", {"body": {"name": "stolen", "schemaRef": {"id": "https://ns.adobe.com/xdm/context/profile", "contentType": "application/vnd.adobe.xed+json;version=1"}}}),
        ("PATCH", f"{DS}/{i['dataset']}", {"body": {"name": "stolen"}}),
        ("DELETE", f"{DS}/{i['dataset']}", {}),
        ("GET", f"{BATCHES}/{i['batch']}", {}),
        ("POST", IMPORT, {"body": {"datasetId": i["dataset"], "inputFormat": {"format": "json"}}}),
        ("PUT", f"{IMPORT}/{i['open_batch']}/datasets/{i['dataset']}/files/x.json", {"content": b'{"a": 1}\n', "headers": {"Content-Type": "application/octet-stream"}}),
        ("POST", f"{IMPORT}/{i['open_batch']}", {"params": {"action": "ABORT"}}),
        ("POST", f"{IMPORT}/{i['batch']}", {"params": {"action": "REVERT"}}),
        ("GET", f"{EXPORT}/batches/{i['batch']}/files", {}),
        ("GET", f"{EXPORT}/files/{i['file']}", {}),
        ("HEAD", f"{EXPORT}/files/{i['file']}", {}),
        ("GET", f"{MP}/{i['policy']}", {}),
        ("PUT", f"{MP}/{i['policy']}", {"body": mp_body}),
        ("PATCH", f"{MP}/{i['policy']}", {"body": {"name": "stolen"}}),
        ("DELETE", f"{MP}/{i['policy']}", {}),
        ("GET", f"{DEF}/{i['segment']}", {}),
        ("DELETE", f"{DEF}/{i['segment']}", {}),
        ("POST", SEGJOBS, {"body": [{"segmentId": i["segment"]}]}),
        ("GET", f"{SEGJOBS}/{i['segjob']}", {}),
        ("DELETE", f"{SEGJOBS}/{i['segjob']}", {}),
        ("POST", EXP, {"body": {"destination": {"datasetId": i["union"]}, "schema": {"name": "_xdm.context.profile"}}}),
        ("GET", f"{EXP}/{i['export']}", {}),
        ("DELETE", f"{EXP}/{i['export']}", {}),
        ("POST", SJ, {"body": {"dataSetId": i["web"]}}),
        ("POST", SJ, {"body": {"batchId": i["batch"]}}),
        ("GET", f"{SJ}/{i['sysjob']}", {}),
        ("DELETE", f"{SJ}/{i['sysjob']}", {}),
    ]


# Creations that check their references in the job, not in the request (documented in profiles/export.py):
# a foreign id must be accepted exactly as one that never existed, and the job must fail the same way.
DEFERRED = {("POST", EXP)}


@covers(
    f"GET {DS}", f"GET {DS}/{{dataset_id}}", f"PUT {DS}/{{dataset_id}}", f"PATCH {DS}/{{dataset_id}}", f"DELETE {DS}/{{dataset_id}}",
    f"GET {BATCHES}", f"GET {BATCHES}/{{batch_id}}",
    f"POST {IMPORT}", f"PUT {IMPORT}/{{batch_id}}/datasets/{{dataset_id}}/files/{{path:path}}", f"POST {IMPORT}/{{batch_id}}",
    f"GET {EXPORT}/batches/{{batch_id}}/files", f"GET {EXPORT}/files/{{file_id}}", f"HEAD {EXPORT}/files/{{file_id}}",
    f"GET {MP}", f"POST {MP}/bulk-get", f"GET {MP}/{{policy_id}}", f"PUT {MP}/{{policy_id}}", f"PATCH {MP}/{{policy_id}}", f"DELETE {MP}/{{policy_id}}",
    f"GET {ENT}", f"POST {ENT}", f"DELETE {ENT}",
    f"GET {DEF}", f"GET {DEF}/{{segment_id}}", f"DELETE {DEF}/{{segment_id}}",
    f"GET {SEGJOBS}", f"POST {SEGJOBS}", f"GET {SEGJOBS}/{{job_id}}", f"DELETE {SEGJOBS}/{{job_id}}",
    f"GET {EXP}", f"POST {EXP}", f"GET {EXP}/{{export_id}}", f"DELETE {EXP}/{{export_id}}",
    f"GET {SJ}", f"POST {SJ}", f"GET {SJ}/{{job_id}}", f"DELETE {SJ}/{{job_id}}",
)
@pytest.mark.parametrize("intruder", ["other-org", "other-sandbox"])
def test_aep_another_tenants_resources_are_invisible_and_untouchable(aep_world, intruder):
    aep, ids = aep_world
    a = aep.client
    before = aep_snapshot(a, ids)
    for n in range(1, INTRUDERS + 1):  # soak: several other orgs / sandboxes
        if intruder == "other-org":
            b = aep.new_org()
        else:  # the same org and client, another sandbox
            aep.svc.orgs.create_sandbox(a.org_id, f"dev{n}")
            b = type(a)(a.http, a.org_id, a.client_id, a.token, f"dev{n}")
        aep_probe(aep, ids, b)
    after = aep_snapshot(a, ids)
    assert after == before


def aep_probe(aep, ids: dict, b) -> None:
    """Tenant `b` probes every AEP route with A's ids and with ids that never existed."""
    # B's own twins of the ids A uses where a route needs two (a batch of B's dataset etc.) are not needed:
    # every probe names A's ids, or ids that never existed, and must get the same answer.
    fake = {k: (str(uuid.uuid4()) if k != "export" else "987654321") for k in ids}
    fake["file"] = f"{fake['batch']}-1"
    foreign, missing = aep_probes(ids, {}), aep_probes(ids, fake)
    for (method, path, kw), (_m, path2, kw2) in zip(foreign, missing):
        rf = b.request(method, path, **kw)
        rm = b.request(method, path2, **kw2)
        if (method, path) in DEFERRED:  # accepted like a never-existing id; the job then fails (below)
            assert rf.status_code == rm.status_code == 200, (rf.text, rm.text)
            continue
        assert rf.status_code in (404, 400), (method, path, rf.status_code, rf.text)
        assert_invisible(rf, rm, list(ids.values()), list(fake.values()), status=rf.status_code)
        assert rf.status_code == 404 or method == "POST", (method, path, rf.text)  # only a create's body reference may be a 400
    # Lists and bulk reads: none of A's resources appear.
    assert b.get(DS) == {}
    assert ids["batch"] not in b.get(BATCHES) and ids["open_batch"] not in b.get(BATCHES)
    assert ids["policy"] not in json.dumps(b.get(MP))
    bulk = b.request("POST", f"{MP}/bulk-get", body={"ids": [{"id": ids["policy"]}]})
    assert ids["policy"] not in bulk.text or bulk.json()["results"][ids["policy"]]["status"] == 404, bulk.text
    assert b.get(DEF)["page"]["totalCount"] == 0
    assert ids["segjob"] not in json.dumps(b.get(SEGJOBS))
    assert ids["export"] not in {str(j["id"]) for j in b.get(EXP)["records"]}
    assert ids["sysjob"] not in json.dumps(b.get(SJ))
    # Profiles: A's person is not found by B, B cannot delete it, and a bulk read returns nothing of it.
    rf = b.request("GET", ENT, params=PROFILE_Q)
    rm = b.request("GET", ENT, params={**PROFILE_Q, "entityId": "C-never"})
    assert_invisible(rf, rm, ["C1"], ["C-never"])
    rf = b.request("DELETE", ENT, params=PROFILE_Q)
    rm = b.request("DELETE", ENT, params={**PROFILE_Q, "entityId": "C-never"})
    assert_invisible(rf, rm, ["C1"], ["C-never"])
    ev_q = {"schema.name": "_xdm.context.experienceevent", "relatedSchema.name": "_xdm.context.profile", "relatedEntityId": "C1", "relatedEntityIdNS": "crmId"}
    r = b.request("GET", ENT, params=ev_q)
    assert r.status_code == 404 or r.json().get("children") == [], r.text
    posted = b.request("POST", ENT, body={"schema": {"name": "_xdm.context.profile"}, "identities": [{"entityId": "C1", "entityIdNS": {"code": "crmId"}}]})
    assert posted.status_code in (200, 404) and "Ann" not in posted.text, posted.text
    aep.run_jobs()
    # B's export into A's dataset failed exactly as one into a dataset that never existed.
    (j1, j2) = sorted(b.get(EXP)["records"], key=lambda j: j["id"])
    assert j1["status"] == j2["status"] == "FAILED", (j1, j2)
    assert neutral(j1["errors"], ids["union"]) == neutral(j2["errors"], fake["union"])


def test_every_route_is_in_the_matrix(aep):
    """Fails when a route is added without an isolation probe here or a reason in NOT_SCOPED."""
    routes = app_routes(aep.app)
    missing = sorted(
        (m, p) for m, p in routes
        if (m, p) not in COVERED and (m, p) not in NOT_SCOPED and not any(p.startswith(x) for x in NOT_SCOPED_PREFIXES)
    )
    assert not missing, f"routes with no isolation probe (add one to tests/security/test_isolation.py or list them in NOT_SCOPED): {missing}"
    stale = sorted(COVERED - routes)
    assert not stale, f"probed routes that no longer exist: {stale}"
    assert len(COVERED) >= 55
