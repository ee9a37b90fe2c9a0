"""Column-wise (vectorised) row rules for Arrow record batches: the fast path of Parquet ingestion.

`check_batch` applies the rules of ``xdm.check_row`` to a whole record batch with pyarrow compute
and numpy instead of one Python dict per row. Its outputs stay Arrow arrays (primary identities,
identities JSON, event ids, times, graph input); the caller turns into Python objects only what
goes to SQL (record fragments). Documents are rendered as JSON text column-wise (`json_column`) only
when asked for (records); for events, whose bodies stay in the lake, the size guardrail measures
the same JSON length without writing it (`json_length`). Strings are escaped or measured string by
string only when their buffer holds a byte that JSON escapes (`_plain`). It handles the usual shapes
(``identityMap`` as a MAP of namespace to a list of ``{id, primary}`` structs; ``_id`` string or
integer; ``timestamp`` string, integer epoch ms or an Arrow timestamp; columns of strings, numbers,
booleans, structs, lists and maps). Anything else raises `Unsupported` and the caller falls back to
the row-by-row rules, which stay the reference semantics. Differences from the row path, on purpose
and harmless:
* the stored document writes a Parquet MAP as a JSON object (``{"ns": [...]}``, the XDM form), not
  as a list of pairs; floats are written by Arrow (``100`` for ``100.0``);
* the size guardrail measures that JSON text (bytes), as the row path measures its own JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from userlens.profiles.xdm import (
    ERR_BAD_IDENTITY,
    ERR_EVENT_SIZE,
    ERR_NO_ID,
    ERR_NO_PRIMARY,
    ERR_NO_TS,
    ERR_RECORD_SIZE,
    ERR_TOO_MANY_IDS,
    FUTURE_SKEW_MS,
    MAX_EVENT_BYTES,
    MAX_IDENTITIES_PER_ROW,
    MAX_IDENTITY_LEN,
    MAX_RECORD_BYTES,
    REJECTED_VALUES,
    parse_timestamp_ms,
)


class Unsupported(Exception):
    """The batch has a shape the column-wise rules do not cover: use the row path."""


_CONTROL = [chr(c) for c in range(32)]
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _lit(s: str, n: int) -> pa.Array:
    return pa.array([s] * n, pa.string()) if n else pa.array([], pa.string())


_Q = pa.scalar('"', pa.string())


def _plain(arr: pa.Array) -> bool:
    """True if no string of `arr` holds a byte that JSON escapes (control characters, '"', '\\'),
    read from the data buffer at once: the usual case, which then skips the per-string escaping
    and counting."""
    if isinstance(arr, pa.ChunkedArray):
        return all(_plain(c) for c in arr.chunks)
    if not len(arr) or not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return not len(arr)
    data = arr.buffers()[2]
    if data is None:
        return True
    offs = np.frombuffer(arr.buffers()[1], np.int64 if pa.types.is_large_string(arr.type) else np.int32)
    lo, hi = int(offs[arr.offset]), int(offs[arr.offset + len(arr)])
    d = np.frombuffer(data, np.uint8, hi - lo, lo)
    return not len(d) or bool(d.min() >= 32 and not (d == 34).any() and not (d == 92).any())


def _escape(arr: pa.Array) -> pa.Array:
    """JSON string escaping (as json.dumps with ensure_ascii=False) of a string array."""
    if _plain(arr):
        return arr
    arr = pc.replace_substring(arr, "\\", "\\\\")
    arr = pc.replace_substring(arr, '"', '\\"')
    if len(arr) and pc.any(pc.match_substring_regex(arr, "[\\x00-\\x1f]")).as_py():
        for ch in _CONTROL:
            if pc.any(pc.match_substring(arr, ch)).as_py():
                arr = pc.replace_substring(arr, ch, _ESCAPES.get(ch, f"\\u{ord(ch):04x}"))
    return arr


def _quote(arr: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(_Q, _escape(arr.cast(pa.string())), _Q, "")


def _concat(parts: list, n: int) -> pa.Array:
    """Element-wise concatenation of string arrays and literals (nulls must be filled before)."""
    if not parts:
        return _lit("", n)
    arrays = [pa.scalar(p, pa.string()) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*arrays, "")


def _list_parts(arr: pa.Array) -> tuple[np.ndarray, int, int]:
    """(zero-based offsets, first, last) of a list or map array, whatever its slice offset."""
    offs = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    first, last = int(offs[0]), int(offs[-1])
    return offs - first, first, last


def _join_lists(offsets: np.ndarray, values: pa.Array, sep: str, open_: str, close: str, validity: pa.Array | None, n: int) -> pa.Array:
    lists = pa.ListArray.from_arrays(pa.array(offsets, pa.int32() if offsets[-1] < 2**31 else pa.int64()), values)
    joined = pc.binary_join(lists, sep)
    out = _concat([open_, joined, close], n)
    if validity is not None:
        out = pc.if_else(validity, out, "null")
    return out


def json_column(arr: pa.Array) -> pa.Array:
    """Each value of `arr` as JSON text (null -> "null"). Raises Unsupported for other types."""
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks else pa.array([], arr.type)
    t, n = arr.type, len(arr)
    valid = pc.is_valid(arr) if arr.null_count else None
    if pa.types.is_null(t):
        return _lit("null", n)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        out = _quote(arr)
    elif pa.types.is_integer(t):
        out = arr.cast(pa.string())
    elif pa.types.is_boolean(t):
        out = pc.if_else(arr, "true", "false")
    elif pa.types.is_floating(t):
        if n and not pc.all(pc.or_kleene(pc.is_finite(arr), pc.is_null(arr))).as_py():
            raise Unsupported("NaN or infinite floats")
        out = arr.cast(pa.string())
    elif pa.types.is_struct(t):
        parts: list = ["{"]
        for i in range(t.num_fields):
            name = t.field(i).name
            parts.append(("," if i else "") + json.dumps(name, ensure_ascii=False) + ":")
            parts.append(json_column(pc.struct_field(arr, [i])))
        parts.append("}")
        out = _concat(parts, n)
    elif pa.types.is_map(t):
        offs, a, b = _list_parts(arr)
        keys = arr.keys.slice(a, b - a)
        if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
            raise Unsupported("map keys that are not strings")
        items = json_column(arr.items.slice(a, b - a))
        entries = _concat([_quote(keys), ":", items], b - a)
        return _join_lists(offs, entries, ",", "{", "}", valid, n)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        offs, a, b = _list_parts(arr)
        values = json_column(arr.values.slice(a, b - a))
        return _join_lists(offs, values, ",", "[", "]", valid, n)
    else:
        raise Unsupported(f"column type {t}")
    if valid is not None or out.null_count:
        out = pc.if_else(pc.is_valid(arr), out, "null") if valid is not None else pc.fill_null(out, "null")
    return out


def _seg_sum(offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per-list sums of `values` given zero-based list offsets (empty lists sum to 0)."""
    cs = np.zeros(len(values) + 1, np.int64)
    np.cumsum(values, out=cs[1:])
    return cs[offsets[1:]] - cs[offsets[:-1]]


def _string_len(arr: pa.Array) -> np.ndarray:
    """Bytes of each string once quoted and escaped as `_quote` writes it (nulls: any value)."""
    arr = arr.cast(pa.string()) if not pa.types.is_large_string(arr.type) else arr
    n = pc.fill_null(pc.binary_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64) + 2
    if not len(arr) or _plain(arr):
        return n
    for ch in ("\\", '"'):
        n += pc.fill_null(pc.count_substring(arr, ch), 0).to_numpy(zero_copy_only=False)
    if pc.any(pc.match_substring_regex(arr, "[\\x00-\\x1f]")).as_py():
        for ch in _CONTROL:
            extra = len(_ESCAPES.get(ch, f"\\u{ord(ch):04x}")) - 1
            n += extra * pc.fill_null(pc.count_substring(arr, ch), 0).to_numpy(zero_copy_only=False)
    return n


def json_length(arr: pa.Array) -> np.ndarray:
    """Bytes of each value's JSON text as `json_column` writes it, without writing it: what the size
    guardrail needs when the text itself is not kept (events, whose bodies stay in the lake)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks else pa.array([], arr.type)
    t, n = arr.type, len(arr)
    if pa.types.is_null(t):
        return np.full(n, 4, np.int64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        out = _string_len(arr)
    elif pa.types.is_integer(t):
        out = pc.fill_null(pc.binary_length(arr.cast(pa.string())), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_boolean(t):
        out = np.where(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), 4, 5).astype(np.int64)
    elif pa.types.is_floating(t):
        if n and not pc.all(pc.or_kleene(pc.is_finite(arr), pc.is_null(arr))).as_py():
            raise Unsupported("NaN or infinite floats")
        out = pc.fill_null(pc.binary_length(arr.cast(pa.string())), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_struct(t):
        out = np.full(n, 2, np.int64)
        for i in range(t.num_fields):
            out += len(json.dumps(t.field(i).name, ensure_ascii=False).encode()) + 1 + (1 if i else 0)
            out += json_length(pc.struct_field(arr, [i]))
    elif pa.types.is_map(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        offs, a, b = _list_parts(arr)
        if pa.types.is_map(t):
            keys = arr.keys.slice(a, b - a)
            if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
                raise Unsupported("map keys that are not strings")
            items = _string_len(keys) + 1 + json_length(arr.items.slice(a, b - a))
        else:
            items = json_length(arr.values.slice(a, b - a))
        counts = np.diff(offs)
        out = 2 + _seg_sum(offs, items) + np.maximum(counts - 1, 0)
    else:
        raise Unsupported(f"column type {t}")
    if arr.null_count:
        out = np.where(pc.is_valid(arr).to_numpy(zero_copy_only=False), out, 4)
    return out


_EMPTY = pa.array([], pa.string())


@dataclass
class Checked:
    """The outcome of the rules over one record batch (indices are 0-based within the batch). The
    per-row outputs are Arrow arrays over the accepted rows, in row order: the caller decides what
    becomes Python objects (record fragments) and what stays columnar (events)."""

    mask: np.ndarray  # accepted rows
    errors: list[tuple[int, tuple[str, str]]]
    pkeys: pa.Array = field(default_factory=lambda: _EMPTY)  # primary identity "NS:id" per accepted row
    docs: pa.Array | None = None  # the XDM document as JSON text (only when asked for)
    event_ids: pa.Array | None = None
    ts_ms: np.ndarray | None = None  # int64
    keys: pa.Array = field(default_factory=lambda: _EMPTY)  # every distinct identity "NS:id" of the accepted rows
    pairs: tuple[pa.Array, pa.Array] = (_EMPTY, _EMPTY)  # (first identity of a row, another one), distinct

    single: bool = True  # every accepted row holds exactly one identity (its primary one)
    _items: tuple | None = None

    @property
    def n_ok(self) -> int:
        return len(self.pkeys)

    @property
    def identities(self) -> pa.Array:
        """JSON [[ns, id, primary], ...] per accepted row (made on demand: events of one identity
        per row do not need it, see `single_identity_json`)."""
        if self._items is None:
            return _EMPTY
        k_ns, k_id, k_prim, offsets = self._items
        item_json = _concat(["[", _json_ascii(k_ns), ", ", _json_ascii(k_id), ", ", pc.if_else(pa.array(k_prim), "true", "false"), "]"], len(k_prim))
        return _join_lists(offsets, item_json, ", ", "[", "]", None, len(offsets) - 1)


def single_identity_json(pkeys: pa.Array) -> pa.Array:
    """The identities JSON of rows whose only identity is their primary one, from the key "NS:id"
    alone (namespace codes never hold ':'): the same text `Checked.identities` writes."""
    if not len(pkeys):
        return _EMPTY
    parts = pc.split_pattern(pkeys, ":", max_splits=1)
    ns, ids = pc.list_element(parts, 0), pc.list_element(parts, 1)
    return _concat(["[[", _json_ascii(ns), ", ", _json_ascii(ids), ", true]]"], len(pkeys))


def _identity_items(col: pa.Array, n: int):
    """Flattens identityMap: per identity its row, namespace, id, primary flag and item validity."""
    t = col.type
    if not pa.types.is_map(t):
        raise Unsupported("identityMap is not a MAP")
    vt = t.item_type
    if not (pa.types.is_string(t.key_type) or pa.types.is_large_string(t.key_type)):
        raise Unsupported("identityMap keys")
    if not (pa.types.is_list(vt) or pa.types.is_large_list(vt)) or not pa.types.is_struct(vt.value_type):
        raise Unsupported("identityMap values")
    st = vt.value_type
    if st.get_field_index("id") < 0 or not (pa.types.is_string(st.field("id").type) or pa.types.is_large_string(st.field("id").type)):
        raise Unsupported("identityMap item id")
    has_primary = st.get_field_index("primary") >= 0
    if has_primary and not pa.types.is_boolean(st.field("primary").type):
        raise Unsupported("identityMap item primary")
    map_valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
    offs, a, b = _list_parts(col)
    if (np.diff(offs)[~map_valid] != 0).any():
        raise Unsupported("null identityMap slots that own entries")
    ent_row = np.repeat(np.arange(n), np.diff(offs))
    ns = col.keys.slice(a, b - a)
    lists = col.items.slice(a, b - a)
    bad_row = np.zeros(n, bool)
    # An entry whose value is null is not a list of identities: the row is invalid.
    if lists.null_count:
        np.logical_or.at(bad_row, ent_row[~pc.is_valid(lists).to_numpy(zero_copy_only=False)], True)
    ns_ok = pc.match_substring_regex(ns, "^[A-Za-z0-9_.\\-]{1,64}$").to_numpy(zero_copy_only=False)
    np.logical_or.at(bad_row, ent_row[~ns_ok], True)
    loffs, la, lb = _list_parts(lists)
    item_ent = np.repeat(np.arange(len(lists)), np.diff(loffs))
    items = lists.values.slice(la, lb - la)
    item_row = ent_row[item_ent]
    item_ns = pc.take(ns, pa.array(item_ent, pa.int64())) if len(item_ent) else pa.array([], pa.string())
    ids = pc.struct_field(items, [st.get_field_index("id")])
    item_ok = pc.is_valid(items).to_numpy(zero_copy_only=False) & pc.is_valid(ids).to_numpy(zero_copy_only=False)
    ids_f = pc.fill_null(ids, "")
    norm = pc.utf8_lower(pc.utf8_trim_whitespace(ids_f))
    item_ok &= ~pc.is_in(norm, value_set=pa.array(sorted(REJECTED_VALUES))).to_numpy(zero_copy_only=False)
    item_ok &= (pc.utf8_length(ids_f).to_numpy(zero_copy_only=False) <= MAX_IDENTITY_LEN)
    is_ecid = pc.equal(pc.utf8_upper(item_ns), "ECID").to_numpy(zero_copy_only=False)
    if is_ecid.any():
        ecid_ok = pc.match_substring_regex(ids_f, "^[0-9]{38}$").to_numpy(zero_copy_only=False)
        item_ok &= ~is_ecid | ecid_ok
    np.logical_or.at(bad_row, item_row[~item_ok], True)
    if has_primary:
        prim = pc.fill_null(pc.struct_field(items, [st.get_field_index("primary")]), False).to_numpy(zero_copy_only=False)
    else:
        prim = np.zeros(len(items), bool)
    return map_valid, bad_row, item_row, item_ns, ids_f, prim, is_ecid


def check_batch(rb: pa.RecordBatch, behaviour: str, now_ms: int, docs: bool = True) -> Checked:
    """The rules over one record batch. `docs`: also render each accepted row as JSON text (else the
    size guardrail measures that text's length without writing it, `json_length`)."""
    n = rb.num_rows
    names = rb.schema.names
    if "identityMap" not in names:
        raise Unsupported("no identityMap column")
    whole = pa.StructArray.from_arrays(rb.columns, names=names) if n else None
    docs_arr = (json_column(whole) if n else pa.array([], pa.string())) if docs else None
    if docs_arr is not None:
        sizes = pc.binary_length(docs_arr).to_numpy(zero_copy_only=False)
    else:
        sizes = json_length(whole) if n else np.zeros(0, np.int64)
    err = np.zeros(n, np.int8)  # 0 = ok, else an index into CODES
    CODES: list[tuple[str, str]] = [None, ERR_EVENT_SIZE, ERR_NO_ID, ERR_NO_TS, ERR_RECORD_SIZE, ERR_BAD_IDENTITY, ERR_NO_PRIMARY, ERR_TOO_MANY_IDS]  # type: ignore[list-item]

    def flag(cond: np.ndarray, code: int) -> None:
        np.copyto(err, code, where=(err == 0) & cond)

    event_ids = ts = None
    if behaviour == "time-series":
        flag(sizes > MAX_EVENT_BYTES, 1)
        if "_id" not in names:
            flag(np.ones(n, bool), 2)
            eid = pa.nulls(n, pa.string())
        else:
            eid = rb.column("_id")
            if pa.types.is_integer(eid.type):
                eid = eid.cast(pa.string())
            elif not (pa.types.is_string(eid.type) or pa.types.is_large_string(eid.type)):
                raise Unsupported("_id type")
            flag(~pc.fill_null(pc.not_equal(eid, ""), False).to_numpy(zero_copy_only=False), 2)
        ts = _timestamps(rb.column("timestamp") if "timestamp" in names else pa.nulls(n, pa.int64()), n)
        valid_ts = ~np.isnan(ts) & (ts <= now_ms + FUTURE_SKEW_MS)
        flag(~valid_ts, 3)
        event_ids = eid
    else:
        flag(sizes > MAX_RECORD_BYTES, 4)
    map_valid, bad_row, item_row, item_ns, ids_f, prim, is_ecid = _identity_items(rb.column("identityMap"), n)
    flag(bad_row, 5)
    count = np.bincount(item_row, minlength=n)
    flagged = np.bincount(item_row, weights=prim, minlength=n).astype(np.int64)
    flag(count == 0, 6)
    flag(count > MAX_IDENTITIES_PER_ROW, 7)
    # The primary identity: the one flagged; else the only one; else the first ECID.
    n_items = len(item_row)
    idx = np.arange(n_items)
    chosen = np.full(n, -1, np.int64)
    sel = prim & (flagged[item_row] == 1)
    chosen[item_row[sel]] = idx[sel]
    single = (flagged == 0) & (count == 1)
    first_item = np.full(n, -1, np.int64)
    if n_items:
        starts = np.flatnonzero(np.r_[True, item_row[1:] != item_row[:-1]])
        first_item[item_row[starts]] = starts
    chosen[single] = first_item[single]
    need_ecid = (flagged == 0) & (count > 1)
    if need_ecid.any() and is_ecid.any():
        ecid_idx = idx[is_ecid & need_ecid[item_row]][::-1]  # reversed: the first one wins below
        chosen[item_row[ecid_idx]] = ecid_idx
    flag((chosen < 0) & (err == 0), 6)
    ok = err == 0
    rows_ok = np.flatnonzero(ok)
    errors = [(int(i), CODES[err[i]]) for i in np.flatnonzero(~ok)]
    out = Checked(mask=ok, errors=errors)
    if not len(rows_ok):
        return out
    # Accepted rows: keys, primary keys, identities JSON, documents.
    is_primary = np.zeros(n_items, bool)
    is_primary[chosen[rows_ok]] = True
    keep_item = ok[item_row]
    kidx = pa.array(np.flatnonzero(keep_item), pa.int64())
    k_ns, k_id = pc.take(item_ns, kidx), pc.take(ids_f, kidx)
    k_row, k_prim = item_row[keep_item], is_primary[keep_item]
    keys = pc.binary_join_element_wise(k_ns, k_id, ":")
    out.pkeys = pc.take(keys, pa.array(np.flatnonzero(k_prim), pa.int64()))  # one per row, rows in order
    k_starts = np.flatnonzero(np.r_[True, k_row[1:] != k_row[:-1]]) if len(k_row) else np.array([], np.int64)
    offsets = np.r_[k_starts, len(k_row)]
    out.single = len(k_row) == len(rows_ok)
    out._items = (k_ns, k_id, k_prim, offsets)
    take_ok = pa.array(rows_ok, pa.int64())
    if docs_arr is not None:
        out.docs = pc.take(docs_arr, take_ok)
    if behaviour == "time-series":
        out.event_ids = pc.take(event_ids, take_ok)
        out.ts_ms = ts[rows_ok].astype(np.int64)
    # Identity graph input: every key, and (first key of its row, key) for rows with several.
    out.keys = pc.unique(keys)
    firsts = np.zeros(len(k_row), bool)
    firsts[k_starts] = True
    if not firsts.all():
        first_of = np.repeat(k_starts, np.diff(offsets))
        others = np.flatnonzero(~firsts)
        a = pc.take(keys, pa.array(first_of[others], pa.int64()))
        b = pc.take(keys, pa.array(others, pa.int64()))
        out.pairs = distinct_pairs(a, b)
    return out


def distinct_pairs(a: pa.Array, b: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The distinct (a[i], b[i]) pairs (identity keys never hold NUL)."""
    if not len(a):
        return a, b
    t = pa.table({"a": a, "b": b}).group_by(["a", "b"], use_threads=False).aggregate([])
    return t.column("a").combine_chunks(), t.column("b").combine_chunks()


def _json_ascii(arr: pa.Array) -> pa.Array:
    """As json.dumps (ensure_ascii=True) writes these strings, for the stored identities column."""
    if pc.all(pc.string_is_ascii(arr)).as_py() if len(arr) else True:
        return _quote(arr)
    return pa.array([json.dumps(v) for v in arr.to_pylist()], pa.string())


def _timestamps(col: pa.Array, n: int) -> np.ndarray:
    """Event times in epoch ms as float64 (NaN where missing or unparsable)."""
    t = col.type
    if pa.types.is_timestamp(t):
        v = col.cast(pa.timestamp("ms", t.tz)).cast(pa.int64())
    elif pa.types.is_integer(t):
        v = col.cast(pa.int64())
    elif pa.types.is_floating(t):
        return pc.fill_null(col.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            v = col.cast(pa.timestamp("ms", "UTC")).cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            parsed = [parse_timestamp_ms(x) for x in col.to_pylist()]
            return np.array([np.nan if p is None else float(p) for p in parsed], np.float64)
    elif pa.types.is_null(t):
        return np.full(n, np.nan)
    else:
        raise Unsupported("timestamp type")
    return pc.fill_null(v.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False).astype(np.float64)
