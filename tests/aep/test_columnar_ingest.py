"""The column-wise Parquet path (profiles/columnar.py) against the row-by-row rules it replaces, and
through the API: rejected rows with their row numbers, de-duplication, and the row-path fallback."""

from __future__ import annotations

import io
import json
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from conftest import EVENT
from userlens.profiles.columnar import check_batch, json_column, json_length
from userlens.profiles.xdm import Accepted, check_row

ID_T = pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())]))
EV_SCHEMA = pa.schema([("_id", pa.string()), ("timestamp", pa.string()), ("identityMap", pa.map_(pa.string(), ID_T)), ("note", pa.string()), ("n", pa.float64()), ("tags", pa.list_(pa.int64())), ("st", pa.struct([("a", pa.int32())]))])
TS = "2024-01-01T00:00:00Z"


def _im(*items):
    return [(ns, [{"id": v, "primary": p} for v, p in vals]) for ns, vals in items]


ROWS = [
    {"_id": "a", "timestamp": TS, "identityMap": _im(("email", [("x@y", True)])), "note": 'q"u\\o\nte\x01ü', "n": 1.5, "tags": [1, None], "st": None},
    {"_id": "", "timestamp": TS, "identityMap": _im(("email", [("x@y", True)]))},  # no _id
    {"_id": "b", "timestamp": "garbage", "identityMap": _im(("email", [("x@y", True)]))},  # bad timestamp
    {"_id": "c", "timestamp": TS, "identityMap": None},  # no identity
    {"_id": "d", "timestamp": TS, "identityMap": _im(("email", [("null", True)]))},  # rejected value
    {"_id": "e", "timestamp": TS, "identityMap": _im(("ECID", [("123", False)]), ("email", [("a", False)]))},  # bad ECID
    {"_id": "f", "timestamp": TS, "identityMap": _im(("ECID", [("1" * 38, False)]), ("email", [("a", False)]))},  # ECID is primary
    {"_id": "g", "timestamp": TS, "identityMap": _im(("email", [("a", False), ("b", None)]))},  # no primary
    {"_id": "h", "timestamp": TS, "identityMap": _im(("em ail", [("a", True)]))},  # bad namespace
    {"_id": "i", "timestamp": "2999-01-01T00:00:00Z", "identityMap": _im(("email", [("a", True)]))},  # future
    {"_id": "j", "timestamp": TS, "identityMap": _im(("email", [("a", True), ("b", True)]))},  # two primaries
    {"_id": "k", "timestamp": TS, "identityMap": [("email", None), ("crm", [{"id": "z", "primary": True}])]},
    {"_id": "l", "timestamp": TS, "identityMap": []},
    {"_id": "m", "timestamp": TS, "identityMap": _im(("crm", [("q", False)]), ("x", [("r", True)])), "note": "x" * 11000},  # too large
    {"_id": "n", "timestamp": "2024-01-01T00:00:00.250+02:00", "identityMap": _im(("crm", [("q", False)]), ("x", [("r", True)]))},
    {"_id": "a", "timestamp": TS, "identityMap": _im(("email", [("x@y", True)]))},  # duplicate _id
]


def test_columnar_rules_match_row_rules():
    now = int(time.time() * 1000)
    rb = pa.RecordBatch.from_pylist(ROWS, schema=EV_SCHEMA)
    got = check_batch(rb, "time-series", now)
    want = [check_row(r, "time-series", now) for r in rb.to_pylist()]
    assert got.errors == [(i, r) for i, r in enumerate(want) if not isinstance(r, Accepted)]
    acc = [r for r in want if isinstance(r, Accepted)]
    assert got.pkeys.to_pylist() == [a.pkey for a in acc]
    assert [json.loads(x) for x in got.identities.to_pylist()] == [a.identities for a in acc]
    assert got.event_ids.to_pylist() == [a.event_id for a in acc] and got.ts_ms.tolist() == [a.ts_ms for a in acc]
    for a, doc in zip(acc, got.docs.to_pylist()):
        old = json.loads(a.doc)
        old["identityMap"] = dict(old["identityMap"])  # the row path kept a MAP as pairs
        assert json.loads(doc) == old
    assert set(got.keys.to_pylist()) == {k for a in acc for k in (f"{ns}:{v}" for ns, v, _ in a.identities)}
    assert ("ECID:" + "1" * 38, "email:a") in set(zip(*(p.to_pylist() for p in got.pairs)))
    # Without documents (events, whose bodies stay in the lake) the rules give the same answers:
    # the size guardrail measures the same JSON length without writing the text.
    lean = check_batch(rb, "time-series", now, docs=False)
    assert lean.docs is None and lean.errors == got.errors and lean.pkeys.equals(got.pkeys)


def test_json_length_is_the_length_of_json_column():
    t = pa.table({
        "m": pa.array([[("k\u00e9", [1.5, None])], None, []], pa.map_(pa.string(), pa.list_(pa.float64()))),
        "b": pa.array([True, None, False]),
        "s": pa.array(['a\u00e9"\\\t\x02', None, ""]),
        "l": pa.array([[None], None, []], pa.list_(pa.struct([("q", pa.int8())]))),
        "i": pa.array([1, -20, None], pa.int64()),
    })
    for whole in (pa.StructArray.from_arrays([c.combine_chunks() for c in t.columns], names=t.column_names), pa.StructArray.from_arrays(pa.RecordBatch.from_pylist(ROWS, schema=EV_SCHEMA).columns, names=EV_SCHEMA.names)):
        assert json_length(whole).tolist() == pc.binary_length(json_column(whole)).to_pylist()


def _expand(r: str) -> range:
    a, _, b = r.partition("-")
    return range(int(a), int(b or a) + 1)


def test_parquet_events_rejections_and_dedup(aep):
    c = aep.client
    ds = c.dataset("web", schema=EVENT)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ROWS, schema=EV_SCHEMA), buf)
    b = aep.ingest(ds, buf.getvalue(), fmt="parquet", partialIngestionPercentage=90)
    assert b["status"] == "success", b
    assert b["recordCount"] == 4 and b["failedRecordCount"] == 12
    rows = sorted(n for e in b["errors"] for r in e.get("rows", []) for n in _expand(r))
    assert rows == [2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14]
    page = c.get("/data/core/ups/access/entities", params={"schema.name": "_xdm.context.experienceevent", "relatedSchema.name": "_xdm.context.profile", "relatedEntityId": "x@y", "relatedEntityIdNS": "email"})
    assert [e["entityId"] for e in page["children"]] == ["a"]  # the duplicate _id was stored once
    assert page["children"][0]["entity"]["note"] == 'q"u\\o\nte\x01ü'
    assert page["children"][0]["entity"]["identityMap"] == {"email": [{"id": "x@y", "primary": True}]}


def test_parquet_struct_identity_map_falls_back_to_row_rules(aep):
    c = aep.client
    ds = c.dataset("people")
    schema = pa.schema([("identityMap", pa.struct([("crm", ID_T)])), ("person", pa.struct([("name", pa.string())]))])
    rows = [{"identityMap": {"crm": [{"id": f"s{i}", "primary": True}]}, "person": {"name": f"S{i}"}} for i in range(3)]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    b = aep.ingest(ds, buf.getvalue(), fmt="parquet")
    assert b["status"] == "success" and b["recordCount"] == 3
    prof = c.get("/data/core/ups/access/entities", params={"schema.name": "_xdm.context.profile", "entityId": "s1", "entityIdNS": "crm"})
    assert next(iter(prof.values()))["entity"]["person"]["name"] == "S1"
