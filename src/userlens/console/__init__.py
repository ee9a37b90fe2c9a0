"""The web console, served by the API process at /console (server-rendered, works offline).

`install(app)` adds its routes and its static files (shipped in this package)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles


def install(app: FastAPI) -> None:
    from userlens.console import aep_jobs_pages, aep_pages, auth_pages, nclue_pages

    for module in (auth_pages, nclue_pages, aep_pages, aep_jobs_pages):
        app.include_router(module.router)
    app.mount("/console/static", StaticFiles(directory=str(files("userlens.console") / "static")), name="console-static")
