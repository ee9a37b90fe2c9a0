"""Profile access (§10): `GET /data/core/ups/access/entities` (a profile, or a profile's events with
paging) and `POST` for several. Errors use ResponseErrorContext (`statusCode` a string)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from userlens.api.aep.common import access_error, services, tenant
from userlens.errors import NotFound
from userlens.orgs.service import Tenant
from userlens.profiles.access import MAX_PROPERTY_FILTERS, PropertyFilter, TooManyIdentities, rfc3339, select_fields
from userlens.profiles.store import shared_read
from userlens.profiles.xdm import EVENT_SCHEMA_NAME, PROFILE_SCHEMA_NAME, native_xid

router = APIRouter(prefix="/data/core/ups/access", tags=["aep: profile access"])
MAX_EVENTS = 1000


def _unknown(entity_id: str) -> dict:
    return {"entityId": entity_id, "sources": [""], "entity": {}, "lastModifiedAt": "1970-01-01T00:00:00Z"}


def _resolve(request: Request, t: Tenant, entity_id: str | None, ns: str | None, policy_id: str | None):
    if not entity_id:
        raise access_error(400, "entityId is required")
    access = services(request).profile_access
    try:
        if ns:
            return access.resolve(t.sandbox_id, ikey=f"{ns}:{entity_id}", xid=None, policy_id=policy_id)
        return access.resolve(t.sandbox_id, ikey=None, xid=entity_id, policy_id=policy_id)
    except TooManyIdentities as exc:
        raise access_error(422, f"Too many related identities. {exc.details}") from None
    except NotFound as exc:
        raise access_error(404, exc.details) from None


def _int(value, name: str, default=None):
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise access_error(400, f"{name} must be an integer") from None


def _property_filters(values: list[str]):
    """The `property=` event filters (at most 3) as one predicate on the event, or None."""
    if not values:
        return None
    if len(values) > MAX_PROPERTY_FILTERS:
        raise access_error(400, f"at most {MAX_PROPERTY_FILTERS} property filters")
    try:
        filters = [PropertyFilter.parse(v) for v in values]
    except ValueError as exc:
        raise access_error(400, str(exc)) from None
    return lambda doc: all(f.matches(doc) for f in filters)


def _events(request: Request, t: Tenant, r, *, start_ms, end_ms, limit, orderby, start, fields, where=None):
    if not 1 <= limit <= MAX_EVENTS:
        raise access_error(400, f"limit must be between 1 and {MAX_EVENTS}")
    if orderby.lstrip("+-") != "timestamp":
        raise access_error(400, "orderby must be timestamp, +timestamp or -timestamp")
    store = services(request).profile_store
    page = store.events(t.sandbox_id, r.pkeys, start_ms=start_ms, end_ms=end_ms, limit=limit, descending=orderby.startswith("-"), start_event=start, where=where)
    children = [
        {"relatedEntityId": r.xid, "entityId": e.event_id, "timestamp": e.ts_ms, "entity": select_fields(json.loads(e.doc), fields), "lastModifiedAt": rfc3339(e.ingest_ms)}
        for e in page.rows
    ]
    return {"_page": {"orderby": orderby, "start": children[0]["entityId"] if children else "", "count": len(children), "next": page.next_id}, "children": children}


@router.get("/entities", summary="A profile by identity, or a profile's ExperienceEvents")
def get_entities(request: Request, t: Tenant = Depends(tenant)):
    with shared_read(services(request).db):  # one session for the whole look-up
        return _get_entities(request, t)


def _get_entities(request: Request, t: Tenant):
    q = request.query_params
    schema = q.get("schema.name")
    fields = [f for f in q.get("fields", "").split(",") if f] or None
    if schema == PROFILE_SCHEMA_NAME:
        r = _resolve(request, t, q.get("entityId"), q.get("entityIdNS"), q.get("mergePolicyId"))
        body = services(request).profile_access.profile(t.sandbox_id, r, fields) if r else None
        if body is None:
            raise access_error(404, f"The entity {q.get('entityId')} is not found.")
        return JSONResponse({r.xid: body})  # JSON-native already: skip jsonable_encoder
    if schema == EVENT_SCHEMA_NAME:
        if q.get("relatedSchema.name", PROFILE_SCHEMA_NAME) != PROFILE_SCHEMA_NAME:
            raise access_error(400, f"relatedSchema.name must be {PROFILE_SCHEMA_NAME}")
        r = _resolve(request, t, q.get("relatedEntityId"), q.get("relatedEntityIdNS"), q.get("mergePolicyId"))
        limit = _int(q.get("limit"), "limit", MAX_EVENTS)
        orderby = q.get("orderby", "timestamp").replace(" ", "+")
        if r is None:
            return {"_page": {"orderby": orderby, "start": "", "count": 0, "next": ""}, "children": [], "_links": {"next": {"href": ""}}}
        where = _property_filters(q.getlist("property"))
        out = _events(request, t, r, start_ms=_int(q.get("startTime"), "startTime"), end_ms=_int(q.get("endTime"), "endTime"), limit=limit, orderby=orderby, start=q.get("start"), fields=fields, where=where)
        nxt = ""
        if out["_page"]["next"]:
            params = [(k, v) for k, v in q.multi_items() if k != "start"]
            nxt = "/entities?" + urlencode([("start", out["_page"]["next"]), *params])
        out["_links"] = {"next": {"href": nxt}}
        return out
    raise access_error(400, f"schema.name is required: {PROFILE_SCHEMA_NAME} or {EVENT_SCHEMA_NAME}")


@router.delete("/entities", status_code=202, summary="Delete a profile from the profile store")
def delete_entity(request: Request, t: Tenant = Depends(tenant)):
    """§10.3: the profile the identity resolves to under the merge policy (its whole graph with
    identityGraph pdg, the one identity with none) leaves the profile store: its record fragments,
    its events and its identity links. The batches' files stay in the data lake. Done at once; 202
    as AEP answers."""
    q = request.query_params
    if q.get("schema.name") != PROFILE_SCHEMA_NAME:
        raise access_error(400, f"schema.name must be {PROFILE_SCHEMA_NAME}")
    svc = services(request)
    with shared_read(svc.db):
        r = _resolve(request, t, q.get("entityId"), q.get("entityIdNS"), q.get("mergePolicyId"))
    removed = svc.profile_store.delete_entity(t.sandbox_id, r.pkeys) if r else 0
    if not removed:
        raise access_error(404, f"The entity {q.get('entityId')} is not found.")
    return Response(status_code=202)


@router.post("/entities", summary="Several profiles, or the events of several profiles")
async def post_entities(request: Request, t: Tenant = Depends(tenant)):
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise access_error(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise access_error(400, "the body must be a JSON object")
    schema = (body.get("schema") or {}).get("name") if isinstance(body.get("schema"), dict) else None
    ids = body.get("identities")
    if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
        raise access_error(400, "identities must hold 1 to 100 items")
    fields = body.get("fields") if isinstance(body.get("fields"), list) else None
    policy_id = body.get("mergePolicyId")
    return await anyio.to_thread.run_sync(_post, request, t, body, schema, ids, fields, policy_id)


def _post(request, t, body, schema, ids, fields, policy_id):
    with shared_read(services(request).db):  # one session for every identity of the request
        return _post_in_session(request, t, body, schema, ids, fields, policy_id)


def _post_in_session(request, t, body, schema, ids, fields, policy_id):
    out: dict = {}
    failed = False
    access = services(request).profile_access
    for item in ids:
        if not isinstance(item, dict):
            raise access_error(400, "each identity must be an object")
        if schema == PROFILE_SCHEMA_NAME:
            eid = item.get("entityId")
            ns = (item.get("entityIdNS") or {}).get("code") if isinstance(item.get("entityIdNS"), dict) else item.get("entityIdNS")
            key = native_xid(f"{ns}:{eid}") if ns else str(eid)
            try:
                r = _resolve(request, t, eid, ns, policy_id)
            except Exception as exc:
                from userlens.api.errors import ApiError

                if isinstance(exc, ApiError) and exc.status in (404, 422):
                    out[key] = {"xid": key, "error": exc.body}
                    failed = True
                    continue
                raise
            prof = access.profile(t.sandbox_id, r, fields) if r else None
            out[r.xid if prof else key] = prof or _unknown(str(eid))
        elif schema == EVENT_SCHEMA_NAME:
            rid = item.get("relatedEntityId")
            ns = (item.get("relatedEntityIdNS") or {}).get("code") if isinstance(item.get("relatedEntityIdNS"), dict) else item.get("relatedEntityIdNS")
            r = _resolve(request, t, rid, ns, policy_id)
            key = r.xid if r else (native_xid(f"{ns}:{rid}") if ns else str(rid))
            if r is None:
                out[key] = {"_page": {"orderby": "timestamp", "start": "", "count": 0, "next": ""}, "children": [], "_links": {"next": {"href": ""}}}
                continue
            tf = body.get("timeFilter") or {}
            page = _events(request, t, r, start_ms=tf.get("startTime"), end_ms=tf.get("endTime"), limit=int(body.get("limit", MAX_EVENTS)), orderby=str(body.get("orderby", "timestamp")), start=item.get("start"), fields=fields)
            nxt = {"href": ""}
            if page["_page"]["next"]:
                nxt = {"href": "/entities", "payload": {**body, "identities": [{**item, "start": page["_page"]["next"]}]}}
            page["_links"] = {"next": nxt}
            out[key] = page
        else:
            raise access_error(400, f"schema.name is required: {PROFILE_SCHEMA_NAME} or {EVENT_SCHEMA_NAME}")
    return JSONResponse(out, status_code=207 if failed else 200)
