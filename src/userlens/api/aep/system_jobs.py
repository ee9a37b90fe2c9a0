"""Profile system jobs (§4.1, Generation 1): `/data/core/ups/system/jobs`, delete requests that
remove a dataset's or an ExperienceEvent batch's data from the profile store (profiles/system_jobs.py).

Paging: `start` (offset), `limit` (1-100, default 100), `page` (0-based, offset start + page x limit),
`sort` (`field:asc|desc`; createEpoch, updateEpoch, id, dataSetId, batchId, status, imsOrgId; default
createEpoch:desc). `_page.count` is the number of requests in the sandbox; `_page.next` is an opaque
token for the next page ("" on the last one), to send as `?start={next}` or, as AEP's docs describe,
in place of the id: `GET /system/jobs/{next}`. The token keeps the sort, so sorting works across pages.
"""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from userlens.api.aep.common import json_body, services, tenant, ups_error
from userlens.api.errors import ApiError
from userlens.errors import NotFound
from userlens.orgs.service import Tenant
from userlens.profiles.system_jobs import BatchNotEventType, Listing, job_body, parse_listing, parse_token

router = APIRouter(prefix="/data/core/ups/system/jobs", tags=["aep: profile system jobs"])


class SystemJobCreate(BaseModel):
    """Exactly one target: a dataset (record or time-series) or a batch of a time-series dataset."""

    dataSetId: str | None = Field(None, description="Delete everything this dataset gave the profile store (`datasetId` is accepted too).")
    batchId: str | None = Field(None, description="Delete one batch; only for ExperienceEvent (time-series) datasets, else HTTP 400.")


class SystemJobOut(BaseModel):
    id: str = Field(description="UUID of the request (read-only).")
    imsOrgId: str
    dataSetId: str | None = Field(None, description="Present for a dataset delete.")
    batchId: str | None = Field(None, description="Present for a batch delete.")
    jobType: Literal["DELETE"] = "DELETE"
    status: Literal["NEW", "PROCESSING", "COMPLETED", "ERROR"]
    metrics: str | None = Field(None, description='JSON string {"recordsProcessed": int, "timeTakenInSec": int}; absent while NEW.')
    createEpoch: int = Field(description="Epoch seconds.")
    updateEpoch: int = Field(description="Epoch seconds.")


class PageInfo(BaseModel):
    count: int = Field(description="Requests in the sandbox (all pages).")
    next: str = Field(description='Token of the next page ("" on the last): ?start={next} or GET /system/jobs/{next}.')


class SystemJobList(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    page: PageInfo = Field(alias="_page")
    children: list[SystemJobOut]


class UpsErrorItem(BaseModel):
    code: str
    message: str


class LegacyUpsError(BaseModel):
    requestId: str
    errors: dict[str, list[UpsErrorItem]]


def _record_batch_error(batch_id: str) -> ApiError:
    """The seed's body, byte for byte in shape: no type/title/status, inner code "500" (§2.3)."""
    return ApiError(400, {"requestId": str(uuid.uuid4()), "errors": {"400": [{"code": "500", "message": f"Batch can only be specified for EE type '{batch_id}'"}]}})


def _page(request: Request, t: Tenant, listing: Listing) -> dict:
    total, rows = services(request).system_jobs.list(t, listing)
    end = listing.offset + len(rows)
    nxt = Listing(end, listing.limit, listing.sort).token() if rows and end < total else ""
    return {"_page": {"count": total, "next": nxt}, "children": [job_body(r) for r in rows]}


@router.get("", response_model=SystemJobList, response_model_exclude_none=True, summary="List delete requests")
def list_jobs(
    request: Request,
    t: Tenant = Depends(tenant),
    start: str | None = Query(None, description="Offset (0 or more), or a `_page.next` token."),
    limit: str | None = Query(None, description="Requests per page, 1-100. Default 100."),
    page: str | None = Query(None, description="0-based page number in pages of `limit`: the offset is start + page x limit."),
    sort: str | None = Query(None, description="field:asc or field:desc; createEpoch (default, desc), updateEpoch, id, dataSetId, batchId, status, imsOrgId."),
):
    params = {k: v for k, v in (("start", start), ("limit", limit), ("page", page), ("sort", sort)) if v is not None}
    return _page(request, t, parse_listing(params))


_CREATE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": SystemJobCreate.model_json_schema(), "examples": {"dataset": {"value": {"dataSetId": "5c802d3cd83fc114b741c4b5"}}, "batch": {"value": {"batchId": "8d075b5a178e48389126b9289dcfd0ac"}}}}}}}


@router.post(
    "",
    response_model=SystemJobOut,
    response_model_exclude_none=True,
    summary="Create a delete request (asynchronous: poll GET until COMPLETED or ERROR)",
    openapi_extra=_CREATE_BODY,
    responses={400: {"model": LegacyUpsError, "description": "Invalid body, or a batch of a record dataset (legacy UPS body, inner code \"500\")"}, 404: {"description": "Dataset or batch not found"}, 422: {"description": "A request for this dataset or batch is still NEW or PROCESSING"}},
)
async def create_job(request: Request, t: Tenant = Depends(tenant)):
    body = await json_body(request, error=lambda m: ups_error(400, m))
    try:
        r = await run_in_threadpool(services(request).system_jobs.create, t, body)
    except BatchNotEventType as exc:
        raise _record_batch_error(exc.batch_id) from None
    return job_body(r)


@router.get("/{job_id}", response_model=SystemJobOut | SystemJobList, response_model_exclude_none=True, summary="Get a delete request (or, given a _page.next token, the next page of the list)", responses={404: {"description": "Delete request (Profile System Job) not found"}})
def get_job(job_id: str, request: Request, t: Tenant = Depends(tenant)):
    try:
        return job_body(services(request).system_jobs.get(t, job_id))
    except NotFound:
        listing = parse_token(job_id)
        if listing is None:
            raise
        return _page(request, t, listing)


@router.delete("/{job_id}", summary="Remove a delete request (200, empty body; a later GET is 404)", responses={404: {"description": "Delete request (Profile System Job) not found"}})
def delete_job(job_id: str, request: Request, t: Tenant = Depends(tenant)):
    services(request).system_jobs.remove(t, job_id)
    return Response(status_code=200)
