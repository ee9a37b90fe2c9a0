"""The profile store: identity graph, profile fragments and ExperienceEvents of every sandbox.

Design
------
*Source of truth = immutable, attributed data; merged profiles are always computed.* Nothing is
merged in place: a merged profile is recomputed on read from the fragments of its identity graph and
a merge policy, so both merge policies and both graph types (``none``/``pdg``) work on the same data
at any time.

*Loads.* Each attempt of each batch that feeds the store is one row of ``aep_store_loads`` (sandbox,
dataset, batch, attempt, ingestion time, lake folder, ``visible``). Every stored row points at its
load by an integer, so it knows its dataset and batch without repeating four strings (rows and
indexes stay narrow), and deleting what a dataset or a batch gave the store is hiding its loads and
recomputing the graphs their rows touched in one transaction, then ``DELETE ... WHERE load_id = ?``
in bounded chunks on the ``load_id`` indexes (see "deletion" below; the delete requests of
profiles/system_jobs.py). A profile's own rows go by primary identity (``delete_entity``), and only
the graphs it touched are recomputed (``regraph``).

*Profile records* are SQL rows, ``aep_fragments`` (load, primary identity ``pkey``, identities,
document as JSON): a look-up merges them on every read, and a sandbox has about one per person and
dataset, so they stay where one indexed query reads them.

*ExperienceEvents stay in the data lake.* The ingest job sorts a batch's events by (primary identity,
time), in runs of at most 1M events, and writes each run as one Parquet part of the batch's lake
folder (the same files Data Access serves), in row groups of 4,096 rows. SQL keeps one row per person
and part, ``aep_event_groups`` (load, pkey, count, first and last time, part, first row, the
identities the events carry): the "fragment" of AEP's vocabulary, a person's events in one dataset
and batch. So 1M events of 200k people cost about 200k small SQL rows instead of 1M rows with their
bodies (bench/ingest_profiles.py, full scale: Parquet ingestion about 4x faster than the a001
layout). An event read takes the person's groups from SQL and reads only the row groups that hold
their rows, through ``LakeReader`` (the parts' footers are cached; a part never changes, its key
holds the attempt). Groups wholly outside a requested time window are read for their ``_id``s only.
Groups migrated from the a001 layout hold their events inline (``body``), since a migration cannot
write the lake.

*De-duplication by _id* happens on read, per profile: of the events of one dataset with one ``_id``,
the first ingested (lowest load, then position) is the event and later copies are ignored, whatever
their time (``events``). Ingestion stores every accepted row, as AEP's lake does; a copy of an event
sent under another primary identity that belongs to another profile is not seen as a duplicate there.

*Identity graph.* ``aep_identities`` maps each identity "NS:id" of a sandbox to the XID of its graph.
Graphs are connected components of the "appear in the same row" relation over all Profile-enabled
datasets of the sandbox. A graph's XID is the smallest native XID (``xdm.native_xid``) of its
members, so incremental merging (ingest) and a full rebuild (after a deletion) give the same XIDs.
The ingest job keeps its batch's identities and links column-wise (Arrow); ``apply_graph`` merges
them in the publish transaction: the known identities are read (key ranges on SQLite, one array
parameter joined with ``unnest`` on PostgreSQL), the components of (batch links + each known
identity's link to its graph) come from scipy's ``connected_components``, new identities are
inserted in key order and merged graphs relabelled.

*Guardrail (50 identities).* Graphs are never cut: ingestion keeps linking (the data is real, and
cutting "the oldest" link would make the graph depend on ingestion order). A graph with more than 50
identities is excluded from look-ups (HTTP 422 "Too many related identities", as AEP does) and must be
excluded by segmentation and export too (``graph_too_large``).

*Visibility / publication.* The ingest job registers its load (invisible) and inserts its rows while
it runs; readers only see rows whose load is ``visible`` (one join on the load's primary key). The
job's publish callback makes the load visible, flips the batch to ``success`` and applies the graph,
all in the transaction that completes the job, so a batch becomes visible whole or not at all; loads
of failed or lost attempts are removed with their rows (``clear_batch``; they are invisible anyway).

*Bulk loads.* Whole chunks, column-wise: COPY on PostgreSQL, one raw ``executemany`` of tuples per
chunk on SQLite (rows sorted by key, so the index is written in order); identity rows likewise. No
ORM objects.

*Reads.* A profile look-up is two queries through the DBAPI connection: the graph (identity -> XID
-> members, one self-join) and, in one UNION ALL, the visible record fragments and event groups of
the members with their datasets' flags; rows are read by the pkey index first (``_by_pkey``).
*Scans* (segment evaluation, export over all profiles, next issues): read each visible load's rows
in order (fragments by ``load_id``, event parts sequentially: they are sorted by person), join them
with ``aep_identities`` on ``pkey`` and merge one graph at a time; memory is bounded by the largest
graph, not by the sandbox.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sqlalchemy import bindparam, delete, func, select, text, update
from sqlalchemy.orm import Session

from userlens.profiles.models import Dataset, EventGroup, Identity, ProfileFragment, StoreLoad
from userlens.profiles.xdm import MAX_GRAPH_IDENTITIES, dumps, native_xid, native_xids, parse_timestamp_ms
from userlens.storage.db import Database
from userlens.storage.objectstore import ObjectStore

IN_CHUNK = 500  # bound of IN (...) lists
SQLITE_CACHE_KIB = 65536  # page cache of a connection that bulk-loads (SQLite): the indexes' hot pages
DELETE_CACHE_KIB = 262144  # page cache of a deletion's connection (SQLite): the identity and pkey indexes it walks
META_CACHE = 512  # Parquet footers of lake parts kept for event reads
READ_BLOCK = 1 << 20  # object-store read size for event reads (a few row groups, not whole parts)

# A read request (profile look-up) runs all its queries in one session: `shared_read` opens it and
# `read_session` hands it to the store and merge-policy reads made meanwhile on this thread/task.
# The session reads one snapshot: a look-up reads the graph, then the rows of its members, and a
# delete (or an ingest) that commits between those two queries must not show a graph of before
# with rows of after (PostgreSQL's default READ COMMITTED takes a snapshot per statement; SQLite's
# driver opens no transaction for SELECTs, so each would read the newest commit).
_READ_SESSION: ContextVar[Session | None] = ContextVar("aep_read_session", default=None)


def _one_snapshot(s: Session, db: Database) -> None:
    if db.dialect == "postgresql":
        s.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
    elif db.dialect == "sqlite":
        s.connection().exec_driver_sql("BEGIN")  # WAL: the first read fixes the snapshot until commit


@contextmanager
def shared_read(db: Database) -> Iterator[Session]:
    s = _READ_SESSION.get()
    if s is not None:
        yield s
        return
    with db.session() as s:
        _one_snapshot(s, db)
        token = _READ_SESSION.set(s)
        try:
            yield s
        finally:
            _READ_SESSION.reset(token)


@contextmanager
def read_session(db: Database) -> Iterator[Session]:
    s = _READ_SESSION.get()
    if s is not None:
        yield s
        return
    with db.read_session() as s:  # alone, a read needs no transaction (no BEGIN/COMMIT round trips)
        yield s


class GraphTooLarge(Exception):
    def __init__(self, xid: str, size: int):
        super().__init__(f"graph {xid} has {size} identities")
        self.xid, self.size = xid, size


def ikeys_of(identities: list[list]) -> list[str]:
    return [f"{ns}:{v}" for ns, v, *_ in identities]


def _chunks(items: list, n: int = IN_CHUNK) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _drop_nulls(value):
    """XDM has no nulls: a null field is an absent one (lake rows of JSON input carry a null for
    every field another row of the same part had)."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _by_pkey(table: str, cols: str, n: int, sqlite: bool) -> str:
    """A derived table of `table`'s rows whose primary identity is one of n parameters. OFFSET 0
    (SQLite spells it LIMIT -1 OFFSET 0) keeps it from being merged into the outer query, so both SQLite and PostgreSQL start from the
    pkey index, then join each row's load by primary key, whatever their statistics say (without
    it, from three identities up, SQLite started from the sandbox's loads and read every fragment of
    each, 32 ms instead of 0.1 ms; PostgreSQL right after a bulk load, with stale statistics,
    intersected with the load_id index: 4 ms)."""
    return f"(SELECT {cols} FROM {table} WHERE pkey IN ({_marks(n)}) {'LIMIT -1 OFFSET 0' if sqlite else 'OFFSET 0'})"


def bulk_insert(s: Session, table: str, cols: tuple[str, ...], rows: list[tuple], sqlite_pragmas: tuple[str, ...] = ()) -> None:
    """Rows inserted in the session's transaction through the raw DBAPI connection: COPY on
    PostgreSQL, one executemany on SQLite (no ORM objects; the store's and segments' bulk path)."""
    if not rows:
        return
    raw = s.connection().connection.driver_connection
    names = ", ".join(cols)
    if s.bind.dialect.name == "postgresql":
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        return
    cur = raw.cursor()
    try:
        for pragma in sqlite_pragmas:
            cur.execute(pragma)
        cur.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(cols))})", rows)
    finally:
        cur.close()


def part_key(lake_prefix: str, part: int) -> str:
    return f"{lake_prefix}/part-{part:05d}.parquet"


@dataclass
class Graph:
    xid: str
    members: list[str]  # "NS:id"
    stitched: bool


@dataclass
class FragmentRow:
    id: int
    dataset_id: str
    batch_id: str
    pkey: str
    identities: list[list]
    doc: dict[str, Any]
    ingest_ms: int


@dataclass
class EventRow:
    event_id: str
    ts_ms: int
    doc: str  # the XDM event as JSON text
    ingest_ms: int
    dataset_id: str
    seq: tuple[int, int, int]  # (load, part or -1, row): ingestion order, the tie-break of equal times


@dataclass
class EventPage:
    rows: list[EventRow] = field(default_factory=list)
    next_id: str = ""


@dataclass
class _Group:
    load_id: int
    dataset_id: str
    ingest_ms: int
    lake_prefix: str | None
    n: int
    ts_min: int
    ts_max: int
    part: int | None
    row0: int
    body: str | None


class LakeReader:
    """Reads row ranges of the lake's sorted event parts: the footer of each part is parsed once
    and cached (parts are immutable: their key holds the attempt), then only the row groups that hold
    the range are read."""

    def __init__(self, objects: ObjectStore | None, bucket: str | None):
        self.objects, self.bucket = objects, bucket
        self._meta: OrderedDict[str, tuple[pq.FileMetaData, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def meta(self, key: str) -> tuple[pq.FileMetaData, np.ndarray]:
        with self._lock:
            hit = self._meta.get(key)
            if hit is not None:
                self._meta.move_to_end(key)
                return hit
        with self.objects.open_read(self.bucket, key, block_size=READ_BLOCK) as f:
            md = pq.ParquetFile(f).metadata
        starts = np.zeros(md.num_row_groups + 1, np.int64)
        np.cumsum([md.row_group(i).num_rows for i in range(md.num_row_groups)], out=starts[1:])
        with self._lock:
            self._meta[key] = (md, starts)
            while len(self._meta) > META_CACHE:
                self._meta.popitem(last=False)
        return md, starts

    def read_ranges(self, key: str, ranges: list[tuple[int, int]], columns: list[str] | None = None) -> list[pa.Table]:
        """The rows [row0, row0 + n) of one part for each (row0, n), reading each row group once."""
        md, starts = self.meta(key)
        names = md.schema.to_arrow_schema().names
        if columns is not None:
            columns = [c for c in columns if c in names]
        needed: set[int] = set()
        for row0, n in ranges:
            a = int(np.searchsorted(starts, row0, "right")) - 1
            b = int(np.searchsorted(starts, row0 + n - 1, "right")) - 1
            needed.update(range(a, b + 1))
        rgs = sorted(needed)
        with self.objects.open_read(self.bucket, key, block_size=READ_BLOCK) as f:
            t = pq.ParquetFile(f, metadata=md).read_row_groups(rgs, columns=columns, use_threads=False)
        # Row r of the part is row `pos[r]` of t.
        base = np.zeros(len(rgs) + 1, np.int64)
        np.cumsum([starts[i + 1] - starts[i] for i in rgs], out=base[1:])
        out = []
        for row0, n in ranges:
            i = rgs.index(int(np.searchsorted(starts, row0, "right")) - 1)
            out.append(t.slice(int(base[i] + row0 - starts[rgs[i]]), n))
        return out


def _table_events(t: pa.Table) -> tuple[list[str], list[int], list[dict] | None]:
    """(_id, time in ms, documents) of lake rows; documents None when only `_id` was read."""
    from userlens.profiles.columnar import _timestamps

    names = t.column_names
    if "xdm_json" in names:  # rows whose fields change type from row to row: kept whole as JSON
        docs = [json.loads(x) if x else {} for x in t.column("xdm_json").to_pylist()]
        ids = [str(d.get("_id")) for d in docs]
        ts = [parse_timestamp_ms(d.get("timestamp")) or 0 for d in docs]
        return ids, ts, docs
    ids = [str(x) for x in t.column("_id").to_pylist()] if "_id" in names else [""] * t.num_rows
    if "timestamp" in names:
        ts = _timestamps(t.column("timestamp").combine_chunks(), t.num_rows)
        ts = [int(x) if x == x else 0 for x in ts.tolist()]
    else:
        ts = [0] * t.num_rows
    if names == ["_id"] or names == ["_id", "timestamp"]:
        return ids, ts, None
    return ids, ts, [_drop_nulls(d) for d in t.to_pylist(maps_as_pydicts="lossy")]


class ProfileStore:
    regraph_scan_ratio = 4  # regraph reads the whole sandbox once it touches 1/4 of its identities

    def __init__(self, db: Database, objects: ObjectStore | None = None, bucket: str | None = None):
        self.db = db
        self.lake = LakeReader(objects, bucket)

    # -- writes by the ingest job ------------------------------------------------------------------
    def begin_load(self, sandbox_id: str, dataset_id: str, batch_id: str, attempt: str, behaviour: str, ingest_ms: int, lake_prefix: str | None) -> int:
        """Registers an (invisible) load: the rows of one attempt of one batch."""
        with self.db.session() as s:
            load = StoreLoad(sandbox_id=sandbox_id, dataset_id=dataset_id, batch_id=batch_id, attempt=attempt, behaviour=behaviour, ingest_ms=ingest_ms, lake_prefix=lake_prefix, visible=False)
            s.add(load)
            s.flush()
            return load.id

    def publish_load(self, s: Session, load_id: int) -> None:
        """Makes a load visible, in the caller's (publication) transaction."""
        s.execute(update(StoreLoad).where(StoreLoad.id == load_id).values(visible=True))

    def clear_batch(self, batch_id: str, attempt: str | None = None) -> None:
        """Removes the invisible loads of a batch (of one attempt, or of every attempt) and their rows."""
        with self.db.session() as s:
            q = select(StoreLoad.id).where(StoreLoad.batch_id == batch_id, StoreLoad.visible.is_(False))
            if attempt is not None:
                q = q.where(StoreLoad.attempt == attempt)
            self._drop_loads(s, list(s.execute(q).scalars()))

    @staticmethod
    def _drop_loads(s: Session, load_ids: list[int]) -> int:
        """Deletes loads and their rows; returns the number of records and events removed."""
        n = 0
        for chunk in _chunks(load_ids):
            n += s.execute(delete(ProfileFragment).where(ProfileFragment.load_id.in_(chunk))).rowcount or 0
            n += s.execute(select(func.coalesce(func.sum(EventGroup.n), 0)).where(EventGroup.load_id.in_(chunk))).scalar_one()
            s.execute(delete(EventGroup).where(EventGroup.load_id.in_(chunk)))
            s.execute(delete(StoreLoad).where(StoreLoad.id.in_(chunk)))
        return int(n)

    def insert_records(self, load_id: int, pkeys: list[str], identities: list[str], docs: list[str]) -> None:
        """Bulk insert of one chunk of profile records (sorted by primary identity, so the index
        is written in key order)."""
        rows = sorted(zip(repeat(load_id), pkeys, identities, docs), key=lambda r: r[1])
        self._bulk("aep_fragments", ("load_id", "pkey", "identities", "doc"), rows)

    def insert_event_groups(self, load_id: int, rows: list[tuple]) -> None:
        """Bulk insert of event groups: (pkey, n, ts_min, ts_max, part, row0, identities) each."""
        self._bulk("aep_event_groups", ("load_id", "pkey", "n", "ts_min", "ts_max", "part", "row0", "identities"), [(load_id, *r) for r in rows])

    def _bulk(self, table: str, cols: tuple[str, ...], rows: list[tuple]) -> None:
        """One transaction through the raw DBAPI connection: COPY on PostgreSQL, executemany of
        tuples on SQLite. No ORM objects, no per-row dicts."""
        if not rows:
            return
        collist = ", ".join(cols)
        if self.db.engine.dialect.name == "postgresql":
            with self.db.engine.begin() as conn, conn.connection.driver_connection.cursor() as cur:  # commits on exit
                with cur.copy(f"COPY {table} ({collist}) FROM STDIN") as cp:
                    for r in rows:
                        cp.write_row(r)
            return
        with self.db.engine.connect() as conn:
            raw = conn.connection.driver_connection
            cur = raw.cursor()
            try:
                # A bulk load wants a page cache that holds the indexes' hot pages (the default is
                # 2 MiB; memory is taken on demand). synchronous=NORMAL for this commit only: in WAL
                # mode it cannot corrupt the database, and these rows are invisible until the job's
                # publish transaction (synchronous FULL) commits, which syncs the WAL up to and
                # including them; so a crash loses nothing that was published.
                cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
                prev = cur.execute("PRAGMA synchronous").fetchone()[0]
                cur.execute("PRAGMA synchronous=NORMAL")
                try:
                    cur.executemany(f"INSERT INTO {table} ({collist}) VALUES ({_marks(len(cols))})", rows)
                    raw.commit()
                except BaseException:
                    raw.rollback()
                    raise
                finally:
                    cur.execute(f"PRAGMA synchronous={int(prev)}")
            finally:
                cur.close()

    def apply_graph(self, s: Session, sandbox_id: str, keys: pa.Array, edges: tuple[pa.Array, pa.Array]) -> None:
        """Merges a batch's identities into the sandbox graph, in the caller's (publication)
        transaction. `keys`: every identity "NS:id" the batch holds; `edges`: (a, b) pairs of
        identities that appear in one row. Column-wise: the components of (batch edges + each known
        identity's link to its graph) come from scipy's connected_components; a changed component
        takes the smallest XID among its old graphs' XIDs and its new identities' native XIDs."""
        keys = pc.unique(keys) if len(keys) else keys
        if not len(keys):
            return
        self.graph_lock(s, sandbox_id)  # one graph writer per sandbox at a time (deletes, see there)
        keys = keys.take(pc.sort_indices(keys))
        key_list = keys.to_pylist()
        existing = self._known(s, sandbox_id, key_list)
        n = len(key_list)
        a, b = edges
        if len(existing) == n and not len(a):  # known people, no new links: nothing changes
            return
        known = np.fromiter((k in existing for k in key_list), bool, n)
        old_xids = sorted(set(existing.values()))
        xid_node = {x: n + i for i, x in enumerate(old_xids)}
        known_idx = np.flatnonzero(known)
        rows = [pc.index_in(a, keys).to_numpy(zero_copy_only=False), known_idx]
        cols = [pc.index_in(b, keys).to_numpy(zero_copy_only=False), np.fromiter((xid_node[existing[key_list[i]]] for i in known_idx), np.int64, len(known_idx))]
        r, c = np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)
        size = n + len(old_xids)
        ncomp, labels = connected_components(coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(size, size)).tocsr(), directed=False)
        fresh_idx = np.flatnonzero(~known)
        comp_fresh, comp_old = labels[fresh_idx], labels[n:]
        changed = (np.bincount(comp_fresh, minlength=ncomp) > 0) | (np.bincount(comp_old, minlength=ncomp) > 1)
        if not changed.any():
            return
        cand = pa.table({
            "c": np.concatenate([comp_old, comp_fresh]).astype(np.int64),
            "x": pa.array(old_xids + native_xids([key_list[i] for i in fresh_idx]), pa.string()),
        }).group_by("c", use_threads=False).aggregate([("x", "min")])
        new_xid = [None] * ncomp
        for comp, x in zip(cand.column("c").to_pylist(), cand.column("x_min").to_pylist()):
            new_xid[comp] = x
        relabel = [{"old": o, "new": new_xid[comp]} for o, comp in zip(old_xids, comp_old.tolist()) if changed[comp] and new_xid[comp] != o]
        if relabel:
            t = Identity.__table__
            s.execute(t.update().where(t.c.sandbox_id == sandbox_id, t.c.xid == bindparam("old")).values(xid=bindparam("new")), relabel)
        self._insert_identities(s, [(sandbox_id, key_list[i], new_xid[comp]) for i, comp in zip(fresh_idx.tolist(), comp_fresh.tolist())])  # key order

    def _known(self, s: Session, sandbox_id: str, keys: list[str]) -> dict[str, str]:
        """{identity: XID} of the known ones among `keys` (sorted). On SQLite (BINARY collation:
        the order of Python's str) each run of 2000 keys is first read as one key range, which
        costs one index seek when few of them are known and reads the index in order when most
        are; a range that holds many other identities is read with IN (...) instead."""
        out: dict[str, str] = {}
        sqlite = s.bind.dialect.name == "sqlite"
        if not sqlite:
            # PostgreSQL: one array parameter joined as a relation, so the plan is index look-ups
            # whatever the planner believes of the table's size (right after a bulk COPY its
            # statistics are stale, and an IN list of 2000 parameters was planned as a sequential
            # scan: 3 s per query measured at 360k rows).
            for chunk in _chunks(keys, 20000):
                sql = "SELECT i.ikey, i.xid FROM unnest(?::text[]) AS k(ikey) JOIN aep_identities i ON i.sandbox_id = ? AND i.ikey = k.ikey"
                out.update(self._rows(s, sql, (chunk, sandbox_id)))
            return out
        for chunk in _chunks(keys, 2000):
            if sqlite:
                cap = 4 * len(chunk)
                rows = self._rows(s, f"SELECT ikey, xid FROM aep_identities WHERE sandbox_id = ? AND ikey >= ? AND ikey <= ? LIMIT {cap}", (sandbox_id, chunk[0], chunk[-1]))
                if len(rows) < cap:
                    wanted = set(chunk)
                    out.update(r for r in rows if r[0] in wanted)
                    continue
            out.update(self._rows(s, f"SELECT ikey, xid FROM aep_identities WHERE sandbox_id = ? AND ikey IN ({_marks(len(chunk))})", (sandbox_id, *chunk)))
        return out

    @staticmethod
    def _insert_identities(s: Session, rows: list[tuple]) -> None:
        """Bulk insert of (sandbox_id, ikey, xid) in the session's transaction."""
        # the xid index is written in random order: a larger page cache on SQLite
        bulk_insert(s, "aep_identities", ("sandbox_id", "ikey", "xid"), rows, sqlite_pragmas=(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}",))

    # -- deletion (dataset / event batch) and graph recomputation ------------------------------------
    # A deletion has two steps (profiles/system_jobs.py runs them as a job; delete_dataset and
    # delete_batch run both in one transaction):
    # 1. `retire_loads`, one transaction: the loads become invisible and the identity graphs their
    #    rows touched are recomputed from the visible rows that are left. When it commits, every
    #    reader sees the store without the data (profiles, links, merged attributes); before, with it.
    # 2. `purge_chunk`, repeated: the retired loads' rows are removed in bounded chunks, each in its
    #    own short transaction. Readers ignore these rows already (their load is invisible), so the
    #    order and the number of chunks change nothing they see, and a crash in between leaves
    #    only rows that a rerun removes.
    # Graph writers of a sandbox (step 1, entity deletes, ingest publication) are serialized by
    # `graph_lock`, so two of them never recompute one graph from each other's half-written rows.
    def graph_lock(self, s: Session, sandbox_id: str) -> None:
        """Serializes the transactions that rewrite a sandbox's identity graph. PostgreSQL: a
        transaction-scoped advisory lock (re-entrant, released at commit or rollback). SQLite has one
        writer at a time: a transaction that has written holds the database's write lock, and these
        transactions write (hide loads, publish a load) before they read the graph.
        Each such transaction also counts a new version of the graph (``aep_lake_plans``): a lake
        export plan built for an older version is not used (profiles/lakeplan.py). A lake plan's
        fingerprint leaves out live record counts, so every transaction that removes or adds
        fragments of a visible load must take this lock (entity deletes do, through `regraph`)."""
        if s.bind.dialect.name == "postgresql":
            self._rows(s, "SELECT pg_advisory_xact_lock(hashtext(?))", (f"userlens:aep-graph:{sandbox_id}",))
        self._execute(s, "INSERT INTO aep_lake_plans (sandbox_id, graph_version) VALUES (?, 1) ON CONFLICT (sandbox_id) DO UPDATE SET graph_version = aep_lake_plans.graph_version + 1", (sandbox_id,))

    def retire_loads(self, s: Session, sandbox_id: str, load_ids: list[int]) -> int:
        """Step 1 of a deletion, in the caller's transaction: hides these loads and recomputes the
        graphs their rows were part of. Returns the number of records and events they hold."""
        if not load_ids:
            return 0
        self.graph_lock(s, sandbox_id)
        self._big_cache(s)
        for chunk in _chunks(load_ids):
            self._execute(s, f"UPDATE aep_store_loads SET visible = ? WHERE id IN ({_marks(len(chunk))})", (False, *chunk))
        n, linked, single = self._load_identities(s, load_ids)
        self.regraph(s, sandbox_id, sorted(linked))
        self._prune_singletons(s, sandbox_id, sorted(single - linked))
        return n

    def _load_identities(self, s: Session, load_ids: list[int]) -> tuple[int, set[str], set[str]]:
        """(records + events, identities of rows that link several, primary identities of rows that
        carry only it) of these loads' rows. A row with one identity links nothing, so deleting it
        can only make its identity disappear (`_prune_singletons`); only rows with several need
        their graphs recomputed. Read by load (the load_id index), without parsing single rows: a
        JSON list of several [ns, id, primary] items always holds "]," between them."""
        n = 0
        linked: set[str] = set()
        single: set[str] = set()
        for chunk in _chunks(load_ids):
            marks = _marks(len(chunk))
            for table, count in (("aep_fragments", "1"), ("aep_event_groups", "n")):
                for pkey, ids, k in self._rows(s, f"SELECT pkey, identities, {count} FROM {table} WHERE load_id IN ({marks})", tuple(chunk)):
                    n += k
                    if "]," in ids:
                        linked.update(ikeys_of(json.loads(ids)))
                    else:
                        single.add(pkey)
        return n, linked, single

    def _prune_singletons(self, s: Session, sandbox_id: str, pkeys: list[str]) -> None:
        """Removes the identities among `pkeys` that no visible row carries any more. Such an
        identity is kept by another row only if that row's primary identity is in its graph: either
        itself (a visible row with this pkey) or another member (then the graph has two members).
        One EXISTS per identity: the pkey index up to its first visible row, not all its rows."""
        vis = "SELECT 1 FROM {t} x CROSS JOIN aep_store_loads l WHERE x.pkey = k.ikey AND l.id = x.load_id AND l.sandbox_id = ? AND l.visible"
        for chunk in _chunks(pkeys):
            marks = ", ".join("(?)" for _ in chunk)
            sql = (
                f"WITH k(ikey) AS (VALUES {marks}) SELECT i.ikey FROM k CROSS JOIN aep_identities i WHERE i.sandbox_id = ? AND i.ikey = k.ikey"
                f" AND NOT EXISTS ({vis.format(t='aep_fragments')}) AND NOT EXISTS ({vis.format(t='aep_event_groups')})"
                " AND NOT EXISTS (SELECT 1 FROM aep_identities m WHERE m.sandbox_id = i.sandbox_id AND m.xid = i.xid AND m.ikey <> i.ikey)"
            )
            drop = [r[0] for r in self._rows(s, sql, (*chunk, sandbox_id, sandbox_id, sandbox_id))]
            if drop:
                self._execute(s, f"DELETE FROM aep_identities WHERE sandbox_id = ? AND ikey IN ({_marks(len(drop))})", (sandbox_id, *drop))

    @contextmanager
    def purge_session(self) -> Iterator[Session]:
        """The transaction of one purge chunk. On SQLite its commit runs with synchronous=NORMAL
        (as _bulk's): the rows it removes are invisible already, and the job's completing
        transaction (synchronous FULL) syncs the WAL up to and including it, so a power loss can at
        worst bring back invisible rows (and their recordsProcessed increment) that a rerun removes
        again. Measured: a third of the purge time of 1M events went to the per-chunk fsync."""
        if self.db.engine.dialect.name != "sqlite":
            with self.db.session() as s:
                yield s
            return
        with self.db.engine.connect() as conn:
            prev = int(conn.exec_driver_sql("PRAGMA synchronous").scalar())
            conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
            conn.commit()
            try:
                with Session(bind=conn) as s, s.begin():
                    yield s
            finally:
                conn.exec_driver_sql(f"PRAGMA synchronous={prev}")
                conn.commit()

    def purge_chunk(self, s: Session, load_id: int, rows: int) -> tuple[int, bool]:
        """Step 2 of a deletion, in the caller's transaction: removes up to `rows` rows of one
        retired load. Returns (records + events removed, whether the load has no rows left); the
        counts are those this statement deleted (RETURNING), so a rerun never counts a row twice."""
        self._big_cache(s)
        removed = 0
        left = rows
        for table, col in (("aep_fragments", "1"), ("aep_event_groups", "n")):
            if left <= 0:
                return removed, False
            out = self._rows(s, f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE load_id = ? LIMIT {int(left)}) RETURNING {col}", (load_id,))
            removed += sum(r[0] for r in out)
            if len(out) >= left:
                return removed, False
            left -= len(out)
        return removed, True

    @staticmethod
    def drop_load_rows(s: Session, load_ids: list[int]) -> None:
        """The load rows themselves, once their fragments and event groups are gone."""
        for chunk in _chunks(load_ids):
            s.execute(delete(StoreLoad).where(StoreLoad.id.in_(chunk)))

    def _delete_loads_now(self, s: Session, sandbox_id: str, load_ids: list[int]) -> int:
        """Both steps in one transaction (small synchronous deletes: REVERT, Catalog dataset deletion)."""
        visible = []
        for chunk in _chunks(load_ids):
            visible += list(s.execute(select(StoreLoad.id).where(StoreLoad.id.in_(chunk), StoreLoad.visible.is_(True))).scalars())
        n = self.retire_loads(s, sandbox_id, visible)
        invisible = sorted(set(load_ids) - set(visible))
        self._drop_loads(s, sorted(visible))
        self._drop_loads(s, invisible)  # unpublished attempts: not in the graph, not counted
        return n

    def delete_dataset(self, sandbox_id: str, dataset_id: str) -> int:
        """Removes everything a dataset gave the store (its loads' rows) and recomputes the graphs
        it touched; returns the number of records and events removed."""
        with self.db.session() as s:
            ids = list(s.execute(select(StoreLoad.id).where(StoreLoad.sandbox_id == sandbox_id, StoreLoad.dataset_id == dataset_id)).scalars())
            return self._delete_loads_now(s, sandbox_id, ids)

    def delete_batch(self, sandbox_id: str, batch_id: str, session: Session | None = None) -> int:
        """Removes everything a batch gave the store and recomputes the graphs it touched (its lake
        files stay), in `session`'s transaction if one is given."""
        with (nullcontext(session) if session is not None else self.db.session()) as s:
            ids = list(s.execute(select(StoreLoad.id).where(StoreLoad.sandbox_id == sandbox_id, StoreLoad.batch_id == batch_id)).scalars())
            return self._delete_loads_now(s, sandbox_id, ids)

    def delete_entity(self, sandbox_id: str, pkeys: list[str]) -> int:
        """Removes a profile from the store: the visible record fragments and event groups whose
        primary identity is one of `pkeys` (a whole graph, or one identity under identityGraph
        none), then recomputes the graphs those identities were in. The lake keeps the batches'
        files (as AEP's data lake does); returns the number of records and events removed."""
        with self.db.session() as s:
            n = 0
            for chunk in _chunks(pkeys):
                where = f"pkey IN ({_marks(len(chunk))}) AND load_id IN (SELECT id FROM aep_store_loads WHERE sandbox_id = ? AND visible)"
                args = (*chunk, sandbox_id)
                n += int(self._rows(s, f"SELECT COUNT(*) FROM aep_fragments WHERE {where}", args)[0][0])
                n += int(self._rows(s, f"SELECT COALESCE(SUM(n), 0) FROM aep_event_groups WHERE {where}", args)[0][0])
                for table in ("aep_fragments", "aep_event_groups"):
                    self._execute(s, f"DELETE FROM {table} WHERE {where}", args)
            self.regraph(s, sandbox_id, pkeys)
            return n

    def regraph(self, s: Session, sandbox_id: str, ikeys: list[str]) -> None:
        """Recomputes the graphs that hold these identities from the visible rows that are left.
        Exact without reading the sandbox: a row's identities all lie in its primary identity's
        graph, so every row that touches one of these graphs has its primary identity in it. Only
        rows with several identities are parsed (the others keep just their primary identity
        alive), and only identities whose XID changes or that are gone are written.

        Few graphs: their members and rows are read by key (IN lists on the ikey and pkey indexes).
        Many (a quarter of the sandbox's identities or more, e.g. a record dataset every profile has
        a record in): one pass over the identities and the visible rows, load by load, costs less
        than that many random index probes (bench/delete.py, the record dataset)."""
        if not ikeys:
            return
        self.graph_lock(s, sandbox_id)
        self._big_cache(s)
        sqlite = s.bind.dialect.name == "sqlite"
        wanted = set(ikeys)
        total = self._rows(s, "SELECT COUNT(*) FROM aep_identities WHERE sandbox_id = ?", (sandbox_id,))[0][0]
        old: dict[str, str] = {}
        nodes: set[str] = set()
        a: list[str] = []
        b: list[str] = []

        def add(pkey: str, ids: str) -> None:
            if "]," not in ids:  # one identity: a node, no link (see _load_identities)
                nodes.add(pkey)
                return
            row = ikeys_of(json.loads(ids))
            nodes.update(row)
            a.extend(row[:1] * (len(row) - 1))
            b.extend(row[1:])

        if self.regraph_scan_ratio * len(wanted) >= total:
            every = {k: x for rows in self._batches(s, "SELECT ikey, xid FROM aep_identities WHERE sandbox_id = ?", (sandbox_id,)) for k, x in rows}
            xids = {every[k] for k in wanted if k in every}
            old = {k: x for k, x in every.items() if x in xids}
            del every
            members = old.keys() | wanted
            loads = [r[0] for r in self._rows(s, "SELECT id FROM aep_store_loads WHERE sandbox_id = ? AND visible ORDER BY id", (sandbox_id,))]
            single = nodes.add
            for load_id in loads:
                for table in ("aep_fragments", "aep_event_groups"):
                    for rows in self._batches(s, f"SELECT pkey, identities FROM {table} WHERE load_id = ?", (load_id,)):
                        for pkey, ids in rows:  # inlined: ~1M rows at full scale, most with one identity
                            if pkey in members:
                                if "]," in ids:
                                    add(pkey, ids)
                                else:
                                    single(pkey)
        else:
            for chunk in _chunks(sorted(wanted)):
                sql = f"SELECT m.ikey, m.xid FROM aep_identities i CROSS JOIN aep_identities m WHERE i.sandbox_id = ? AND i.ikey IN ({_marks(len(chunk))}) AND m.sandbox_id = i.sandbox_id AND m.xid = i.xid"
                old.update(self._rows(s, sql, (sandbox_id, *chunk)))
            for chunk in _chunks(sorted(old.keys() | wanted)):
                for table in ("aep_fragments", "aep_event_groups"):
                    sql = f"SELECT x.pkey, x.identities FROM {_by_pkey(table, 'load_id, pkey, identities', len(chunk), sqlite)} x CROSS JOIN aep_store_loads l WHERE l.id = x.load_id AND l.sandbox_id = ? AND l.visible"
                    for pkey, ids in self._rows(s, sql, (*chunk, sandbox_id)):
                        add(pkey, ids)
        new = self._components(sorted(nodes), a, b)
        changed = sorted(k for k, x in new.items() if old.get(k) != x)
        for chunk in _chunks(sorted(k for k in old if k not in new)):
            self._execute(s, f"DELETE FROM aep_identities WHERE sandbox_id = ? AND ikey IN ({_marks(len(chunk))})", (sandbox_id, *chunk))
        self._move_identities(s, sandbox_id, [(k, new[k]) for k in changed if k in old])
        self._insert_identities(s, [(sandbox_id, k, new[k]) for k in changed if k not in old])

    @staticmethod
    def _move_identities(s: Session, sandbox_id: str, moves: list[tuple[str, str]]) -> None:
        """Sets the XID of known identities, (ikey, xid) each: an UPDATE rewrites the xid index
        entry only, where DELETE + INSERT would rewrite the primary key's too."""
        if not moves:
            return
        raw = s.connection().connection.driver_connection
        if s.bind.dialect.name == "postgresql":
            with raw.cursor() as cur:
                for chunk in _chunks(moves, 20000):
                    cur.execute(
                        "UPDATE aep_identities i SET xid = m.xid FROM unnest(%s::text[], %s::text[]) AS m(ikey, xid) WHERE i.sandbox_id = %s AND i.ikey = m.ikey",
                        ([k for k, _ in chunk], [x for _, x in chunk], sandbox_id),
                    )
            return
        cur = raw.cursor()
        try:
            cur.executemany("UPDATE aep_identities SET xid = ? WHERE sandbox_id = ? AND ikey = ?", [(x, sandbox_id, k) for k, x in moves])
        finally:
            cur.close()

    @staticmethod
    def _big_cache(s: Session) -> None:
        """SQLite: a page cache that holds the indexes a deletion walks (the default is 2 MiB; the
        memory is taken on demand), as bulk loads do (_bulk)."""
        if s.bind.dialect.name == "sqlite":
            s.connection().exec_driver_sql(f"PRAGMA cache_size=-{DELETE_CACHE_KIB}")

    @staticmethod
    def _batches(s: Session, sql: str, params: tuple, size: int = 20000) -> Iterator[list[tuple]]:
        """The rows of a query in lists of `size` (a server-side cursor on PostgreSQL), so memory
        stays bounded by what the caller keeps."""
        conn = s.connection()
        raw = conn.connection.driver_connection
        if conn.dialect.name == "postgresql":
            with raw.cursor(name=f"ul_stream_{uuid.uuid4().hex}") as cur:
                cur.execute(sql.replace("?", "%s"), params)
                while rows := cur.fetchmany(size):
                    yield rows
            return
        cur = raw.cursor()
        try:
            cur.execute(sql, params)
            while rows := cur.fetchmany(size):
                yield rows
        finally:
            cur.close()

    @staticmethod
    def _components(keys: list[str], a: list[str], b: list[str]) -> dict[str, str]:
        """{identity: XID} of the graphs that the links (a[i], b[i]) make over `keys` (sorted): each
        graph's XID is the smallest native XID of its members, as apply_graph gives it."""
        if not keys:
            return {}
        arr = pa.array(keys, pa.string())
        n = len(keys)
        r = pc.index_in(pa.array(a, pa.string()), arr).to_numpy(zero_copy_only=False).astype(np.int64)
        c = pc.index_in(pa.array(b, pa.string()), arr).to_numpy(zero_copy_only=False).astype(np.int64)
        _, labels = connected_components(coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n)).tocsr(), directed=False)
        t = pa.table({"c": labels.astype(np.int64), "x": pa.array(native_xids(keys), pa.string())})
        best = t.group_by("c", use_threads=False).aggregate([("x", "min")])
        xid_of = dict(zip(best.column("c").to_pylist(), best.column("x_min").to_pylist()))
        return {k: xid_of[lab] for k, lab in zip(keys, labels.tolist())}

    def rebuild_graph(self, s: Session, sandbox_id: str) -> None:
        """Recomputes the whole graph of a sandbox from its visible fragments and event groups."""
        self.graph_lock(s, sandbox_id)
        keys: list[str] = []
        a: list[str] = []
        b: list[str] = []
        for model in (ProfileFragment, EventGroup):
            q = select(model.identities).join(StoreLoad, StoreLoad.id == model.load_id).where(StoreLoad.sandbox_id == sandbox_id, StoreLoad.visible.is_(True)).execution_options(yield_per=20000)
            for (ids,) in s.execute(q):
                row = ikeys_of(json.loads(ids))
                keys += row
                a += row[:1] * (len(row) - 1)
                b += row[1:]
        s.execute(delete(Identity).where(Identity.sandbox_id == sandbox_id))
        self.apply_graph(s, sandbox_id, pa.array(keys, pa.string()), (pa.array(a, pa.string()), pa.array(b, pa.string())))

    # -- reads ---------------------------------------------------------------------------------------
    # The look-up path runs plain SQL through the session's DBAPI connection (no statement building,
    # no ORM rows): a profile look-up is a handful of indexed queries, and at that size SQLAlchemy's
    # per-statement overhead would be most of the request's time. Rows by primary identity are read
    # from `_by_pkey` derived tables, then joined with their load (see there); "CROSS JOIN" also
    # fixes SQLite's join order.
    @staticmethod
    def _rows(s: Session, sql: str, params: tuple) -> list[tuple]:
        conn = s.connection()
        raw = conn.connection.driver_connection
        if conn.dialect.name == "postgresql":
            with raw.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params)
                return cur.fetchall()
        cur = raw.cursor()
        try:
            return cur.execute(sql, params).fetchall()
        finally:
            cur.close()

    @staticmethod
    def _execute(s: Session, sql: str, params: tuple) -> None:
        conn = s.connection()
        if conn.dialect.name == "postgresql":
            sql = sql.replace("?", "%s")
        conn.exec_driver_sql(sql, params)

    def graph_of(self, sandbox_id: str, ikey: str | None = None, xid: str | None = None, stitch: bool = True) -> Graph | None:
        """The identities a profile is made of (one query). Raises GraphTooLarge past the
        50-identity guardrail."""
        if ikey is not None and not stitch:
            return Graph(native_xid(ikey), [ikey], False)
        limit = MAX_GRAPH_IDENTITIES + 1
        with read_session(self.db) as s:
            if xid is None:
                rows = self._rows(s, f"SELECT m.ikey, m.xid FROM aep_identities i CROSS JOIN aep_identities m WHERE i.sandbox_id = ? AND i.ikey = ? AND m.sandbox_id = i.sandbox_id AND m.xid = i.xid LIMIT {limit}", (sandbox_id, ikey))
            else:
                rows = self._rows(s, f"SELECT ikey, xid FROM aep_identities WHERE sandbox_id = ? AND xid = ? LIMIT {limit}", (sandbox_id, xid))
            if not rows:
                return None
            xid = rows[0][1]
            if len(rows) > MAX_GRAPH_IDENTITIES:
                size = s.execute(select(func.count()).select_from(Identity).where(Identity.sandbox_id == sandbox_id, Identity.xid == xid)).scalar_one()
                raise GraphTooLarge(xid, size)
            return Graph(xid, sorted(r[0] for r in rows), True)

    def profile_data(self, sandbox_id: str, pkeys: list[str]) -> tuple[list[FragmentRow], list[tuple[str, str, str, int]], dict[str, tuple[bool, bool]]]:
        """What a merged profile is made of, in one query: the visible record fragments of these
        primary identities (oldest first), the (dataset, batch, identities JSON, ingest_ms) of their
        visible event groups (distinct), and {dataset: (profile enabled, upsert)} of those datasets."""
        frags: list[tuple] = []
        events: set[tuple] = set()
        flags: dict[str, tuple[bool, bool]] = {}
        with read_session(self.db) as s:
            sqlite = s.bind.dialect.name == "sqlite"
            for chunk in _chunks(pkeys):
                sql = (
                    "SELECT 0, f.id, l.dataset_id, l.batch_id, f.pkey, f.identities, f.doc, l.ingest_ms, l.id, d.profile_enabled, d.upsert"
                    f" FROM {_by_pkey('aep_fragments', 'id, load_id, pkey, identities, doc', len(chunk), sqlite)} f CROSS JOIN aep_store_loads l CROSS JOIN aep_datasets d"
                    " WHERE l.id = f.load_id AND l.sandbox_id = ? AND l.visible AND d.id = l.dataset_id"
                    " UNION ALL SELECT * FROM (SELECT 1, 0, l.dataset_id, l.batch_id, g.pkey, g.identities, NULL, l.ingest_ms, l.id, d.profile_enabled, d.upsert"
                    f" FROM {_by_pkey('aep_event_groups', 'load_id, pkey, identities', len(chunk), sqlite)} g CROSS JOIN aep_store_loads l CROSS JOIN aep_datasets d"
                    " WHERE l.id = g.load_id AND l.sandbox_id = ? AND l.visible AND d.id = l.dataset_id LIMIT 1000) ev"
                )
                for r in self._rows(s, sql, (*chunk, sandbox_id, *chunk, sandbox_id)):
                    flags[r[2]] = (bool(r[9]), bool(r[10]))
                    if r[0] == 0:
                        frags.append((r[7], r[8], r[1], FragmentRow(r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6]), r[7])))
                    else:
                        events.add((r[2], r[3], r[5], r[7]))
        frags.sort(key=lambda x: x[:3])
        return [x[3] for x in frags], sorted(events), flags

    def graph_too_large(self, sandbox_id: str, xid: str) -> bool:
        with read_session(self.db) as s:
            return s.execute(select(func.count()).select_from(Identity).where(Identity.sandbox_id == sandbox_id, Identity.xid == xid)).scalar_one() > MAX_GRAPH_IDENTITIES

    def dataset_flags(self, sandbox_id: str) -> dict[str, tuple[bool, bool]]:
        """{dataset id: (profile enabled, upsert)} of a sandbox."""
        with read_session(self.db) as s:
            return {r[0]: (bool(r[1]), bool(r[2])) for r in self._rows(s, "SELECT id, profile_enabled, upsert FROM aep_datasets WHERE sandbox_id = ?", (sandbox_id,))}

    def _groups(self, s: Session, sandbox_id: str, pkeys: list[str], datasets: set[str] | None) -> list[_Group]:
        out = []
        for chunk in _chunks(pkeys):
            sql = (
                "SELECT g.load_id, l.dataset_id, l.ingest_ms, l.lake_prefix, g.n, g.ts_min, g.ts_max, g.part, g.row0, g.body"
                f" FROM {_by_pkey('aep_event_groups', '*', len(chunk), s.bind.dialect.name == 'sqlite')} g CROSS JOIN aep_store_loads l"
                " WHERE l.id = g.load_id AND l.sandbox_id = ? AND l.visible"
            )
            out += [_Group(*r) for r in self._rows(s, sql, (*chunk, sandbox_id)) if datasets is None or r[1] in datasets]
        return out

    def _read_groups(self, groups: list[_Group], full: list[bool]) -> list[list[EventRow | tuple]]:
        """The events of each group: EventRows where `full`, else (dataset, _id, seq) only."""
        out: list[list] = [[] for _ in groups]
        by_key: dict[tuple[str, bool], list[int]] = {}
        for i, g in enumerate(groups):
            if g.part is None:  # inline (migrated) events
                for j, (eid, ts, doc) in enumerate(json.loads(g.body or "[]")):
                    seq = (g.load_id, -1, g.row0 + j)
                    out[i].append(EventRow(str(eid), int(ts), dumps(doc), g.ingest_ms, g.dataset_id, seq) if full[i] else (g.dataset_id, str(eid), seq))
            else:
                by_key.setdefault((part_key(g.lake_prefix, g.part), full[i]), []).append(i)
        for (key, whole), idx in by_key.items():
            tables = self.lake.read_ranges(key, [(groups[i].row0, groups[i].n) for i in idx], None if whole else ["_id", "xdm_json"])
            for i, t in zip(idx, tables):
                g = groups[i]
                ids, ts, docs = _table_events(t)
                if whole:
                    out[i] = [EventRow(ids[j], ts[j], dumps(docs[j]), g.ingest_ms, g.dataset_id, (g.load_id, g.part, g.row0 + j)) for j in range(len(ids))]
                else:
                    out[i] = [(g.dataset_id, ids[j], (g.load_id, g.part, g.row0 + j)) for j in range(len(ids))]
        return out

    def events(self, sandbox_id: str, pkeys: list[str], *, start_ms: int | None, end_ms: int | None, limit: int, descending: bool, start_event: str | None, datasets: set[str] | None = None, where: Any = None) -> EventPage:
        """A page of a profile's events, ordered by time (then ingestion order). Events are
        de-duplicated here, by (dataset, `_id`): the first ingested copy is the event. Groups wholly
        outside the time window are read for their `_id`s only (a copy there still hides one inside).
        `where`: a predicate on the event document (property filters), applied before paging."""
        with read_session(self.db) as s:
            groups = self._groups(s, sandbox_id, pkeys[:MAX_GRAPH_IDENTITIES], datasets)
        lo = start_ms if start_ms is not None else -(2**63)
        hi = end_ms if end_ms is not None else 2**63
        inside = [g.ts_max >= lo and g.ts_min < hi for g in groups]
        read = self._read_groups(groups, inside)
        first: dict[tuple[str, str], tuple] = {}
        rows: list[EventRow] = []
        for g_rows, whole in zip(read, inside):
            for r in g_rows:
                key, seq = ((r.dataset_id, r.event_id), r.seq) if whole else ((r[0], r[1]), r[2])
                if key not in first or seq < first[key]:
                    first[key] = seq
                if whole and lo <= r.ts_ms < hi:
                    rows.append(r)
        rows = [r for r in rows if first[(r.dataset_id, r.event_id)] == r.seq]
        if where is not None:
            rows = [r for r in rows if where(json.loads(r.doc))]
        rows.sort(key=lambda r: (r.ts_ms, r.seq), reverse=descending)
        if start_event:
            at = next((i for i, r in enumerate(rows) if r.event_id == start_event), None)
            if at is None:
                return EventPage()
            rows = rows[at:]
        return EventPage(rows[:limit], rows[limit].event_id if len(rows) > limit else "")

    def counts(self, sandbox_id: str) -> dict[str, int]:
        """Sizes of a sandbox's store (diagnostics and tests): events are counted de-duplicated,
        which reads their `_id`s from the lake."""
        with self.db.session() as s:
            out = {
                "identities": s.execute(select(func.count()).select_from(Identity).where(Identity.sandbox_id == sandbox_id)).scalar_one(),
                "graphs": s.execute(select(func.count(func.distinct(Identity.xid))).where(Identity.sandbox_id == sandbox_id)).scalar_one(),
                "fragments": s.execute(select(func.count()).select_from(ProfileFragment).join(StoreLoad, StoreLoad.id == ProfileFragment.load_id).where(StoreLoad.sandbox_id == sandbox_id, StoreLoad.visible.is_(True))).scalar_one(),
            }
            rows = self._rows(s, "SELECT g.load_id, l.dataset_id, l.ingest_ms, l.lake_prefix, g.n, g.ts_min, g.ts_max, g.part, g.row0, g.body FROM aep_event_groups g JOIN aep_store_loads l ON l.id = g.load_id WHERE l.sandbox_id = ? AND l.visible", (sandbox_id,))
        groups = [_Group(*r) for r in rows]
        seen = {(r[0], r[1]) for g_rows in self._read_groups(groups, [False] * len(groups)) for r in g_rows}
        out["events"] = len(seen)
        return out

    def datasets(self, sandbox_id: str) -> dict[str, Dataset]:
        with read_session(self.db) as s:
            return {d.id: d for d in s.execute(select(Dataset).where(Dataset.sandbox_id == sandbox_id)).scalars()}
