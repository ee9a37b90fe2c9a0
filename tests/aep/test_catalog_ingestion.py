"""Catalog listings, batch ingestion with every rejection rule (real bad rows, row numbers), the
failure threshold, Parquet/CSV input, ABORT, and Data Access read-back of the lake files."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import EVENT, PROFILE, ev, ident

ECID = "12345678901234567890123456789012345678"


def test_dataset_create_get_list_delete(aep):
    c = aep.client
    r = c.request("POST", "/data/foundation/catalog/dataSets", body={"name": "people", "schemaRef": {"id": PROFILE, "contentType": "application/vnd.adobe.xed+json;version=1"}, "tags": {"unifiedProfile": ["enabled:true"]}, "fileDescription": {"format": "parquet", "persisted": True}})
    assert r.status_code == 201
    ref = r.json()
    assert isinstance(ref, list) and ref[0].startswith("@/dataSets/")
    ds = ref[0].split("/")[-1]
    assert len(ds) == 24 and int(ds, 16) >= 0
    got = c.get(f"/data/foundation/catalog/dataSets/{ds}")[ds]
    assert got["name"] == "people" and got["schemaRef"]["id"] == PROFILE and got["tags"]["unifiedProfile"] == ["enabled:true"] and got["classification"]["dataBehavior"] == "record"
    assert isinstance(got["created"], int) and got["imsOrg"] == c.org_id and got["files"].startswith(f"@/dataSets/{ds}/views/")
    ids = [c.dataset(f"d{i}") for i in range(3)]
    listing = c.get("/data/foundation/catalog/dataSets", params={"limit": 2, "orderBy": "asc:created", "properties": "name"})
    assert list(listing) == [ds, ids[0]] and listing[ds] == {"name": "people"}
    page2 = c.get("/data/foundation/catalog/dataSets", params={"limit": 2, "start": 2, "orderBy": "asc:created"})
    assert list(page2) == ids[1:]
    for bad in ({"limit": 0}, {"limit": 101}, {"orderBy": "sideways:created"}):
        r = c.request("GET", "/data/foundation/catalog/dataSets", params=bad)
        assert r.status_code == 400 and r.json()["title"] == "BadRequestError"
    r = c.request("POST", "/data/foundation/catalog/dataSets", body={"name": "x", "schemaRef": {"id": "https://example.com/unknown"}})
    assert r.status_code == 400
    assert c.request("DELETE", f"/data/foundation/catalog/dataSets/{ds}").status_code == 200
    r = c.request("GET", f"/data/foundation/catalog/dataSets/{ds}")
    assert r.status_code == 404 and r.json() == {"type": "/placeholder/type/uri", "status": 404, "title": "NotFoundError", "detail": "DataSet not found."}


def test_event_batch_rejection_rules_with_row_numbers(aep):
    c = aep.client
    ds = c.dataset("events", EVENT)
    good = [ev(f"e{i}", "2024-01-01T00:00:00Z", ident("email", f"u{i}@x.com", True)) for i in range(60)]
    bad = [
        ev("b1", "2024-01-01T00:00:00Z", {}),  # no identity
        {"timestamp": "2024-01-01T00:00:00Z", "identityMap": ident("email", "a@x.com", True)},  # no _id
        ev("b3", None, ident("email", "a@x.com", True)),  # no timestamp
        ev("b4", "2024-01-01T00:00:00Z", ident("email", "a@x.com", True), blob="x" * 11000),  # > 10 KB
        ev("b5", "2024-01-01T00:00:00Z", ident("ECID", "123", True)),  # ECID not 38 digits
        "{not json",
    ]
    rows = good[:10] + bad + good[10:]
    b = aep.ingest(ds, rows)
    assert b["status"] == "success", b
    assert b["recordCount"] == 60 and b["failedRecordCount"] == 6
    by_code = {e["code"]: e["rows"] for e in b["errors"]}
    assert by_code == {"INGEST-1201-400": ["11"], "INGEST-1203-400": ["12"], "INGEST-1204-400": ["13"], "INGEST-1205-400": ["14"], "INGEST-1202-400": ["15"], "INGEST-1207-400": ["16"]}
    # data access: the accepted rows are in the lake as Parquet
    files = c.get(f"/data/foundation/export/batches/{b['id']}/files")
    assert files["_page"]["count"] == 1
    f = files["data"][0]
    assert f["dataSetFileId"] == f"{b['id']}-1" and f["records"] == 60 and f["isValid"] is True
    listing = c.get(f"/data/foundation/export/files/{f['dataSetFileId']}")
    name = listing["data"][0]["name"]
    raw = c.request("GET", f"/data/foundation/export/files/{f['dataSetFileId']}", params={"path": name})
    assert raw.status_code == 200 and int(listing["data"][0]["length"]) == len(raw.content)
    table = pq.read_table(io.BytesIO(raw.content))
    assert table.num_rows == 60 and sorted(table.column("_id").to_pylist()) == sorted(f"e{i}" for i in range(60))
    part = c.request("GET", f"/data/foundation/export/files/{f['dataSetFileId']}", params={"path": name}, headers={"Range": "bytes=0-3"})
    assert part.status_code == 206 and part.content == b"PAR1" and part.headers["content-range"] == f"bytes 0-3/{len(raw.content)}"
    head = c.request("HEAD", f"/data/foundation/export/files/{f['dataSetFileId']}", params={"path": name})
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(raw.content)


def test_record_over_100kb_and_threshold_fails_batch(aep):
    c = aep.client
    ds = c.dataset("people")
    rows = [{"identityMap": ident("crm", f"c{i}", True), "person": {"name": {"firstName": f"N{i}"}}} for i in range(8)]
    rows.append({"identityMap": ident("crm", "big", True), "blob": "y" * 110_000})
    rows.append({"identityMap": {"crm": [{"id": "a"}, {"id": "b"}]}, "person": {}})  # two identities, none primary
    b = aep.ingest(ds, rows)  # 2 of 10 rejected = 20% >= 10%: fails whole
    assert b["status"] == "failed" and b["failedRecordCount"] == 2
    codes = [e["code"] for e in b["errors"]]
    assert codes[0] == "INGEST-1299-400" and "INGEST-1206-400" in codes and "INGEST-1201-400" in codes
    assert c.get(f"/data/foundation/export/batches/{b['id']}/files")["data"] == []
    r = c.request("GET", "/data/core/ups/access/entities", params={"schema.name": "_xdm.context.profile", "entityId": "c1", "entityIdNS": "crm"})
    assert r.status_code == 404
    # with a higher partialIngestionPercentage the same rows pass
    b2 = aep.ingest(ds, rows, partialIngestionPercentage=50)
    assert b2["status"] == "success" and b2["recordCount"] == 8 and b2["failedRecordCount"] == 2


def test_parquet_and_csv_input(aep):
    c = aep.client
    ds = c.dataset("people")
    schema = pa.schema([("identityMap", pa.map_(pa.string(), pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())])))), ("person", pa.struct([("name", pa.struct([("firstName", pa.string())]))]))])
    table = pa.Table.from_pylist([{"identityMap": [("crm", [{"id": f"p{i}", "primary": True}])], "person": {"name": {"firstName": f"P{i}"}}} for i in range(5)], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    b = aep.ingest(ds, buf.getvalue(), fmt="parquet")
    assert b["status"] == "success" and b["recordCount"] == 5
    prof = c.get("/data/core/ups/access/entities", params={"schema.name": "_xdm.context.profile", "entityId": "p3", "entityIdNS": "crm"})
    (entity,) = prof.values()
    assert entity["entity"]["person"]["name"]["firstName"] == "P3"
    csv = 'identityMap,person.name.firstName\n"{""crm"": [{""id"": ""c9"", ""primary"": true}]}",Csv\n,NoIdentity\n'
    b = aep.ingest(ds, csv.encode(), fmt="csv", partialIngestionPercentage=60)
    assert b["status"] == "success" and b["recordCount"] == 1 and b["failedRecordCount"] == 1
    assert b["errors"][0]["rows"] == ["2"]


def test_batch_abort_and_actions(aep):
    c = aep.client
    ds = c.dataset("people")
    bid = c.batch(ds)
    r = c.upload(bid, ds, "a.json", b'{"identityMap": {"crm": [{"id": "z", "primary": true}]}}\n')
    assert r.status_code == 201
    assert c.upload(bid, ds, "a.json", b'{"identityMap": {"crm": [{"id": "z", "primary": true}]}}\n').status_code == 200  # replaced
    assert c.request("PUT", f"/data/foundation/import/batches/{bid}/datasets/{'0' * 24}/files/a.json", content=b"x", headers={"Content-Type": "application/octet-stream"}).status_code == 404
    assert c.get_batch(bid)["status"] == "loading"
    c.post(f"/data/foundation/import/batches/{bid}", params={"action": "ABORT"}, expect=200)
    assert c.get_batch(bid)["status"] == "aborted"
    assert c.request("POST", f"/data/foundation/import/batches/{bid}", params={"action": "COMPLETE"}).status_code == 400
    # abort while staging (job registered, not run)
    bid2 = c.batch(ds)
    c.upload(bid2, ds, "a.json", b'{"identityMap": {"crm": [{"id": "z", "primary": true}]}}\n')
    c.post(f"/data/foundation/import/batches/{bid2}", params={"action": "COMPLETE"}, expect=200)
    assert c.get_batch(bid2)["status"] == "staging"
    c.post(f"/data/foundation/import/batches/{bid2}", params={"action": "ABORT"}, expect=200)
    aep.run_jobs()
    assert c.get_batch(bid2)["status"] == "aborted"
    # batches listing, filtered by dataset
    listing = c.get("/data/foundation/catalog/batches", params={"dataSet": ds, "orderBy": "asc:created"})
    assert list(listing) == [bid, bid2] and listing[bid]["relatedObjects"] == [{"type": "dataSet", "id": ds}]
    assert c.request("POST", "/data/foundation/import/batches", body={"datasetId": ds, "inputFormat": {"format": "xml"}}).status_code == 400


def test_dataset_put_and_patch(aep):
    c = aep.client
    ds = c.dataset("people")
    aep.ingest(ds, [{"identityMap": {"crm": [{"id": "P1", "primary": True}]}, "name": "P"}])
    ent = {"schema.name": "_xdm.context.profile", "entityId": "P1", "entityIdNS": "crm"}
    assert c.request("GET", "/data/core/ups/access/entities", params=ent).status_code == 200
    r = c.request("PATCH", f"/data/foundation/catalog/dataSets/{ds}", body={"name": "renamed", "tags": {"team": ["crm"]}, "created": 1})
    assert r.status_code == 200 and r.json() == [f"@/dataSets/{ds}"]
    got = c.get(f"/data/foundation/catalog/dataSets/{ds}")[ds]
    assert got["name"] == "renamed" and got["version"] == "1.0.1" and got["tags"]["team"] == ["crm"] and "unifiedProfile" not in got["tags"] and got["created"] != 1
    assert c.request("GET", "/data/core/ups/access/entities", params=ent).status_code == 404  # no longer enabled for Profile
    c.request("PATCH", f"/data/foundation/catalog/dataSets/{ds}", body={"tags": {"unifiedProfile": ["enabled:true"]}})
    assert c.request("GET", "/data/core/ups/access/entities", params=ent).status_code == 200
    put = {"name": "whole", "description": "d", "schemaRef": {"id": PROFILE, "contentType": "application/vnd.adobe.xed+json;version=1"}, "tags": {"unifiedProfile": ["enabled:true"]}, "custom": 1}
    assert c.request("PUT", f"/data/foundation/catalog/dataSets/{ds}", body=put).status_code == 200
    got = c.get(f"/data/foundation/catalog/dataSets/{ds}")[ds]
    assert got["name"] == "whole" and got["description"] == "d" and got["custom"] == 1 and got["version"] == "1.0.3"
    bad = c.request("PUT", f"/data/foundation/catalog/dataSets/{ds}", body={"name": "x"})
    assert bad.status_code == 400 and bad.json()["status"] == 400
    bad = c.request("PATCH", f"/data/foundation/catalog/dataSets/{ds}", body={"schemaRef": {"id": EVENT}})
    assert bad.status_code == 400
    assert aep.new_org().request("PATCH", f"/data/foundation/catalog/dataSets/{ds}", body={"name": "x"}).status_code == 404
