"""`userlens fsck`: a store after a normal workload of every resource kind is clean; planted orphans,
deleted objects and status disagreements are each reported precisely; --repair deletes orphans only."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import update

from userlens import fsck
from userlens.fsck import run_fsck
from userlens.samples import sequences as sample

PROFILE = "https://ns.adobe.com/xdm/context/profile"
EVENT = "https://ns.adobe.com/xdm/context/experienceevent"
UNION = "https://ns.adobe.com/xdm/context/profile__union"
N_USERS = 600


class Aep:
    """A minimal AEP client on the test app (an org, its token, the gateway headers)."""

    def __init__(self, w):
        self.http = w.http
        creds = w.svc.orgs.create_org(f"org-{uuid.uuid4().hex[:8]}")
        r = self.http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret, "scope": "openid,AdobeID"})
        assert r.status_code == 200, r.text
        self.h = {"Authorization": f"Bearer {r.json()['access_token']}", "x-api-key": creds.client_id, "x-gw-ims-org-id": creds.org_id, "x-sandbox-name": "prod"}

    def call(self, method, path, body=None, params=None, content=None, expect=(200, 201)):
        h = dict(self.h)
        if body is not None:
            h["Content-Type"] = "application/json"
            content = json.dumps(body)
        elif content is not None:
            h["Content-Type"] = "application/octet-stream"
        r = self.http.request(method, path, content=content, params=params, headers=h)
        assert r.status_code in expect, r.text
        return r.json() if r.content else None

    def dataset(self, name, schema, profile=True) -> str:
        tags = {"unifiedProfile": ["enabled:true"]} if profile else {}
        out = self.call("POST", "/data/foundation/catalog/dataSets", {"name": name, "schemaRef": {"id": schema, "contentType": "application/vnd.adobe.xed+json;version=1"}, "tags": tags})
        return out[0].split("/")[-1]

    def batch(self, dataset_id: str, data: bytes, fmt="json", path=None, complete=True) -> str:
        bid = self.call("POST", "/data/foundation/import/batches", {"datasetId": dataset_id, "inputFormat": {"format": fmt}})["id"]
        self.call("PUT", f"/data/foundation/import/batches/{bid}/datasets/{dataset_id}/files/{path or 'part1.' + fmt}", content=data)
        if complete:
            self.call("POST", f"/data/foundation/import/batches/{bid}", params={"action": "COMPLETE"}, expect=(200,))
        return bid

    def get_batch(self, bid: str) -> dict:
        return self.call("GET", f"/data/foundation/catalog/batches/{bid}", expect=(200,))[bid]


def jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def records(n: int, tag: str = "r") -> bytes:
    return jsonl({"identityMap": {"crm": [{"id": f"{tag}{i}", "primary": True}]}, "person": {"name": f"n{i}"}} for i in range(n))


def events(n: int, tag: str = "r") -> bytes:
    return jsonl({"_id": f"{tag}e{i}", "timestamp": 1_700_000_000_000 + i, "identityMap": {"crm": [{"id": f"{tag}{i % 7}", "primary": True}]}, "eventType": "web.webpagedetails.pageViews"} for i in range(n))


@pytest.fixture(autouse=True, params=["pages of 1000", "pages of 2"])
def page_size(request, monkeypatch):
    """Every test twice: with the default page size, and with pages of 2 rows / 2 objects, so that
    every resource and folder is split across pages (the findings must be the same)."""
    size = fsck.PAGE_SIZE if request.param == "pages of 1000" else 2
    monkeypatch.setattr(fsck, "PAGE_SIZE", size)
    return size


def workload(w) -> dict:
    """One resource of every kind that stores objects, all completed: returns their ids."""
    text, truth = sample.generate(N_USERS, seed=11)
    w.put("seq/users.csv", text)
    w.settings_chunk_rows(250)  # several vector parts per Feature
    c = w.client
    ids: dict = {}
    ids["feature"] = c.post("/api/v1/features", {"name": "f", "source_bucket": w.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    w.run_jobs()
    w.put("answers/a.csv", "".join(f"{u}\t{int('beauty' in i)}\n" for u, i in truth.items()))
    ids["task"] = c.post("/api/v1/tasks", {"name": "t", "train_feature_id": ids["feature"], "train_bucket": w.bucket, "train_file_path": "answers/a.csv"})["task_id"]
    w.run_jobs()
    ids["run"] = c.post("/api/v1/task-runs", {"name": "r", "task_id": ids["task"], "feature_id": ids["feature"], "result_bucket": w.bucket, "result_file_path": "out/run"})["run_id"]
    ids["intent"] = c.post("/api/v1/profile/shopping-intents", {"name": "si", "task_id": ids["task"]})["profile_id"]
    w.run_jobs()
    aep = w.extra["aep"] = Aep(w)
    ids["rec_ds"] = aep.dataset("people", PROFILE)
    ids["ev_ds"] = aep.dataset("events", EVENT)
    ids["rec_batch"] = aep.batch(ids["rec_ds"], records(40))
    ids["ev_batch"] = aep.batch(ids["ev_ds"], events(60))
    w.run_jobs()
    ids["union_ds"] = aep.dataset("export", UNION, profile=False)
    ids["export"] = aep.call("POST", "/data/core/ups/export/jobs", {"destination": {"datasetId": ids["union_ds"]}, "schema": {"name": "_xdm.context.profile"}}, expect=(200,))["id"]
    w.run_jobs()
    for kind, path in (("feature", "features"), ("task", "tasks"), ("run", "task-runs"), ("intent", "profile/shopping-intents")):
        assert c.get(f"/api/v1/{path}/{ids[kind]}")["status"] == "completed", kind
    for b in ("rec_batch", "ev_batch"):
        assert aep.get_batch(ids[b])["status"] == "success", b
    exp = aep.call("GET", f"/data/core/ups/export/jobs/{ids['export']}", expect=(200,))
    assert exp["status"] == "SUCCEEDED", exp
    ids["export_batch"] = exp["destination"]["batchId"]
    return ids


def rows(report, kind):
    return sorted((f.code, f.key or f.resource) for f in report.of(kind))


def test_planted_orphans_and_missing_objects_are_reported_precisely(nclue):
    from userlens.profiles.models import Batch
    from userlens.understanding.models import Feature, ReferencePanel, ShoppingIntent, Task

    ids = workload(nclue)
    svc, bucket = nclue.svc, nclue.settings.internal_bucket
    store, acct = svc.store, nclue.account_id
    with svc.db.session() as s:
        feature = s.get(Feature, ids["feature"])
        task = s.get(Task, ids["task"])
        intent = s.get(ShoppingIntent, ids["intent"])
        rec = s.get(Batch, ids["rec_batch"])
        exported = s.get(Batch, ids["export_batch"])
        panel = s.get(ReferencePanel, intent.panel_id)
    parts = [o.key for o in store.list(bucket, feature.vectors_prefix)]
    assert len(parts) == 3
    planted = {
        ("dead-attempt", f"nclue/{acct}/features/{ids['feature']}/a9-deadbeef00/part-00000.parquet"),
        ("deleted-resource", f"nclue/{acct}/tasks/{uuid.uuid4()}/a1-0123456789/model.npz"),
        ("dead-attempt", f"{rec.lake_files[0]['key'].rsplit('/', 2)[0]}/a7-0000000000/part-00000.parquet"),
        ("temporary", f"{feature.vectors_prefix}/.tmp-{uuid.uuid4().hex}-part-00003.parquet"),
        ("unknown", "stray/file.bin"),
    }
    for _, key in planted:
        store.write_bytes(bucket, key, b"x" * 10)
    missing = {
        ("missing-object", parts[1]),
        ("missing-object", task.artifact_key),
        ("missing-object", intent.result_key),
        ("missing-object", rec.lake_files[0]["key"]),
        ("missing-object", exported.lake_files[0]["key"]),
        ("missing-object", f"{panel.prefix}/attributes/00000.parquet"),
    }
    for _, key in missing:
        store.delete(bucket, key)

    report = run_fsck(svc)
    assert not report.clean
    assert set(rows(report, "orphan")) == planted, report.render()
    assert set(rows(report, "dangling")) == missing, report.render()
    assert not report.of("status")
    text = report.render()
    assert "Orphans" in text and "Dangling" in text and parts[1] in text

    # Young orphans are kept by --repair; past the grace period they go, and nothing referenced does.
    kept = run_fsck(svc, repair=True, grace_seconds=3600)
    assert not any(f.repaired for f in kept.findings)
    before = {o.key for o in store.list(bucket)}
    repaired = run_fsck(svc, repair=True, grace_seconds=0)
    assert {f.key for f in repaired.findings if f.repaired} == {k for _, k in planted}
    after = {o.key for o in store.list(bucket)}
    assert before - after == {k for _, k in planted} & before  # the local store's list() hides temporaries
    again = run_fsck(svc)
    assert not again.of("orphan") and set(rows(again, "dangling")) == missing


def test_clean_after_a_normal_workload_then_a_missing_last_part_and_status_disagreements(nclue):
    from userlens.profiles.models import Batch
    from userlens.understanding.models import Feature

    ids = workload(nclue)
    svc, bucket = nclue.svc, nclue.settings.internal_bucket
    report = run_fsck(svc)
    assert report.clean, report.render()
    assert report.objects > 10 and report.resources >= 8
    # Deleting resources removes their data: still clean.
    for path, rid in (("profile/shopping-intents", ids["intent"]), ("task-runs", ids["run"])):
        nclue.client.delete(f"/api/v1/{path}/{rid}")
    assert run_fsck(svc).clean

    with svc.db.session() as s:
        feature = s.get(Feature, ids["feature"])
        s.execute(update(Batch).where(Batch.id == ids["ev_batch"]).values(status="staging"))
    last = sorted(o.key for o in svc.store.list(bucket, feature.vectors_prefix))[-1]
    svc.store.delete(bucket, last)  # no gap in the numbering: found by counting the users
    report = run_fsck(svc)
    assert rows(report, "dangling") == [("incomplete", feature.vectors_prefix)], report.render()
    assert rows(report, "status") == [("status-mismatch", f"batch {ids['ev_batch']}")], report.render()
    with svc.db.session() as s:
        s.execute(update(Feature).where(Feature.id == ids["feature"]).values(vectors_prefix=None))
    report = run_fsck(svc)
    assert ("status-mismatch", f"Feature {ids['feature']}") in rows(report, "status")


def test_cli_reports_json_and_exit_codes(nclue, monkeypatch):
    from typer.testing import CliRunner

    from userlens.cli import app

    s = nclue.settings
    env = {
        "USERLENS_DATABASE_URL": s.database_url, "USERLENS_DATA_DIR": str(s.data_dir), "USERLENS_OBJECT_STORE": s.object_store,
        "USERLENS_STORAGE_ROOT": str(s.storage_root), "USERLENS_S3_ENDPOINT_URL": s.s3_endpoint_url, "USERLENS_S3_ACCESS_KEY": s.s3_access_key,
        "USERLENS_S3_SECRET_KEY": s.s3_secret_key.get_secret_value(), "USERLENS_INTERNAL_BUCKET": s.internal_bucket, "USERLENS_MASTER_KEY": "test-master-key",
        "USERLENS_LOG_LEVEL": "WARNING",
    }
    runner = CliRunner()
    ok = runner.invoke(app, ["fsck", "--json"], env=env)
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["clean"] is True
    nclue.store.write_bytes(s.internal_bucket, "nclue/x/features/y/a1-z/part-00000.parquet", b"x")
    bad = runner.invoke(app, ["fsck"], env=env)
    assert bad.exit_code == 1 and "deleted-resource" in bad.output and "1 problem(s) found" in bad.output, bad.output
    fixed = runner.invoke(app, ["fsck", "--repair", "--grace-seconds", "0", "--page-size", "3", "--json"], env=env)
    assert fixed.exit_code == 0 and json.loads(fixed.output)["repaired"] == 1, fixed.output


def test_the_check_holds_one_page_at_a_time(nclue, page_size, monkeypatch):
    """Metadata rows and object listings come in pages of at most page_size (memory stays bounded
    however large the store), and a store with more than one page is walked whole."""
    workload(nclue)
    seen = {"rows": [], "objects": []}
    keyset_pages, object_pages = fsck.keyset_pages, fsck.object_pages

    def spy_rows(*a, **kw):
        for page in keyset_pages(*a, **kw):
            seen["rows"].append(len(page))
            yield page

    def spy_objects(*a, **kw):
        for page in object_pages(*a, **kw):
            seen["objects"].append(len(page))
            yield page

    monkeypatch.setattr(fsck, "keyset_pages", spy_rows)
    monkeypatch.setattr(fsck, "object_pages", spy_objects)
    report = run_fsck(nclue.svc)
    assert report.clean, report.render()
    assert max(seen["rows"]) <= page_size and max(seen["objects"]) <= page_size
    assert sum(seen["objects"]) >= report.objects > 10
    if page_size == 2:
        assert len(seen["objects"]) >= report.objects // 2 and 2 in seen["rows"]


def test_temporaries_of_killed_writes_in_customer_buckets(nclue):
    """A write SIGKILLed on the local store leaves a hidden temporary in the customer's bucket, where
    no job's clean-up looks: fsck reports it once its writer is gone and --repair removes it; the
    temporary of a write in flight is left alone."""
    from userlens.storage.objectstore import LocalObjectStore

    store = nclue.svc.store
    if not isinstance(store, LocalObjectStore):
        pytest.skip("only the local store writes temporaries")
    import test_objectstore

    test_objectstore.killed_write(store.root, nclue.bucket, "out/run/result.tsv")
    [(key, _, _)] = list(store.temporaries(nclue.bucket))
    with store.open_write(nclue.bucket, "out/live.tsv") as f:  # in flight during the check
        f.write(b"x")
        report = run_fsck(nclue.svc)
        assert [(f.code, f.bucket, f.key) for f in report.of("orphan")] == [("temporary", nclue.bucket, key)], report.render()
        assert f"{nclue.bucket}/{key}" in report.render() and not report.clean
        repaired = run_fsck(nclue.svc, repair=True)  # stale at once: no grace period to wait for a dead writer
        assert [f.repaired for f in repaired.findings] == [True] and repaired.clean
    assert list(store.temporaries(nclue.bucket)) == [] and run_fsck(nclue.svc).clean


def test_an_s3_upload_never_completed_is_reported_and_aborted(nclue):
    """A writer killed mid-upload leaves an S3 multipart upload open (its parts take space, no reader
    sees them). fsck reports it once past the grace period as `incomplete-upload` and --repair
    aborts it; a younger one may be a write in flight and is left alone."""
    from userlens.storage.objectstore import S3ObjectStore

    svc = nclue.svc
    store, bucket = svc.store, svc.settings.internal_bucket
    if not isinstance(store, S3ObjectStore):
        pytest.skip("only S3 has multipart uploads")
    key = f"nclue/{nclue.account_id}/features/f1/a1-0123456789/part-00000.parquet"
    upload = store.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
    store.fs.call_s3("upload_part", Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)
    assert [(k, u) for k, u, _ in store.incomplete_uploads(bucket)] == [(key, upload)]

    young = run_fsck(svc, repair=True)  # within the default grace period of an hour
    assert young.clean and young.skipped_in_flight >= 1 and not young.of("orphan"), young.render()
    assert [u for _, u, _ in store.incomplete_uploads(bucket)] == [upload]

    report = run_fsck(svc, repair=True, grace_seconds=0)
    assert [(f.code, f.key, f.repaired) for f in report.of("orphan")] == [("incomplete-upload", key, True)], report.render()
    assert "incomplete-upload" in report.render()
    assert list(store.incomplete_uploads(bucket)) == [] and run_fsck(svc, grace_seconds=0).clean
