"""NCLUE console pages (reference §8): Dashboard, Features, Task Modeling, Task Model Run, Shopping
Intent and Custom Attributes, with their create dialogs, delete, the Task detail (performance and ROC
curve) and the Shopping Intent detail (Demographics and Shopping interests tabs, TSV download).

Rows are mapped by the API's own mappers, so a column shows exactly what GET answers."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy import func, select

from userlens.api.nclue.features import feature_public
from userlens.api.nclue.shopping_intents import shopping_intent_public
from userlens.api.nclue.tasks import custom_attributes_public, run_public, task_public
from userlens.console import charts
from userlens.console.web import check_csrf, current, error_message, make_router, page, read_form, services
from userlens.errors import DomainError
from userlens.understanding.model_registry import available_models
from userlens.understanding.models import CustomAttributes, Feature, ShoppingIntent, Task, TaskRun

router = make_router()
LIST_LIMIT = 100  # rows a console list shows (newest first); NCLUE's own console pages too


@dataclass
class Kind:
    slug: str
    service: str
    title: str
    noun: str
    id_field: str
    name_field: str
    to_public: object
    columns: list[tuple[str, str]]  # (header, key of the public dict or a computed key)
    fields: list[str] = field(default_factory=list)  # form fields passed to create()
    notes: list[str] = field(default_factory=list)


KINDS: dict[str, Kind] = {
    k.slug: k
    for k in (
        Kind("features", "features", "NCLUE Features", "Feature", "feature_id", "feature_name", feature_public,
             [("Feature ID", "feature_id"), ("NCLUE model", "nclue_model"), ("Feature name", "feature_name"), ("Status", "status"),
              ("User data bucket", "source_bucket"), ("User data file path", "source_file_path"), ("System message", "fail_message"),
              ("Creation date", "created_at"), ("Completed at", "completed_at"), ("User count", "user_count"), ("Token count", "token_count"), ("Size", "disk_usage")],
             ["name", "source_bucket", "source_file_path", "nclue_model"]),
        Kind("tasks", "tasks", "Task Modeling", "Task", "task_id", "task_name", task_public,
             [("Task ID", "task_id"), ("Task name", "task_name"), ("Status", "status"), ("Ground-truth data bucket", "buckets"),
              ("Ground-truth data file path", "paths"), ("Size", "disk_usage"), ("System message", "fail_message"), ("Creation date", "created_at"),
              ("Completed at", "completed_at"), ("Feature", "feature"), ("AUC", "auc")],
             ["name", "train_feature_id", "train_bucket", "train_file_path", "test_feature_id", "test_bucket", "test_file_path"],
             ["One Task is created at a time: Tasks of an account train one after another, in order.", "Imbalanced labels are fine.",
              "No personal information: answer files are scanned (e-mail, phone, resident registration, card and passport numbers).",
              "No size limit.", "At least 100 samples of each label (0 and 1) after joining with the Feature."]),
        Kind("task-runs", "runs", "Task Model Run", "Run", "run_id", "run_name", run_public,
             [("Run ID", "run_id"), ("Run name", "run_name"), ("Status", "status"), ("Result data bucket", "result_bucket"),
              ("Result data file path", "result_file_path"), ("System message", "fail_message"), ("Creation date", "created_at"),
              ("Completed at", "completed_at"), ("Task Model", "task_name"), ("Feature", "feature_name"), ("Row count", "line_count")],
             ["name", "task_id", "feature_id", "result_bucket", "result_file_path"]),
        Kind("shopping-intents", "shopping_intents", "Shopping Intent", "Shopping Intent profile", "profile_id", "profile_name", shopping_intent_public,
             [("Profile ID", "profile_id"), ("Profile name", "profile_name"), ("NCLUE model", "nclue_model"), ("Task Model", "task_name"),
              ("Status", "status"), ("Size", "disk_usage"), ("Creation date", "created_at"), ("Completed at", "completed_at"),
              ("Row count", "line_count"), ("System message", "fail_message"), ("Shopping Intent", "view")],
             ["name", "task_id"]),
        Kind("custom-attributes", "custom_attributes", "Custom Attributes", "Custom Attributes profile", "profile_id", "profile_name", custom_attributes_public,
             [("Profile ID", "profile_id"), ("Profile name", "profile_name"), ("Status", "status"), ("Result data bucket", "result_bucket"),
              ("Result data file path", "result_file_path"), ("System message", "fail_message"), ("Creation date", "created_at"),
              ("Completed at", "completed_at"), ("NCLUE model", "nclue_model"), ("Feature", "feature_name"), ("Row count", "line_count"),
              ("Attribute keywords", "keyword_set")],
             ["name", "feature_id", "keyword_set", "result_bucket", "result_file_path"]),
    )
}

DELETE_RULES = (
    "Delete rules: a resource that is pending or in progress cannot be deleted (wait until it is available or failed); "
    "a registered one is cancelled; a Feature or Task cannot be deleted while a job that reads it has not finished."
)


def _rows(svc, kind: Kind, account_id: str) -> tuple[int, list[dict]]:
    total, rows = getattr(svc, kind.service).list(account_id, 0, LIST_LIMIT)
    out = [kind.to_public(r) for r in rows]
    if kind.slug == "tasks":
        for d in out:
            d["buckets"] = d["train_bucket"] + (f" / test: {d['test_bucket']}" if d["test_bucket"] else "")
            d["paths"] = d["train_file_path"] + (f" / test: {d['test_file_path']}" if d["test_file_path"] else "")
            d["feature"] = f"{d['train_feature_name']} ({d['nclue_model']})"
            d["auc"] = (d["performance"] or {}).get("auc")
    if kind.slug == "custom-attributes":
        models = _feature_models(svc, account_id, {d["feature_id"] for d in out})
        for d in out:
            d["nclue_model"] = models.get(d["feature_id"])
    return total, out


def _feature_models(svc, account_id: str, ids: set[str]) -> dict[str, str]:
    if not ids:
        return {}
    with svc.db.session() as s:
        return dict(s.execute(select(Feature.id, Feature.model_name).where(Feature.account_id == account_id, Feature.id.in_(ids))).all())


def _choices(svc, account_id: str) -> dict:
    """Completed Features and Tasks for the dialogs' dropdowns."""
    _, features = svc.features.list(account_id, 0, LIST_LIMIT)
    _, tasks = svc.tasks.list(account_id, 0, LIST_LIMIT)
    return {
        "features": [(f.id, f"{f.name} ({f.model_name})") for f in features if f.job.status == "completed"],
        "tasks": [(t.id, f"{t.name} ({t.model_name})") for t in tasks if t.job.status == "completed"],
        "models": available_models(),
    }


def _list_page(request: Request, slug: str, *, form: dict | None = None, error: str | None = None, notice: str | None = None, status_code: int = 200):
    sess = current(request, "nclue")
    kind = KINDS[slug]
    svc = services(request)
    total, rows = _rows(svc, kind, sess.account_id)
    return page(
        request, "nclue_list.html", sess, status_code=status_code, kind=kind, rows=rows, total=total, limit=LIST_LIMIT,
        choices=_choices(svc, sess.account_id), form=form or {}, error=error, notice=notice, open_dialog=form is not None and error is not None,
        delete_rules=DELETE_RULES, active=slug,
    )


# -- dashboard -----------------------------------------------------------------------------------
STORAGE_FUNCTIONS = (("Feature", Feature), ("Task Model", Task), ("Shopping Intent Profile", ShoppingIntent))
COUNTED = (("Features", Feature), ("Tasks", Task), ("Runs", TaskRun), ("Shopping Intent", ShoppingIntent), ("Custom Attributes", CustomAttributes))


def last_months(today: dt.date, n: int = 5) -> list[tuple[int, int]]:
    y, m = today.year, today.month
    out = []
    for _ in range(n):
        out.append((y, m))
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


def dashboard_data(svc, account_id: str, now: dt.datetime | None = None) -> dict:
    now = now or dt.datetime.now(dt.timezone.utc)
    months = last_months(now.date())
    since = dt.datetime(months[0][0], months[0][1], 1, tzinfo=dt.timezone.utc)
    storage, counts = [], {}
    with svc.db.session() as s:
        for label, m in STORAGE_FUNCTIONS:
            storage.append((label, int(s.execute(select(func.coalesce(func.sum(m.disk_usage), 0)).where(m.account_id == account_id)).scalar_one())))
        for label, m in COUNTED:
            per = [0] * len(months)
            for (created,) in s.execute(select(m.created_at).where(m.account_id == account_id, m.created_at >= since)):
                created = created if created.tzinfo else created.replace(tzinfo=dt.timezone.utc)
                key = (created.year, created.month)
                if key in months:
                    per[months.index(key)] += 1
            counts[label] = per
    return {"storage": storage, "quota": svc.features.deps.quota_bytes, "months": [dt.date(y, m, 1).strftime("%Y-%m") for y, m in months], "counts": counts}


@router.get("/")
def dashboard(request: Request):
    sess = current(request)
    if sess.kind == "aep":
        return RedirectResponse("/console/aep/datasets", status_code=303)
    data = dashboard_data(services(request), sess.account_id)
    used = sum(b for _, b in data["storage"])
    top = max([b for _, b in data["storage"]] + [1])
    storage_chart = charts.bar_chart(
        [label for label, _ in data["storage"]], [("Used", [b for _, b in data["storage"]])],
        title="Dedicated service storage space", x_label="Stored bytes", value_format=lambda v: charts.human_bytes(v),
        notes=[f"{b / data['quota'] * 100:.4f}% of quota" for _, b in data["storage"]], width=760,
    ) if top else None
    usage_chart = charts.column_chart(
        data["months"], list(data["counts"].items()), title="Usage status per function (resources created per month)", y_label="Created", width=720
    )
    return page(request, "dashboard.html", sess, active="dashboard", data=data, used=used, storage_chart=storage_chart, usage_chart=usage_chart)


# -- lists, create, delete -----------------------------------------------------------------------
def _make_list_route(slug: str):
    def list_route(request: Request, deleted: str = ""):
        return _list_page(request, slug, notice=f"{KINDS[slug].noun} {deleted} deleted." if deleted else None)

    async def create_route(request: Request):
        form = await read_form(request)
        return await run_in_threadpool(_create, request, slug, form)

    async def delete_route(request: Request):
        form = await read_form(request)
        return await run_in_threadpool(_delete, request, slug, form)

    router.add_api_route(f"/{slug}", list_route, methods=["GET"], name=f"console-{slug}")
    router.add_api_route(f"/{slug}", create_route, methods=["POST"])
    router.add_api_route(f"/{slug}/delete", delete_route, methods=["POST"])


def _create(request: Request, slug: str, form: dict):
    sess = current(request, "nclue")
    check_csrf(sess, form)
    kind = KINDS[slug]
    # Empty inputs are absent fields, as a client leaving them out of the JSON body.
    body = {f: (form.get(f) or None) for f in kind.fields}
    if body.get("keyword_set"):  # browsers send a textarea's line breaks as CRLF; the API's separator is \n
        body["keyword_set"] = body["keyword_set"].replace("\r\n", "\n")
    if slug == "tasks" and not form.get("test_settings"):
        body.update(test_feature_id=None, test_bucket=None, test_file_path=None)
    try:
        row = getattr(services(request), kind.service).create(sess.account_id, body)
    except DomainError as exc:
        status, message = error_message(exc)
        return _list_page(request, slug, form=form, error=message, status_code=status)
    return RedirectResponse(f"/console/{slug}?created={row.id}", status_code=303)


def _delete(request: Request, slug: str, form: dict):
    sess = current(request, "nclue")
    check_csrf(sess, form)
    kind = KINDS[slug]
    row_id = form.get("id")
    if not row_id:
        return _list_page(request, slug, error=f"Select a {kind.noun} to delete.", status_code=400)
    try:
        getattr(services(request), kind.service).delete(sess.account_id, row_id)
    except DomainError as exc:
        status, message = error_message(exc)
        return _list_page(request, slug, error=f"{message}. {DELETE_RULES}", status_code=status)
    return RedirectResponse(f"/console/{slug}?deleted={row_id}", status_code=303)  # post/redirect/get: a reload never re-posts


for _slug in KINDS:
    _make_list_route(_slug)


@router.get("/status/{slug}")
def status(request: Request, slug: str):
    """Status and progress of the listed rows (the list pages poll this while jobs run)."""
    sess = current(request, "nclue")
    kind = KINDS.get(slug)
    if kind is None:
        return JSONResponse({}, status_code=404)
    out = {}
    svc = getattr(services(request), kind.service)
    for row_id in (request.query_params.getlist("id"))[:LIST_LIMIT]:
        try:
            row = svc.get(sess.account_id, row_id)
        except DomainError:
            out[row_id] = {"status": "deleted", "progress": None}
            continue
        out[row_id] = {"status": row.job.status, "progress": row.job.progress}
    return out


# -- details -------------------------------------------------------------------------------------
@router.get("/tasks/{task_id}")
def task_detail(request: Request, task_id: str):
    sess = current(request, "nclue")
    t = task_public(services(request).tasks.get(sess.account_id, task_id))
    perf = t["performance"] or {}
    roc = perf.get("roc_curve")
    chart = charts.roc_chart(roc["fpr"], roc["tpr"], perf.get("auc"), title=f"ROC curve · {t['task_name']}") if roc else None
    return page(request, "task_detail.html", sess, active="tasks", t=t, perf=perf, chart=chart)


@router.get("/shopping-intents/{profile_id}")
def intent_detail(request: Request, profile_id: str, tab: str = "demographics"):
    sess = current(request, "nclue")
    p = shopping_intent_public(services(request).shopping_intents.get(sess.account_id, profile_id))
    res = p["result"]
    tab = tab if tab in ("demographics", "interests") else "demographics"
    figures = []
    if res and tab == "demographics":
        for section, title in (("gender", "Gender"), ("age_group", "Age group")):
            rows = res[section]
            figures.append((title, rows, charts.column_chart(
                [r["key"] for r in rows], [("Resembling group", [r["group_share"] for r in rows]), ("Panel", [r["panel_share"] for r in rows])],
                title=f"{title} distribution", y_label="Share of people", share=True, width=360 if section == "gender" else 560,
            )))
    elif res:
        rows = res["interest"]
        figures.append(("Shopping interests", rows, charts.bar_chart(
            [r["key"] for r in rows], [("Resembling group", [r["group_share"] for r in rows]), ("Panel", [r["panel_share"] for r in rows])],
            title="Top shopping interests by lift", x_label="Share of people holding the interest", share=True,
            notes=[f"lift ×{r['lift']:.2f}" for r in rows], width=760,
        )))
    return page(request, "intent_detail.html", sess, active="shopping-intents", p=p, res=res, tab=tab, figures=figures)


@router.get("/shopping-intents/{profile_id}/download")
def intent_download(request: Request, profile_id: str):
    sess = current(request, "nclue")
    data = services(request).shopping_intents.download(sess.account_id, profile_id)
    return Response(data, media_type="text/tab-separated-values; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{profile_id}.tsv"'})

