"""The profile store: identity graph, profile fragments and ExperienceEvents of every sandbox.

Design
------
*Source of truth = immutable, attributed fragments; merged profiles are always computed.*
Every ingested row becomes one fragment row that knows its sandbox, dataset, batch and ingest attempt:
``aep_fragments`` (profile records) and ``aep_events`` (ExperienceEvents, unique per
(sandbox, dataset, ``_id``) so a re-sent event is stored once). Nothing is merged in place: a merged
profile is recomputed on read from the fragments of its identity graph and a merge policy. So
(a) both merge policies and both graph types (``none``/``pdg``) work on the same data at any time,
(b) deleting everything a dataset or an event batch contributed is ``DELETE ... WHERE dataset_id|batch_id``
followed by a graph rebuild, and the merged views are right again at once (next issues: system jobs).

*Identity graph.* ``aep_identities`` maps each identity "NS:id" of a sandbox to the XID of its graph.
Graphs are connected components of the "appear in the same row" relation over all Profile-enabled
datasets of the sandbox (union-find). A graph's XID is the smallest native XID
(``xdm.native_xid``) of its members, so incremental merging (ingest) and a full rebuild (after a
deletion) give the same XIDs. The ingest job unions its batch's identities in memory (bounded by the
batch's distinct identities) and applies the result to the table in the publish transaction:
new identities are inserted, merged graphs relabelled.

*Guardrail (50 identities).* Graphs are never cut: ingestion keeps linking (the data is real, and
cutting "the oldest" link would make the graph depend on ingestion order). A graph with more than 50
identities is excluded from look-ups (HTTP 422 "Too many related identities", as AEP does) and must be
excluded by segmentation and export too (``graph_too_large``).

*Visibility / publication.* The ingest job inserts a batch's rows while it runs, tagged with its
attempt; readers only see rows whose batch is ``success`` and whose attempt is the batch's published
``store_attempt`` (one join on the batch's primary key). The job's publish callback flips the batch
to ``success`` and applies the graph in the transaction that completes the job, so a batch becomes
visible whole or not at all; rows of failed or lost attempts are removed (and are invisible anyway).

*Bulk loads.* The ingest job hands the store whole chunks, column-wise (``insert_columns``): COPY on
PostgreSQL (events through a temporary table and ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``),
one raw ``executemany`` of tuples per chunk on SQLite; identity rows likewise. No ORM objects.

*Reads.* Look-up by identity = 3 indexed queries (identity -> XID -> members -> visible fragments by
``(sandbox_id, pkey)``) plus the event summary and the dataset flags, all in one session
(``shared_read``) and as plain SQL through the DBAPI connection; events are paged with the
``(sandbox_id, pkey, ts_ms)`` index.
*Scans* (segment evaluation, export over all profiles): stream ``aep_identities`` ordered by XID
joined with the fragments on ``pkey`` (server-side cursor, ``yield_per``) and merge one graph at a
time; rows are grouped so memory is bounded by the largest graph, not by the sandbox.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from userlens.profiles.models import Batch, Dataset, Identity, ProfileEvent, ProfileFragment
from userlens.profiles.xdm import MAX_GRAPH_IDENTITIES, Accepted, native_xid
from userlens.storage.db import Database

IN_CHUNK = 500  # bound of IN (...) lists
SQLITE_CACHE_KIB = 131072  # page cache of a connection that bulk-loads fragments (SQLite)

# A read request (profile look-up) runs all its queries in one session: `shared_read` opens it and
# `read_session` hands it to the store and merge-policy reads made meanwhile on this thread/task.
_READ_SESSION: ContextVar[Session | None] = ContextVar("aep_read_session", default=None)


@contextmanager
def shared_read(db: Database) -> Iterator[Session]:
    s = _READ_SESSION.get()
    if s is not None:
        yield s
        return
    with db.session() as s:
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
    with db.session() as s:
        yield s


class GraphTooLarge(Exception):
    def __init__(self, xid: str, size: int):
        super().__init__(f"graph {xid} has {size} identities")
        self.xid, self.size = xid, size


class UnionFind:
    """Union-find over strings with path halving; memory is one dict entry per node."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        p = self.parent
        if x not in p:
            p[x] = x
            return x
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def add_row(self, keys: list[str]) -> None:
        first = keys[0]
        self.find(first)
        for k in keys[1:]:
            self.union(first, k)

    def groups(self) -> list[list[str]]:
        out: dict[str, list[str]] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        return list(out.values())


def ikeys_of(identities: list[list]) -> list[str]:
    return [f"{ns}:{v}" for ns, v, *_ in identities]


def _chunks(items: list, n: int = IN_CHUNK) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _visible(model):
    """Join condition: the row's batch is published and the row is of the published attempt."""
    return and_(Batch.id == model.batch_id, Batch.store_attempt == model.attempt, Batch.status == "success")


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
class EventPage:
    rows: list[ProfileEvent] = field(default_factory=list)
    next_id: str = ""


class ProfileStore:
    def __init__(self, db: Database):
        self.db = db

    # -- writes by the ingest job ------------------------------------------------------------------
    def clear_batch(self, batch_id: str, attempt: str | None = None) -> None:
        """Removes a batch's rows (of one attempt, or of every attempt)."""
        with self.db.session() as s:
            for model in (ProfileFragment, ProfileEvent):
                q = delete(model).where(model.batch_id == batch_id)
                if attempt is not None:
                    q = q.where(model.attempt == attempt)
                s.execute(q)

    def insert_rows(self, sandbox_id: str, dataset_id: str, batch_id: str, attempt: str, behaviour: str, rows: list[Accepted], ingest_ms: int) -> None:
        if not rows:
            return
        event = behaviour == "time-series"
        self.insert_columns(
            sandbox_id, dataset_id, batch_id, attempt, behaviour, ingest_ms,
            pkeys=[r.pkey for r in rows], identities=[json.dumps(r.identities) for r in rows], docs=[r.doc for r in rows],
            event_ids=[r.event_id for r in rows] if event else None, ts_ms=[r.ts_ms for r in rows] if event else None,
        )

    def insert_columns(self, sandbox_id: str, dataset_id: str, batch_id: str, attempt: str, behaviour: str, ingest_ms: int, *, pkeys: list[str], identities: list[str], docs: list[str], event_ids: list[str] | None = None, ts_ms: list[int] | None = None) -> None:
        """Bulk insert of one chunk, column-wise, through the raw DBAPI connection in one transaction:
        PostgreSQL COPY (events through a temporary table, then INSERT ... ON CONFLICT DO NOTHING for
        the _id de-duplication); SQLite executemany with tuples. No ORM objects, no per-row dicts."""
        n = len(pkeys)
        if not n:
            return
        event = behaviour == "time-series"
        const = (sandbox_id, dataset_id, batch_id, attempt)
        if event:
            cols = ("sandbox_id", "dataset_id", "batch_id", "attempt", "event_id", "pkey", "identities", "ts_ms", "doc", "ingest_ms")
            rows = [(*const, e, p, i, t, d, ingest_ms) for e, p, i, t, d in zip(event_ids, pkeys, identities, ts_ms, docs)]
            table = "aep_events"
        else:
            cols = ("sandbox_id", "dataset_id", "batch_id", "attempt", "pkey", "identities", "doc", "ingest_ms")
            rows = [(*const, p, i, d, ingest_ms) for p, i, d in zip(pkeys, identities, docs)]
            table = "aep_fragments"
        collist = ", ".join(cols)
        if self.db.engine.dialect.name == "postgresql":
            with self.db.engine.begin() as conn, conn.connection.driver_connection.cursor() as cur:  # commits on exit
                if event:
                    cur.execute("CREATE TEMP TABLE IF NOT EXISTS aep_events_load (LIKE aep_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
                with cur.copy(f"COPY {'aep_events_load' if event else table} ({collist}) FROM STDIN") as cp:
                    for r in rows:
                        cp.write_row(r)
                if event:
                    cur.execute(f"INSERT INTO aep_events ({collist}) SELECT {collist} FROM aep_events_load ORDER BY id ON CONFLICT (event_id, dataset_id, sandbox_id) DO NOTHING")
            return
        marks = ", ".join("?" * len(cols))
        tail = " ON CONFLICT (event_id, dataset_id, sandbox_id) DO NOTHING" if event else ""
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
                    cur.executemany(f"INSERT INTO {table} ({collist}) VALUES ({marks}){tail}", rows)
                    raw.commit()
                except BaseException:
                    raw.rollback()
                    raise
                finally:
                    cur.execute(f"PRAGMA synchronous={int(prev)}")
            finally:
                cur.close()

    @staticmethod
    def _insert_ignore(s: Session, model):
        """INSERT ... ON CONFLICT DO NOTHING on the event key: de-duplication by _id."""
        if s.bind.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(model.__table__).on_conflict_do_nothing(index_elements=["event_id", "dataset_id", "sandbox_id"])

    def apply_graph(self, s: Session, sandbox_id: str, components: Iterable[list[str]]) -> None:
        """Merges a batch's identity components into the sandbox graph (in the caller's transaction)."""
        comps = [c for c in components if c]
        keys = sorted({k for c in comps for k in c})
        existing: dict[str, str] = {}
        for chunk in _chunks(keys, 2000):
            sql = f"SELECT ikey, xid FROM aep_identities WHERE sandbox_id = ? AND ikey IN ({', '.join('?' * len(chunk))})"
            existing.update(self._rows(s, sql, (sandbox_id, *chunk)))
        # A component whose identities are all known and already in one graph changes nothing
        # (the usual case for events of known people): only the others go through the union-find.
        comps = [c for c in comps if len({existing.get(k) for k in c}) != 1 or c[0] not in existing]
        if not comps:
            return
        uf = UnionFind()
        for comp in comps:
            uf.add_row(comp)
            for k in comp:
                if k in existing:
                    uf.union(comp[0], "\x00" + existing[k])
        new_rows: list[tuple] = []
        relabel: list[dict] = []
        for members in uf.groups():
            old = sorted({m[1:] for m in members if m.startswith("\x00")})
            fresh = [m for m in members if not m.startswith("\x00") and m not in existing]
            xid = min(old + [native_xid(k) for k in fresh])
            relabel += [{"old": o, "new": xid} for o in old if o != xid]
            new_rows += [(sandbox_id, k, xid) for k in fresh]
        if relabel:
            t = Identity.__table__
            from sqlalchemy import bindparam

            s.execute(t.update().where(t.c.sandbox_id == sandbox_id, t.c.xid == bindparam("old")).values(xid=bindparam("new")), relabel)
        self._insert_identities(s, new_rows)

    @staticmethod
    def _insert_identities(s: Session, rows: list[tuple]) -> None:
        """Bulk insert of (sandbox_id, ikey, xid) in the session's transaction (raw DBAPI)."""
        if not rows:
            return
        raw = s.connection().connection.driver_connection
        if s.bind.dialect.name == "postgresql":
            with raw.cursor() as cur, cur.copy("COPY aep_identities (sandbox_id, ikey, xid) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
        else:
            cur = raw.cursor()
            try:
                cur.executemany("INSERT INTO aep_identities (sandbox_id, ikey, xid) VALUES (?, ?, ?)", rows)
            finally:
                cur.close()

    # -- deletion (dataset / event batch) and graph rebuild ------------------------------------------
    def delete_dataset(self, sandbox_id: str, dataset_id: str) -> int:
        with self.db.session() as s:
            n = 0
            for model in (ProfileFragment, ProfileEvent):
                n += s.execute(delete(model).where(model.sandbox_id == sandbox_id, model.dataset_id == dataset_id)).rowcount or 0
            self.rebuild_graph(s, sandbox_id)
            return n

    def delete_batch(self, sandbox_id: str, batch_id: str) -> int:
        with self.db.session() as s:
            n = 0
            for model in (ProfileFragment, ProfileEvent):
                n += s.execute(delete(model).where(model.sandbox_id == sandbox_id, model.batch_id == batch_id)).rowcount or 0
            self.rebuild_graph(s, sandbox_id)
            return n

    def rebuild_graph(self, s: Session, sandbox_id: str) -> None:
        """Recomputes the whole graph of a sandbox from its visible fragments and events."""
        uf = UnionFind()
        for model in (ProfileFragment, ProfileEvent):
            q = select(model.identities).join(Batch, _visible(model)).where(model.sandbox_id == sandbox_id).execution_options(yield_per=20000)
            for (ids,) in s.execute(q):
                uf.add_row(ikeys_of(json.loads(ids)))
        s.execute(delete(Identity).where(Identity.sandbox_id == sandbox_id))
        rows = []
        for members in uf.groups():
            xid = min(native_xid(k) for k in members)
            rows += [(sandbox_id, k, xid) for k in members]
        self._insert_identities(s, rows)

    # -- reads ---------------------------------------------------------------------------------------
    # The look-up path runs plain SQL through the session's DBAPI connection (no statement building,
    # no ORM rows): a profile look-up is a handful of indexed queries, and at that size SQLAlchemy's
    # per-statement overhead would be most of the request's time.
    @staticmethod
    def _rows(s: Session, sql: str, params: tuple) -> list[tuple]:
        conn = s.connection()
        if conn.dialect.name == "postgresql":
            sql = sql.replace("?", "%s")
        return conn.exec_driver_sql(sql, params).fetchall()

    def graph_of(self, sandbox_id: str, ikey: str | None = None, xid: str | None = None, stitch: bool = True) -> Graph | None:
        """The identities a profile is made of. Raises GraphTooLarge past the 50-identity guardrail."""
        if ikey is not None and not stitch:
            return Graph(native_xid(ikey), [ikey], False)
        with read_session(self.db) as s:
            if xid is None:
                row = self._rows(s, "SELECT xid FROM aep_identities WHERE sandbox_id = ? AND ikey = ?", (sandbox_id, ikey))
                if not row:
                    return None
                xid = row[0][0]
            members = [r[0] for r in self._rows(s, f"SELECT ikey FROM aep_identities WHERE sandbox_id = ? AND xid = ? LIMIT {MAX_GRAPH_IDENTITIES + 1}", (sandbox_id, xid))]
            if not members:
                return None
            if len(members) > MAX_GRAPH_IDENTITIES:
                size = s.execute(select(func.count()).select_from(Identity).where(Identity.sandbox_id == sandbox_id, Identity.xid == xid)).scalar_one()
                raise GraphTooLarge(xid, size)
            return Graph(xid, sorted(members), True)

    def graph_too_large(self, sandbox_id: str, xid: str) -> bool:
        with read_session(self.db) as s:
            return s.execute(select(func.count()).select_from(Identity).where(Identity.sandbox_id == sandbox_id, Identity.xid == xid)).scalar_one() > MAX_GRAPH_IDENTITIES

    def fragments(self, sandbox_id: str, pkeys: list[str]) -> list[FragmentRow]:
        """Visible record fragments of these primary identities, oldest first."""
        out: list[FragmentRow] = []
        with read_session(self.db) as s:
            for chunk in _chunks(pkeys):
                sql = (
                    "SELECT f.id, f.dataset_id, f.batch_id, f.pkey, f.identities, f.doc, f.ingest_ms FROM aep_fragments f"
                    " JOIN aep_batches b ON b.id = f.batch_id AND b.store_attempt = f.attempt AND b.status = 'success'"
                    f" WHERE f.sandbox_id = ? AND f.pkey IN ({', '.join('?' * len(chunk))})"
                )
                for r in self._rows(s, sql, (sandbox_id, *chunk)):
                    out.append(FragmentRow(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6]))
        out.sort(key=lambda f: (f.ingest_ms, f.id))
        return out

    def event_summary(self, sandbox_id: str, pkeys: list[str]) -> list[tuple[str, str, str, int]]:
        """(dataset_id, batch_id, identities JSON, ingest_ms) of one visible event per dataset and
        primary identity: what a profile's `sources`, `tags` and identities need from its events."""
        out = []
        with read_session(self.db) as s:
            for chunk in _chunks(pkeys):
                sql = (
                    "SELECT e.dataset_id, e.batch_id, e.identities, MAX(e.ingest_ms) FROM aep_events e"
                    " JOIN aep_batches b ON b.id = e.batch_id AND b.store_attempt = e.attempt AND b.status = 'success'"
                    f" WHERE e.sandbox_id = ? AND e.pkey IN ({', '.join('?' * len(chunk))})"
                    " GROUP BY e.dataset_id, e.batch_id, e.identities LIMIT 1000"
                )
                out += [tuple(r) for r in self._rows(s, sql, (sandbox_id, *chunk))]
        return out

    def dataset_flags(self, sandbox_id: str) -> dict[str, tuple[bool, bool]]:
        """{dataset id: (profile enabled, upsert)} of a sandbox."""
        with read_session(self.db) as s:
            return {r[0]: (bool(r[1]), bool(r[2])) for r in self._rows(s, "SELECT id, profile_enabled, upsert FROM aep_datasets WHERE sandbox_id = ?", (sandbox_id,))}

    def events(self, sandbox_id: str, pkeys: list[str], *, start_ms: int | None, end_ms: int | None, limit: int, descending: bool, start_event: str | None, datasets: set[str] | None = None) -> EventPage:
        E = ProfileEvent
        with read_session(self.db) as s:
            base = select(E).join(Batch, _visible(E)).where(E.sandbox_id == sandbox_id, E.pkey.in_(pkeys[: MAX_GRAPH_IDENTITIES]))
            if start_ms is not None:
                base = base.where(E.ts_ms >= start_ms)
            if end_ms is not None:
                base = base.where(E.ts_ms < end_ms)
            if datasets is not None:
                base = base.where(E.dataset_id.in_(sorted(datasets)))
            if start_event:
                anchor = s.execute(base.where(E.event_id == start_event).order_by(E.id).limit(1)).scalar_one_or_none()
                if anchor is None:
                    return EventPage()
                if descending:
                    base = base.where(or_(E.ts_ms < anchor.ts_ms, and_(E.ts_ms == anchor.ts_ms, E.id <= anchor.id)))
                else:
                    base = base.where(or_(E.ts_ms > anchor.ts_ms, and_(E.ts_ms == anchor.ts_ms, E.id >= anchor.id)))
            order = (E.ts_ms.desc(), E.id.desc()) if descending else (E.ts_ms, E.id)
            rows = list(s.execute(base.order_by(*order).limit(limit + 1)).scalars())
        page = EventPage(rows[:limit], rows[limit].event_id if len(rows) > limit else "")
        return page

    def counts(self, sandbox_id: str) -> dict[str, int]:
        with self.db.session() as s:
            return {
                "identities": s.execute(select(func.count()).select_from(Identity).where(Identity.sandbox_id == sandbox_id)).scalar_one(),
                "graphs": s.execute(select(func.count(func.distinct(Identity.xid))).where(Identity.sandbox_id == sandbox_id)).scalar_one(),
                "fragments": s.execute(select(func.count()).select_from(ProfileFragment).join(Batch, _visible(ProfileFragment)).where(ProfileFragment.sandbox_id == sandbox_id)).scalar_one(),
                "events": s.execute(select(func.count()).select_from(ProfileEvent).join(Batch, _visible(ProfileEvent)).where(ProfileEvent.sandbox_id == sandbox_id)).scalar_one(),
            }

    def datasets(self, sandbox_id: str) -> dict[str, Dataset]:
        with read_session(self.db) as s:
            return {d.id: d for d in s.execute(select(Dataset).where(Dataset.sandbox_id == sandbox_id)).scalars()}
