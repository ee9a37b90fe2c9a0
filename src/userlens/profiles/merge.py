"""Merge policies (CRUD, one default per sandbox) and the merge itself.

A merged profile = the fragments of a graph (``pdg``) or of the one requested identity (``none``),
reduced in two steps:
1. within one dataset and primary identity, the newest record replaces the older ones (record
   datasets overwrite); a dataset tagged ``isUpsert:true`` deep-merges them instead (patch semantics);
2. across those, ``timestampOrdered`` deep-merges in ingestion order (the most recently ingested
   fragment wins per attribute) and ``dataSetPrecedence`` deep-merges by the policy's ``order``
   (earlier datasets win; datasets not listed are not merged at all, as AEP documents).
With no policy given and no default configured, AEP's documented fallback applies: no stitching,
timestamp-ordered attributes of the requested identity only (``BUILTIN``).
"""

from __future__ import annotations

import copy
import functools
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update

from userlens.errors import DomainError, InvalidParameter, NotFound
from userlens.profiles.models import Dataset, MergePolicy
from userlens.profiles.store import read_session
from userlens.profiles.xdm import PROFILE_SCHEMA_NAME
from userlens.storage.db import Database

IDENTITY_GRAPHS = ("none", "pdg")
ATTRIBUTE_MERGES = ("timestampOrdered", "dataSetPrecedence")
MAX_POLICIES = 5  # guardrail: 5 merge policies on _xdm.context.profile per sandbox


@dataclass(frozen=True)
class Policy:
    id: str | None
    identity_graph: str
    attribute_merge: str
    order: tuple[str, ...] = ()


BUILTIN = Policy(None, "none", "timestampOrdered")


def as_policy(mp: MergePolicy) -> Policy:
    return Policy(mp.id, mp.identity_graph, mp.attribute_merge, tuple(mp.order or ()))


def deep_merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def merge_fragments(fragments: list, policy: Policy, upsert_datasets: set[str]) -> dict:
    """Fragments (oldest first) -> merged attributes. `fragments` items have dataset_id, pkey, doc."""
    per_key: dict[tuple[str, str], dict] = {}
    last_seen: dict[tuple[str, str], int] = {}
    for i, f in enumerate(fragments):
        key = (f.dataset_id, f.pkey)
        doc = {k: v for k, v in f.doc.items() if k not in ("identityMap", "_id")}
        if key in per_key and f.dataset_id in upsert_datasets:
            deep_merge(per_key[key], doc)
        else:
            per_key[key] = doc
        last_seen[key] = i
    keys = sorted(per_key, key=lambda k: last_seen[k])
    if policy.attribute_merge == "dataSetPrecedence":
        rank = {d: i for i, d in enumerate(policy.order)}
        keys = [k for k in keys if k[0] in rank]
        keys.sort(key=lambda k: (-rank[k[0]], last_seen[k]))  # highest precedence merged last
    merged: dict = {}
    for k in keys:
        deep_merge(merged, per_key[k])
    return merged


def check_named_profile_body(body: Any) -> str:
    """The `name` of a create body that names the profile schema (merge policies, segment
    definitions): a JSON object with a non-blank `name` and `schema.name` = _xdm.context.profile."""
    if not isinstance(body, dict):
        raise InvalidParameter("the body must be a JSON object")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidParameter("name is required")
    schema = (body.get("schema") or {}).get("name") if isinstance(body.get("schema"), dict) else None
    if schema != PROFILE_SCHEMA_NAME:
        raise InvalidParameter(f"schema.name is required and must be {PROFILE_SCHEMA_NAME}")
    return name


class MergePolicyError(DomainError):
    name = "INVALID_PARAMETER"


POLICY_CACHE_SECONDS = 5.0


def _clears_cache(method):
    """Writes drop the resolve() cache once they returned (committed) or failed."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self._cache.clear()

    return wrapper


class MergePolicyService:
    """Merge policy CRUD. `resolve` (the policy of a profile read) is cached for
    POLICY_CACHE_SECONDS per (sandbox, policy id); writes through this service clear the cache, so
    only another process's change can take up to that long to be seen by this one."""

    def __init__(self, db: Database):
        self.db = db
        self._cache: dict[tuple[str, str | None], tuple[float, Policy]] = {}

    # -- validation ------------------------------------------------------------------------------
    def _validate(self, s, sandbox_id: str, body: dict) -> dict:
        name = check_named_profile_body(body)
        ig = (body.get("identityGraph") or {}).get("type") if isinstance(body.get("identityGraph"), dict) else None
        if ig not in IDENTITY_GRAPHS:
            raise InvalidParameter(f"identityGraph.type is required: one of {', '.join(IDENTITY_GRAPHS)}")
        am = body.get("attributeMerge") if isinstance(body.get("attributeMerge"), dict) else {}
        if am.get("type") not in ATTRIBUTE_MERGES:
            raise InvalidParameter(f"attributeMerge.type is required: one of {', '.join(ATTRIBUTE_MERGES)}")
        order = am.get("order")
        if am["type"] == "dataSetPrecedence":
            if not isinstance(order, list) or not order or not all(isinstance(o, str) for o in order):
                raise InvalidParameter("attributeMerge.order (dataset ids, highest priority first) is required for dataSetPrecedence")
            known = set(s.execute(select(Dataset.id).where(Dataset.sandbox_id == sandbox_id, Dataset.id.in_(order))).scalars())
            missing = [o for o in order if o not in known]
            if missing:
                raise InvalidParameter(f"attributeMerge.order names unknown datasets: {', '.join(missing)}")
        else:
            order = None
        for flag in ("default", "isActiveOnEdge"):
            if flag in body and not isinstance(body[flag], bool):
                raise InvalidParameter(f"{flag} must be a boolean")
        return {"name": name.strip(), "schema_name": PROFILE_SCHEMA_NAME, "identity_graph": ig, "attribute_merge": am["type"], "order": order, "is_default": bool(body.get("default", False)), "is_active_on_edge": bool(body.get("isActiveOnEdge", False))}

    def _apply_flags(self, s, org_id: str, sandbox_id: str, mp: MergePolicy) -> None:
        # One default per sandbox (and per class) and one active-on-edge policy: setting a new one clears the old.
        if mp.is_default:
            s.execute(update(MergePolicy).where(MergePolicy.sandbox_id == sandbox_id, MergePolicy.id != mp.id, MergePolicy.is_default.is_(True)).values(is_default=False))
        if mp.is_active_on_edge:
            s.execute(update(MergePolicy).where(MergePolicy.sandbox_id == sandbox_id, MergePolicy.id != mp.id, MergePolicy.is_active_on_edge.is_(True)).values(is_active_on_edge=False))

    # -- CRUD --------------------------------------------------------------------------------------
    @_clears_cache
    def create(self, org_id: str, sandbox_id: str, body: dict) -> MergePolicy:
        with self.db.session() as s:
            fields = self._validate(s, sandbox_id, body)
            n = s.execute(select(func.count()).select_from(MergePolicy).where(MergePolicy.sandbox_id == sandbox_id)).scalar_one()
            if n >= MAX_POLICIES:
                raise DomainError(f"a sandbox holds at most {MAX_POLICIES} merge policies on {PROFILE_SCHEMA_NAME}", name="LIMIT_EXCEEDED")
            now = time.time()
            mp = MergePolicy(id=str(uuid.uuid4()), org_id=org_id, sandbox_id=sandbox_id, version=1, update_epoch=int(now), created_ms=int(now * 1000), **fields)
            s.add(mp)
            s.flush()
            self._apply_flags(s, org_id, sandbox_id, mp)
            return mp

    def get(self, sandbox_id: str, policy_id: str) -> MergePolicy:
        with read_session(self.db) as s:
            mp = s.execute(select(MergePolicy).where(MergePolicy.sandbox_id == sandbox_id, MergePolicy.id == policy_id)).scalar_one_or_none()
            if mp is None:
                raise NotFound(f"Merge policy '{policy_id}' not found")
            return mp

    def default(self, sandbox_id: str) -> MergePolicy | None:
        with read_session(self.db) as s:
            return s.execute(select(MergePolicy).where(MergePolicy.sandbox_id == sandbox_id, MergePolicy.is_default.is_(True))).scalar_one_or_none()

    def list(self, sandbox_id: str, *, start: int, limit: int, order_by: str, filters: dict) -> tuple[int, list[MergePolicy]]:
        with self.db.read_session() as s:
            q = select(MergePolicy).where(MergePolicy.sandbox_id == sandbox_id)
            if filters.get("default") is not None:
                q = q.where(MergePolicy.is_default.is_(filters["default"]))
            if filters.get("isActiveOnEdge") is not None:
                q = q.where(MergePolicy.is_active_on_edge.is_(filters["isActiveOnEdge"]))
            for param, col in (("schema.name", MergePolicy.schema_name), ("identityGraph.type", MergePolicy.identity_graph), ("attributeMerge.type", MergePolicy.attribute_merge)):
                if filters.get(param):
                    q = q.where(col == filters[param])
            total = s.execute(select(func.count()).select_from(q.subquery())).scalar_one()
            desc = order_by.startswith("-")
            field = order_by.lstrip("+-") or "name"
            col = {"name": MergePolicy.name, "version": MergePolicy.version, "updateEpoch": MergePolicy.update_epoch}.get(field)
            if col is None:
                raise InvalidParameter(f"orderBy: unknown field {field!r} (name, version, updateEpoch)")
            q = q.order_by(col.desc() if desc else col, MergePolicy.id).offset(start).limit(limit)
            return total, list(s.execute(q).scalars())

    @_clears_cache
    def replace(self, sandbox_id: str, policy_id: str, body: dict) -> MergePolicy:
        with self.db.session() as s:
            mp = s.execute(select(MergePolicy).where(MergePolicy.sandbox_id == sandbox_id, MergePolicy.id == policy_id).with_for_update()).scalar_one_or_none()
            if mp is None:
                raise NotFound(f"Merge policy '{policy_id}' not found")
            for k, v in self._validate(s, sandbox_id, body).items():
                setattr(mp, k, v)
            self._bump(mp)
            self._apply_flags(s, mp.org_id, sandbox_id, mp)
            return mp

    def patch(self, sandbox_id: str, policy_id: str, ops: Any) -> MergePolicy:
        """JSON-Patch-like: one {op, path, value} or a list of them (the doc and the OAS differ)."""
        ops = ops if isinstance(ops, list) else [ops]
        mp = self.get(sandbox_id, policy_id)
        body = policy_body(mp)
        paths = {"/name": ("name",), "/identityGraph.type": ("identityGraph", "type"), "/identityGraph/type": ("identityGraph", "type"), "/attributeMerge.type": ("attributeMerge", "type"), "/attributeMerge/type": ("attributeMerge", "type"), "/attributeMerge/order": ("attributeMerge", "order"), "/schema.name": ("schema", "name"), "/schema/name": ("schema", "name"), "/default": ("default",), "/isActiveOnEdge": ("isActiveOnEdge",), "/version": None}
        for op in ops:
            if not isinstance(op, dict) or op.get("op") not in ("add", "replace") or op.get("path") not in paths:
                raise InvalidParameter(f"unsupported patch operation {op!r}; op add|replace on {', '.join(p for p in paths)}")
            target = paths[op["path"]]
            if target is None:  # the version is maintained by the platform
                continue
            node = body
            for part in target[:-1]:
                node = node.setdefault(part, {})
            node[target[-1]] = op.get("value")
        return self.replace(sandbox_id, policy_id, body)

    @_clears_cache
    def delete(self, sandbox_id: str, policy_id: str) -> None:
        with self.db.session() as s:
            mp = s.execute(select(MergePolicy).where(MergePolicy.sandbox_id == sandbox_id, MergePolicy.id == policy_id)).scalar_one_or_none()
            if mp is None:
                raise NotFound(f"Merge policy '{policy_id}' not found")
            if mp.is_active_on_edge:
                raise InvalidParameter("a merge policy active on edge cannot be deleted; set isActiveOnEdge to false first")
            s.delete(mp)

    @staticmethod
    def _bump(mp: MergePolicy) -> None:
        mp.version += 1
        mp.update_epoch = int(time.time())

    def resolve(self, sandbox_id: str, policy_id: str | None) -> Policy:
        """The policy a read uses: the given one, else the sandbox default, else the built-in fallback."""
        key = (sandbox_id, policy_id or None)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < POLICY_CACHE_SECONDS:
            return hit[1]
        if policy_id:
            policy = as_policy(self.get(sandbox_id, policy_id))
        else:
            mp = self.default(sandbox_id)
            policy = as_policy(mp) if mp else BUILTIN
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[key] = (now, policy)
        return policy


def policy_body(mp: MergePolicy, sandbox: dict | None = None) -> dict:
    out = {
        "id": mp.id,
        "name": mp.name,
        "imsOrgId": mp.org_id,
        "schema": {"name": mp.schema_name},
        "version": mp.version,
        "identityGraph": {"type": mp.identity_graph},
        "attributeMerge": {"type": mp.attribute_merge, **({"order": list(mp.order)} if mp.order else {})},
        "isActiveOnEdge": mp.is_active_on_edge,
        "default": mp.is_default,
        "updateEpoch": mp.update_epoch,
    }
    if sandbox is not None:
        out["sandbox"] = sandbox
    return out
