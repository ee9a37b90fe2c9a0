"""AEP console pages for an org's sandbox: datasets and their batches (status, record counts,
rejected rows with their reasons) and a profile look-up by identity (merged attributes, identities,
recent events). Everything is scoped to the signed-in org and sandbox (a Tenant, as the API's)."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from userlens.console.web import LoginRequired, current, make_router, page, services
from userlens.errors import DomainError, NotFound
from userlens.orgs.service import Tenant
from userlens.profiles.access import TooManyIdentities, rfc3339

router = make_router()
LIST_LIMIT = 100
RECENT_EVENTS = 20
BATCH_ACTIVE = ("loading", "staging", "processing")


def tenant_of(request: Request) -> tuple[object, Tenant]:
    sess = current(request, "aep")
    sb = services(request).orgs.sandbox(sess.org_id, sess.sandbox)
    if sb is None:  # the sandbox went away after sign-in
        raise LoginRequired()
    return sess, Tenant(sess.org_id, sb.id, sb.name, sb.type, sess.client_id)


def flatten(doc, prefix: str = "") -> list[tuple[str, str]]:
    """Nested attributes as (dotted path, JSON value) rows, for a readable table."""
    out: list[tuple[str, str]] = []
    if isinstance(doc, dict) and doc:
        for k, v in doc.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        out.append((prefix, doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False)))
    return out


@router.get("/aep/datasets")
def datasets(request: Request):
    sess, t = tenant_of(request)
    svc = services(request)
    rows = svc.catalog.list_datasets(t, {"limit": LIST_LIMIT})
    return page(request, "aep_datasets.html", sess, active="datasets", rows=rows)


@router.get("/aep/datasets/{dataset_id}")
def dataset_detail(request: Request, dataset_id: str):
    sess, t = tenant_of(request)
    svc = services(request)
    ds = svc.catalog.get_dataset(t, dataset_id)
    batches = svc.catalog.list_batches(t, {"dataSet": dataset_id, "limit": LIST_LIMIT})
    return page(request, "aep_dataset.html", sess, active="datasets", ds=ds, batches=batches, batch_active=BATCH_ACTIVE)


@router.get("/aep/status/batches")
def batch_status(request: Request):
    _, t = tenant_of(request)
    out = {}
    for bid in request.query_params.getlist("id")[:LIST_LIMIT]:
        try:
            b = services(request).catalog.get_batch(t, bid)
            out[bid] = {"status": b.status, "progress": None}
        except DomainError:
            out[bid] = {"status": "deleted", "progress": None}
    return JSONResponse(out)


def lookup(svc, t: Tenant, namespace: str, value: str) -> dict | None:
    """The merged profile of an identity under the default merge policy, with its recent events;
    None when no profile holds the identity."""
    r = svc.profile_access.resolve(t.sandbox_id, ikey=f"{namespace}:{value}", xid=None, policy_id=None)
    prof = svc.profile_access.profile(t.sandbox_id, r) if r else None
    if prof is None:
        return None
    entity = dict(prof["entity"])
    identities = entity.pop("identities", [])
    entity.pop("identityMap", None)
    entity.pop("segmentMembership", None)  # shown as its own table, with the segments' names
    page_ = svc.profile_store.events(t.sandbox_id, r.pkeys, start_ms=None, end_ms=None, limit=RECENT_EVENTS, descending=True, start_event=None)
    events = [{"id": e.event_id, "time": rfc3339(e.ts_ms), "doc": json.loads(e.doc)} for e in page_.rows]
    for e in events:
        e["summary"] = ", ".join(f"{k}={v}" for k, v in flatten({k: v for k, v in e["doc"].items() if k not in ("_id", "timestamp", "identityMap")})[:6])
    names = {d.id: d.name for d in svc.catalog.list_datasets(t, {"limit": 100})}
    return {
        "dataset_names": names,
        "segments": segment_membership(svc, t.sandbox_id, prof["entityId"]),
        "xid": prof["entityId"], "attributes": flatten(entity), "identities": identities, "sources": prof["sources"], "batches": prof["tags"],
        "last_modified": prof["lastModifiedAt"], "events": events, "more_events": bool(page_.next_id), "pkeys": r.pkeys,
    }


def segment_membership(svc, sandbox_id: str, xid: str) -> list[dict]:
    """The profile's segment membership (as its `segmentMembership` map says), with segment names."""
    from userlens.profiles.segments import SegmentDefinition, membership_map

    ups = membership_map(svc.profile_store, sandbox_id, xid).get("ups", {})
    if not ups:
        return []
    with svc.db.session() as s:
        names = dict(s.execute(select(SegmentDefinition.id, SegmentDefinition.name).where(SegmentDefinition.sandbox_id == sandbox_id, SegmentDefinition.id.in_(list(ups)))).all())
    return [{"id": sid, "name": names.get(sid, sid), "status": m["status"], "time": m["lastQualificationTime"]} for sid, m in ups.items()]


@router.get("/aep/profiles")
def profiles(request: Request, namespace: str = "", identity: str = ""):
    sess, t = tenant_of(request)
    svc = services(request)
    result, error = None, None
    if namespace and identity:
        try:
            result = lookup(svc, t, namespace.strip(), identity.strip())
        except TooManyIdentities as exc:
            error = exc.details
        except NotFound as exc:  # e.g. the default merge policy is missing
            error = exc.details
        if result is None and error is None:
            error = f"No profile holds the identity {namespace}:{identity} in sandbox {t.sandbox_name}."
    elif namespace or identity:
        error = "Give both the identity namespace and the identity value."
    return page(request, "aep_profile.html", sess, active="profiles", namespace=namespace, identity=identity, result=result, error=error)
