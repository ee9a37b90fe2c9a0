"""Profile access (reference §10): a merged profile by identity or XID, a profile's events.

Identity graph `pdg` reads every fragment of the graph; `none` only those whose primary identity is
the requested one. A graph over 50 identities raises TooManyIdentities (HTTP 422).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from userlens.errors import DomainError
from userlens.profiles.merge import MergePolicyService, Policy, merge_fragments
from userlens.profiles.store import GraphTooLarge, ProfileStore


class TooManyIdentities(DomainError):
    name = "TOO_MANY_IDENTITIES"


def rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def select_fields(entity: dict, fields: list[str] | None) -> dict:
    """Keeps only the dotted paths asked for (`fields=identities,person.name`)."""
    if not fields:
        return entity
    out: dict = {}
    for path in fields:
        parts = path.split(".")
        src, dst = entity, out
        for i, p in enumerate(parts):
            if not isinstance(src, dict) or p not in src:
                break
            if i == len(parts) - 1:
                dst[p] = src[p]
            else:
                src = src[p]
                dst = dst.setdefault(p, {})
    return out


MAX_PROPERTY_FILTERS = 3
_OPS = ("<=", ">=", "!=", "=", "<", ">")
_DAY = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


@dataclass(frozen=True)
class PropertyFilter:
    """One `property=` event filter (§10.1): a dotted path into the event, an operator and a value.
    Values compare as numbers when both sides are numbers, as booleans for true/false, as days
    (`yyyy-mm-dd` or `yyyymmdd` against the date part of a date-time or a ms timestamp), else as
    text. An event without the field does not match."""

    path: tuple[str, ...]
    op: str
    value: Any

    @classmethod
    def parse(cls, text: str) -> "PropertyFilter":
        for op in _OPS:  # two-character operators first
            name, sep, raw = text.partition(op)
            if sep and name.strip() and "=" not in name and "<" not in name and ">" not in name and "!" not in name:
                return cls(tuple(name.strip().split(".")), op, _typed(raw.strip()))
        raise ValueError(f"property filter {text!r}: expected <path><op><value>, op one of {', '.join(_OPS)}")

    def matches(self, doc: dict) -> bool:
        node: Any = doc
        for p in self.path:
            if not isinstance(node, dict) or p not in node:
                return False
            node = node[p]
        a, b = _comparable(node, self.value)
        if a is None:
            return False
        try:
            return {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[self.op]
        except TypeError:
            return False


def _typed(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    m = _DAY.match(raw)
    if m:
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def _comparable(value: Any, target: Any) -> tuple[Any, Any]:
    """(field value, filter value) brought to one type, or (None, None) when they cannot be."""
    if isinstance(target, bool):
        return (value, target) if isinstance(value, bool) else (None, None)
    if isinstance(target, dt.date):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc).date(), target
        if isinstance(value, str):
            m = _DAY.match(value[:10])
            return (dt.date(int(m[1]), int(m[2]), int(m[3])), target) if m else (None, None)
        return None, None
    if isinstance(target, (int, float)):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value, target
        return (None, None) if not isinstance(value, str) else (value, str(target))
    if isinstance(value, (dict, list)) or value is None:
        return None, None
    return (str(value).lower() if isinstance(value, bool) else str(value)), target


@dataclass
class Resolved:
    xid: str
    pkeys: list[str]
    policy: Policy


class ProfileAccess:
    def __init__(self, store: ProfileStore, policies: MergePolicyService):
        self.store, self.policies = store, policies

    def resolve(self, sandbox_id: str, *, ikey: str | None, xid: str | None, policy_id: str | None) -> Resolved | None:
        policy = self.policies.resolve(sandbox_id, policy_id)
        stitch = policy.identity_graph == "pdg"
        try:
            g = self.store.graph_of(sandbox_id, ikey=ikey, xid=xid, stitch=stitch if xid is None else True)
        except GraphTooLarge as exc:
            raise TooManyIdentities(f"Too many related identities: the graph {exc.xid} has {exc.size} identities (limit 50)") from exc
        if g is None:
            return None
        return Resolved(g.xid, g.members, policy)

    def profile(self, sandbox_id: str, r: Resolved, fields: list[str] | None = None) -> dict | None:
        frags, events, flags = self.store.profile_data(sandbox_id, r.pkeys)
        enabled = {d for d, (on, _) in flags.items() if on}
        frags = [f for f in frags if f.dataset_id in enabled]
        events = [e for e in events if e[0] in enabled]
        if not frags and not events:
            return None
        attrs = merge_fragments(frags, r.policy, {d for d in enabled if flags[d][1]})
        seen: dict[str, dict] = {}
        for ids in [f.identities for f in frags] + [json.loads(e[2]) for e in events]:
            for ns, value, primary in ids:
                key = f"{ns}:{value}"
                if r.policy.identity_graph == "none" and key not in r.pkeys and not frags:
                    pass
                item = seen.setdefault(key, {"id": value, "namespace": {"code": ns}})
                if primary and key in r.pkeys:
                    item["primary"] = True
        identities = list(seen.values())
        identity_map: dict[str, list] = {}
        for it in identities:
            identity_map.setdefault(it["namespace"]["code"], []).append({"id": it["id"], **({"primary": True} if it.get("primary") else {})})
        entity = {"identities": identities, "identityMap": identity_map, **attrs}
        from userlens.profiles.segments import membership_map  # segments build on this module's store

        segment_membership = membership_map(self.store, sandbox_id, r.xid)
        if segment_membership:
            entity["segmentMembership"] = segment_membership
        sources = sorted({f.dataset_id for f in frags} | {e[0] for e in events})
        batches = sorted({f.batch_id for f in frags} | {e[1] for e in events})
        last = max([f.ingest_ms for f in frags] + [e[3] for e in events])
        return {
            "entityId": r.xid,
            "sources": sources,
            "tags": batches,
            "identityGraph": [r.xid],
            "entity": select_fields(entity, fields),
            "lastModifiedAt": rfc3339(last),
            **({"mergePolicy": {"id": r.policy.id}} if r.policy.id else {}),
        }
