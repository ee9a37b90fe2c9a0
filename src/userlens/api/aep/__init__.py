"""AEP-compatible routers (one module per area) and the AEP error family.

`install(app)` registers the "aep" renderer for paths under /data and /ims (api/errors.py picks a
family by path prefix) and mounts the routers."""

from __future__ import annotations

from fastapi import FastAPI

from userlens.api import errors


def install(app: FastAPI) -> None:
    from userlens.api.aep import catalog, common, data_access, entities, ims, ingestion, merge_policies
    from userlens.api.aep import export as export_jobs
    from userlens.api.aep import segments

    errors.RENDERERS["aep"] = common.render_aep
    for prefix in ("/data", "/ims"):
        if (prefix, "aep") not in errors.FAMILY_PREFIXES:
            errors.FAMILY_PREFIXES.append((prefix, "aep"))
    for module in (ims, catalog, ingestion, data_access, merge_policies, entities, segments, export_jobs):
        app.include_router(module.router)
    from userlens.api.aep import system_jobs

    app.include_router(system_jobs.router)
