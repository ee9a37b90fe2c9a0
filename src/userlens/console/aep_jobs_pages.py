"""AEP console pages for the sandbox's segments (with their latest counts, create, evaluate),
profile export jobs (start, status, metrics, the batch they write, cancel) and delete requests
(system jobs: create, status, metrics, remove). The services are profiles/segments.py, export.py and
system_jobs.py; the forms build the same bodies a client sends to the API."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy import func, select

from userlens.console.aep_pages import LIST_LIMIT, flatten, tenant_of
from userlens.console.web import check_csrf, error_message, make_router, page, read_form, services
from userlens.errors import DomainError
from userlens.profiles.xdm import PROFILE_SCHEMA_NAME

router = make_router()
SEGMENT_ACTIVE = ("NEW", "QUEUED", "PROCESSING", "CANCELLING")
EXPORT_ACTIVE = ("NEW", "PROCESSING")
DELETE_ACTIVE = ("NEW", "PROCESSING")


def _ms(value) -> int | None:
    return None if value is None else int(value)


# -- segments ------------------------------------------------------------------------------------
def segment_rows(svc, sandbox_id: str) -> list[dict]:
    from userlens.profiles.segments import SegmentJob, SegmentMember

    _, defs = svc.segments.list_definitions(sandbox_id, 0, LIST_LIMIT, ("creationTime", True))
    with svc.db.session() as s:
        counts: dict[str, dict[str, int]] = {}
        for seg_id, status, n in s.execute(
            select(SegmentMember.segment_id, SegmentMember.status, func.count()).where(SegmentMember.sandbox_id == sandbox_id).group_by(SegmentMember.segment_id, SegmentMember.status)
        ):
            counts.setdefault(seg_id, {})[status] = int(n)
        jobs = list(s.execute(select(SegmentJob).where(SegmentJob.sandbox_id == sandbox_id).order_by(SegmentJob.created_ms.desc()).limit(50)).scalars())
    latest: dict[str, object] = {}
    for j in jobs:  # newest first: the first job naming a segment is its latest evaluation
        for item in j.segments or []:
            latest.setdefault(item.get("segmentId"), j)
    rows = []
    for d in defs:
        c = counts.get(d.id, {})
        j = latest.get(d.id)
        rows.append({
            "id": d.id, "name": d.name, "expression": (d.expression or {}).get("value", ""), "created": d.created_ms,
            "realized": c.get("realized", 0), "existing": c.get("existing", 0), "exited": c.get("exited", 0),
            "qualified": c.get("realized", 0) + c.get("existing", 0),
            "job_status": j.status if j else None, "job_time": _ms(j.updated_ms) if j else None,
        })
    return rows


def _segments_page(request: Request, *, form=None, error=None, notice=None, status_code=200):
    sess, t = tenant_of(request)
    svc = services(request)
    rows = segment_rows(svc, t.sandbox_id)
    _, jobs = svc.segments.list_jobs(t.sandbox_id, 0, 10, None, True)
    return page(request, "aep_segments.html", sess, status_code=status_code, active="segments", rows=rows, jobs=jobs, form=form or {}, error=error,
                notice=notice, open_dialog=form is not None and error is not None, active_statuses=SEGMENT_ACTIVE)


@router.get("/aep/segments")
def segments(request: Request, job: str = ""):
    return _segments_page(request, notice=f"Segment job {job} started." if job else None)


@router.post("/aep/segments")
async def create_segment(request: Request):
    form = await read_form(request)
    return await run_in_threadpool(_create_segment, request, form)


def _create_segment(request: Request, form: dict):
    sess, t = tenant_of(request)
    check_csrf(sess, form)
    body = {"name": form.get("name", ""), "description": form.get("description") or None, "schema": {"name": PROFILE_SCHEMA_NAME},
            "expression": {"type": "PQL", "format": "pql/text", "value": form.get("expression", "")}}
    try:
        services(request).segments.create_definition(t, body)
    except DomainError as exc:
        status, message = error_message(exc, "aep")
        return _segments_page(request, form=form, error=message, status_code=status)
    return RedirectResponse("/console/aep/segments", status_code=303)


@router.post("/aep/segments/evaluate")
async def evaluate_segments(request: Request):
    form = await read_form(request)
    return await run_in_threadpool(_evaluate, request, form)


def _evaluate(request: Request, form: dict):
    sess, t = tenant_of(request)
    check_csrf(sess, form)
    try:
        j = services(request).segments.create_job(t, [{"segmentId": form.get("segment_id") or "*"}])
    except DomainError as exc:
        status, message = error_message(exc, "aep")
        return _segments_page(request, error=message, status_code=status)
    return RedirectResponse(f"/console/aep/segments?job={j.id}", status_code=303)


@router.get("/aep/status/segment-jobs")
def segment_job_status(request: Request):
    _, t = tenant_of(request)
    out = {}
    for jid in request.query_params.getlist("id")[:LIST_LIMIT]:
        try:
            out[jid] = {"status": services(request).segments.get_job(t.sandbox_id, jid).status, "progress": None}
        except DomainError:
            out[jid] = {"status": "deleted", "progress": None}
    return JSONResponse(out)


# -- export jobs ---------------------------------------------------------------------------------
def readable_metrics(metrics: dict) -> list[tuple[str, str]]:
    """Counters as they are, each timing as its duration in seconds (start and end times left out)."""
    out = []
    for k, v in flatten(metrics):
        if not k or k.endswith(("startTimeInMs", "endTimeInMs")):
            continue
        if k.endswith(".totalTimeInMs"):
            out.append((k[: -len(".totalTimeInMs")], f"{int(v) / 1000:.3f} s"))
        else:
            out.append((k, v))
    return out


def export_row(r) -> dict:
    from userlens.profiles.export import export_body

    b = export_body(r)
    dest = b.get("destination") or {}
    batches = [x.get("batchId") for x in dest.get("batches", [])] if "batches" in dest else [dest.get("batchId")]
    return {
        "id": r.id, "status": r.status, "dataset": dest.get("datasetId"), "batches": [x for x in batches if x],
        "metrics": readable_metrics(b.get("metrics") or {}),
        "errors": [e.get("msg") or e.get("message") or json.dumps(e) for e in (b.get("errors") or [])],
        "created": r.created_ms, "updated": r.updated_ms, "fields": b.get("fields"),
        "segments": [s.get("segmentId") for s in ((b.get("filter") or {}).get("segments") or [])],
    }


def _exports_page(request: Request, *, form=None, error=None, notice=None, status_code=200):
    sess, t = tenant_of(request)
    svc = services(request)
    rows, more = svc.exports.list(t.sandbox_id, limit=LIST_LIMIT, after=None, skip=0, status=None, sort=("createdTime", True))
    datasets = svc.catalog.list_datasets(t, {"limit": 100})
    _, defs = svc.segments.list_definitions(t.sandbox_id, 0, LIST_LIMIT, ("name", False))
    return page(request, "aep_exports.html", sess, status_code=status_code, active="exports", rows=[export_row(r) for r in rows], more=more,
                datasets=datasets, segments=defs, form=form or {}, error=error, notice=notice, open_dialog=form is not None and error is not None,
                active_statuses=EXPORT_ACTIVE)


@router.get("/aep/exports")
def exports(request: Request, cancelled: int | None = None):
    notice = None
    if cancelled is not None:
        _, t = tenant_of(request)
        notice = f"Export job {cancelled}: cancel requested (now {services(request).exports.get(t.sandbox_id, cancelled).status})."
    return _exports_page(request, notice=notice)


@router.post("/aep/exports")
async def start_export(request: Request):
    form = await read_form(request)
    return await run_in_threadpool(_start_export, request, form)


def _start_export(request: Request, form: dict):
    sess, t = tenant_of(request)
    check_csrf(sess, form)
    body: dict = {"destination": {"datasetId": form.get("dataset_id") or None}, "schema": {"name": PROFILE_SCHEMA_NAME}}
    if form.get("fields"):
        body["fields"] = form["fields"]
    if form.get("segment_id"):
        body["filter"] = {"segments": [{"segmentId": form["segment_id"], "segmentNs": "ups", "status": ["realized", "existing"]}]}
        if form.get("evaluate"):
            body["evaluationInfo"] = {"segmentation": True}
    if form.get("events"):
        body["additionalFields"] = {"eventList": {}}
    try:
        row = services(request).exports.create(t, body)
    except DomainError as exc:
        status, message = error_message(exc, "aep")
        return _exports_page(request, form=form, error=message, status_code=status)
    return RedirectResponse(f"/console/aep/exports?started={row.id}", status_code=303)


@router.post("/aep/exports/{export_id}/cancel")
async def cancel_export(request: Request, export_id: int):
    form = await read_form(request)
    return await run_in_threadpool(_cancel_export, request, export_id, form)


def _cancel_export(request: Request, export_id: int, form: dict):
    sess, t = tenant_of(request)
    check_csrf(sess, form)
    services(request).exports.cancel(t.sandbox_id, export_id)  # NotFound -> the error page (404)
    return RedirectResponse(f"/console/aep/exports?cancelled={export_id}", status_code=303)


@router.get("/aep/status/exports")
def export_status(request: Request):
    _, t = tenant_of(request)
    out = {}
    for raw in request.query_params.getlist("id")[:LIST_LIMIT]:
        try:
            out[raw] = {"status": services(request).exports.get(t.sandbox_id, int(raw)).status, "progress": None}
        except (DomainError, ValueError):
            out[raw] = {"status": "deleted", "progress": None}
    return JSONResponse(out)


# -- delete requests (system jobs) ---------------------------------------------------------------
def _deletes_page(request: Request, *, form=None, error=None, notice=None, status_code=200):
    from userlens.profiles.system_jobs import Listing, job_body

    sess, t = tenant_of(request)
    svc = services(request)
    total, rows = svc.system_jobs.list(t, Listing(0, LIST_LIMIT, ("createEpoch", True)))
    out = []
    for r in rows:
        b = job_body(r)
        b["metrics_dict"] = json.loads(b["metrics"]) if b.get("metrics") else {}
        out.append(b)
    datasets = svc.catalog.list_datasets(t, {"limit": 100})
    return page(request, "aep_deletes.html", sess, status_code=status_code, active="deletes", rows=out, total=total, datasets=datasets, form=form or {},
                error=error, notice=notice, open_dialog=form is not None and error is not None, active_statuses=DELETE_ACTIVE)


@router.get("/aep/delete-requests")
def delete_requests(request: Request, removed: str = ""):
    return _deletes_page(request, notice=f"Delete request {removed} removed." if removed else None)


@router.post("/aep/delete-requests")
async def create_delete_request(request: Request):
    form = await read_form(request)
    return await run_in_threadpool(_create_delete, request, form)


def _create_delete(request: Request, form: dict):
    sess, t = tenant_of(request)
    check_csrf(sess, form)
    body = {"batchId": form["batch_id"].strip()} if form.get("batch_id", "").strip() else {"dataSetId": form.get("dataset_id") or None}
    try:
        r = services(request).system_jobs.create(t, body)
    except DomainError as exc:
        status, message = error_message(exc, "aep")
        return _deletes_page(request, form=form, error=message, status_code=status)
    return RedirectResponse(f"/console/aep/delete-requests?created={r.id}", status_code=303)


@router.post("/aep/delete-requests/{request_id}/remove")
async def remove_delete_request(request: Request, request_id: str):
    form = await read_form(request)
    return await run_in_threadpool(_remove_delete, request, request_id, form)


def _remove_delete(request: Request, request_id: str, form: dict):
    sess, t = tenant_of(request)
    check_csrf(sess, form)
    try:
        services(request).system_jobs.remove(t, request_id)
    except DomainError as exc:
        status, message = error_message(exc, "aep")
        return _deletes_page(request, error=message, status_code=status)
    return RedirectResponse(f"/console/aep/delete-requests?removed={request_id}", status_code=303)


@router.get("/aep/status/delete-requests")
def delete_status(request: Request):
    _, t = tenant_of(request)
    out = {}
    for rid in request.query_params.getlist("id")[:LIST_LIMIT]:
        try:
            out[rid] = {"status": services(request).system_jobs.get(t, rid).status, "progress": None}
        except DomainError:
            out[rid] = {"status": "deleted", "progress": None}
    return JSONResponse(out)
