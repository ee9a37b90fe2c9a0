"""One router shape for every NCLUE resource: POST (create), GET (list), GET/DELETE /{id}.

Each resource module supplies its pydantic schemas (for the docs) and two mappers: the resource as
returned by GET, and the POST answer. Routes hold only HTTP; the domain service does the rest."""


import inspect
from typing import Any, Callable

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, create_model

from userlens.api.auth import nclue_account
from userlens.api.nclue.common import iso, job_extensions, job_fields
from userlens.api.pagination import NcluePage, nclue_page


def common_fields(row) -> dict:
    """status, created_at, completed_at, fail_message and the userlens extensions."""
    job = job_fields(row.job)
    return {"status": job["status"], "created_at": iso(row.created_at), "completed_at": job["completed_at"], "fail_message": job["fail_message"], **job_extensions(row.job)}


def crud_router(
    *,
    prefix: str,
    tag: str,
    service: str,
    noun: str,
    list_key: str,
    id_name: str,
    create_schema: type[BaseModel],
    public_schema: type[BaseModel],
    created_schema: type[BaseModel],
    to_public: Callable[[Any], dict],
    to_created: Callable[[Any], dict],
) -> APIRouter:
    router = APIRouter(prefix=prefix, tags=[tag])
    list_schema = create_model(f"{public_schema.__name__}List", index=(int, ...), limit=(int, ...), total=(int, ...), **{list_key: (list[public_schema], ...)})
    deleted_schema = create_model(f"{public_schema.__name__}Deleted", **{id_name: (str, ...)})

    def svc(request: Request):
        return getattr(request.app.state.services, service)

    @router.post("", response_model=created_schema, summary=f"Create a {noun} (asynchronous: poll GET until completed or failed)")
    def create(body: create_schema, request: Request, account_id: str = Depends(nclue_account)):  # type: ignore[valid-type]
        return to_created(svc(request).create(account_id, body.model_dump()))

    @router.get("", response_model=list_schema, summary=f"List {noun}s, newest first")
    def list_(request: Request, page: NcluePage = Depends(nclue_page), account_id: str = Depends(nclue_account)):
        total, rows = svc(request).list(account_id, page.index, page.limit)
        return page.envelope(total, list_key, [to_public(r) for r in rows])

    def get(request: Request, account_id: str = Depends(nclue_account), **path):
        return to_public(svc(request).get(account_id, path[id_name]))

    def delete(request: Request, account_id: str = Depends(nclue_account), **path):
        return {id_name: svc(request).delete(account_id, path[id_name])}

    # FastAPI reads path parameters from the signature: give get/delete one named `id_name`.
    for fn in (get, delete):
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
        params.insert(0, inspect.Parameter(id_name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str))
        fn.__signature__ = sig.replace(parameters=params)
    router.add_api_route(f"/{{{id_name}}}", get, methods=["GET"], response_model=public_schema, summary=f"Get a {noun}")
    router.add_api_route(f"/{{{id_name}}}", delete, methods=["DELETE"], response_model=deleted_schema, summary=f"Delete a {noun} (refused while it or a job using it runs)")
    return router
