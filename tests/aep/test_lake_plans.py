"""Lake export plans (profiles/lakeplan.py): the first lake export of a sandbox builds a plan from the
identity graph and installs it; later exports use it until the graph or the visible loads change
(ingestion, a deleted profile), then the next export builds a new one. Every way gives the rows the
SQL scan gives; replaced plans are retired and later deleted, a plan that could not be installed is
removed after its export, and fsck finds nothing left over."""

from __future__ import annotations

import json

import pytest

from test_export import export, finished, union_dataset
from test_export_lake import rows_of
from test_profiles import ENT
from test_segments import pdg_default, person

from userlens.fsck import run_fsck
from userlens.profiles import export as export_mod
from userlens.profiles import lakeplan
from userlens.profiles.scan import LakeExport


@pytest.fixture
def built(monkeypatch):
    """Per lake export: whether it built its plan (True) or used the installed one (False)."""
    out: list[bool] = []
    real = LakeExport.open

    def spy(*a, **k):
        lx = real(*a, **k)
        assert lx is not None
        out.append(lx.built)
        return lx

    monkeypatch.setattr(export_mod.LakeExport, "open", spy)
    return out


def plan_state(aep) -> tuple[int, dict | None, list]:
    from userlens.profiles.models import LakePlanState

    with aep.svc.db.session() as s:
        (row,) = s.query(LakePlanState).all()
        return row.graph_version, row.current, row.retired or []


def plan_folders(aep) -> set[str]:
    return {"/".join(o.key.split("/")[:6]) for o in aep.svc.store.list(aep.svc.settings.internal_bucket, "aep/") if "/lake-plans/" in o.key}


def names(aep, ds) -> list[str]:
    job = finished(aep, export(aep.client, ds, fields="person.name.firstName,identityMap"))
    assert job["status"] == "SUCCEEDED", job
    return sorted(json.loads(r)["person"]["name"]["firstName"] for r in rows_of(aep.client, job["destination"]["batchId"]))


def test_a_plan_serves_exports_until_the_graph_changes(aep, built, monkeypatch):
    c = aep.client
    pdg_default(c)
    crm = c.dataset("crm")
    aep.ingest(crm, [person(i) for i in range(1, 5)])
    ds = union_dataset(c)
    v0, _, _ = plan_state(aep)
    assert names(aep, ds) == ["N1", "N2", "N3", "N4"] and built == [True]
    _, cur, _ = plan_state(aep)
    assert cur["version"] == v0 and plan_folders(aep) == {cur["prefix"]}
    # the same state: the installed plan, no graph read, the same rows
    assert names(aep, ds) == ["N1", "N2", "N3", "N4"] and built == [True, False]
    # a new batch publishes (the graph's version moves): a new plan with the new person
    aep.ingest(crm, [person(5)])
    v1, _, _ = plan_state(aep)
    assert v1 > v0
    assert names(aep, ds) == ["N1", "N2", "N3", "N4", "N5"] and built[-1] is True
    # a deleted profile: its lake row stays, the new plan leaves it out
    params = {"schema.name": "_xdm.context.profile", "entityId": "C2", "entityIdNS": "crmId"}
    assert c.request("DELETE", ENT, params=params).status_code == 202
    aep.run_jobs()
    # fragments of visible loads change only with the graph's version: the plan's fingerprint of the
    # loads has no live counts, the version alone tells this export to build
    v2, cur, _ = plan_state(aep)
    assert v2 > v1 and cur["version"] == v1
    assert names(aep, ds) == ["N1", "N3", "N4", "N5"] and built[-1] is True
    assert names(aep, ds) == ["N1", "N3", "N4", "N5"] and built[-1] is False
    _, cur, retired = plan_state(aep)
    assert len(retired) == 2 and plan_folders(aep) == {cur["prefix"], *(r["prefix"] for r in retired)}
    report = run_fsck(aep.svc)
    assert not report.of("orphan") and not report.of("dangling"), report.render()
    # retired plans past RETIRE_MS go at the next install
    monkeypatch.setattr(lakeplan, "RETIRE_MS", 0)
    aep.ingest(crm, [person(6)])
    assert names(aep, ds) == ["N1", "N3", "N4", "N5", "N6"] and built[-1] is True
    _, new, retired = plan_state(aep)
    assert [r["prefix"] for r in retired] == [cur["prefix"]] and plan_folders(aep) == {new["prefix"], cur["prefix"]}
    assert not run_fsck(aep.svc).of("orphan")


def test_a_plan_that_cannot_be_installed_serves_its_export_only(aep, built, monkeypatch):
    """The graph changed while the export built its plan (install's compare-and-set fails): the
    plan serves this export and is removed after it; the next export builds again."""
    c = aep.client
    pdg_default(c)
    aep.ingest(c.dataset("crm"), [person(i) for i in range(1, 4)])
    ds = union_dataset(c)
    monkeypatch.setattr(lakeplan, "install", lambda *a, **k: False)
    assert names(aep, ds) == ["N1", "N2", "N3"] and built == [True]
    assert plan_folders(aep) == set() and plan_state(aep)[1] is None
    assert names(aep, ds) == ["N1", "N2", "N3"] and built == [True, True]
    assert not run_fsck(aep.svc).of("orphan")


def test_install_is_a_compare_and_set_on_the_graph_version(aep):
    c = aep.client
    pdg_default(c)
    crm = c.dataset("crm")
    aep.ingest(crm, [person(1)])
    sandbox = aep.svc.db.session
    with sandbox() as s:
        from userlens.profiles.models import LakePlanState

        (sid,) = [r.sandbox_id for r in s.query(LakePlanState).all()]
    version, _, _ = plan_state(aep)
    objects, bucket = aep.svc.store, aep.svc.settings.internal_bucket
    stale = {"prefix": "p-old", "version": version - 1, "loads": "x"}
    assert not lakeplan.install(aep.svc.db, objects, bucket, sid, stale)
    first = {"prefix": "p-1", "version": version, "loads": "x"}
    assert lakeplan.install(aep.svc.db, objects, bucket, sid, first)
    assert not lakeplan.install(aep.svc.db, objects, bucket, sid, {**first, "prefix": "p-2"})  # the same state is installed already
    assert lakeplan.install(aep.svc.db, objects, bucket, sid, {**first, "prefix": "p-3", "loads": "y"})
    _, cur, retired = plan_state(aep)
    assert cur["prefix"] == "p-3" and [r["prefix"] for r in retired] == ["p-1"]
    with aep.svc.db.session() as s:
        assert lakeplan.referenced(s, [sid]) == {"p-1", "p-3"}


def test_a_sandbox_from_before_the_plans_table_gets_one(aep, built):
    """Data ingested before migration a005 has no aep_lake_plans row (graph version 0): the first
    export installs its plan all the same, and the next export uses it."""
    from userlens.profiles.models import LakePlanState

    c = aep.client
    pdg_default(c)
    aep.ingest(c.dataset("crm"), [person(i) for i in range(1, 3)])
    with aep.svc.db.session() as s:
        s.query(LakePlanState).delete()
    ds = union_dataset(c)
    assert names(aep, ds) == ["N1", "N2"] and names(aep, ds) == ["N1", "N2"] and built == [True, False]
    version, cur, _ = plan_state(aep)
    assert version == 0 and cur["version"] == 0
