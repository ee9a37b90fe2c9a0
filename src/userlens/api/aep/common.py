"""What every AEP router shares: the gateway checks (reference §2.1), the error renderer of the AEP
family (§2.1-§2.4), Content-Type checks and small response helpers.

Gateway order (as Adobe's gateway answers): Authorization missing 403010; x-api-key missing 403000;
token invalid or expired 401013; x-api-key unknown or not the token's client 403003; x-gw-ims-org-id
missing 400003; org not the token's org 403025. An unknown x-sandbox-name is 403025 too (the caller
is not entitled to it; AEP's exact body for this case is not documented). A missing x-sandbox-name
falls back to the org's default (production) sandbox, as the platform does.
"""

from __future__ import annotations

import uuid

import anyio
from fastapi import Request

from userlens.api.auth import check_rate
from userlens.api.errors import ApiError
from userlens.orgs.service import MISS, Tenant

# userlens's own codes for UPS errors (AEP's exact numbers for these cases are not public): a block
# of its own, UPAPI-119xxx, that cannot collide with AEP's documented ones (e.g. UPAPI-113015-400).
UPS_TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 409: "Conflict", 422: "Unprocessable entity", 500: "Internal error"}
FOUNDATION_TITLES = {400: "BadRequestError", 401: "UnauthorizedError", 403: "ForbiddenError", 404: "NotFoundError", 405: "MethodNotAllowedError", 409: "ConflictError", 413: "PayloadTooLargeError", 415: "UnsupportedMediaTypeError", 422: "UnprocessableEntityError", 500: "InternalServerError", 503: "ServiceUnavailableError"}
STATUS_OF = {"INVALID_PARAMETER": 400, "RESOURCE_NOT_FOUND": 404, "INVALID_STATUS": 409, "RESOURCE_IN_USE": 409, "LIMIT_EXCEEDED": 400, "TOO_MANY_IDENTITIES": 422, "ALREADY_EXISTS": 422, "COMMON_ERROR": 500, "OBS_UNAVAILABLE": 503}


def gateway_error(status: int, code: str, message: str) -> ApiError:
    return ApiError(status, {"error_code": code, "message": message})


def foundation_error(status: int, detail: str) -> ApiError:
    return ApiError(status, {"type": "/placeholder/type/uri", "status": status, "title": FOUNDATION_TITLES.get(status, "Error"), "detail": detail})


def ups_error(status: int, message: str, code: str | None = None) -> ApiError:
    code = code or f"UPAPI-119{status:03d}-{status}"
    return ApiError(status, {"requestId": uuid.uuid4().hex, "errors": {str(status): [{"code": code, "message": message}]}, "type": f"https://ns.adobe.com/aep/errors/{code}", "title": message, "status": status})


def query_int(value: str | None, name: str, default: int, lo: int, hi: int | None = None) -> int:
    """An integer query parameter of the UPS endpoints (400 in the UPS body when malformed or out of range)."""
    if value in (None, ""):
        return default
    try:
        n = int(value)
    except ValueError:
        raise ups_error(400, f"{name} must be an integer") from None
    if n < lo or (hi is not None and n > hi):
        raise ups_error(400, f"{name} must be between {lo} and {hi}" if hi else f"{name} must be at least {lo}")
    return n


def access_error(status: int, message: str) -> ApiError:
    """Profile access (§2.4): ResponseErrorContext, with statusCode as a string."""
    return ApiError(status, {"message": message, "statusCode": str(status)})


def render_aep(request: Request, name: str, details: str, status: int | None = None) -> ApiError:
    st = STATUS_OF.get(name, status or 500)
    if name == "RESOURCE_NOT_FOUND" and status in (404, 405):
        st = status
    path = request.url.path
    if st >= 500:
        details = details if name != "COMMON_ERROR" else "internal error; see the server log"
    if path.startswith("/ims"):
        return ApiError(st, {"error": "invalid_request", "error_description": details})
    if path.startswith("/data/core/ups/access"):
        return access_error(st, details)
    if path.startswith("/data/core"):
        return ups_error(st, details)
    return foundation_error(st, details)


def require_json(request: Request) -> None:
    ctype = request.headers.get("content-type", "")
    if not ctype.split(";")[0].strip().lower().endswith("json"):
        raise foundation_error(400, "A valid content-type must be specified")


async def json_body(request: Request, error=None):
    import json

    require_json(request)
    raw = await request.body()
    try:
        return json.loads(raw or b"null")
    except ValueError:
        raise (error or (lambda m: foundation_error(400, m)))("the body is not valid JSON") from None


async def tenant(request: Request) -> Tenant:
    """FastAPI dependency: the (org, sandbox, client) of a request that passes the gateway. Async so
    that a cached answer costs no thread hop; the database is only queried off the event loop."""
    h = request.headers
    orgs = request.app.state.services.orgs
    auth = h.get("authorization", "")
    if not auth:
        raise gateway_error(403, "403010", "Oauth token is missing.")
    api_key = h.get("x-api-key")
    if not api_key:
        raise gateway_error(403, "403000", "Api Key is required")
    scheme, _, token = auth.partition(" ")
    org = h.get("x-gw-ims-org-id")
    # One session for every check (token, client, sandbox); the error order stays the gateway's.
    info = None
    if scheme.lower() == "bearer" and token.strip():
        args = (token.strip(), org, h.get("x-sandbox-name") or None)
        info = orgs.gateway_cached(*args)
        if info is MISS:
            info = await anyio.to_thread.run_sync(orgs.gateway, *args)
    if info is None:
        raise gateway_error(401, "401013", "Oauth token is not valid")
    if api_key != info.client_id or not info.client_valid:
        raise gateway_error(403, "403003", "Api Key is invalid")
    if not org:
        raise gateway_error(400, "400003", "Missing header")
    if org != info.org_id:
        raise gateway_error(403, "403025", "Profile is not valid")
    if info.sandbox is None:
        raise gateway_error(403, "403025", "Profile is not valid")
    sb_id, sb_name, sb_type = info.sandbox
    t = Tenant(org, sb_id, sb_name, sb_type, api_key)
    check_rate(request, f"aep:{api_key}")  # per client id, after authentication (USERLENS_RATE_LIMIT_*)
    request.state.tenant = t
    return t


def services(request: Request):
    return request.app.state.services


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")
