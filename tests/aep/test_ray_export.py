"""Profile export jobs on Ray (issue 10): a lake export split into several executor chunks gives the
same batch on Ray as on the local executor (rows, counters, number of files), merged and deleted
profiles included; cancelling a running chunked export stops it, publishes nothing and leaves no
file. Each test runs the same requests with USERLENS_EXECUTOR=local, then =ray."""

from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import aep_env, ident
from test_export import EXP, export, finished, union_dataset
from test_export_lake import rows_of
from test_profiles import ENT
from test_segments import pdg_default, person

from userlens.profiles import export as export_mod
from userlens.profiles.scan import LakeExport

N = 60


def fill(env) -> None:
    """Profiles over several batches of several lake parts each; one graph of two fragments
    (merged by SQL), one deleted profile, and a part whose rows lack a field others have."""
    c = env.client
    env.svc.ingest.chunk_rows = 7  # several lake parts per file
    pdg_default(c)
    crm, loyalty = c.dataset("crm"), c.dataset("loyalty")
    env.ingest(crm, [person(i, "US" if i % 2 else "CA", 20 + i) for i in range(1, N // 2)])
    env.ingest(crm, [person(i, "FR", 40, extra={"score": i}) for i in range(N // 2, N)])
    env.ingest(loyalty, [{"identityMap": {"loyaltyId": [{"id": "L1", "primary": True}], "email": [{"id": "p1@x.com"}]}, "loyalty": {"tier": "gold", "points": 10}},
                         {"identityMap": ident("loyaltyId", "L9", True), "loyalty": {"tier": "silver", "points": 3}}])
    params = {"schema.name": "_xdm.context.profile", "entityId": "C3", "entityIdNS": "crmId"}
    assert c.request("DELETE", ENT, params=params).status_code == 202
    env.run_jobs()


def outcome(env, **body) -> dict:
    c = env.client
    job = finished(env, export(c, union_dataset(c, f"out-{time.monotonic_ns()}"), **body))
    assert job["status"] == "SUCCEEDED", job
    bid = job["destination"]["batchId"]
    files = c.get(f"/data/foundation/export/batches/{bid}/files")["data"]
    m = job["metrics"]
    return {"rows": rows_of(c, bid), "files": len(files), "profiles": m["totalExportedProfileCounter"], "by_ns": m["exportedProfileByNamespaceCounter"]}


def scenario(env, monkeypatch) -> dict:
    fill(env)
    monkeypatch.setattr(LakeExport, "CHUNK_ROWS", 10)  # parts of 7 rows: a chunk per part and more
    return {
        "all": outcome(env, fields="identities,identityMap,person,loyalty,homeAddress,score"),
        "projected": outcome(env, fields="person.name.firstName,identityMap"),
    }


@pytest.mark.timeout(600)
def test_export_on_ray_equals_local(backend, ray_cluster, monkeypatch):
    with aep_env(backend) as env:
        local = scenario(env, monkeypatch)
    with aep_env(backend, org="ray-org", executor="ray") as env:
        assert env.svc.executor.name == "ray"
        on_ray = scenario(env, monkeypatch)
    assert on_ray == local
    rows = [json.loads(r) for r in local["all"]["rows"]]
    assert local["all"]["profiles"] == len(rows) == N - 1  # persons 1..N-1, less C3 (deleted), plus L9 (L1 is merged into person 1)
    assert local["all"]["files"] >= 5  # really split into chunks
    assert not any(r.get("person", {}).get("name", {}).get("firstName") == "N3" for r in rows)
    merged = [r for r in rows if r.get("loyalty", {}).get("tier") == "gold"]
    assert len(merged) == 1 and merged[0]["person"]["name"]["firstName"] == "N1"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_cancel_a_chunked_export(backend, ray_cluster, monkeypatch, executor):
    with aep_env(backend, executor=executor) as env:
        fill(env)
        monkeypatch.setattr(LakeExport, "CHUNK_ROWS", 7)
        slow = export_mod._Counters.merge

        def merge(self, *a):  # the job thread takes each chunk's result slowly: the cancel comes mid-way
            time.sleep(0.3)
            slow(self, *a)

        monkeypatch.setattr(export_mod._Counters, "merge", merge)
        c = env.client
        job = export(c, union_dataset(c), fields="person")
        t = threading.Thread(target=env.run_jobs, daemon=True)
        t.start()
        deadline = time.monotonic() + 60
        while c.get(f"{EXP}/{job['id']}")["status"] != "PROCESSING" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert c.request("DELETE", f"{EXP}/{job['id']}").status_code == 204
        t.join(60)
        j = c.get(f"{EXP}/{job['id']}")
        assert j["status"] == "FAILED" and j["errors"][0]["code"] == "CANCELLED", j
        bid = job["destination"]["batchId"]
        assert c.request("GET", f"/data/foundation/catalog/batches/{bid}").status_code == 404
        svc = env.svc
        left = [o.key for o in svc.store.list(svc.settings.internal_bucket, "aep/") if f"/{bid}/" in o.key]
        assert left == []
