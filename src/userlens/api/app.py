"""The FastAPI application factory."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from userlens import __version__
from userlens import console
from userlens.api import aep
from userlens.api.errors import install_error_handlers
from userlens.api.limits import BodySizeLimit
from userlens.api.nclue import features, shopping_intents, tasks
from userlens.config import Settings
from userlens.services import Services, build_services

log = logging.getLogger("userlens.api")

DESCRIPTION = """
userlens serves two API families on one job engine.

**NCLUE-compatible** (`/api/v1/...`): requests are signed the NCP way (headers `x-ncp-apigw-timestamp`,
`x-ncp-iam-access-key`, `x-ncp-apigw-signature-v2`). Errors have the body
`{"code": <int>, "message": "<NAME>", "details": "<text>"}`: NCLUE's documented codes 10100-10109, and
userlens's own block 19400 INVALID_PARAMETER (400), 19404 RESOURCE_NOT_FOUND (404), 19409 INVALID_STATUS
(409), 19410 RESOURCE_IN_USE (409), 19422 MODEL_MISMATCH (422: models differ, or no reference panel for the
Task's model), 19500 COMMON_ERROR (500), 19503 OBS_UNAVAILABLE (503).
Lists take `index` (an offset, default 0) and `limit` (1-100, default 20), newest first; `total` counts
every item. Timestamps are ISO 8601 with offset, in UTC.

**Shopping Intent** profiles score a *reference panel* (people with behaviour sequences, gender, age group
and shopping interests, imported by the operator with `userlens panel import`; a synthetic panel ships
with userlens) with a Task. The resembling group is the top 10% of the panel by Task score, each member
weighted by its score; the result gives, per gender, age group and top-20 interest, the share in the
group, the share in the panel and the lift (their ratio).
"""


def create_app(settings: Settings | None = None, services: Services | None = None, *, start_workers: bool | None = None) -> FastAPI:
    settings = settings or (services.settings if services else Settings())
    svc = services or build_services(settings)
    run_workers = settings.workers > 0 if start_workers is None else start_workers

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = svc.make_worker(settings.workers) if run_workers else None
        if worker:
            worker.start()
            log.info("started %d in-process worker threads", settings.workers)
        try:
            yield
        finally:
            if worker:
                worker.stop()

    app = FastAPI(title="userlens", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.services = svc
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_request_bytes=settings.max_request_bytes, max_upload_bytes=settings.max_upload_bytes)
    aep.install(app)

    @app.get("/healthz", tags=["service"], summary="Liveness and dependency check")
    def healthz():
        checks = {}
        try:
            with svc.db.session() as s:
                s.connection().exec_driver_sql("SELECT 1")
            checks["database"] = "ok"
        except Exception as exc:  # report, don't raise: health endpoints must answer
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            svc.store.bucket_exists(settings.internal_bucket)
            checks["object_store"] = "ok"
        except Exception as exc:
            checks["object_store"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return {"status": "ok" if ok else "degraded", "version": __version__, "checks": checks}

    app.include_router(features.router)
    for router in (tasks.tasks_router, tasks.runs_router, tasks.custom_attributes_router, shopping_intents.router, shopping_intents.download_router):
        app.include_router(router)
    console.install(app)  # the web console at /console (server-rendered, same services)
    return app
