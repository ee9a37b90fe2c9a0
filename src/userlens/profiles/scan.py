"""A sandbox-wide scan of merged profiles (segment evaluation, export jobs).

Design (see also the "Scans" paragraph of profiles/store.py). The scan walks the identity graph in
pages of XIDs, in the database's own order: a page is the next ``page`` rows of ``aep_identities``
by (sandbox, xid) (keyset pagination on the xid index; the rows of the page's last XID are dropped
and read again by the next page, so a graph is never split). For the page's XID range it reads, in
one indexed join each, the record fragments (and, when asked, the event groups and the segment
memberships) of every identity of the range. So memory is bounded by the page, whatever the size of
the sandbox, and every profile's fragments arrive together. The xid index is covering
(sandbox_id, xid, ikey; migration a003), so walking it never touches the table. The next page is read
on a background thread while the caller works on the current one. With ``members_of`` (an export
filtered by segments) the scan walks the segment membership table instead (pages of member XIDs, one
parameter for the set), so its cost follows the segment's size, not the sandbox's.

Per page the work is column-wise: fragments are grouped by profile with Arrow's dictionary
encoding; a profile made of one fragment (the usual case) keeps the stored JSON document as its
merged attributes, with no Python work per profile; only profiles with several fragments are
merged in Python (``merge.merge_fragments``, the look-up path's merge). A page comes out as Arrow
arrays: profile ids, attribute JSON text, member identities and their primary flags, and
per-profile flags; consumers parse the JSON column-wise (``attributes_table``).

Which profiles: with identity graph ``pdg`` a profile is a graph (its XID); with ``none`` it is one
primary identity (its native XID), as look-ups resolve them. Profiles of graphs over 50 identities
are excluded (guardrail). Rows count only if their load is visible and their dataset is enabled for
Profile. A profile "has a record" if it has at least one record fragment; event-only profiles are
produced only with ``empty_profiles``. ``last_ms``: the latest ingestion time of the profile's
record fragments (of its event groups too when events are read).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from userlens.profiles.merge import Policy, merge_fragments
from userlens.profiles.store import ProfileStore, _Group, ikeys_of
from userlens.profiles.xdm import MAX_GRAPH_IDENTITIES, native_xids
from userlens.storage.objectstore import LocalObjectStore, ObjectStoreError

PAGE = 100_000  # identities per page: bounds the scan's memory (two pages in flight)
_END = object()
SCAN_CACHE_KIB = 65536


def prefetched(make, name: str) -> Iterator:
    """The items of `make(stop)` produced on a background thread one ahead of the consumer (a
    database or DuckDB works while the caller writes the previous item). Closing the iterator sets
    `stop` and waits for the thread; an exception of the producer is raised to the consumer."""
    q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in make(stop):
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    th = threading.Thread(target=produce, daemon=True, name=name)
    th.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        th.join(5)


@dataclass
class _Load:
    dataset_id: str
    batch_id: str
    ingest_ms: int
    behaviour: str
    lake_prefix: str | None


@dataclass
class _Frag:  # what merge_fragments needs
    dataset_id: str
    pkey: str
    doc: dict


@dataclass
class EventGroups:
    """The event groups of a page's profiles, column-wise (one entry per group)."""

    prof: np.ndarray  # profile index in the page
    load: np.ndarray
    n: np.ndarray
    ts_min: np.ndarray
    ts_max: np.ndarray
    part: np.ndarray  # -1: events held inline (migrated data, `body`)
    row0: np.ndarray
    body: list  # JSON text or None per group
    loads: dict  # load id -> _Load

    def take(self, idx: np.ndarray) -> "EventGroups":
        remap = np.full(max(int(self.prof.max()) + 1 if len(self.prof) else 0, int(idx.max()) + 1 if len(idx) else 0), -1, np.int64)
        remap[idx] = np.arange(len(idx))
        new_p = remap[self.prof] if len(self.prof) else self.prof
        k = np.flatnonzero(new_p >= 0)
        return EventGroups(new_p[k], self.load[k], self.n[k], self.ts_min[k], self.ts_max[k], self.part[k], self.row0[k], [self.body[i] for i in k], self.loads)

    def per_profile(self, n_prof: int) -> list[list[_Group]]:
        out: list[list[_Group]] = [[] for _ in range(n_prof)]
        for i in range(len(self.prof)):
            ld = self.loads[int(self.load[i])]
            part = int(self.part[i])
            out[int(self.prof[i])].append(_Group(int(self.load[i]), ld.dataset_id, ld.ingest_ms, ld.lake_prefix, int(self.n[i]), int(self.ts_min[i]), int(self.ts_max[i]), None if part < 0 else part, int(self.row0[i]), self.body[i]))
        return out


@dataclass
class ScanPage:
    keys: pa.Array  # profile id (XID) per profile
    attrs: pa.Array  # merged attributes as JSON text (stored documents may still hold identityMap/_id)
    members: pa.Array  # list<string>: the profile's identities "NS:id"
    primary: pa.Array  # list<bool>: whether each identity is the primary identity of a record fragment (or of an event group, when events are read)
    has_record: np.ndarray
    last_ms: np.ndarray
    groups: EventGroups | None = None  # the profiles' event groups (when events were asked)
    memberships: list[dict] | None = None  # {segmentId: (status, qual_ms, version)} per profile
    table: pa.Table | None = None  # the merged attributes already typed (LakeExport), instead of `attrs`
    ids: tuple[pa.Array, pa.Array] | None = None  # (identities, identityMap) already built (a lake plan), instead of members/primary

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx: np.ndarray) -> "ScanPage":
        ia = pa.array(idx, pa.int64())
        return ScanPage(
            self.keys.take(ia), self.attrs.take(ia) if self.attrs is not None else None, self.members.take(ia) if self.members is not None else None,
            self.primary.take(ia) if self.primary is not None else None, self.has_record[idx], self.last_ms[idx],
            self.groups.take(idx) if self.groups is not None else None,
            [self.memberships[i] for i in idx] if self.memberships is not None else None,
            None if self.table is None else self.table.take(ia) if self.table.num_columns else _no_columns(len(idx)),
            None if self.ids is None else (self.ids[0].take(ia), self.ids[1].take(ia)),
        )


class ProfileScan:
    def __init__(self, store: ProfileStore, sandbox_id: str, policy: Policy, *, events: bool = False, empty_profiles: bool = False, memberships: bool = False, page: int | None = None, members_of: list[tuple[str, tuple[str, ...]]] | None = None, xids: Iterable[list[str]] | None = None):
        self.store, self.sandbox_id, self.policy = store, sandbox_id, policy
        self.events = events or empty_profiles
        self.empty_profiles = empty_profiles
        self.memberships = memberships
        self.page = max(page or PAGE, MAX_GRAPH_IDENTITIES + 1)
        self.pdg = policy.identity_graph == "pdg"
        # Only the members of these segments (with these statuses): the scan then walks the membership
        # table instead of the whole graph, so its cost follows the segment's size. Memberships are
        # keyed by graph XID, so this applies to identity graph pdg (others scan everything and the
        # caller filters).
        self.members_of = members_of if members_of and self.pdg else None
        # Only these graphs, given in lists of XIDs (identity graph pdg): the profiles LakeExport
        # leaves to the SQL path.
        self.xids = xids if self.pdg else None

    def _loads(self, s) -> dict[int, _Load]:
        rows = self.store._rows(
            s,
            "SELECT l.id, l.dataset_id, l.batch_id, l.ingest_ms, l.behaviour, l.lake_prefix, d.profile_enabled, d.upsert FROM aep_store_loads l JOIN aep_datasets d ON d.id = l.dataset_id WHERE l.sandbox_id = ? AND l.visible",
            (self.sandbox_id,),
        )
        self.upsert = {r[1] for r in rows if r[7]}
        return {r[0]: _Load(r[1], r[2], int(r[3]), r[4], r[5]) for r in rows if r[6]}

    def pages(self, progress=None) -> Iterator[ScanPage]:
        """Yields the sandbox's profiles page by page. `progress(n_identities_done)` is called per
        page. The next page is read on a background thread while the caller works on this one
        (SQLite and psycopg release the GIL while the database works): at most two pages in memory."""
        return prefetched(lambda stop: self._pages(progress, stop), "profile-scan")

    def _pages(self, progress, stop: threading.Event) -> Iterator[ScanPage]:
        db = self.store.db
        # One connection for the whole scan; on SQLite with a page cache that holds the hot pages of
        # the indexes it walks (64 MiB at most, given back at the end; measured -15% CPU per page).
        with db.session() as s:
            sqlite = s.bind.dialect.name == "sqlite"
            if sqlite:
                self.store._execute(s, f"PRAGMA cache_size=-{SCAN_CACHE_KIB}", ())
            try:
                yield from self._pages_in(s, progress, stop)
            finally:
                if sqlite:
                    self.store._execute(s, "PRAGMA cache_size=-2000", ())

    def _pages_in(self, s, progress, stop: threading.Event) -> Iterator[ScanPage]:
        loads = self._loads(s)
        if not loads:
            return
        allowed = np.fromiter(loads, np.int64, len(loads))
        if self.members_of:
            yield from self._xid_pages(s, progress, stop, loads, allowed, self._member_xids(s, stop))
            return
        if self.xids is not None:
            yield from self._xid_pages(s, progress, stop, loads, allowed, iter(self.xids))
            return
        after: str | None = None
        done = 0
        while not stop.is_set():
            q = "SELECT xid, ikey FROM aep_identities WHERE sandbox_id = ?" + (" AND xid > ?" if after is not None else "") + " ORDER BY xid, ikey LIMIT ?"
            rows = self.store._rows(s, q, (self.sandbox_id, *((after,) if after is not None else ()), self.page))
            if not rows:
                return
            last = rows[-1][0]
            full = len(rows) == self.page
            if full:
                if rows[0][0] == last:  # one graph fills the page: past the guardrail, skip it
                    after = last
                    continue
                cut = len(rows)
                while rows[cut - 1][0] == last:
                    cut -= 1
                rows = rows[:cut]
            lo, hi = rows[0][0], rows[-1][0]
            out = self._page(s, rows, "{c} >= ? AND {c} <= ?", (lo, hi), loads, allowed)
            done += len(rows)
            if progress is not None:
                progress(done)
            if out is not None and len(out):
                yield out
            if not full:
                return
            after = hi

    def _xid_set(self, s, xids: list[str]) -> tuple[str, tuple]:
        """A condition "{c} is one of xids" with one parameter (a JSON array on SQLite, an array on PostgreSQL)."""
        if s.bind.dialect.name == "sqlite":
            return "{c} IN (SELECT value FROM json_each(?))", (json.dumps(xids),)
        return "{c} = ANY(?)", (xids,)

    def _member_xids(self, s, stop: threading.Event) -> Iterator[list[str]]:
        """The XIDs of the segments' members, in pages."""
        seg_ids = sorted({sid for sid, _ in self.members_of})
        statuses = sorted({st for _, sts in self.members_of for st in sts})
        cond = f"sandbox_id = ? AND segment_id IN ({', '.join('?' * len(seg_ids))}) AND status IN ({', '.join('?' * len(statuses))})"
        per_page = max(1, self.page // 2)
        after: str | None = None
        while not stop.is_set():
            q = f"SELECT DISTINCT xid FROM aep_segment_members WHERE {cond}" + (" AND xid > ?" if after is not None else "") + " ORDER BY xid LIMIT ?"
            xids = [r[0] for r in self.store._rows(s, q, (self.sandbox_id, *seg_ids, *statuses, *((after,) if after is not None else ()), per_page))]
            if xids:
                yield xids
            if len(xids) < per_page:
                return
            after = xids[-1]

    def _xid_pages(self, s, progress, stop: threading.Event, loads, allowed, pages: Iterator[list[str]]) -> Iterator[ScanPage]:
        """The profiles of given graphs, a list of XIDs (one parameter for the set) per page."""
        done = 0
        for xids in pages:
            if stop.is_set():
                return
            where, params = self._xid_set(s, xids)
            rows = self.store._rows(s, f"SELECT i.xid, i.ikey FROM aep_identities i WHERE i.sandbox_id = ? AND {where.format(c='i.xid')} ORDER BY i.xid, i.ikey", (self.sandbox_id, *params))
            if rows:
                out = self._page(s, rows, where, params, loads, allowed)
                done += len(rows)
                if progress is not None:
                    progress(done)
                if out is not None and len(out):
                    yield out

    def _page(self, s, id_rows: list[tuple], where: str, params: tuple, loads: dict[int, _Load], allowed: np.ndarray) -> ScanPage | None:
        """One page: `id_rows` (xid, ikey) sorted by xid, and `where` ({c}: the xid column) with its
        parameters selecting the same graphs in SQL."""
        st = self.store
        ident_cols = ", f.identities" if not self.pdg else ""
        # Rows are (xid, id, load, pkey, doc[, identities]); the xid is taken from the page's
        # identities in Arrow rather than sent once more per row by the database.
        join = f"FROM aep_identities i CROSS JOIN aep_fragments f WHERE i.sandbox_id = ? AND {where.format(c='i.xid')} AND f.pkey = i.ikey"
        fcols = self._concat_fragments(s, join, params) if self.pdg and s.bind.dialect.name == "sqlite" else None
        frows = st._rows(s, f"SELECT NULL, f.id, f.load_id, f.pkey, f.doc{ident_cols} {join}", (self.sandbox_id, *params)) if fcols is None else []
        grows: list[tuple] = []
        if self.events:
            g_ident = ", g.identities" if not self.pdg else ""
            grows = st._rows(s, f"SELECT i.xid, g.load_id, g.pkey, g.n, g.ts_min, g.ts_max, COALESCE(g.part, -1), g.row0, g.body{g_ident} FROM aep_identities i CROSS JOIN aep_event_groups g WHERE i.sandbox_id = ? AND {where.format(c='i.xid')} AND g.pkey = i.ikey", (self.sandbox_id, *params))
        if fcols is not None:
            f_id, f_lid, f_pkey, f_doc = fcols
        else:
            cols = list(zip(*frows)) if frows else [(), (), (), (), (), ()]
            f_lid = np.array(cols[2], np.int64)
            f_pkey = pa.array(cols[3], pa.string())
            f_doc = pa.array(cols[4], pa.string())
            f_id = np.array(cols[1], np.int64)
        page_x = pa.array([r[0] for r in id_rows], pa.string())
        page_k = pa.array([r[1] for r in id_rows], pa.string())
        # -- record fragments (column-wise) ----------------------------------------------------------
        keep = np.isin(f_lid, allowed)
        if not keep.all():
            k = np.flatnonzero(keep)
            ka = pa.array(k, pa.int64())
            f_lid, f_id, f_pkey, f_doc = f_lid[k], f_id[k], f_pkey.take(ka), f_doc.take(ka)
            frows = [frows[i] for i in k] if not self.pdg else frows
        if grows:
            g_lid = np.fromiter((r[1] for r in grows), np.int64, len(grows))
            keep = np.flatnonzero(np.isin(g_lid, allowed))
            grows = [grows[i] for i in keep] if len(keep) < len(grows) else grows
        n_frag = len(f_lid)
        if not n_frag and not (self.empty_profiles and grows):
            return None
        f_key = page_x.take(pc.index_in(f_pkey, page_k)) if self.pdg else pa.array(native_xids(f_pkey.to_pylist()), pa.string())
        g_key = ([r[0] for r in grows] if self.pdg else native_xids([r[2] for r in grows])) if grows else []
        # Profiles: those with a record (and event-only ones when asked), in first-appearance order.
        all_keys = pa.concat_arrays([f_key, pa.array(g_key, pa.string())]) if self.empty_profiles and g_key else f_key
        enc = all_keys.dictionary_encode()
        keys = enc.dictionary
        idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        n_prof = len(keys)
        f_idx = idx[:n_frag]
        counts = np.bincount(f_idx, minlength=n_prof)
        has_record = counts > 0
        last_ms = np.zeros(n_prof, np.int64)
        # Per profile, the row of f_doc (plus extras) that holds its merged attributes: a lone
        # fragment's own document, else a merged one (or "{}") appended after the fragments.
        src = np.full(n_prof, n_frag, np.int64)  # default: the "{}" extra
        extras = ["{}"]
        if n_frag:
            lids = np.fromiter(loads, np.int64, len(loads))
            ingest_of = np.fromiter((ld.ingest_ms for ld in loads.values()), np.int64, len(loads))
            order_l = np.argsort(lids)
            f_ingest = ingest_of[order_l][np.searchsorted(lids[order_l], f_lid)]
            np.maximum.at(last_ms, f_idx, f_ingest)
            single = counts[f_idx] == 1
            s_rows = np.flatnonzero(single)
            if self.policy.attribute_merge == "dataSetPrecedence" and len(s_rows):
                order = set(self.policy.order)
                listed = np.fromiter((loads[int(f_lid[i])].dataset_id in order for i in s_rows), bool, len(s_rows))
                s_rows = s_rows[listed]
            src[f_idx[s_rows]] = s_rows
            multi = np.flatnonzero(~single)
            if len(multi):
                by: dict[int, list] = {}
                m_pkey, m_doc = f_pkey.take(pa.array(multi)).to_pylist(), f_doc.take(pa.array(multi)).to_pylist()
                for j, i in enumerate(multi):
                    ld = loads[int(f_lid[i])]
                    by.setdefault(int(f_idx[i]), []).append((ld.ingest_ms, int(f_lid[i]), int(f_id[i]), _Frag(ld.dataset_id, m_pkey[j], json.loads(m_doc[j]))))
                for p, items in by.items():
                    items.sort(key=lambda x: x[:3])
                    src[p] = n_frag + len(extras)
                    extras.append(json.dumps(merge_fragments([x[3] for x in items], self.policy, self.upsert), separators=(",", ":"), ensure_ascii=False))
        attrs = pa.concat_arrays([f_doc, pa.array(extras, pa.string())]).take(pa.array(src, pa.int64()))
        # -- members and primary flags ---------------------------------------------------------------
        pkeys = pa.concat_arrays([f_pkey, pa.array([r[2] for r in grows], pa.string())]) if grows else f_pkey
        if self.pdg:
            # The page's identities come sorted by xid: each graph's members are one run of rows.
            n_id = len(page_x)
            start = np.ones(n_id, bool)
            if n_id > 1:
                start[1:] = pc.not_equal(page_x.slice(1), page_x.slice(0, n_id - 1)).to_numpy(zero_copy_only=False)
            starts = np.flatnonzero(start)
            offs = pa.array(np.append(starts, n_id).astype(np.int32))
            graphs = pa.ListArray.from_arrays(offs, page_k)
            members = graphs.take(pc.index_in(keys, page_x.take(pa.array(starts))))
        else:
            sets: list[dict] = [dict() for _ in range(n_prof)]
            for i, r in enumerate(frows):  # identity graph none: frows were filtered like the columns
                for k in ikeys_of(json.loads(r[5])):
                    sets[f_idx[i]][k] = None
            if grows:
                g_pos = pc.index_in(pa.array(g_key, pa.string()), keys).to_numpy(zero_copy_only=False)
                for i, r in enumerate(grows):
                    if g_pos[i] == g_pos[i]:  # not NaN: a profile of this page (r[9]: identities)
                        for k in ikeys_of(json.loads(r[9])):
                            sets[int(g_pos[i])][k] = None
            members = pa.array([sorted(d) for d in sets], pa.list_(pa.string()))
        flat = pc.list_flatten(members)
        prim = pc.is_in(flat, value_set=pkeys) if len(flat) else pa.array([], pa.bool_())
        primary = pa.ListArray.from_arrays(members.offsets, prim)
        sizes = pc.list_value_length(members).to_numpy(zero_copy_only=False)
        ok = sizes <= MAX_GRAPH_IDENTITIES
        page = ScanPage(keys, attrs, members, primary, has_record, last_ms)
        # -- event groups ---------------------------------------------------------------------------
        if self.events:
            gc = list(zip(*grows)) if grows else [()] * 9
            g_pos = pc.index_in(pa.array(g_key, pa.string()), keys).to_numpy(zero_copy_only=False) if grows else np.zeros(0)
            ok_g = ~np.isnan(g_pos) if len(g_pos) else np.zeros(0, bool)
            k = np.flatnonzero(ok_g)
            g_load = np.array(gc[1], np.int64)[k]
            groups = EventGroups(g_pos[k].astype(np.int64), g_load, np.array(gc[3], np.int64)[k], np.array(gc[4], np.int64)[k], np.array(gc[5], np.int64)[k], np.array(gc[6], np.int64)[k], np.array(gc[7], np.int64)[k], [gc[8][i] for i in k], loads)
            if len(k):
                lids = np.fromiter(loads, np.int64, len(loads))
                ingest_of = np.fromiter((ld.ingest_ms for ld in loads.values()), np.int64, len(loads))
                o = np.argsort(lids)
                np.maximum.at(last_ms, groups.prof, ingest_of[o][np.searchsorted(lids[o], g_load)])
            page.groups = groups
        if self.memberships:
            page.memberships = self._memberships(s, keys, where, params)
        if not ok.all():
            page = page.take(np.flatnonzero(ok))
        return page

    def _concat_fragments(self, s, join: str, params: tuple):
        """SQLite: the page's fragments as four concatenated strings (group_concat), split in Arrow:
        one Python object per column instead of one per value (the fetch was most of a page's CPU).
        None if a value holds a separator (the caller then reads rows)."""
        n, ids, lids, pkeys, docs = self.store._rows(s, f"SELECT count(*), group_concat(f.id), group_concat(f.load_id), group_concat(f.pkey, char(31)), group_concat(f.doc, char(10)) {join}", (self.sandbox_id, *params))[0]
        if not n:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), pa.array([], pa.string()), pa.array([], pa.string())

        def split(text: str, sep: str) -> pa.Array:
            return pc.list_flatten(pc.split_pattern(pa.array([text], pa.large_string()), sep)).cast(pa.string())

        f_pkey, f_doc = split(pkeys, "\x1f"), split(docs, "\n")
        if len(f_pkey) != n or len(f_doc) != n:
            return None
        f_id = split(ids, ",").cast(pa.int64()).to_numpy()
        f_lid = split(lids, ",").cast(pa.int64()).to_numpy()
        return f_id, f_lid, f_pkey, f_doc

    def _memberships(self, s, keys: pa.Array, where: str, params: tuple) -> list[dict]:
        st = self.store
        if self.pdg:
            rows = st._rows(s, f"SELECT xid, segment_id, status, qual_ms, version FROM aep_segment_members WHERE sandbox_id = ? AND {where.format(c='xid')}", (self.sandbox_id, *params))
        else:
            rows = []
            kl = keys.to_pylist()
            for i in range(0, len(kl), 500):
                chunk = kl[i : i + 500]
                rows += st._rows(s, f"SELECT xid, segment_id, status, qual_ms, version FROM aep_segment_members WHERE sandbox_id = ? AND xid IN ({', '.join('?' * len(chunk))})", (self.sandbox_id, *chunk))
        return self._membership_dicts(keys, rows)

    @staticmethod
    def _membership_dicts(keys: pa.Array, rows: list[tuple]) -> list[dict]:
        out: list[dict] = [dict() for _ in range(len(keys))]
        if rows:
            pos = pc.index_in(pa.array([r[0] for r in rows], pa.string()), keys).to_numpy(zero_copy_only=False)
            for p, r in zip(pos, rows):
                if p == p:
                    out[int(p)][r[1]] = (r[2], int(r[3]), int(r[4]))
        return out

    # -- events ------------------------------------------------------------------------------------
    def read_events(self, page: ScanPage, *, from_ingest_ms: int | None = None, to_ingest_ms: int | None = None) -> list[list[dict]]:
        """The de-duplicated ExperienceEvents of each profile (documents), in time order; the
        ingestion-time filters apply after de-duplication (a later copy of an event stays hidden)."""
        groups = page.groups.per_profile(len(page))
        flat = [g for gs in groups for g in gs]
        if not flat:
            return [[] for _ in groups]
        read = self.store._read_groups(flat, [True] * len(flat))
        out: list[list[dict]] = []
        k = 0
        for gs in groups:
            first: dict[tuple[str, str], Any] = {}
            rows = []
            for _ in gs:
                for r in read[k]:
                    key = (r.dataset_id, r.event_id)
                    if key not in first or r.seq < first[key].seq:
                        first[key] = r
                k += 1
            for r in first.values():
                if from_ingest_ms is not None and not r.ingest_ms > from_ingest_ms:
                    continue
                if to_ingest_ms is not None and not r.ingest_ms < to_ingest_ms:
                    continue
                rows.append(r)
            rows.sort(key=lambda r: (r.ts_ms, r.seq))
            out.append([json.loads(r.doc) for r in rows])
        return out


    def event_lists(self, page: ScanPage, *, from_ingest_ms: int | None = None, to_ingest_ms: int | None = None, fields: list[tuple[str, ...]] | None = None, project=None) -> pa.Array | None:
        """Each profile's de-duplicated events as one list<struct> column, column-wise: every lake
        part is read once for all the page's profiles (only the row groups that hold them), the rows
        are taken, de-duplicated by (dataset, _id) keeping the first ingested copy, filtered by
        ingestion time, sorted by (profile, time, ingestion order) and cut into lists. None when the
        page holds events this path cannot take (inline events of migrated data, rows stored as JSON
        text): the caller then uses `read_events`."""
        from userlens.profiles.columnar import Unsupported, _timestamps
        from userlens.profiles.store import part_key

        eg = page.groups
        n = len(page)
        if eg is None or not len(eg.prof):
            return None
        if (eg.part < 0).any():
            return None
        ds_code: dict[str, int] = {}
        load_ds = {lid: ds_code.setdefault(ld.dataset_id, len(ds_code)) for lid, ld in eg.loads.items()}
        g_ds = np.fromiter((load_ds[int(x)] for x in eg.load), np.int64, len(eg.load))
        g_ing = np.fromiter((eg.loads[int(x)].ingest_ms for x in eg.load), np.int64, len(eg.load))
        tables = []
        pairs = np.stack([eg.load, eg.part], 1)
        for lid, part in np.unique(pairs, axis=0):
            sel = np.flatnonzero((eg.load == lid) & (eg.part == part))
            key = part_key(eg.loads[int(lid)].lake_prefix, int(part))
            md, starts = self.store.lake.meta(key)
            row0, cnt = eg.row0[sel], eg.n[sel]
            rg_a = np.searchsorted(starts, row0, "right") - 1
            rg_b = np.searchsorted(starts, row0 + cnt - 1, "right") - 1
            need = np.zeros(len(starts) - 1, bool)
            need[rg_a] = True
            need[rg_b] = True
            for w in np.flatnonzero(rg_b - rg_a > 1):  # a run over three row groups or more (rare)
                need[rg_a[w] : rg_b[w] + 1] = True
            rgs = np.flatnonzero(need)
            with self.store.lake.objects.open_read(self.store.lake.bucket, key) as f:
                t = pq.ParquetFile(f, metadata=md).read_row_groups(rgs.tolist(), use_threads=False)
            if "xdm_json" in t.column_names:
                return None
            base = np.zeros(len(rgs) + 1, np.int64)
            np.cumsum(starts[rgs + 1] - starts[rgs], out=base[1:])
            pos_of = np.full(len(starts), -1, np.int64)
            pos_of[rgs] = np.arange(len(rgs))
            first = base[pos_of[rg_a]] + row0 - starts[rg_a]
            total = int(cnt.sum())
            run_start = np.zeros(len(cnt), np.int64)
            np.cumsum(cnt[:-1], out=run_start[1:])
            within = np.arange(total) - np.repeat(run_start, cnt)
            t = t.take(pa.array(np.repeat(first, cnt) + within))
            for name, values in (("__p", np.repeat(eg.prof[sel], cnt)), ("__l", np.full(total, lid)), ("__part", np.full(total, part)), ("__row", np.repeat(row0, cnt) + within), ("__ing", np.repeat(g_ing[sel], cnt)), ("__ds", np.repeat(g_ds[sel], cnt))):
                t = t.append_column(name, pa.array(values.astype(np.int64)))
            tables.append(t)
        if not tables:
            return None
        try:
            ev = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
        if "_id" not in ev.column_names:
            return None
        # De-duplication: of the rows with one (dataset, _id), the first ingested (load, part, row).
        ev = ev.take(pc.sort_indices(ev, [("__ds", "ascending"), ("_id", "ascending"), ("__l", "ascending"), ("__part", "ascending"), ("__row", "ascending")]))
        m = ev.num_rows
        first = np.ones(m, bool)
        if m > 1:
            same_id = pc.equal(ev.column("_id").slice(1), ev.column("_id").slice(0, m - 1)).to_numpy(zero_copy_only=False)
            same_ds = pc.equal(ev.column("__ds").slice(1), ev.column("__ds").slice(0, m - 1)).to_numpy(zero_copy_only=False)
            first[1:] = ~(np.asarray(same_id, bool) & np.asarray(same_ds, bool))
        ing = ev.column("__ing").to_numpy()
        if from_ingest_ms is not None:
            first &= ing > from_ingest_ms
        if to_ingest_ms is not None:
            first &= ing < to_ingest_ms
        ev = ev.filter(pa.array(first))
        try:
            ts = _timestamps(ev.column("timestamp").combine_chunks(), ev.num_rows) if "timestamp" in ev.column_names else np.zeros(ev.num_rows)
        except Unsupported:
            return None
        ev = ev.append_column("__ts", pa.array(np.nan_to_num(ts, nan=0.0)))
        ev = ev.take(pc.sort_indices(ev, [("__p", "ascending"), ("__ts", "ascending"), ("__l", "ascending"), ("__part", "ascending"), ("__row", "ascending")]))
        counts = np.bincount(ev.column("__p").to_numpy(), minlength=n)
        body = ev.drop([c for c in ev.column_names if c.startswith("__")])
        if fields and project is not None:
            body = project(body, fields)
        if body.num_columns == 0:
            return None
        offsets = np.zeros(n + 1, np.int32)
        np.cumsum(counts, out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), body.to_struct_array().combine_chunks() if isinstance(body.to_struct_array(), pa.ChunkedArray) else body.to_struct_array())


# -- export over the lake --------------------------------------------------------------------------
@dataclass(frozen=True)
class LakeSlice:
    """Rows [r0, r1) of one record part."""

    key: str
    r0: int
    r1: int
    ingest_ms: int


@dataclass(frozen=True)
class LakeChunk:
    """An executor chunk of a lake export: consecutive slices of record parts; `rows`, the plan's
    files of its rows that the lake can export (slice number, row in the slice, XID, primary
    identity, graph members: the rows whose graph has exactly one live record fragment); `keep`, the
    slices this export takes (the others are older than fromIngestTimestamp, or the policy merges
    their datasets' rows in SQL)."""

    index: int
    slices: tuple[LakeSlice, ...]
    rows: tuple[str, ...]
    keep: tuple[int, ...]
    by_ns: tuple[tuple[str, int], ...] = ()  # profiles per namespace in the kept slices


class LakeExport:
    """An export's profiles read from the data lake instead of SQL rows (export jobs without events,
    segments or memberships; identity graph pdg), in chunks an executor runs (local threads or Ray
    tasks, ``export.export_lake_chunk``).

    Every record part of an ingested batch has a sidecar with each row's primary identity
    (``ingest.pkeys_key``). A graph with exactly one live record fragment (the usual case) is
    exported from its lake row, typed as the batch stored it, its members and primary flags from the
    graph. Graphs with several fragments, or one the policy must look at (a dataset outside a
    dataSetPrecedence order), are left to the SQL path (``rest``: ``ProfileScan`` over their XIDs),
    which merges them. A load that lost fragments since ingestion (a profile deleted with
    ``DELETE /access/entities``) keeps only its rows whose primary identity still has fragments.
    Loads hidden by a delete request are not read.

    Which rows go which way is the sandbox's *lake plan* (``profiles/lakeplan.py``), the same for
    every export request: the job (``open``) reads, in one read snapshot, the sandbox's visible
    loads and the graph's version; if the installed plan is current it is used as it is (no graph
    read). Otherwise the job builds one (``_build``): it reads the identity graph (ikey -> XID),
    and a DuckDB of the job (memory-capped, spilling to a temporary folder) joins the sidecars only
    (one string column, not the records) to the graph, cuts the parts into chunks of CHUNK_ROWS
    rows and writes each chunk's rows (row -> XID, members) to the object store, then installs the
    plan. A chunk reads its part rows and its plan rows, takes the exported rows by position and
    needs no database. So the job's memory is the DuckDB cap, a chunk's is its rows, and the chunks
    run in parallel. ``open`` returns None when the lake cannot serve the export (a part without
    sidecar, rows kept as JSON text, types that do not unify): the caller then scans SQL as before."""

    BATCH_ROWS = 50_000  # rows per page a chunk hands to the export (bounds a chunk's memory)
    CHUNK_ROWS = 50_000  # rows of record parts per chunk (20 chunks for a million profiles)
    MEMORY = "256MB"  # the job's DuckDB cap (identity keys only; it spills to a temporary folder beyond)
    GRAPH_PAGE = 200_000

    def __init__(self, store: ProfileStore, objects, bucket: str, sandbox_id: str, policy: Policy, *, columns: list[str] | None, from_ingest_ms: int | None):
        self.store, self.objects, self.bucket, self.sandbox_id, self.policy = store, objects, bucket, sandbox_id, policy
        self.columns, self.from_ingest_ms = columns, from_ingest_ms
        self.con = None
        self._tmp = None
        self.attr_cols: list[str] = []
        self.attr_schema = pa.schema([])
        self._rest: pa.Array | None = None
        self._chunks: list[LakeChunk] = []
        self.plan: str | None = None  # the plan's folder
        self.built = False  # this export built the plan (it found none current)
        self._private = False  # built, not installed (the graph changed meanwhile): removed by close()

    @classmethod
    def open(cls, store: ProfileStore, objects, bucket: str, sandbox_id: str, policy: Policy, *, columns: list[str] | None, from_ingest_ms: int | None, folder: str, check=None) -> "LakeExport | None":
        """`folder`: where this export attempt writes a plan if it must build one."""
        if policy.identity_graph != "pdg":
            return None
        try:
            import duckdb  # noqa: F401
        except ImportError:  # pragma: no cover - a runtime dependency
            return None
        lx = cls(store, objects, bucket, sandbox_id, policy, columns=columns, from_ingest_ms=from_ingest_ms)
        try:
            if lx._prepare(folder, check or (lambda: None)):
                return lx
        except BaseException:
            lx.close()
            raise
        lx.close()
        return None

    def _path(self, key: str) -> str:
        return lake_path(self.objects, self.bucket, key)

    def _prepare(self, folder: str, check) -> bool:
        from userlens.profiles import lakeplan
        from userlens.profiles.store import _one_snapshot

        db = self.store.db
        with db.session() as s:
            _one_snapshot(s, db)
            found = self._loads(s)
            if found is None:
                return False
            loads, fp = found
            version, current = lakeplan.state(s, self.sandbox_id)
            manifest = None
            if current is not None and int(current["version"]) == version and current["loads"] == fp:
                try:
                    manifest, schema = lakeplan.read_manifest(self.objects, self.bucket, current["prefix"])
                    self.plan = current["prefix"]
                except (OSError, ObjectStoreError):  # removed behind the database's back (fsck --repair): build anew
                    manifest = None
            if manifest is None:
                live = self._live(s, loads)
                if live is None:
                    return False
                built = self._build(s, loads, live, folder, check)
                if built is None:
                    return False
                manifest, schema = built
                self.plan, self.built = folder, True
        if self.built:
            self._private = True  # until installed (an install that raises leaves it to close())
            self._private = not lakeplan.install(db, self.objects, self.bucket, self.sandbox_id, {"prefix": folder, "version": version, "loads": fp})
        self._use(manifest, schema)
        return True

    def _loads(self, s) -> tuple[list, str] | None:
        """The sandbox's visible record loads of Profile-enabled datasets (load id, dataset, ingest
        ms, [(part key, sidecar key, records)]) and the fingerprint of every visible load; None when
        the lake cannot serve exports."""
        from userlens.profiles import lakeplan

        rows = self.store._rows(
            s,
            "SELECT l.id, l.dataset_id, l.ingest_ms, l.behaviour, l.lake_prefix, d.profile_enabled, b.lake_files FROM aep_store_loads l JOIN aep_datasets d ON d.id = l.dataset_id JOIN aep_batches b ON b.id = l.batch_id WHERE l.sandbox_id = ? AND l.visible ORDER BY l.id",
            (self.sandbox_id,),
        )
        loads = []
        for lid, ds, ing, behaviour, prefix, enabled, files in rows:
            if not enabled or behaviour != "record":
                continue
            files = json.loads(files) if isinstance(files, str) else (files or [])
            parts = [(f["key"], f.get("pkeys"), int(f["records"])) for f in files if prefix and f["key"].startswith(prefix + "/")]
            if any(pk is None for _, pk, _ in parts):
                return None  # ingested before parts had sidecars
            loads.append((int(lid), ds, int(ing), parts))
        fp = lakeplan.fingerprint([[int(r[0]), r[1], int(r[2]), r[3], bool(r[5])] for r in rows])
        return loads, fp

    def _live(self, s, loads: list) -> dict[int, int] | None:
        """The live fragment count of each load (a build's input: loads that lost fragments since
        ingestion); None when the lake cannot serve exports. Not part of the fingerprint: fragments
        of visible loads change only in transactions that count a new graph version (entity
        deletes re-graph), so a current plan needs no count (a COUNT over every fragment, 60 ms
        per million)."""
        live: dict[int, int] = {}
        for chunk in [loads[i : i + 500] for i in range(0, len(loads), 500)]:
            ids = [x[0] for x in chunk]
            live.update((int(a), int(b)) for a, b in self.store._rows(s, f"SELECT load_id, COUNT(*) FROM aep_fragments WHERE load_id IN ({', '.join('?' * len(ids))}) GROUP BY load_id", tuple(ids)))
        if any(live.get(lid, 0) > sum(n for _, _, n in parts) for lid, _, _, parts in loads):
            return None  # fragments the lake parts do not hold (e.g. migrated from the a001 layout)
        return live

    def _build(self, s, loads: list, live: dict[int, int], folder: str, check) -> tuple[dict, pa.Schema] | None:
        """Builds the sandbox's lake plan into `folder` (see the class); None when the lake cannot
        serve exports (types that do not unify, rows kept as JSON text)."""
        import tempfile

        import duckdb

        from userlens.profiles import lakeplan

        # pt: the record parts (key, sidecar, rows, load, ingestion time, dataset), numbered.
        pt = [(key, pk, n, lid, ing, ds) for lid, ds, ing, parts in loads for key, pk, n in parts if n]
        self._tmp = tempfile.mkdtemp(prefix="ul-export-")
        self.con = con = duckdb.connect(config={"memory_limit": self.MEMORY, "temp_directory": self._tmp, "threads": 2, "preserve_insertion_order": False})
        if not isinstance(self.objects, LocalObjectStore):
            con.register_filesystem(self.objects.fs)
        schema = pa.schema([])
        if pt:
            try:  # the parts' columns, of the types DuckDB unifies them to (read as one table)
                schema = con.sql(f"SELECT * FROM read_parquet({_sql_list([self._path(p[0]) for p in pt])}, union_by_name = true) LIMIT 0").to_arrow_table().schema
            except duckdb.Error:  # types that do not unify across parts
                return None
            if "xdm_json" in schema.names:
                return None  # rows kept as JSON text (fields that change type): the SQL path parses them
        manifest: dict[str, Any] = {"parts": [list(p) for p in pt], "chunks": [], "rest": None}
        if not pt:  # no record part: nothing for the lake (nor for SQL: profiles need a record)
            lakeplan.write_manifest(self.objects, self.bucket, folder, manifest, schema)
            return manifest, schema
        # The graph: ids (graph number, identity) and xids (graph number, XID), from the xid
        # index's order (numbers, not XIDs, in the joins: a smaller working set for DuckDB).
        con.execute("CREATE TABLE ids (gix BIGINT, ikey VARCHAR)")
        con.execute("CREATE TABLE xids (gix BIGINT, xid VARCHAR)")
        gix = 0
        for xid, ikey in self._graph_pages(s):
            check()
            n = len(xid)
            start = np.ones(n, bool)
            start[1:] = pc.not_equal(xid.slice(1), xid.slice(0, n - 1)).to_numpy(zero_copy_only=False)
            starts = np.flatnonzero(start)
            _insert(con, "ids", pa.table({"gix": pa.array(np.cumsum(start) - 1 + gix), "ikey": ikey}))
            _insert(con, "xids", pa.table({"gix": pa.array(np.arange(gix, gix + len(starts))), "xid": xid.take(pa.array(starts))}))
            gix += len(starts)
        # Loads that lost fragments after ingestion (a deleted profile): their live primary identities.
        con.execute("CREATE TABLE live (load BIGINT, pkey VARCHAR)")
        partial = {lid for lid, _, _, parts in loads if live.get(lid, 0) != sum(n for _, _, n in parts)}
        for lid in sorted(partial):
            for batch in self.store._batches(s, "SELECT DISTINCT pkey FROM aep_fragments WHERE load_id = ?", (lid,), size=100_000):
                _insert(con, "live", pa.table({"load": pa.array([lid] * len(batch), pa.int64()), "pkey": pa.array([r[0] for r in batch], pa.string())}))
        _insert(con, "pt", pa.table({"pix": pa.array(range(len(pt)), pa.int64()), "path": pa.array([self._path(p[1]) for p in pt], pa.string()), "load": pa.array([p[3] for p in pt], pa.int64())}), create=True)
        # fx: the live rows of the parts (from the sidecars: part, row, primary identity) with their
        # graph; g: live fragments per graph.
        live_join = f"AND (t.load NOT IN ({', '.join(str(x) for x in sorted(partial))}) OR EXISTS (SELECT 1 FROM live v WHERE v.load = t.load AND v.pkey = f.pkey))" if partial else ""
        sidecars = f"read_parquet({_sql_list([self._path(p[1]) for p in pt])}, filename = true, file_row_number = true)"
        con.execute(f"CREATE TABLE fx AS SELECT t.pix, f.file_row_number AS row, f.pkey, i.gix FROM {sidecars} f JOIN pt t ON t.path = f.filename JOIN ids i ON i.ikey = f.pkey WHERE true {live_join}")
        check()
        con.execute("CREATE TABLE g AS SELECT gix, COUNT(*) AS n FROM fx GROUP BY gix")
        out_dir = f"{self._tmp}/plan"
        os.makedirs(out_dir)
        # rest: the graphs SQL merges (several live fragments), within the guardrail (as the SQL scan).
        con.execute(
            f"COPY (SELECT x.xid FROM (SELECT r.gix FROM (SELECT gix FROM g WHERE n > 1) r JOIN ids i ON i.gix = r.gix GROUP BY r.gix HAVING COUNT(*) <= {MAX_GRAPH_IDENTITIES}) k"
            f" JOIN xids x ON x.gix = k.gix ORDER BY x.xid) TO {_sql_str(out_dir + '/rest.parquet')} (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)"
        )
        manifest["rest"] = f"{folder}/rest.parquet"
        self._upload(f"{out_dir}/rest.parquet", manifest["rest"])
        # Consecutive row ranges of the parts, CHUNK_ROWS rows a chunk (a part may span chunks).
        plan: list[list[tuple[int, int, int]]] = [[]]
        room = self.CHUNK_ROWS
        for i, (_, _, n, _, _, _) in enumerate(pt):
            r0 = 0
            while r0 < n:
                if room == 0:
                    plan.append([])
                    room = self.CHUNK_ROWS
                r1 = min(n, r0 + room)
                plan[-1].append((i, r0, r1))
                room -= r1 - r0
                r0 = r1
        # cr: per slice, its chunk, its number within the chunk and its part's first row; pb: each
        # part's first row in the parts laid end to end (a row's chunk is that // CHUNK_ROWS).
        ranges = [(c, j, pix, r0) for c, sls in enumerate(plan) for j, (pix, r0, _) in enumerate(sls)]
        _insert(con, "cr", pa.table({n: pa.array([r[j] for r in ranges], pa.int64()) for j, n in enumerate(("chunk", "sl", "pix", "r0"))}), create=True)
        _insert(con, "pb", pa.table({"pix": pa.array(range(len(pt)), pa.int64()), "base": pa.array(np.cumsum([0] + [p[2] for p in pt])[:-1], pa.int64())}), create=True)
        # Every chunk's rows of single-fragment graphs (slice, row, graph, XID, primary identity),
        # then the identities of their graphs, written to a local folder per chunk (DuckDB, in
        # parallel); `_plan_chunk` turns each chunk's into its plan file.
        con.execute(
            "CREATE TABLE sc AS SELECT cr.chunk, cr.sl, fx.row - cr.r0 AS row, fx.gix, fx.pkey FROM fx SEMI JOIN g ON g.gix = fx.gix AND g.n = 1 JOIN pb ON pb.pix = fx.pix"
            f" JOIN cr ON cr.pix = fx.pix AND cr.chunk = (pb.base + fx.row) // {int(self.CHUNK_ROWS)}"
        )
        check()
        con.execute(f"COPY (SELECT sc.*, x.xid FROM sc JOIN xids x ON x.gix = sc.gix) TO {_sql_str(out_dir + '/rows')} (FORMAT parquet, PARTITION_BY (chunk), COMPRESSION zstd, COMPRESSION_LEVEL 1)")
        con.execute(f"COPY (SELECT sc.chunk, i.gix, i.ikey FROM ids i JOIN sc ON sc.gix = i.gix) TO {_sql_str(out_dir + '/ids')} (FORMAT parquet, PARTITION_BY (chunk), COMPRESSION zstd, COMPRESSION_LEVEL 1)")
        self._close_db(keep_files=True)
        from concurrent.futures import ThreadPoolExecutor

        def one(c: int) -> dict:
            check()
            local = [f"{out_dir}/{what}/chunk={c}" for what in ("rows", "ids")]
            entry: dict[str, Any] = {"slices": [list(x) for x in plan[c]], "rows": [], "by_ns": [{} for _ in plan[c]]}
            if not os.path.isdir(local[0]):
                return entry  # no row of this chunk is exported
            table, entry["by_ns"] = _plan_chunk(*[[f"{d}/{name}" for name in sorted(os.listdir(d))] for d in local], len(plan[c]))
            path = f"{out_dir}/plan-{c:05d}.parquet"
            pq.write_table(table, path, compression="zstd", compression_level=1)
            entry["rows"] = [f"{folder}/rows-{c:05d}.parquet"]
            self._upload(path, entry["rows"][0])
            return entry

        with ThreadPoolExecutor(2, thread_name_prefix="lake-plan") as pool:  # Arrow releases the GIL
            manifest["chunks"] = list(pool.map(one, range(len(plan))))
        lakeplan.write_manifest(self.objects, self.bucket, folder, manifest, schema)
        self._close_db()
        return manifest, schema

    def _upload(self, path: str, key: str) -> None:
        with open(path, "rb") as src, self.objects.open_write(self.bucket, key) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def _use(self, manifest: dict, schema: pa.Schema) -> None:
        """This export's share of the plan: the chunks and slices it takes (the policy's datasets,
        fromIngestTimestamp), the XIDs SQL merges, the attribute columns."""
        skip = {"identityMap", "_id", "identities", "segmentMembership"}
        self.attr_cols = [c for c in schema.names if not c.startswith("__") and c not in skip and (self.columns is None or c in self.columns)]
        self.attr_schema = pa.schema([schema.field(c) for c in self.attr_cols])
        parts = manifest["parts"]
        direct_ds = None if self.policy.attribute_merge != "dataSetPrecedence" else set(self.policy.order)
        direct = [direct_ds is None or p[5] in direct_ds for p in parts]
        after = self.from_ingest_ms
        rest = [self._read(manifest["rest"]).column("xid")] if manifest.get("rest") else []
        for c in manifest["chunks"]:
            slices = tuple(LakeSlice(parts[pix][0], r0, r1, int(parts[pix][4])) for pix, r0, r1 in c["slices"])
            if not c["rows"]:
                continue
            keep = tuple(j for j, (pix, _, _) in enumerate(c["slices"]) if direct[pix] and (after is None or int(parts[pix][4]) > after))
            indirect = [j for j, (pix, _, _) in enumerate(c["slices"]) if not direct[pix]]
            if indirect:  # single-fragment graphs the policy must look at: SQL merges them
                t = pa.concat_tables([self._read(k, ["sl", "xid"]) for k in c["rows"]])
                rest.append(t.filter(pc.is_in(t.column("sl"), pa.array(indirect, pa.int32()))).column("xid"))
            if keep:
                by_ns: dict[str, int] = {}
                for j in keep:
                    for code, n in c["by_ns"][j].items():
                        by_ns[code] = by_ns.get(code, 0) + n
                self._chunks.append(LakeChunk(len(self._chunks), slices, tuple(c["rows"]), keep, tuple(sorted(by_ns.items()))))
        xids = pa.chunked_array([x for col in rest for x in col.chunks], pa.string()).combine_chunks() if rest else pa.array([], pa.string())
        if len(rest) > 1:
            xids = pc.unique(xids)
            xids = xids.take(pc.sort_indices(xids))
        self._rest = xids

    def _read(self, key: str, columns: list[str] | None = None) -> pa.Table:
        with self.objects.open_read(self.bucket, key) as f:
            return pq.read_table(f, columns=columns)

    def _graph_pages(self, s) -> Iterator[tuple[pa.Array, pa.Array]]:
        """(xid, ikey) of the sandbox's identities in (xid, ikey) order, in pages that never split a
        graph (keyset pagination on the covering xid index). Each page comes as two concatenated
        strings (group_concat / string_agg), split in Arrow: one Python object per page instead of
        one per identity (5x faster at 1.5M identities); rows when a value holds the separator."""
        pg = s.bind.dialect.name == "postgresql"
        agg = "string_agg({c}, chr(31))" if pg else "group_concat({c}, char(31))"
        after = None
        while True:
            cond = " AND xid > ?" if after is not None else ""
            args = (self.sandbox_id, *((after,) if after is not None else ()), self.GRAPH_PAGE)
            inner = f"SELECT xid, ikey FROM aep_identities WHERE sandbox_id = ?{cond} ORDER BY xid, ikey LIMIT ?"
            n, last, xs, ks = self.store._rows(s, f"SELECT COUNT(*), MAX(xid), {agg.format(c='xid')}, {agg.format(c='ikey')} FROM ({inner}) p", args)[0]
            if not n:
                return
            xid, ikey = (pc.list_flatten(pc.split_pattern(pa.array([v], pa.large_string()), "\x1f")).cast(pa.string()) for v in (xs, ks))
            if len(xid) != n or len(ikey) != n:
                rows = self.store._rows(s, inner, args)
                xid, ikey = pa.array([r[0] for r in rows], pa.string()), pa.array([r[1] for r in rows], pa.string())
            full = n == self.GRAPH_PAGE
            if full:  # the last graph may go on: read it again with the next page
                cut = int(pc.sum(pc.not_equal(xid, pa.scalar(last, pa.string()))).as_py() or 0)
                if cut == 0:  # one graph fills the page: past the guardrail, skip it
                    after = last
                    continue
                xid, ikey = xid.slice(0, cut), ikey.slice(0, cut)
                last = xid[cut - 1].as_py()
            yield xid, ikey
            if not full:
                return
            after = last

    def chunks(self) -> list[LakeChunk]:
        """The chunks the executor runs (those with a row this export takes)."""
        return self._chunks

    def rest(self, per_page: int = 50_000) -> Iterator[list[str]]:
        """The XIDs left to the SQL path, in pages."""
        xids = self._rest if self._rest is not None else pa.array([], pa.string())
        for i in range(0, len(xids), per_page):
            yield xids.slice(i, per_page).to_pylist()

    def _close_db(self, keep_files: bool = False) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None
        if self._tmp and not keep_files:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def close(self) -> None:
        """Gives back the job's DuckDB; a plan this export built and could not install is removed."""
        self._close_db()
        if self._private and self.plan:
            self.objects.delete_prefix(self.bucket, self.plan)
            self._private = False


def lake_path(objects, bucket: str, key: str) -> str:
    """A lake object's path as DuckDB reads it (an S3 store's filesystem is registered as s3://)."""
    return objects.path(bucket, key) if isinstance(objects, LocalObjectStore) else f"s3://{objects.path(bucket, key)}"


def _plan_chunk(rows_files: list[str], ids_files: list[str], slices: int) -> tuple[pa.Table, list[dict[str, int]]]:
    """One chunk's plan file, from what the build's DuckDB wrote for it (its rows: slice, row, graph,
    XID, primary identity; the identities of their graphs): its rows in (slice, row) order with
    their XID and their profile's `identities` and `identityMap` columns, and the profiles per
    namespace of each slice (the export's counters). Graphs over the guardrail are left out."""
    ids = pa.concat_tables([pq.read_table(f) for f in ids_files]).sort_by([("gix", "ascending"), ("ikey", "ascending")])
    gix = ids.column("gix").to_numpy()
    m = len(gix)
    start = np.ones(m, bool)
    start[1:] = gix[1:] != gix[:-1]
    starts = np.flatnonzero(start)
    offsets = np.append(starts, m).astype(np.int32)
    groups = pa.ListArray.from_arrays(pa.array(offsets), ids.column("ikey").combine_chunks())
    uniq = gix[starts]
    graph = pa.concat_tables([pq.read_table(f) for f in rows_files])
    gi = np.searchsorted(uniq, graph.column("gix").to_numpy())
    keep = np.diff(offsets)[gi] <= MAX_GRAPH_IDENTITIES
    order = np.flatnonzero(keep)[np.lexsort((graph.column("row").to_numpy()[keep], graph.column("sl").to_numpy()[keep]))]
    graph = graph.take(pa.array(order, pa.int64()))
    taken = groups.take(pa.array(gi[order], pa.int64()))
    lens = np.diff(taken.offsets.to_numpy())
    offs = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    flat = pc.list_flatten(taken)
    members = pa.ListArray.from_arrays(offs, flat)
    pkeys = graph.column("pkey").combine_chunks().take(pa.array(np.repeat(np.arange(len(graph)), lens), pa.int64()))
    primary = pa.ListArray.from_arrays(offs, pc.equal(flat, pkeys))
    n = len(graph)
    xid = graph.column("xid").combine_chunks().cast(pa.string())
    identities, identity_map = identity_columns(ScanPage(xid, None, members, primary, np.ones(n, bool), np.zeros(n, np.int64)))
    sl = graph.column("sl").to_numpy().astype(np.int32)
    table = pa.table({"sl": sl, "row": graph.column("row").to_numpy().astype(np.int32), "xid": xid, "identities": identities, "identityMap": identity_map})
    return table, namespace_counts(members, sl, slices)


def lake_chunk_pages(objects, bucket: str, chunk: LakeChunk, schema: pa.Schema, batch_rows: int = LakeExport.BATCH_ROWS, ids: bool = True) -> Iterator[ScanPage]:
    """The profiles of one lake export chunk (an executor chunk: no database): the part rows of the
    slices it keeps that its plan file names, taken by position, with their XID and (with `ids`)
    their identities and identityMap, in pages of at most `batch_rows`. Columns are those of
    `schema` (the parts read as one table: a column a part lacks is null)."""
    tables = []
    for key in chunk.rows:
        with objects.open_read(bucket, key) as f:
            tables.append(pq.read_table(f, columns=["sl", "row", "xid", *(["identities", "identityMap"] if ids else [])]))
    plan = pa.concat_tables(tables)  # in (slice, row) order
    sl_col = plan.column("sl").to_numpy()
    if len(chunk.keep) < len(chunk.slices):
        mask = np.isin(sl_col, np.asarray(chunk.keep, np.int32))
        plan, sl_col = plan.filter(pa.array(mask)), sl_col[mask]
    plan = plan.combine_chunks()
    rows = plan.column("row").to_numpy()
    bounds = np.searchsorted(sl_col, np.arange(len(chunk.slices) + 1))
    for j, sl in enumerate(chunk.slices):
        a, b = int(bounds[j]), int(bounds[j + 1])
        if a == b:
            continue
        with objects.open_read(bucket, sl.key) as f:
            pf = pq.ParquetFile(f)
            names = set(pf.schema_arrow.names)
            cols = [c for c in schema.names if c in names]
            part = pf.read(columns=cols).slice(sl.r0, sl.r1 - sl.r0) if cols else None  # ingestion writes a part as one row group
        for i in range(a, b, batch_rows):
            k = min(b, i + batch_rows)
            n = k - i
            attrs = _conform(part.take(pa.array(rows[i:k], pa.int64())) if part is not None else _no_columns(n), schema)
            g = plan.slice(i, n)
            idc = (g.column("identities").chunk(0).cast(pa.list_(IDENTITY_ITEM)), g.column("identityMap").chunk(0).cast(IDENTITY_MAP)) if ids else None
            yield ScanPage(g.column("xid").chunk(0), None, None, None, np.ones(n, bool), np.full(n, sl.ingest_ms, np.int64), table=attrs, ids=idc)
        del part


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """`t` with the columns of `schema`, in its order and types where Arrow can cast (as DuckDB
    reads parts of different schemas as one table): a column `t` lacks is null."""
    cols = []
    for f in schema:
        if f.name not in t.column_names:
            cols.append(pa.nulls(t.num_rows, f.type))
            continue
        c = t.column(f.name)
        if not c.type.equals(f.type):
            try:
                c = c.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                pass
        cols.append(c)
    return pa.Table.from_arrays(cols, names=schema.names) if cols else _no_columns(t.num_rows)


def _no_columns(n: int) -> pa.Table:
    """A table of n rows and no column (Arrow keeps the row count of a table whose columns were dropped)."""
    return pa.table({"__n": pa.nulls(n)}).drop(["__n"])


def _insert(con, table: str, rows: pa.Table, create: bool = False) -> None:
    con.register("__rows", rows)
    try:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM __rows" if create else f"INSERT INTO {table} SELECT * FROM __rows")
    finally:
        con.unregister("__rows")


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join(_sql_str(x) for x in items) + "]"


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- column-wise helpers for consumers -------------------------------------------------------------
def _lines(arr: pa.Array) -> bytes:
    """The strings of `arr` as newline-delimited text, built in Arrow (no Python string per row)."""
    joined = pc.binary_join_element_wise(arr, pa.scalar("\n", pa.string()), "")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    offs = np.frombuffer(joined.buffers()[1], np.int32, len(joined) + 1, joined.offset * 4)
    return joined.buffers()[2].to_pybytes()[offs[0] : offs[-1]] if len(joined) else b""


def json_table(arr: pa.Array) -> pa.Table:
    """Parses a column of JSON objects (one per row, in order) into an Arrow table column-wise.
    Fields whose values change type from row to row cannot be one Arrow column: they are kept as
    JSON text instead (row by row, only for such pages)."""
    n = len(arr)
    if not n:
        return pa.table({})
    try:
        t = pajson.read_json(io.BytesIO(_lines(arr)), read_options=pajson.ReadOptions(block_size=1 << 26, use_threads=True))
        if t.num_rows == n:
            return t
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    docs = [json.loads(x) for x in arr.to_pylist()]
    names: dict[str, None] = {}
    for d in docs:
        names.update(dict.fromkeys(d))
    cols = {}
    for name in names:
        values = [d.get(name) for d in docs]
        try:
            cols[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            cols[name] = pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string())
    return pa.table(cols) if cols else pa.table({"_": pa.nulls(n)}).drop(["_"])


def attributes_table(page: ScanPage) -> pa.Table:
    """The page's merged attributes as an Arrow table (identityMap and _id of stored documents dropped:
    a profile's identities come from its graph)."""
    if page.table is not None:
        return page.table
    t = json_table(page.attrs)
    drop = [c for c in ("identityMap", "_id") if c in t.column_names]
    if t.num_columns == 0 or t.num_rows != len(page):
        t = pa.table({"__n": pa.nulls(len(page))})
        drop = ["__n"]
    return t.drop(drop) if drop else t


def attributes_dicts(page: ScanPage) -> list[dict]:
    out = []
    for x in page.attrs.to_pylist():
        d = json.loads(x)
        d.pop("identityMap", None)
        d.pop("_id", None)
        out.append(d)
    return out


IDENTITY_ITEM = pa.struct([("id", pa.string()), ("namespace", pa.struct([("code", pa.string())])), ("primary", pa.bool_())])
IDENTITY_MAP = pa.map_(pa.string(), pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())])))


def identity_columns(page: ScanPage) -> tuple[pa.Array, pa.Array]:
    """(identities, identityMap) of each profile, column-wise from its members: identities as
    list<{id, namespace{code}, primary}>, identityMap as map<namespace, list<{id, primary}>>."""
    if page.ids is not None:
        return page.ids
    members = page.members
    flat = pc.list_flatten(members)
    prim = pc.list_flatten(page.primary)
    parts = pc.split_pattern(flat, ":", max_splits=1)
    ns, ids = pc.list_element(parts, 0), pc.list_element(parts, 1)
    items = pa.StructArray.from_arrays([ids, pa.StructArray.from_arrays([ns], ["code"]), prim], fields=list(IDENTITY_ITEM))
    identities = pa.ListArray.from_arrays(members.offsets, items)
    # identityMap: one entry per (profile, namespace) — members are grouped by namespace per profile.
    n = len(members)
    row = np.repeat(np.arange(n), np.diff(members.offsets.to_numpy()))
    if len(flat):
        t = pa.table({"row": row, "ns": ns, "i": np.arange(len(flat))})
        t = t.sort_by([("row", "ascending"), ("ns", "ascending"), ("i", "ascending")])
        order = t.column("i").to_numpy()
        r_sorted = t.column("row").to_numpy()
        ns_sorted = t.column("ns").combine_chunks()
        new_ent = np.ones(len(order), bool)
        new_ent[1:] = (r_sorted[1:] != r_sorted[:-1]) | pc.not_equal(ns_sorted.slice(1), ns_sorted.slice(0, len(order) - 1)).to_numpy(zero_copy_only=False)
        ent_start = np.flatnonzero(new_ent)
        ent_row = r_sorted[ent_start]
        vals = pa.StructArray.from_arrays([ids.take(pa.array(order)), prim.take(pa.array(order))], ["id", "primary"])
        ent_lists = pa.ListArray.from_arrays(pa.array(np.append(ent_start, len(order)).astype(np.int32)), vals)
        map_offs = np.searchsorted(ent_row, np.arange(n + 1)).astype(np.int32)
        identity_map = pa.MapArray.from_arrays(pa.array(map_offs), ns_sorted.take(pa.array(ent_start)), ent_lists, type=IDENTITY_MAP)
    else:
        identity_map = pa.array([[]] * n, IDENTITY_MAP)
    return identities, identity_map


def namespace_counts(members: pa.Array, group: np.ndarray, groups: int) -> list[dict[str, int]]:
    """Per group of profiles (`group`: each profile's group number), how many profiles have an
    identity of each namespace (a profile counts once per namespace)."""
    out: list[dict[str, int]] = [{} for _ in range(groups)]
    flat = pc.list_flatten(members)
    if not len(flat):
        return out
    n = len(members)
    row = np.repeat(np.arange(n, dtype=np.int64), np.diff(members.offsets.to_numpy()))
    ns = pc.list_element(pc.split_pattern(flat, ":", max_splits=1), 0).dictionary_encode()
    k = len(ns.dictionary)
    pair = row * k + ns.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    if n * k <= 1 << 24:  # each (profile, namespace) once: a presence table (no sort)
        seen = np.zeros(n * k, bool)
        seen[pair] = True
        pair = np.flatnonzero(seen)
    else:
        pair = np.unique(pair)
    counts = np.bincount(np.asarray(group, np.int64)[pair // k] * k + pair % k, minlength=groups * k).reshape(groups, k)
    codes = ns.dictionary.to_pylist()
    for g in range(groups):
        out[g] = {code: int(c) for code, c in zip(codes, counts[g].tolist()) if c}
    return out
