"""XDM row rules shared by ingestion and the store: classes, identityMap parsing, identity validation,
event timestamps, and the row-level rejection rules of batch ingestion (reference §11, §12).

An identity is keyed "NS:id" (namespace codes never contain ':'), the same string everywhere:
graph rows, fragment keys, and the native XID derived from it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
UNION_SCHEMA = "https://ns.adobe.com/xdm/context/profile__union"
PROFILE_SCHEMA_NAME = "_xdm.context.profile"
EVENT_SCHEMA_NAME = "_xdm.context.experienceevent"

MAX_EVENT_BYTES = 10 * 1024  # guardrail: ExperienceEvent over 10 KB is dropped
MAX_RECORD_BYTES = 100 * 1024  # guardrail: profile record over 100 KB is dropped
MAX_IDENTITIES_PER_ROW = 20  # Identity Service: identities in one XDM record
MAX_GRAPH_IDENTITIES = 50  # hard guardrail: larger graphs are excluded from look-ups (422)
MAX_IDENTITY_LEN = 1024
REJECTED_VALUES = {"", "null", "anonymous", "invalid"}
NS_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ECID_RE = re.compile(r"^\d{38}$")
FUTURE_SKEW_MS = 5 * 60 * 1000

# Row-level rejection codes (userlens's own block; AEP's exact codes for these are not public).
ERR_MALFORMED = ("INGEST-1207-400", "The row is not a JSON object or could not be parsed.")
ERR_NO_PRIMARY = ("INGEST-1201-400", "The row has no primary identity (identityMap with one identity flagged primary).")
ERR_BAD_IDENTITY = ("INGEST-1202-400", "The row holds an invalid identity (blank, 'null', 'anonymous', 'invalid', longer than 1024 characters, an ECID that is not 38 digits, or a bad namespace code).")
ERR_TOO_MANY_IDS = ("INGEST-1208-400", f"The row holds more than {MAX_IDENTITIES_PER_ROW} identities.")
ERR_NO_ID = ("INGEST-1203-400", "The ExperienceEvent has no _id.")
ERR_NO_TS = ("INGEST-1204-400", "The ExperienceEvent has no valid timestamp (RFC 3339 date-time in the past, or epoch milliseconds).")
ERR_EVENT_SIZE = ("INGEST-1205-400", f"The ExperienceEvent is larger than {MAX_EVENT_BYTES} bytes.")
ERR_RECORD_SIZE = ("INGEST-1206-400", f"The profile record is larger than {MAX_RECORD_BYTES} bytes.")


def behaviour_of(schema_id: str) -> str | None:
    """record | time-series | union from a schemaRef id (class URIs, alt-ids, or tenant schemas
    whose id names the class, e.g. https://ns.adobe.com/{tenant}/schemas/... are not resolvable
    without a Schema Registry: those are refused)."""
    sid = (schema_id or "").strip()
    if sid in (UNION_SCHEMA, "_xdm.context.profile__union"):
        return "union"
    if sid in (PROFILE_CLASS, PROFILE_SCHEMA_NAME) or sid.endswith("/profile") or "profile" in sid.rsplit("/", 1)[-1].lower():
        return "record"
    if sid in (EVENT_CLASS, EVENT_SCHEMA_NAME) or "experienceevent" in sid.lower():
        return "time-series"
    return None


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def native_xid(ikey: str) -> str:
    """A stable XID for one identity; a graph's XID is the smallest native XID of its members.
    (URL-safe base64 of 21 bytes of SHA-256, written with binascii: the same text as
    base64.urlsafe_b64encode, a third of the time; ingestion computes one per new identity.)"""
    return binascii.b2a_base64(hashlib.sha256(ikey.encode()).digest()[:21], newline=False).translate(_URLSAFE).decode()


def native_xids(ikeys: list[str]) -> list[str]:
    """native_xid of each identity (one loop, no call per identity)."""
    b64, sha, t = binascii.b2a_base64, hashlib.sha256, _URLSAFE
    return [b64(sha(k.encode()).digest()[:21], newline=False).translate(t).decode() for k in ikeys]


def json_default(value: Any):
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=json_default)


def _identity_map(row: dict) -> dict | None:
    im = row.get("identityMap")
    if isinstance(im, list):  # Parquet MAP columns arrive as [(key, value), ...]
        try:
            im = {k: v for k, v in im}
        except (TypeError, ValueError):
            return None
    if isinstance(im, str):  # CSV: the identityMap column holds JSON
        try:
            im = json.loads(im)
        except ValueError:
            return None
    return im if isinstance(im, dict) else None


def parse_identities(row: dict) -> tuple[list[list], str] | tuple[None, tuple[str, str]]:
    """([[ns, id, primary], ...], primary "NS:id") or (None, error)."""
    im = _identity_map(row)
    if not im:
        return None, ERR_NO_PRIMARY
    out: list[list] = []
    for ns, items in im.items():
        if not isinstance(ns, str) or not NS_RE.match(ns):
            return None, ERR_BAD_IDENTITY
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            return None, ERR_BAD_IDENTITY
        for it in items:
            if not isinstance(it, dict):
                return None, ERR_BAD_IDENTITY
            value = it.get("id")
            if not isinstance(value, str) or value.strip().lower() in REJECTED_VALUES or len(value) > MAX_IDENTITY_LEN:
                return None, ERR_BAD_IDENTITY
            if ns.upper() == "ECID" and not ECID_RE.match(value):
                return None, ERR_BAD_IDENTITY
            out.append([ns, value, bool(it.get("primary"))])
    if not out:
        return None, ERR_NO_PRIMARY
    if len(out) > MAX_IDENTITIES_PER_ROW:
        return None, ERR_TOO_MANY_IDS
    flagged = [i for i in out if i[2]]
    if len(flagged) == 1:
        primary = flagged[0]
    elif not flagged and len(out) == 1:
        primary = out[0]  # a single identity is the primary one
    elif not flagged and [i for i in out if i[0].upper() == "ECID"]:
        primary = next(i for i in out if i[0].upper() == "ECID")  # the Web SDK's default
    else:
        return None, ERR_NO_PRIMARY
    primary[2] = True
    return out, f"{primary[0]}:{primary[1]}"


def parse_timestamp_ms(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(value.timestamp() * 1000)
    if isinstance(value, str) and value:
        try:
            d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if d.tzinfo is None:  # RFC 3339 needs an offset; take UTC rather than reject
            d = d.replace(tzinfo=dt.timezone.utc)
        return int(d.timestamp() * 1000)
    return None


@dataclass
class Accepted:
    identities: list[list]
    pkey: str
    doc: str | None
    event_id: str | None = None
    ts_ms: int | None = None


def check_row(row: Any, behaviour: str, now_ms: int, raw_size: int | None = None, need_doc: bool = True) -> Accepted | tuple[str, str]:
    """Applies the rejection rules to one row: an Accepted row or an (error code, description).
    `need_doc` False: the caller keeps the row itself (events go to the lake as rows), so the JSON
    text is written only when the size guardrail needs it (no `raw_size`); Accepted.doc is then None."""
    if not isinstance(row, dict):
        return ERR_MALFORMED
    doc = dumps(row) if need_doc or raw_size is None else None
    size = raw_size if raw_size is not None else len(doc.encode())
    if not need_doc:
        doc = None
    if behaviour == "time-series":
        if size > MAX_EVENT_BYTES:
            return ERR_EVENT_SIZE
        eid = row.get("_id")
        if not isinstance(eid, (str, int)) or isinstance(eid, bool) or str(eid) == "":
            return ERR_NO_ID
        ts = parse_timestamp_ms(row.get("timestamp"))
        if ts is None or ts > now_ms + FUTURE_SKEW_MS:
            return ERR_NO_TS
    elif size > MAX_RECORD_BYTES:
        return ERR_RECORD_SIZE
    ids, pkey = parse_identities(row)
    if ids is None:
        return pkey  # the error
    if behaviour == "time-series":
        return Accepted(ids, pkey, doc, str(row["_id"]), ts)
    return Accepted(ids, pkey, doc)
