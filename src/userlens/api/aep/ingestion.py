"""Batch Ingestion API (§6): create a batch, PUT files (streamed), COMPLETE / ABORT."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends, Request, Response

from userlens.api.aep.catalog import batch_body
from userlens.api.aep.common import foundation_error, json_body, services, tenant
from userlens.orgs.service import Tenant

router = APIRouter(prefix="/data/foundation/import", tags=["aep: batch ingestion"])


@router.post("/batches", status_code=201, summary="Create a batch")
async def create_batch(request: Request, t: Tenant = Depends(tenant)):
    body = await json_body(request)
    b = await anyio.to_thread.run_sync(services(request).ingest.create_batch, t, body)
    return batch_body(b)


@router.put("/batches/{batch_id}/datasets/{dataset_id}/files/{path:path}", summary="Upload a file (octet-stream, streamed)")
async def upload(batch_id: str, dataset_id: str, path: str, request: Request, t: Tenant = Depends(tenant)):
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/octet-stream", "application/json", "application/x-parquet", "text/csv", "application/parquet"):
        raise foundation_error(415, "Upload the file's bytes with Content-Type: application/octet-stream")
    ingest = services(request).ingest
    key, writer = await anyio.to_thread.run_sync(ingest.begin_upload, t, batch_id, dataset_id, path)
    try:
        async for chunk in request.stream():
            if chunk:
                await anyio.to_thread.run_sync(writer.put, chunk)
        size = await anyio.to_thread.run_sync(writer.close)
    except BaseException:
        await anyio.to_thread.run_sync(writer.abort)
        raise
    created = await anyio.to_thread.run_sync(ingest.finish_upload, t, batch_id, path, key, size)
    return Response(status_code=201 if created else 200)


@router.post("/batches/{batch_id}", summary="Signal COMPLETE, ABORT or REVERT")
def batch_action(batch_id: str, request: Request, t: Tenant = Depends(tenant)):
    action = (request.query_params.get("action") or "").upper()
    ingest = services(request).ingest
    if action == "COMPLETE":
        ingest.complete(t, batch_id)
    elif action == "ABORT":
        ingest.abort(t, batch_id)
    elif action == "REVERT":
        ingest.revert(t, batch_id)
    else:
        raise foundation_error(400, "action must be COMPLETE, ABORT or REVERT")
    return Response(status_code=200)
