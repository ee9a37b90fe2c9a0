"""The one error layer: every error leaves the API through `ApiError` and the handlers below.

NCLUE body (documented in the README and /docs): {"code": <int>, "message": "<NAME>", "details": "<text>"}.
Codes 10100-10109 are NCLUE's documented ones. NCLUE's table past 10109 is unknown, so userlens's own
codes live in a separate 19xxx block that can never collide with the real numbers.
"""

from __future__ import annotations

import logging
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sqlalchemy.exc import DataError as DBAPIDataError

from userlens.errors import DomainError

log = logging.getLogger("userlens.api")

# name -> (HTTP status, NCLUE code)
NCLUE_CODES: dict[str, tuple[int, int]] = {
    "ACCESS_DENIED": (401, 10100),
    "NAME_TOO_LONG": (422, 10101),
    "DUPLICATE_NAME": (409, 10102),
    "INVALID_PATH_CHARACTER": (422, 10103),
    "INVALID_CHARACTER_IN_TRAIN_PATH": (422, 10104),
    "INVALID_CHARACTER_IN_TEST_PATH": (422, 10105),
    "PATH_NOT_FOUND": (404, 10106),
    "TRAIN_PATH_NOT_FOUND": (404, 10107),
    "TEST_PATH_NOT_FOUND": (404, 10108),
    "PERSONAL_DATA_NOT_ALLOWED": (422, 10109),
    # userlens's own block
    "INVALID_PARAMETER": (400, 19400),
    "RESOURCE_NOT_FOUND": (404, 19404),
    "INVALID_STATUS": (409, 19409),
    "RESOURCE_IN_USE": (409, 19410),
    "MODEL_MISMATCH": (422, 19422),
    "PAYLOAD_TOO_LARGE": (413, 19413),
    "TOO_MANY_REQUESTS": (429, 19429),
    "COMMON_ERROR": (500, 19500),
    "OBS_UNAVAILABLE": (503, 19503),
}


class ApiError(Exception):
    """An error with its final status and JSON body."""

    def __init__(self, status: int, body: dict, headers: dict | None = None):
        super().__init__(body)
        self.status, self.body, self.headers = status, body, headers


def nclue_error(name: str, details: str = "") -> ApiError:
    status, code = NCLUE_CODES.get(name, NCLUE_CODES["COMMON_ERROR"])
    return ApiError(status, {"code": code, "message": name, "details": details})


def _validation_details(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg')}")
    return "; ".join(parts)


# How a DomainError or a framework error looks for each API family. A family registers a
# renderer (name, details, HTTP status hint) -> ApiError; the request path picks the family.
Renderer = Callable[[Request, str, str, int | None], ApiError]


def render_nclue(_request: Request, name: str, details: str, status: int | None = None) -> ApiError:
    err = nclue_error(name, details)
    if status is not None and name not in NCLUE_CODES:
        err.status = status
    return err


RENDERERS: dict[str, Renderer] = {"nclue": render_nclue}
# path prefix -> family; the first match wins, NCLUE is the fallback
FAMILY_PREFIXES: list[tuple[str, str]] = [("/api/v1", "nclue")]


def family_of(request: Request) -> str:
    path = request.url.path
    for prefix, family in FAMILY_PREFIXES:
        if path.startswith(prefix):
            return family
    return "nclue"


def family_error(request: Request, name: str, details: str, status: int | None = None) -> ApiError:
    """The error in the body of the request's API family."""
    return RENDERERS.get(family_of(request), render_nclue)(request, name, details, status)


def render(request: Request, name: str, details: str, status: int | None = None) -> JSONResponse:
    err = family_error(request, name, details, status)
    return JSONResponse(err.body, status_code=err.status, headers=err.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError):
        return render(request, exc.name, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return render(request, "INVALID_PARAMETER", _validation_details(exc), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, ApiError):  # e.g. a body over the size limit, wrapped by FastAPI's body parsing
            return await _api_error(request, exc.__cause__)
        name = {400: "INVALID_PARAMETER", 404: "RESOURCE_NOT_FOUND", 405: "INVALID_PARAMETER", 413: "PAYLOAD_TOO_LARGE"}.get(exc.status_code, "COMMON_ERROR")
        return render(request, name, str(exc.detail), exc.status_code)

    async def _data_error(request: Request, exc: Exception):
        # The database could not hold a value taken from the request (PostgreSQL: a NUL character in
        # a text value, a number out of a column's range): the request's fault, not the server's.
        # SQLite stores such values, so there the same request simply finds nothing.
        log.info("request value refused by the database: %s", type(getattr(exc, "orig", exc)).__name__)
        return render(request, "INVALID_PARAMETER", "a value in the request cannot be stored (a NUL character, or a number out of range)", 400)

    # SQLAlchemy's wrapper, and psycopg's own class for the look-ups that use the raw DBAPI cursor.
    app.add_exception_handler(DBAPIDataError, _data_error)
    app.add_exception_handler(OverflowError, _data_error)  # sqlite3: an integer past 64 bits
    try:
        import psycopg

        app.add_exception_handler(psycopg.DataError, _data_error)
    except ImportError:  # pragma: no cover - psycopg is a dependency
        pass

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _exc: Exception):
        # Never echo internals (they may hold paths or secrets); the log has the traceback.
        return render(request, "COMMON_ERROR", "internal error; see the server log", 500)
