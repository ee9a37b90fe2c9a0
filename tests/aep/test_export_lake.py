"""Exports that read records from the data lake (scan.LakeExport) give the rows the SQL scan gives:
single-fragment profiles from the lake, merged ones from SQL, deleted profiles gone, the policy's
dataset order and fromIngestTimestamp applied; and fsck knows the record parts' sidecars."""

from __future__ import annotations

import datetime as dt
import io
import json
import time

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from conftest import ident
from test_export import export, finished, union_dataset
from test_profiles import ENT, policy
from test_segments import pdg_default, person

from userlens.fsck import run_fsck
from userlens.profiles import export as export_mod
from userlens.profiles.models import Batch
from userlens.profiles.scan import LakeExport


def rows_of(c, batch_id) -> list[str]:
    """The batch's rows as canonical JSON (nulls dropped: a field absent from a lake row's type is
    null there and absent from a JSON-typed one), identities sorted, rows sorted."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            items = [clean(x) for x in v]
            if all(isinstance(x, (tuple, list)) and len(x) == 2 for x in v) and v:  # a MAP as pairs
                return {k: clean(x) for k, x in v}
            return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
        return v

    out = []
    for f in c.get(f"/data/foundation/export/batches/{batch_id}/files")["data"]:
        (entry,) = c.get(f"/data/foundation/export/files/{f['dataSetFileId']}")["data"]
        raw = c.request("GET", f"/data/foundation/export/files/{f['dataSetFileId']}", params={"path": entry["name"]}).content
        out += [json.dumps(clean(r), sort_keys=True) for r in pq.read_table(io.BytesIO(raw)).to_pylist()]
    return sorted(out)


class _Used(list):
    sql_only: object


@pytest.fixture
def lake_used(monkeypatch):
    """Counts the exports LakeExport served; `sql_only()` makes every export scan SQL instead."""
    used = _Used()
    real = LakeExport.open

    def spy(*a, **k):
        lx = real(*a, **k)
        used.append(lx is not None)
        return lx

    monkeypatch.setattr(export_mod.LakeExport, "open", spy)

    def sql_only():
        monkeypatch.setattr(export_mod.LakeExport, "open", lambda *a, **k: None)

    used.sql_only = sql_only
    return used


def both_ways(aep, lake_used, **body) -> tuple[list[str], list[str], dict]:
    c = aep.client
    ds = union_dataset(c, f"out-{len(lake_used)}")
    via_lake = finished(aep, export(c, ds, **body))
    assert via_lake["status"] == "SUCCEEDED", via_lake
    assert lake_used and lake_used[-1] is True
    real = export_mod.LakeExport.open
    lake_used.sql_only()
    via_sql = finished(aep, export(c, ds, **body))
    export_mod.LakeExport.open = real  # monkeypatch restores it at the end anyway
    assert via_sql["status"] == "SUCCEEDED", via_sql
    assert via_lake["metrics"]["exportedProfileByNamespaceCounter"] == via_sql["metrics"]["exportedProfileByNamespaceCounter"]
    return rows_of(c, via_lake["destination"]["batchId"]), rows_of(c, via_sql["destination"]["batchId"]), via_lake


def test_lake_export_equals_sql_scan(aep, lake_used):
    c = aep.client
    pdg_default(c)
    crm, loyalty = c.dataset("crm"), c.dataset("loyalty")
    aep.ingest(crm, [person(i, "US" if i % 2 else "CA", 20 + i) for i in range(1, 9)])
    # person 1 also in loyalty (two fragments: merged by SQL), person 9 only there
    aep.ingest(loyalty, [{"identityMap": {"loyaltyId": [{"id": "L1", "primary": True}], "email": [{"id": "p1@x.com"}]}, "loyalty": {"tier": "gold", "points": 10}},
                         {"identityMap": ident("loyaltyId", "L9", True), "loyalty": {"tier": "silver", "points": 3}}])
    fields = "identities,identityMap,person,loyalty,homeAddress"
    lake, sql, job = both_ways(aep, lake_used, fields=fields)
    assert lake == sql and len(lake) == 9 and job["metrics"]["totalExportedProfileCounter"] == 9
    merged = [json.loads(r) for r in lake if "loyaltyId" in r and "person" in r]
    assert len(merged) == 1 and merged[0]["loyalty"]["tier"] == "gold" and merged[0]["person"]["name"]["firstName"] == "N1"
    # a projection that names a field no lake row has, and paths into structs
    lake, sql, _ = both_ways(aep, lake_used, fields="person.name.firstName,nothing.here")
    assert lake == sql and len(lake) == 9

    # dataSetPrecedence that lists only loyalty: crm-only profiles are merged by SQL (no attributes)
    prec = policy(c, "prec", merge="dataSetPrecedence", order=[loyalty])
    lake, sql, _ = both_ways(aep, lake_used, fields="identities.id,person,loyalty", mergePolicy={"id": prec["id"]})
    assert lake == sql and sum('"person"' in r for r in lake) == 0

    # fromIngestTimestamp: only profiles with a record ingested after it (a new batch for person 2)
    time.sleep(0.01)
    bid = c.batch(crm, "json")
    created = c.get_batch(bid)["created"]
    time.sleep(0.01)
    c.upload(bid, crm, "part1.json", json.dumps(person(2, "FR", 99)).encode() + b"\n")
    c.post(f"/data/foundation/import/batches/{bid}", params={"action": "COMPLETE"}, expect=200)
    aep.run_jobs()
    stamp = dt.datetime.fromtimestamp(created / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lake, sql, _ = both_ways(aep, lake_used, fields="person.name.firstName,homeAddress", filter={"fromIngestTimestamp": stamp})
    assert lake == sql and [json.loads(r)["homeAddress"]["country"] for r in lake] == ["FR"]


def test_lake_export_after_deletes_and_fsck(aep, lake_used):
    c = aep.client
    pdg_default(c)
    crm = c.dataset("crm")
    aep.ingest(crm, [person(i) for i in range(1, 6)])
    # DELETE /access/entities of person 3: its lake row stays, the export must not show it
    params = {"schema.name": "_xdm.context.profile", "entityId": "C3", "entityIdNS": "crmId"}
    assert c.request("DELETE", ENT, params=params).status_code == 202
    lake, sql, _ = both_ways(aep, lake_used, fields="person.name.firstName,identityMap")
    assert lake == sql
    assert sorted(json.loads(r)["person"]["name"]["firstName"] for r in lake) == ["N1", "N2", "N4", "N5"]
    # person 3 comes back in a new batch: the new record, not the deleted one
    aep.ingest(crm, [person(3, "CA", 77)])
    lake, sql, _ = both_ways(aep, lake_used, fields="person,homeAddress")
    assert lake == sql and len(lake) == 5 and any('"CA"' in r and '77' in r for r in lake)
    report = run_fsck(aep.svc)
    assert not report.of("orphan") and not report.of("dangling"), report.render()
    with aep.svc.db.session() as s:
        batches = list(s.execute(select(Batch).where(Batch.dataset_id == crm)).scalars())
    assert len(batches) == 2 and all(f["pkeys"].endswith(".pkeys.parquet") for b in batches for f in b.lake_files)


def test_lake_export_falls_back_for_rows_kept_as_json(aep, lake_used):
    """A record batch whose fields change type from row to row is kept as JSON text in the lake:
    the export scans SQL instead, with the same rows."""
    c = aep.client
    pdg_default(c)
    crm = c.dataset("crm")
    aep.ingest(crm, [person(1, extra={"v": 1}), person(2, extra={"v": "text"})])
    ds = union_dataset(c)
    job = finished(aep, export(c, ds, fields="person.name.firstName,extra"))
    assert job["status"] == "SUCCEEDED" and lake_used == [False]
    assert sorted(json.loads(r)["person"]["name"]["firstName"] for r in rows_of(c, job["destination"]["batchId"])) == ["N1", "N2"]


@pytest.mark.parametrize("change", ["no sidecar", "no parts"])
def test_lake_export_falls_back_when_the_lake_lacks_records(aep, lake_used, change):
    """Batches ingested before record parts had sidecars, or whose fragments no lake part holds
    (data migrated from the a001 layout): the export scans SQL, and loses no profile."""
    c = aep.client
    pdg_default(c)
    crm = c.dataset("crm")
    aep.ingest(crm, [person(i) for i in range(1, 4)])
    with aep.svc.db.session() as s:
        (b,) = s.execute(select(Batch).where(Batch.dataset_id == crm)).scalars()
        b.lake_files = [{k: v for k, v in f.items() if k != "pkeys"} for f in b.lake_files] if change == "no sidecar" else []
    job = finished(aep, export(c, union_dataset(c), fields="person.name.firstName"))
    assert job["status"] == "SUCCEEDED" and lake_used == [False]
    assert sorted(json.loads(r)["person"]["name"]["firstName"] for r in rows_of(c, job["destination"]["batchId"])) == ["N1", "N2", "N3"]
