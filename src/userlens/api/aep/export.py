"""Profile export jobs (§3, seed 001): `POST/GET /data/core/ups/export/jobs`,
`GET/DELETE /data/core/ups/export/jobs/{id}`.

Listing: newest first (`createdTime desc`); `limit` (default 20, 1-100) and `offset`, which is either
the `page.pageOffset` token of the previous page (`{creationTime}_{id}` of its last record, as AEP
writes it) or a number of records to skip; `start` and `page` (0-based) are accepted as numbers too,
`status` filters, `sort=createdTime|updateTime:asc|desc` (the token applies to createdTime order).
`link.next` is empty on the last page. DELETE answers 204 with an empty body (the seed's form) and
cancels a job that has not finished; the job ends FAILED with a CANCELLED error entry."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import JSONResponse

from userlens.api.aep.common import json_body, query_int, services, tenant, ups_error
from userlens.orgs.service import Tenant
from userlens.profiles.export import export_body

router = APIRouter(prefix="/data/core/ups/export", tags=["aep: profile export"])

EXAMPLE = {
    "fields": "identities.id,personalEmail.address",
    "mergePolicy": {"id": "e5bc94de-cd14-4cdf-a2bc-88b6e8cbfac2", "version": 1},
    "filter": {
        "segments": [{"segmentId": "4edc8488-2c35-4f6d-b4c6-9075c68d2df4", "segmentNs": "ups", "status": ["realized"]}],
        "segmentQualificationTime": {"startTime": "2019-09-01T00:00:00Z", "endTime": "2019-09-02T00:00:00Z"},
        "fromIngestTimestamp": "2018-10-25T13:22:04-07:00",
        "emptyProfiles": False,
    },
    "additionalFields": {"eventList": {"fields": "environment.browserDetails.name,environment.browserDetails.version", "filter": {"fromIngestTimestamp": "2018-10-25T13:22:04-07:00"}}},
    "destination": {"datasetId": "5b020a27e7040801dedba61b", "segmentPerBatch": False},
    "schema": {"name": "_xdm.context.profile"},
    "evaluationInfo": {"segmentation": True},
}


JOB_EXAMPLE = {
    "profileInstanceId": "ups", "jobType": "BATCH", "id": 24115, "fields": "identities.id,personalEmail.address",
    "filter": {"segments": [{"segmentId": "4edc8488-2c35-4f6d-b4c6-9075c68d2df4", "segmentNs": "ups", "status": ["realized"]}]},
    "schema": {"name": "_xdm.context.profile"}, "mergePolicy": {"id": "0bf16e61-90e9-4204-b8fa-ad250360957b", "version": 1},
    "status": "SUCCEEDED", "requestId": "4bb8fbd04e0b4a1b9c5c8b4ae8f5c0d4", "computeGatewayJobId": {"exportJob": "305a2e5c-2cf3-4746-9b3d-3c5af0437754", "pushJob": "963f275e-91a3-4fa1-8417-d2ca00b16a8a"},
    "metrics": {
        "totalTime": {"startTimeInMs": 1547053539564, "endTimeInMs": 1547053541929, "totalTimeInMs": 2365},
        "profileExportTime": {"startTimeInMs": 1547053539600, "endTimeInMs": 1547053541800, "totalTimeInMs": 2200},
        "aCPDatasetWriteTime": {"startTimeInMs": 1547053541500, "endTimeInMs": 1547053541900, "totalTimeInMs": 400},
        "totalExportedProfileCounter": 2, "exportedProfileByNamespaceCounter": {"email": 2},
    },
    "destination": {"datasetId": "5cf6bcf79ecc7c14530fe436", "segmentPerBatch": False, "batchId": "01JFSYFDFW9JAAEKHX672JMPSB"},
    "updateTime": 1547053541929, "imsOrgId": "{IMS_ORG}", "creationTime": 1547053539564,
}
FAILED_EXAMPLE = {**JOB_EXAMPLE, "status": "FAILED", "errors": [{"code": "CANCELLED", "msg": "Export job 24115 was cancelled by request (DELETE /export/jobs/24115); no batch was published.", "callStack": "userlens.profiles.export"}], "destination": {"datasetId": "5cf6bcf79ecc7c14530fe436", "segmentPerBatch": False, "batchId": ""}}
LIST_EXAMPLE = {"records": [JOB_EXAMPLE], "page": {"sortField": "createdTime", "sort": "desc", "pageOffset": "1547053539564_24115", "pageSize": 1}, "link": {"next": "/export/jobs/?limit=1&offset=1547053539564_24115"}}


def _example(body: dict) -> dict:
    return {200: {"content": {"application/json": {"example": body}}}}


def _id(value: str) -> int:
    try:
        job_id = int(value)
    except ValueError:
        job_id = -1
    if not 0 < job_id < 2**63:  # ids are positive 64-bit integers: anything else names no job
        raise ups_error(404, f"Export job '{value}' not found") from None
    return job_id


@router.post("/jobs", summary="Create a profile export job", responses=_example({**JOB_EXAMPLE, "status": "NEW", "metrics": {"totalTime": {"startTimeInMs": 1547053539564}}, "computeGatewayJobId": {}}))
async def create_export(request: Request, t: Tenant = Depends(tenant), body: dict[str, Any] = Body(None, examples=[EXAMPLE])):
    body = await json_body(request, error=lambda m: ups_error(400, m))
    row = await anyio.to_thread.run_sync(services(request).exports.create, t, body)
    return JSONResponse(export_body(row), headers={"X-Location": f"/data/core/ups/export/jobs/{row.id}"})


@router.get("/jobs", summary="List export jobs (records, page, link.next)", responses=_example(LIST_EXAMPLE))
def list_exports(request: Request, t: Tenant = Depends(tenant)):
    q = request.query_params
    limit = query_int(q.get("limit"), "limit", 20, 1, 1000)
    after, skip = None, 0
    offset = q.get("offset")
    field, _, direction = (q.get("sort") or "createdTime:desc").partition(":")
    if field not in ("createdTime", "creationTime", "updateTime") or direction not in ("", "asc", "desc"):
        raise ups_error(400, "sort must be createdTime|updateTime:asc|desc")
    desc = direction != "asc"
    if offset not in (None, "") and "_" in offset:
        ms, _, rid = offset.partition("_")
        try:
            after = (int(ms), int(rid))
        except ValueError:
            raise ups_error(400, "offset must be a pageOffset token ({creationTime}_{id}) or a number") from None
        if field == "updateTime":
            raise ups_error(400, "a pageOffset token pages in createdTime order; use a number offset with sort=updateTime")
    else:
        skip = query_int(offset, "offset", 0, 0)
    if q.get("start") not in (None, ""):
        skip = query_int(q.get("start"), "start", 0, 0)
    if q.get("page") not in (None, ""):
        skip = query_int(q.get("page"), "page", 0, 0) * limit
    status = q.get("status")
    if status and status not in ("NEW", "PROCESSING", "SUCCEEDED", "FAILED"):
        raise ups_error(400, "status must be NEW, PROCESSING, SUCCEEDED or FAILED")
    rows, more = services(request).exports.list(t.sandbox_id, limit=limit, after=after, skip=skip, status=status, sort=(field, desc))
    token = f"{rows[-1].created_ms}_{rows[-1].id}" if rows else ""
    nxt = ""
    if more:
        keyset = field != "updateTime" and skip == 0
        nxt = f"/export/jobs/?limit={limit}&offset={token if keyset else skip + limit}"
        if q.get("sort"):
            nxt += f"&sort={field}:{direction or 'desc'}"
        if status:
            nxt += f"&status={status}"
    return {"records": [export_body(r) for r in rows], "page": {"sortField": "createdTime" if field == "creationTime" else field, "sort": "desc" if desc else "asc", "pageOffset": token, "pageSize": len(rows)}, "link": {"next": nxt}}


@router.get("/jobs/{export_id}", summary="Get an export job (a cancelled job: FAILED with a CANCELLED error)", responses={200: {"content": {"application/json": {"examples": {"succeeded": {"value": JOB_EXAMPLE}, "cancelled": {"value": FAILED_EXAMPLE}}}}}})
def get_export(export_id: str, request: Request, t: Tenant = Depends(tenant)):
    return export_body(services(request).exports.get(t.sandbox_id, _id(export_id)))


@router.delete("/jobs/{export_id}", status_code=204, summary="Cancel an export job (204, empty body)")
def cancel_export(export_id: str, request: Request, t: Tenant = Depends(tenant)):
    services(request).exports.cancel(t.sandbox_id, _id(export_id))
    return Response(status_code=204)
