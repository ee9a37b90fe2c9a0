"""Catalog Service (§5): `/data/foundation/catalog/dataSets` and `/batches`. Lists are JSON objects
keyed by id; `properties` restricts the returned top-level fields."""

from __future__ import annotations

import re

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from userlens.api.aep.common import json_body, services, tenant
from userlens.orgs.service import Tenant
from userlens.profiles.catalog import parse_listing
from userlens.profiles.models import Batch, Dataset

router = APIRouter(prefix="/data/foundation/catalog", tags=["aep: catalog"])


def dataset_body(ds: Dataset) -> dict:
    view = ds.id[::-1]  # one view per dataset; a stable 24-hex id distinct from the dataset's
    out = {
        "name": ds.name,
        "description": ds.description,
        "imsOrg": ds.org_id,
        "sandboxId": ds.sandbox_id,
        "version": f"1.0.{ds.version}",
        "created": ds.created_ms,
        "updated": ds.updated_ms,
        "createdClient": ds.created_client,
        "createdUser": ds.created_client,
        "updatedUser": ds.created_client,
        "viewId": view,
        "files": f"@/dataSets/{ds.id}/views/{view}/files",
        "schemaRef": ds.schema_ref,
        # AEP adds system tags and a classification to every dataset; clients (aepp) read them.
        "tags": {**ds.tags, "adobe/pqs/table": [re.sub(r"[^a-z0-9_]", "_", ds.name.lower())[:100]], "adobe/siphon/table/format": ["parquet"]},
        "classification": {"dataBehavior": {"record": "record", "time-series": "time-series"}.get(ds.behaviour, "record"), "managedBy": "CUSTOMER"},
        "state": "DRAFT",
        "lastBatchId": ds.last_batch_id,
        "lastBatchStatus": ds.last_batch_status,
        **({"fileDescription": ds.file_description} if ds.file_description is not None else {}),
        **(ds.extra or {}),
    }
    return {k: v for k, v in out.items() if v is not None}


def batch_body(b: Batch) -> dict:
    out = {
        "id": b.id,
        "imsOrg": b.org_id,
        "sandboxId": b.sandbox_id,
        "status": b.status,
        "created": b.created_ms,
        "updated": b.updated_ms,
        "createdClient": b.created_client,
        "createdUser": b.created_client,
        "updatedUser": b.created_client,
        "externalId": b.external_id,
        "inputFormat": b.input_format,
        "relatedObjects": [{"type": "dataSet", "id": b.dataset_id}],
        "version": "1.0.0",
        "tags": b.tags or {},
        "started": b.started_ms,
        "completed": b.completed_ms,
        "recordCount": b.record_count,
        "failedRecordCount": b.failed_record_count,
        "errors": b.errors,
        "size": b.size,
        "metrics": b.metrics or {},
    }
    return {k: v for k, v in out.items() if v is not None}


def _pick(body: dict, props: list[str] | None) -> dict:
    return body if not props else {k: v for k, v in body.items() if k in props}


@router.post("/dataSets", status_code=201, summary="Create a dataset")
async def create_dataset(request: Request, t: Tenant = Depends(tenant)):
    body = await json_body(request)
    ds = services(request).catalog.create_dataset(t, body)
    return JSONResponse([f"@/dataSets/{ds.id}"], status_code=201, headers={"Location": f"/data/foundation/catalog/dataSets/{ds.id}"})


@router.get("/dataSets", summary="List datasets (keyed by id)")
def list_datasets(request: Request, t: Tenant = Depends(tenant)):
    params = dict(request.query_params)
    props = parse_listing(params)[3]
    return {ds.id: _pick(dataset_body(ds), props) for ds in services(request).catalog.list_datasets(t, params)}


@router.get("/dataSets/{dataset_id}", summary="Get a dataset")
def get_dataset(dataset_id: str, request: Request, t: Tenant = Depends(tenant)):
    ds = services(request).catalog.get_dataset(t, dataset_id)
    props = parse_listing(dict(request.query_params))[3]
    return {ds.id: _pick(dataset_body(ds), props)}


@router.put("/dataSets/{dataset_id}", summary="Replace a dataset's fields")
async def put_dataset(dataset_id: str, request: Request, t: Tenant = Depends(tenant)):
    body = await json_body(request)
    await anyio.to_thread.run_sync(services(request).catalog.update_dataset, t, dataset_id, body, True)
    return [f"@/dataSets/{dataset_id}"]


@router.patch("/dataSets/{dataset_id}", summary="Change some of a dataset's fields")
async def patch_dataset(dataset_id: str, request: Request, t: Tenant = Depends(tenant)):
    body = await json_body(request)
    await anyio.to_thread.run_sync(services(request).catalog.update_dataset, t, dataset_id, body, False)
    return [f"@/dataSets/{dataset_id}"]


@router.delete("/dataSets/{dataset_id}", summary="Delete a dataset, its batches and its profile data")
def delete_dataset(dataset_id: str, request: Request, t: Tenant = Depends(tenant)):
    svc = services(request)
    svc.catalog.delete_dataset(t, dataset_id)
    svc.ingest.delete_dataset_data(t.org_id, t.sandbox_id, dataset_id)
    return [f"@/dataSets/{dataset_id}"]


@router.get("/batches", summary="List batches (keyed by id)")
def list_batches(request: Request, t: Tenant = Depends(tenant)):
    params = dict(request.query_params)
    props = parse_listing(params)[3]
    return {b.id: _pick(batch_body(b), props) for b in services(request).catalog.list_batches(t, params)}


@router.get("/batches/{batch_id}", summary="Get a batch")
def get_batch(batch_id: str, request: Request, t: Tenant = Depends(tenant)):
    b = services(request).catalog.get_batch(t, batch_id)
    props = parse_listing(dict(request.query_params))[3]
    return {b.id: _pick(batch_body(b), props)}
