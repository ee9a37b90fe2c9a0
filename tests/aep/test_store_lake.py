"""The profile store's layout (profiles/store.py): events live in the lake's sorted Parquet parts and
SQL holds one event group per person and load; look-ups read event bodies from the lake; events are
de-duplicated by (dataset, _id) across batches; a failed batch leaves nothing visible; a batch's or a
dataset's contribution is removed by load; and the a002 migration carries a001 data over."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from conftest import EVENT, ev, ident
from infra.backends import fresh_database_url, selected_backends
from userlens.profiles.columnar import check_batch, single_identity_json
from userlens.profiles.ingest import event_groups
from userlens.profiles.models import EventGroup, Identity, ProfileFragment, StoreLoad

ENT = "/data/core/ups/access/entities"
ID_T = pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())]))
EV_SCHEMA = pa.schema([("_id", pa.string()), ("timestamp", pa.string()), ("identityMap", pa.map_(pa.string(), ID_T)), ("web", pa.struct([("page", pa.string()), ("ms", pa.int64())])), ("tags", pa.list_(pa.string()))])


def parquet(rows: list[dict], schema=EV_SCHEMA) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue()


def pq_event(eid: str, sec: int, who: str, page: str | None = "home", tags=None) -> dict:
    return {"_id": eid, "timestamp": f"2024-01-01T00:{sec // 60:02d}:{sec % 60:02d}Z", "identityMap": [("crm", [{"id": who, "primary": True}])], "web": None if page is None else {"page": page, "ms": sec}, "tags": tags}


def events_of(c, ns, value, **params) -> list[dict]:
    q = {"schema.name": "_xdm.context.experienceevent", "relatedSchema.name": "_xdm.context.profile", "relatedEntityId": value, "relatedEntityIdNS": ns, **params}
    return c.get(ENT, params=q)["children"]


def sandbox_of(aep, dataset_id: str) -> str:
    return aep.client.get("/data/foundation/catalog/dataSets")[dataset_id]["sandboxId"]


def count(aep, model, *where) -> int:
    with aep.svc.db.session() as s:
        return s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def test_parquet_events_live_in_the_lake_sorted_with_one_group_per_person(aep):
    c = aep.client
    ds = c.dataset("web", EVENT)
    rows = [pq_event(f"e{i}", 59 - i, ["ann", "bob", "cy"][i % 3], tags=[f"t{i}"] if i % 2 else None) for i in range(30)]
    rows[4]["web"] = None  # a null struct: absent from the event
    b = aep.ingest(ds, parquet(rows), fmt="parquet")
    assert b["status"] == "success" and b["recordCount"] == 30
    # SQL: one event group per person of the load, no row per event
    assert count(aep, EventGroup) == 3
    with aep.svc.db.session() as s:
        g = s.execute(select(EventGroup).where(EventGroup.pkey == "crm:bob")).scalar_one()
        assert (g.n, g.part) == (10, 0) and g.ts_min < g.ts_max and json.loads(g.identities) == [["crm", "bob", True]]
    # the lake part is the batch's data, sorted by (primary identity, time): Data Access serves it
    files = c.get(f"/data/foundation/export/batches/{b['id']}/files")["data"]
    assert len(files) == 1 and files[0]["records"] == 30
    name = c.get(f"/data/foundation/export/files/{files[0]['dataSetFileId']}")["data"][0]["name"]
    data = c.request("GET", f"/data/foundation/export/files/{files[0]['dataSetFileId']}", params={"path": name}).content
    lake = pq.read_table(io.BytesIO(data))
    assert lake.num_rows == 30 and lake.schema.names == EV_SCHEMA.names
    ids = [r["identityMap"][0][1][0]["id"] for r in lake.to_pylist()]
    assert ids == sorted(ids)
    # look-ups read the bodies from the lake: all of a person's events, in time order, with every field
    got = events_of(c, "crm", "bob")
    want = sorted((r for r in rows if r["identityMap"][0][1][0]["id"] == "bob"), key=lambda r: r["timestamp"])
    assert [e["entityId"] for e in got] == [r["_id"] for r in want]
    for e, r in zip(got, want):
        ent = e["entity"]
        assert ent["_id"] == r["_id"] and ent["timestamp"] == r["timestamp"] and ent["identityMap"] == {"crm": [{"id": "bob", "primary": True}]}
        assert ent.get("web") == r["web"] and ent.get("tags") == r["tags"]  # nulls are absent fields
    assert got[0]["timestamp"] < got[-1]["timestamp"]
    # paging and the time window over lake rows
    page = c.get(ENT, params={"schema.name": "_xdm.context.experienceevent", "relatedSchema.name": "_xdm.context.profile", "relatedEntityId": "bob", "relatedEntityIdNS": "crm", "limit": 4, "orderby": "-timestamp"})
    assert [e["entityId"] for e in page["children"]] == [r["_id"] for r in want[::-1][:4]] and page["_page"]["next"] == want[::-1][4]["_id"]
    t0, t1 = got[2]["timestamp"], got[5]["timestamp"]
    assert [e["entityId"] for e in events_of(c, "crm", "bob", startTime=t0, endTime=t1)] == [r["_id"] for r in want[2:5]]


def test_event_dedup_across_batches_and_formats_first_copy_wins(aep):
    c = aep.client
    ds = c.dataset("web", EVENT)
    me = ident("email", "p@x.com", True)
    aep.ingest(ds, [ev(f"e{i}", 1_700_000_000_000 + i * 1000, me, v="first") for i in range(5)])
    # the same _ids again (with other content and, for e0, another time), in Parquet, plus one new event
    again = [{"_id": "e0", "timestamp": "2023-11-14T22:14:00Z", "identityMap": [("email", [{"id": "p@x.com", "primary": True}])], "v": "second"}]
    again += [{"_id": f"e{i}", "timestamp": "2023-11-14T22:13:2%dZ" % i, "identityMap": [("email", [{"id": "p@x.com", "primary": True}])], "v": "second"} for i in (1, 2)]
    again += [{"_id": "e9", "timestamp": "2023-11-14T22:13:29Z", "identityMap": [("email", [{"id": "p@x.com", "primary": True}])], "v": "second"}]
    schema = pa.schema([("_id", pa.string()), ("timestamp", pa.string()), ("identityMap", pa.map_(pa.string(), ID_T)), ("v", pa.string())])
    assert aep.ingest(ds, parquet(again, schema), fmt="parquet")["status"] == "success"
    got = events_of(c, "email", "p@x.com")
    assert sorted(e["entityId"] for e in got) == ["e0", "e1", "e2", "e3", "e4", "e9"]
    assert {e["entityId"]: e["entity"]["v"] for e in got} == {"e0": "first", "e1": "first", "e2": "first", "e3": "first", "e4": "first", "e9": "second"}
    # the second copy of e0 lies in another time window: the first copy still hides it there
    later = 1_700_000_040_000  # 2023-11-14T22:14:00Z
    assert events_of(c, "email", "p@x.com", startTime=later, endTime=later + 1) == []
    # a duplicate inside one batch, too
    aep.ingest(ds, [ev("d1", 1_700_000_100_000, me, v="a"), ev("d1", 1_700_000_100_000, me, v="b")])
    assert [e["entity"]["v"] for e in events_of(c, "email", "p@x.com") if e["entityId"] == "d1"] == ["a"]
    assert aep.svc.profile_store.counts(sandbox_of(aep, ds))["events"] == 7
    # the same _id in another dataset is another event
    other = c.dataset("app", EVENT)
    aep.ingest(other, [ev("e0", 1_700_000_000_000, me, v="app")])
    assert [e["entity"]["v"] for e in events_of(c, "email", "p@x.com") if e["entityId"] == "e0"] == ["first", "app"]


def test_failed_batch_leaves_nothing_visible(aep):
    c = aep.client
    ds = c.dataset("web", EVENT)
    rows = [ev(f"e{i}", 1_700_000_000_000 + i, ident("crm", f"u{i}", True)) for i in range(5)] + [ev(f"x{i}", None, ident("crm", "bad", True)) for i in range(5)]
    b = aep.ingest(ds, rows)
    assert b["status"] == "failed"
    assert count(aep, StoreLoad) == 0 and count(aep, EventGroup) == 0 and count(aep, Identity) == 0
    assert events_of(c, "crm", "u1") == []
    r = c.request("GET", ENT, params={"schema.name": "_xdm.context.profile", "entityId": "u1", "entityIdNS": "crm"})
    assert r.status_code == 404
    people = c.dataset("people")
    b = aep.ingest(people, [{"identityMap": ident("crm", f"r{i}", True)} for i in range(3)] + ["not json"] * 3)
    assert b["status"] == "failed" and count(aep, ProfileFragment) == 0 and count(aep, StoreLoad) == 0


def test_a_load_stays_invisible_until_its_batch_is_published(aep):
    c = aep.client
    ds = c.dataset("web", EVENT)
    store = aep.svc.profile_store
    sb = sandbox_of(aep, ds)
    load = store.begin_load(sb, ds, "B1", "a1", "time-series", 1, None)
    store.insert_event_groups(load, [("crm:ghost", 1, 5, 5, None, 0, '[["crm", "ghost", true]]')])
    assert events_of(c, "crm", "ghost") == [] and store.profile_data(sb, ["crm:ghost"]) == ([], [], {})
    store.clear_batch("B1", "a1")
    assert count(aep, EventGroup) == 0 and count(aep, StoreLoad) == 0


def test_runs_parts_and_schemas_a_person_spread_over_parts(aep):
    """Small runs (several sorted parts per batch, so several groups per person and load) and JSON
    chunks whose fields change type (a run cannot hold both): reads merge them in time order."""
    c = aep.client
    ds = c.dataset("web", EVENT)
    aep.svc.ingest.chunk_rows = 4
    aep.svc.ingest.event_run_rows = 6
    me = ident("crm", "z", True)
    rows = [ev(f"e{i}", 1_700_000_000_000 + (17 * i % 20) * 1000, me, n=i) for i in range(12)]
    rows += [ev(f"s{i}", 1_700_000_100_000 + i, me, n=f"text{i}") for i in range(4)]  # n changes type
    rows += [ev(f"m{i}", 1_700_000_200_000 + i, {**me, "email": [{"id": f"z{i}@x"}]}, n=[i]) for i in range(3)]
    b = aep.ingest(ds, rows)
    assert b["status"] == "success" and b["recordCount"] == 19
    assert count(aep, EventGroup) >= 3
    got = events_of(c, "crm", "z")
    assert [e["entityId"] for e in got] == [r["_id"] for r in sorted(rows, key=lambda r: r["timestamp"])]
    assert [e["entity"]["n"] for e in got if e["entityId"].startswith("s")] == ["text0", "text1", "text2", "text3"]
    # the events' other identities joined the graph
    c.post("/data/core/ups/config/mergePolicies", {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True}, expect=200)
    prof = c.get(ENT, params={"schema.name": "_xdm.context.profile", "entityId": "z1@x", "entityIdNS": "email"})
    (p,) = prof.values()
    assert {i["id"] for i in p["entity"]["identities"]} == {"z", "z0@x", "z1@x", "z2@x"}


def test_delete_batch_and_dataset_remove_their_loads_and_links(aep):
    c = aep.client
    ds = c.dataset("web", EVENT)
    people = c.dataset("people")
    b1 = aep.ingest(ds, [ev("e1", 1_700_000_000_000, {"crm": [{"id": "k", "primary": True}], "email": [{"id": "k@x"}]})])
    b2 = aep.ingest(ds, [ev("e2", 1_700_000_001_000, ident("crm", "k", True))])
    aep.ingest(people, [{"identityMap": ident("crm", "k", True), "name": "K"}])
    store = aep.svc.profile_store
    sb = sandbox_of(aep, ds)
    assert store.graph_of(sb, ikey="email:k@x").members == ["crm:k", "email:k@x"]
    assert store.delete_batch(sb, b1["id"]) == 1
    assert [e["entityId"] for e in events_of(c, "crm", "k")] == ["e2"]
    assert store.graph_of(sb, ikey="email:k@x") is None  # its only link came from the deleted batch
    assert store.delete_dataset(sb, ds) == 1
    assert events_of(c, "crm", "k") == [] and count(aep, EventGroup) == 0
    assert store.counts(sb) == {"identities": 1, "graphs": 1, "fragments": 1, "events": 0}
    assert b2["status"] == "success"


def test_single_identity_json_and_event_groups():
    ids = pa.array(["crm:a", "email:é@x", 'crm:q"uote'])
    rb = pa.RecordBatch.from_pylist([{"identityMap": [(k.split(":", 1)[0], [{"id": k.split(":", 1)[1], "primary": True}])]} for k in ids.to_pylist()], schema=pa.schema([("identityMap", pa.map_(pa.string(), ID_T))]))
    checked = check_batch(rb, "record", 0)
    assert checked.single and single_identity_json(checked.pkeys).to_pylist() == checked.identities.to_pylist()
    pkeys = pa.array(["b", "a", "b", "a", "c"])
    idents = pa.array(['[["n", "b", true]]', '[["n", "a", true]]', '[["n", "b", true], ["m", "x", false]]', '[["n", "a", true]]', '[["n", "c", true]]'])
    order, groups = event_groups(pkeys, idents, np.array([5, 9, 1, 3, 0], np.int64))
    assert order.tolist() == [3, 1, 2, 0, 4]
    assert [g[:5] for g in groups] == [("a", 2, 3, 9, 0), ("b", 2, 1, 5, 2), ("c", 1, 0, 0, 4)]
    assert json.loads(groups[1][5]) == [["n", "b", True], ["m", "x", False]] and json.loads(groups[0][5]) == [["n", "a", True]]


def _db_kinds() -> list[str]:
    out: list[str] = []
    for b in selected_backends():
        if b.db_kind not in out:
            out.append(b.db_kind)
    return out


@pytest.fixture(params=_db_kinds())
def empty_db_url(request, tmp_path):
    """A new, empty database (no migration applied) of each selected kind."""
    return fresh_database_url(request, request.param, tmp_path)


def test_migration_a002_carries_a001_data_over(empty_db_url):
    sqlite_url = empty_db_url
    from sqlalchemy import create_engine, text

    from userlens.profiles.store import ProfileStore
    from userlens.storage.db import Database
    from userlens.storage.migrate import upgrade

    upgrade(sqlite_url, "a001")
    eng = create_engine(sqlite_url)
    with eng.begin() as conn:
        for bid, status, attempt in (("B1", "success", "a1"), ("B2", "success", "a1"), ("B3", "failed", None)):
            conn.execute(text("INSERT INTO aep_batches (id, org_id, sandbox_id, dataset_id, status, input_format, tags, failure_threshold_pct, created_client, created_ms, updated_ms, store_attempt, metrics) VALUES (:i, 'o', 'sb', :d, :s, '{}', '{}', 10, 'c', 1, 1, :a, '{}')"), {"i": bid, "d": "D1" if bid == "B1" else "D2", "s": status, "a": attempt})
        conn.execute(text("INSERT INTO aep_datasets (id, org_id, sandbox_id, name, schema_ref, tags, extra, behaviour, profile_enabled, upsert, created_client, created_ms, updated_ms, version) VALUES ('D1', 'o', 'sb', 'p', '{}', '{}', '{}', 'record', :t, :f, 'c', 1, 1, 0), ('D2', 'o', 'sb', 'e', '{}', '{}', '{}', 'time-series', :t, :f, 'c', 1, 1, 0)"), {"t": True, "f": False})
        conn.execute(text("""INSERT INTO aep_fragments (sandbox_id, dataset_id, batch_id, attempt, pkey, identities, doc, ingest_ms) VALUES ('sb', 'D1', 'B1', 'a1', 'crm:a', '[["crm", "a", true]]', '{"name": "A"}', 10), ('sb', 'D1', 'B1', 'a0', 'crm:a', '[["crm", "a", true]]', '{"name": "lost attempt"}', 9)"""))
        for i, (bid, eid, ts) in enumerate((("B2", "e2", 20), ("B2", "e1", 10), ("B3", "e3", 30))):
            conn.execute(text("INSERT INTO aep_events (sandbox_id, dataset_id, batch_id, attempt, event_id, pkey, identities, ts_ms, doc, ingest_ms) VALUES ('sb', 'D2', :b, 'a1', :e, 'crm:a', '[[\"crm\", \"a\", true]]', :t, :d, 11)"), {"b": bid, "e": eid, "t": ts, "d": json.dumps({"_id": eid, "k": i})})
        conn.execute(text("INSERT INTO aep_identities (sandbox_id, ikey, xid) VALUES ('sb', 'crm:a', 'X')"))
    eng.dispose()
    upgrade(sqlite_url)
    db = Database(sqlite_url)
    store = ProfileStore(db)
    frags, events, flags = store.profile_data("sb", ["crm:a"])
    assert [f.doc for f in frags] == [{"name": "A"}] and [(e[0], e[1]) for e in events] == [("D2", "B2")] and flags == {"D1": (True, False), "D2": (True, False)}
    page = store.events("sb", ["crm:a"], start_ms=None, end_ms=None, limit=10, descending=False, start_event=None)
    assert [(r.event_id, r.ts_ms, json.loads(r.doc)["k"]) for r in page.rows] == [("e1", 10, 1), ("e2", 20, 0)]
    assert store.counts("sb") == {"identities": 1, "graphs": 1, "fragments": 1, "events": 2}
    db.dispose()
    from alembic import command

    from userlens.storage.migrate import alembic_config

    command.downgrade(alembic_config(sqlite_url), "a001")
    eng = create_engine(sqlite_url)
    with eng.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM aep_events")).scalar_one() == 2
        assert conn.execute(text("SELECT doc FROM aep_fragments")).scalars().all() == ['{"name": "A"}']
    eng.dispose()


def test_incremental_graph_equals_rebuilt_graph(database):
    """Batches merged one by one into the graph (scipy components, relabelled XIDs) give the same
    graph, XIDs included, as a rebuild from all the data at once."""
    from userlens.profiles.store import ProfileStore

    store = ProfileStore(database)
    rng = np.random.default_rng(3)
    rows_all: list[list[str]] = []
    for batch in range(6):
        rows = []
        for _ in range(40):
            k = int(rng.integers(1, 4))
            rows.append([f"ns{int(rng.integers(0, 3))}:{int(rng.integers(0, 300))}" for _ in range(k)])
        rows = [list(dict.fromkeys(r)) for r in rows]
        rows_all += rows
        keys = [k for r in rows for k in r]
        a = [r[0] for r in rows for _ in r[1:]]
        b = [k for r in rows for k in r[1:]]
        with database.session() as s:
            store.apply_graph(s, "sb", pa.array(keys), (pa.array(a, pa.string()), pa.array(b, pa.string())))
    with database.session() as s:
        incremental = dict(s.execute(select(Identity.ikey, Identity.xid).where(Identity.sandbox_id == "sb")).all())
    # what the rows imply: connected components, each named by its smallest native XID
    from userlens.profiles.xdm import native_xid

    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for r in rows_all:
        for k in r[1:]:
            parent[find(k)] = find(r[0])
        find(r[0])
    groups: dict[str, list[str]] = {}
    for k in list(parent):
        groups.setdefault(find(k), []).append(k)
    want = {k: min(native_xid(m) for m in members) for members in groups.values() for k in members}
    assert incremental == want
    merged = [g for g in groups.values() if 4 < len(g) <= 50]
    assert merged  # the data did merge graphs across batches
    for members in merged[:3]:
        g = store.graph_of("sb", ikey=members[0])
        assert g.xid == want[members[0]] and sorted(g.members) == sorted(members)
        assert store.graph_of("sb", xid=g.xid).members == g.members


def test_event_property_filters(aep):
    c = aep.client
    ds = c.dataset("web", EVENT)
    me = ident("crm", "f", True)
    aep.ingest(ds, [ev(f"e{i}", f"2024-01-{i + 1:02d}T12:00:00Z", me, eventType="commerce.purchases" if i % 2 else "web.pageViews", commerce={"total": i * 10}) for i in range(8)])
    base = {"schema.name": "_xdm.context.experienceevent", "relatedSchema.name": "_xdm.context.profile", "relatedEntityId": "f", "relatedEntityIdNS": "crm"}

    def ids(*props, **extra):
        r = c.request("GET", ENT, params=[*base.items(), *(("property", p) for p in props), *extra.items()])
        assert r.status_code == 200, r.text
        return r.json()

    assert [e["entityId"] for e in ids("eventType=commerce.purchases")["children"]] == ["e1", "e3", "e5", "e7"]
    assert [e["entityId"] for e in ids("eventType=commerce.purchases", "commerce.total>=30")["children"]] == ["e3", "e5", "e7"]
    assert [e["entityId"] for e in ids("commerce.total<20", "eventType!=commerce.purchases")["children"]] == ["e0"]
    assert [e["entityId"] for e in ids("timestamp>=2024-01-07")["children"]] == ["e6", "e7"]
    assert [e["entityId"] for e in ids("timestamp<20240102")["children"]] == ["e0"]
    page = ids("eventType=web.pageViews", limit=2)
    assert [e["entityId"] for e in page["children"]] == ["e0", "e2"] and "property=eventType%3Dweb.pageViews" in page["_links"]["next"]["href"]
    nxt = c.get("/data/core/ups/access" + page["_links"]["next"]["href"])
    assert [e["entityId"] for e in nxt["children"]] == ["e4", "e6"]
    for bad in (["a=1", "b=2", "c=3", "d=4"], ["nonsense"]):
        r = c.request("GET", ENT, params=[*base.items(), *(("property", p) for p in bad)])
        assert r.status_code == 400 and r.json()["statusCode"] == "400"


def test_delete_entity(aep):
    c = aep.client
    crm = c.dataset("crm")
    web = c.dataset("web", EVENT)
    c.post("/data/core/ups/config/mergePolicies", {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True}, expect=200)
    none = c.post("/data/core/ups/config/mergePolicies", {"name": "none", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "none"}, "attributeMerge": {"type": "timestampOrdered"}}, expect=200)
    aep.ingest(crm, [{"identityMap": {"crm": [{"id": "A", "primary": True}], "email": [{"id": "a@x"}]}, "name": "A"}, {"identityMap": ident("crm", "B", True), "name": "B"}, {"identityMap": ident("email", "a@x", True), "tier": "gold"}])
    b = aep.ingest(web, [ev("w1", 1_700_000_000_000, ident("email", "a@x", True)), ev("w2", 1_700_000_000_000, ident("crm", "B", True))])
    params = {"schema.name": "_xdm.context.profile", "entityId": "a@x", "entityIdNS": "email"}
    # identityGraph none: only the fragments and events whose primary identity is email:a@x go
    r = c.request("DELETE", ENT, params={**params, "mergePolicyId": none["id"]})
    assert r.status_code == 202, r.text
    (p,) = c.get(ENT, params={"schema.name": "_xdm.context.profile", "entityId": "A", "entityIdNS": "crm"}).values()
    assert p["entity"]["name"] == "A" and "tier" not in p["entity"] and events_of(c, "email", "a@x") == []
    assert {i["id"] for i in p["entity"]["identities"]} == {"A", "a@x"}  # crm:A's own record still links them
    # the whole graph (default pdg policy)
    assert c.request("DELETE", ENT, params=params).status_code == 202
    for ns, v in (("crm", "A"), ("email", "a@x")):
        assert c.request("GET", ENT, params={"schema.name": "_xdm.context.profile", "entityId": v, "entityIdNS": ns}).status_code == 404
    (p,) = c.get(ENT, params={"schema.name": "_xdm.context.profile", "entityId": "B", "entityIdNS": "crm"}).values()
    assert p["entity"]["name"] == "B" and [e["entityId"] for e in events_of(c, "crm", "B")] == ["w2"]
    assert aep.svc.profile_store.counts(sandbox_of(aep, crm))["identities"] == 1
    assert len(c.get(f"/data/foundation/export/batches/{b['id']}/files")["data"]) == 1  # the lake keeps the batch
    assert c.request("DELETE", ENT, params=params).status_code == 404
    assert c.request("DELETE", ENT, params={**params, "schema.name": "_xdm.context.experienceevent"}).status_code == 400


def test_batch_revert(aep):
    c = aep.client
    ds = c.dataset("web", EVENT)
    c.post("/data/core/ups/config/mergePolicies", {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True}, expect=200)
    b1 = aep.ingest(ds, [ev("e1", 1_700_000_000_000, {"crm": [{"id": "r", "primary": True}], "email": [{"id": "r@x"}]})])
    b2 = aep.ingest(ds, [ev("e2", 1_700_000_001_000, ident("crm", "r", True))])
    r = c.request("POST", f"/data/foundation/import/batches/{b1['id']}", params={"action": "REVERT"})
    assert r.status_code == 200, r.text
    assert c.get_batch(b1["id"])["status"] == "inactive"
    assert c.get(f"/data/foundation/export/batches/{b1['id']}/files")["data"] == []
    assert [e["entityId"] for e in events_of(c, "crm", "r")] == ["e2"]
    assert c.request("GET", ENT, params={"schema.name": "_xdm.context.profile", "entityId": "r@x", "entityIdNS": "email"}).status_code == 404  # its link went with it
    assert c.request("POST", f"/data/foundation/import/batches/{b1['id']}", params={"action": "REVERT"}).status_code == 400
    assert c.request("POST", f"/data/foundation/import/batches/{b2['id']}", params={"action": "FLY"}).status_code == 400
    lake = [o.key for o in aep.svc.store.list(aep.svc.settings.internal_bucket, "aep") if f"/lake/{ds}/" in o.key]
    assert lake and all(f"/{b2['id']}/" in k for k in lake)


def test_lake_reader_reads_only_the_row_groups_of_the_range(tmp_path, monkeypatch):
    from userlens.profiles.store import LakeReader
    from userlens.storage.objectstore import LocalObjectStore

    objects = LocalObjectStore(tmp_path)
    objects.create_bucket("lake-test")
    t = pa.table({"_id": [f"e{i}" for i in range(10)], "timestamp": [f"2024-01-01T00:00:0{i}Z" for i in range(10)], "v": list(range(10))})
    buf = io.BytesIO()
    pq.write_table(t, buf, row_group_size=4)  # row groups: 0-3, 4-7, 8-9
    objects.write_bytes("lake-test", "p/part-00000.parquet", buf.getvalue())
    read: list[list[int]] = []
    orig = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, rgs, **kw: read.append(list(rgs)) or orig(self, rgs, **kw))
    lake = LakeReader(objects, "lake-test")
    (a,) = lake.read_ranges("p/part-00000.parquet", [(5, 2)])
    assert a.column("v").to_pylist() == [5, 6] and read == [[1]]
    a, b = lake.read_ranges("p/part-00000.parquet", [(3, 3), (9, 1)], columns=["_id", "xdm_json"])
    assert a.column_names == ["_id"] and a.column("_id").to_pylist() == ["e3", "e4", "e5"] and b.column("_id").to_pylist() == ["e9"]
    assert read[-1] == [0, 1, 2]
