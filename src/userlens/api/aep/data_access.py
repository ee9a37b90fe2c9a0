"""Data Access API (§7): list a batch's files and download them (with Range support).

Each Parquet part a batch wrote to the lake is one dataSetFile, id "{batchId}-{n}" (n from 1)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from userlens.api.aep.common import base_url, foundation_error, services, tenant
from userlens.errors import NotFound
from userlens.orgs.service import Tenant

router = APIRouter(prefix="/data/foundation/export", tags=["aep: data access"])
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1024 * 1024


def _page_params(request: Request) -> tuple[int, int]:
    try:
        start = int(request.query_params.get("start", 0))
        limit = int(request.query_params.get("limit", 100))
    except ValueError:
        raise foundation_error(400, "start and limit must be integers") from None
    if start < 0 or not 1 <= limit <= 100:
        raise foundation_error(400, "start must be >= 0 and limit between 1 and 100")
    return start, limit


def _batch_files(request: Request, t: Tenant, batch_id: str):
    try:
        b = services(request).catalog.get_batch(t, batch_id)
    except NotFound:
        raise foundation_error(404, f"Batch {batch_id} not found") from None
    return b, (b.lake_files or []) if b.status == "success" else []


@router.get("/batches/{batch_id}/files", summary="List a batch's dataset files")
def batch_files(batch_id: str, request: Request, t: Tenant = Depends(tenant)):
    start, limit = _page_params(request)
    b, files = _batch_files(request, t, batch_id)
    base = base_url(request)
    data = [
        {
            "dataSetFileId": f"{b.id}-{i + 1}",
            "dataSetViewId": b.dataset_id[::-1],
            "version": "1.0.0",
            "created": str(b.completed_ms or b.created_ms),
            "updated": str(b.updated_ms),
            "isValid": True,
            "records": f["records"],
            "size": f["size"],
            "_links": {"self": {"href": f"{base}/data/foundation/export/files/{b.id}-{i + 1}"}},
        }
        for i, f in enumerate(files)
    ][start : start + limit]
    out = {"data": data, "_page": {"limit": limit, "count": len(data)}}
    if start + limit < len(files):
        out["_links"] = {"next": {"href": f"{base}/data/foundation/export/batches/{b.id}/files?start={start + limit}&limit={limit}"}}
    return out


def _file(request: Request, t: Tenant, file_id: str) -> dict:
    batch_id, _, n = file_id.rpartition("-")
    if not batch_id or not n.isdigit():
        raise foundation_error(404, f"File {file_id} not found")
    _, files = _batch_files(request, t, batch_id)
    i = int(n) - 1
    if not 0 <= i < len(files):
        raise foundation_error(404, f"File {file_id} not found")
    return files[i]


# GET and HEAD as two routes: one api_route with both methods gives both the same operationId.
@router.get("/files/{file_id}", summary="A dataset file: its listing, or its content with ?path=", operation_id="getDatasetFile")
@router.head("/files/{file_id}", summary="A dataset file's headers (size, ranges) without its content", operation_id="headDatasetFile")
def get_file(file_id: str, request: Request, t: Tenant = Depends(tenant)):
    f = _file(request, t, file_id)
    path = request.query_params.get("path")
    if path is None:
        base = base_url(request)
        return {"data": [{"name": f["name"], "length": str(f["size"]), "_links": {"self": {"href": f"{base}/data/foundation/export/files/{file_id}?path={f['name']}"}}}], "_page": {"limit": 100, "count": 1}}
    if path != f["name"]:
        raise foundation_error(404, f"{path} not found in file {file_id}")
    size = int(f["size"])
    headers = {"Accept-Ranges": "bytes", "Content-Type": "application/parquet"}
    start, end, status = 0, size - 1, 200
    rng = request.headers.get("range")
    if rng:
        m = RANGE_RE.match(rng.strip())
        if not m or (not m.group(1) and not m.group(2)):
            raise foundation_error(416, f"unsupported Range {rng!r}")
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # suffix range: the last N bytes
            start = max(0, size - int(m.group(2)))
        if start > end or start >= size:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    svc = services(request)

    def body():
        with svc.store.open_read(svc.settings.internal_bucket, f["key"]) as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                data = fh.read(min(CHUNK, left))
                if not data:
                    break
                left -= len(data)
                yield data

    return StreamingResponse(body(), status_code=status, headers=headers, media_type="application/parquet")
