"""Segmentation (§8): `/data/core/ups/segment/definitions` (create, list, get, delete) and
`/data/core/ups/segment/jobs` (create, list, get, cancel). Errors use the UPS envelope (§2.3)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import JSONResponse

from userlens.api.aep.common import json_body, query_int, services, tenant, ups_error
from userlens.orgs.service import Tenant
from userlens.profiles.segments import TooManyJobs, definition_body, job_body

router = APIRouter(prefix="/data/core/ups/segment", tags=["aep: segmentation"])

PQL_EXAMPLE = {
    "name": "US adults",
    "schema": {"name": "_xdm.context.profile"},
    "expression": {"type": "PQL", "format": "pql/text", "value": 'homeAddress.country = "US" and person.age >= 18'},
    "mergePolicyId": None,
    "description": "Profiles in the US aged 18 or more",
}


SANDBOX = {"sandboxId": "ff0f6870-c46d-11e9-8ca3-036939a64204", "sandboxName": "prod", "type": "production", "default": True}
DEF_EXAMPLE = {
    "id": "4afe34ae-8c98-4513-8a1d-67ccaa54bc05", "name": "US adults", "description": "", "imsOrgId": "{IMS_ORG}", "sandbox": SANDBOX, "profileInstanceId": "ups",
    "schema": {"name": "_xdm.context.profile"}, "expression": PQL_EXAMPLE["expression"], "mergePolicyId": "0bf16e61-90e9-4204-b8fa-ad250360957b",
    "evaluationInfo": {"batch": {"enabled": True}, "continuous": {"enabled": False}, "synchronous": {"enabled": False}}, "dataGovernancePolicy": {"excludeOptOut": True},
    "creationTime": 1559674261657, "updateTime": 1559674261657, "updateEpoch": 1559674261, "version": 1,
}
JOB_EXAMPLE = {
    "id": "d3b4a50d-dfea-43eb-9fca-22ea69b6c4c3", "imsOrgId": "{IMS_ORG}", "sandbox": SANDBOX, "profileInstanceId": "ups", "source": "api", "status": "SUCCEEDED",
    "computeJobId": "7d5f4b0e-1b7a-4c55-9c7e-2f7b1f1c2a11", "computeGatewayJobId": "7d5f4b0e-1b7a-4c55-9c7e-2f7b1f1c2a11",
    "segments": [{"segmentId": DEF_EXAMPLE["id"], "segment": {"id": DEF_EXAMPLE["id"], "version": 1, "expression": PQL_EXAMPLE["expression"], "mergePolicyId": DEF_EXAMPLE["mergePolicyId"], "mergePolicy": {"id": DEF_EXAMPLE["mergePolicyId"], "version": 1}}}],
    "metrics": {
        "totalTime": {"startTimeInMs": 1573203617195, "endTimeInMs": 1573204395655, "totalTimeInMs": 778460},
        "profileSegmentationTime": {"startTimeInMs": 1573204266727, "endTimeInMs": 1573204395655, "totalTimeInMs": 128928},
        "totalProfiles": 13146432, "segmentedProfileCounter": {DEF_EXAMPLE["id"]: 1033}, "segmentedProfileByNamespaceCounter": {DEF_EXAMPLE["id"]: {"email": 1033}},
        "segmentedProfileByStatusCounter": {DEF_EXAMPLE["id"]: {"realized": 40, "existing": 993, "exited": 12}}, "totalProfilesByMergePolicy": {DEF_EXAMPLE["mergePolicyId"]: 13146432},
    },
    "requestId": "4e538382-dbd8-449e-988a-4ac639ebe72b", "schema": {"name": "_xdm.context.profile"},
    "_links": {"cancel": {"href": "/data/core/ups/segment/jobs/d3b4a50d-dfea-43eb-9fca-22ea69b6c4c3", "method": "DELETE"}, "checkStatus": {"href": "/data/core/ups/segment/jobs/d3b4a50d-dfea-43eb-9fca-22ea69b6c4c3", "method": "GET"}},
    "creationTime": 1573203617195, "updateTime": 1573204395655, "updateEpoch": 1573204395,
}


def _example(body) -> dict:
    return {200: {"content": {"application/json": {"example": body}}}}


def _sandbox(t: Tenant) -> dict:
    return {"sandboxId": t.sandbox_id, "sandboxName": t.sandbox_name, "type": t.sandbox_type, "default": t.sandbox_type == "production"}


@router.post("/definitions", summary="Create a segment definition (PQL subset: see README)", responses=_example(DEF_EXAMPLE))
async def create_definition(request: Request, t: Tenant = Depends(tenant), body: dict[str, Any] = Body(None, examples=[PQL_EXAMPLE])):
    body = await json_body(request, error=lambda m: ups_error(400, m))
    d = await anyio.to_thread.run_sync(services(request).segments.create_definition, t, body)
    return JSONResponse(definition_body(d, _sandbox(t)), headers={"X-Location": f"/data/core/ups/segment/definitions/{d.id}"})


@router.get("/definitions", summary="List segment definitions", responses=_example({"segments": [DEF_EXAMPLE], "page": {"totalCount": 1, "totalPages": 1, "sortField": "creationTime", "sort": "desc", "pageSize": 1, "limit": 100}, "link": {}}))
def list_definitions(request: Request, t: Tenant = Depends(tenant)):
    q = request.query_params
    limit = query_int(q.get("limit"), "limit", 100, 1, 1000)
    start = query_int(q.get("start"), "start", 0, 0)
    if q.get("page") not in (None, ""):
        start = query_int(q.get("page"), "page", 0, 0) * limit
    field, _, direction = (q.get("sort") or "creationTime:desc").partition(":")
    if field not in ("name", "creationTime", "updateTime", "updateEpoch") or direction not in ("", "asc", "desc"):
        raise ups_error(400, "sort must be FIELD:asc|desc with FIELD one of name, creationTime, updateTime, updateEpoch")
    total, rows = services(request).segments.list_definitions(t.sandbox_id, start, limit, (field, direction == "desc"))
    page = {"totalCount": total, "totalPages": (total + limit - 1) // limit, "sortField": field, "sort": direction or "asc", "pageSize": len(rows), "limit": limit}
    link = {"next": f"/data/core/ups/segment/definitions?start={start + limit}&limit={limit}&sort={field}:{direction or 'asc'}"} if start + limit < total else {}
    return {"segments": [definition_body(d, _sandbox(t)) for d in rows], "page": page, "link": link}


@router.get("/definitions/{segment_id}", summary="Get a segment definition", responses=_example(DEF_EXAMPLE))
def get_definition(segment_id: str, request: Request, t: Tenant = Depends(tenant)):
    return definition_body(services(request).segments.get_definition(t.sandbox_id, segment_id), _sandbox(t))


@router.delete("/definitions/{segment_id}", summary="Delete a segment definition (and its membership)", responses=_example({"status": True, "message": "Segment definition with id '4afe34ae-8c98-4513-8a1d-67ccaa54bc05' has been deleted"}))
def delete_definition(segment_id: str, request: Request, t: Tenant = Depends(tenant)):
    services(request).segments.delete_definition(t.sandbox_id, segment_id)
    return {"status": True, "message": f"Segment definition with id '{segment_id}' has been deleted"}


@router.post("/jobs", summary="Evaluate segments: [{\"segmentId\": ...}]", responses=_example({**JOB_EXAMPLE, "status": "NEW", "metrics": {"totalTime": {"startTimeInMs": 1573203617195}}}))
async def create_job(request: Request, t: Tenant = Depends(tenant), body: Any = Body(None, examples=[[{"segmentId": "4edc8488-2c35-4f6d-b4c6-9075c68d2df4"}]])):
    body = await json_body(request, error=lambda m: ups_error(400, m))
    try:
        j = await anyio.to_thread.run_sync(services(request).segments.create_job, t, body)
    except TooManyJobs as exc:
        raise ups_error(429, exc.details) from None
    return JSONResponse(job_body(j, _sandbox(t)), headers={"X-Location": f"/data/core/ups/segment/jobs/{j.id}"})


@router.get("/jobs", summary="List segment jobs", responses=_example({"_page": {"totalCount": 1, "pageSize": 1}, "children": [JOB_EXAMPLE], "_links": {"next": {}}}))
def list_jobs(request: Request, t: Tenant = Depends(tenant)):
    q = request.query_params
    limit = query_int(q.get("limit"), "limit", 100, 1, 1000)
    start = query_int(q.get("start"), "start", 0, 0)
    status = q.get("status")
    if status and status not in ("NEW", "QUEUED", "PROCESSING", "CANCELLING", "CANCELLED", "FAILED", "SUCCEEDED"):
        raise ups_error(400, f"status {status!r} is not a segment job status")
    sort = q.get("sort") or "creationTime:desc"
    if sort not in ("creationTime:desc", "creationTime:asc"):
        raise ups_error(400, "sort must be creationTime:desc or creationTime:asc")
    total, rows = services(request).segments.list_jobs(t.sandbox_id, start, limit, status, sort.endswith("desc"))
    nxt = {"href": f"/data/core/ups/segment/jobs?start={start + limit}&limit={limit}"} if start + limit < total else {}
    return {"_page": {"totalCount": total, "pageSize": len(rows)}, "children": [job_body(j, _sandbox(t)) for j in rows], "_links": {"next": nxt}}


@router.get("/jobs/{job_id}", summary="Get a segment job", responses=_example(JOB_EXAMPLE))
def get_job(job_id: str, request: Request, t: Tenant = Depends(tenant)):
    return job_body(services(request).segments.get_job(t.sandbox_id, job_id), _sandbox(t))


@router.delete("/jobs/{job_id}", status_code=204, summary="Cancel a segment job (204; CANCELLING, then CANCELLED)")
def cancel_job(job_id: str, request: Request, t: Tenant = Depends(tenant)):
    services(request).segments.cancel_job(t.sandbox_id, job_id)
    return Response(status_code=204)
