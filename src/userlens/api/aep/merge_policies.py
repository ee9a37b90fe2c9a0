"""Merge policies (§9): `/data/core/ups/config/mergePolicies` CRUD, bulk-get, PATCH."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from userlens.api.aep.common import json_body, services, tenant, ups_error
from userlens.errors import NotFound
from userlens.orgs.service import Tenant
from userlens.profiles.merge import policy_body

router = APIRouter(prefix="/data/core/ups/config/mergePolicies", tags=["aep: merge policies"])


def _sandbox(t: Tenant) -> dict:
    return {"sandboxId": t.sandbox_id, "sandboxName": t.sandbox_name, "type": t.sandbox_type, "default": t.sandbox_type == "production"}


def _body(request: Request):
    return json_body(request, error=lambda m: ups_error(400, m))


def _bool(value: str | None, name: str):
    if value is None:
        return None
    if value.lower() not in ("true", "false"):
        raise ups_error(400, f"{name} must be true or false")
    return value.lower() == "true"


@router.get("", summary="List merge policies")
def list_policies(request: Request, t: Tenant = Depends(tenant)):
    q = request.query_params
    try:
        start, limit = int(q.get("start", 0)), int(q.get("limit", 20))
    except ValueError:
        raise ups_error(400, "start and limit must be integers") from None
    if start < 0 or not 1 <= limit <= 100:
        raise ups_error(400, "start must be >= 0 and limit between 1 and 100")
    order = q.get("orderBy") or q.get("orderby") or "name"
    filters = {"default": _bool(q.get("default"), "default"), "isActiveOnEdge": _bool(q.get("isActiveOnEdge"), "isActiveOnEdge"), **{k: q.get(k) for k in ("schema.name", "identityGraph.type", "attributeMerge.type")}}
    total, rows = services(request).merge_policies.list(t.sandbox_id, start=start, limit=limit, order_by=order, filters=filters)
    nxt = f"@/mergePolicies?start={start + limit}&orderBy={order}&limit={limit}" if start + limit < total else ""
    return {"_page": {"totalCount": total, "pageSize": len(rows)}, "children": [policy_body(p, _sandbox(t)) for p in rows], "_links": {"next": {"href": nxt}}}


@router.post("", summary="Create a merge policy")
async def create_policy(request: Request, t: Tenant = Depends(tenant)):
    body = await _body(request)
    mp = services(request).merge_policies.create(t.org_id, t.sandbox_id, body)
    return policy_body(mp, _sandbox(t))


@router.post("/bulk-get", status_code=207, summary="Several merge policies by id")
async def bulk_get(request: Request, t: Tenant = Depends(tenant)):
    body = await _body(request)
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
        raise ups_error(400, "The number of requested IDs is invalid. Cannot be 0 or exceed 100.", "UPAPI-113015-400")
    out = {}
    for item in ids:
        pid = item.get("id") if isinstance(item, dict) else None
        try:
            out[pid] = policy_body(services(request).merge_policies.get(t.sandbox_id, str(pid)), _sandbox(t))
        except NotFound:
            continue
    return JSONResponse({"results": out}, status_code=207)


@router.get("/{policy_id}", summary="Get a merge policy")
def get_policy(policy_id: str, request: Request, t: Tenant = Depends(tenant)):
    return policy_body(services(request).merge_policies.get(t.sandbox_id, policy_id), _sandbox(t))


@router.put("/{policy_id}", summary="Replace a merge policy")
async def put_policy(policy_id: str, request: Request, t: Tenant = Depends(tenant)):
    body = await _body(request)
    return policy_body(services(request).merge_policies.replace(t.sandbox_id, policy_id, body), _sandbox(t))


@router.patch("/{policy_id}", summary="Patch a merge policy")
async def patch_policy(policy_id: str, request: Request, t: Tenant = Depends(tenant)):
    body = await _body(request)
    return policy_body(services(request).merge_policies.patch(t.sandbox_id, policy_id, body), _sandbox(t))


@router.delete("/{policy_id}", summary="Delete a merge policy (200, empty body)")
def delete_policy(policy_id: str, request: Request, t: Tenant = Depends(tenant)):
    services(request).merge_policies.delete(t.sandbox_id, policy_id)
    return Response(status_code=200)
