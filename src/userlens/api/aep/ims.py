"""IMS token endpoint: `POST /ims/token/v3` with client credentials, as Adobe's OAuth
server-to-server flow (form-encoded or query parameters; grant_type=client_credentials)."""

from __future__ import annotations

from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["aep: ims"])


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


@router.post("/ims/token/v3", summary="Issue an access token (client credentials, 24 h)")
async def token(request: Request):
    params = {k: v for k, v in request.query_params.items()}
    ctype = request.headers.get("content-type", "")
    body = await request.body()
    if body and "json" in ctype:
        import json

        try:
            params.update({k: str(v) for k, v in json.loads(body).items()})
        except (ValueError, AttributeError):
            return _oauth_error(400, "invalid_request", "the body is not valid JSON")
    elif body:
        params.update({k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()})
    grant = params.get("grant_type", "client_credentials")
    if grant != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported; use client_credentials")
    client_id, secret = params.get("client_id"), params.get("client_secret")
    if not client_id:
        return _oauth_error(400, "invalid_client", "missing client_id parameter")
    if not secret:
        return _oauth_error(400, "invalid_client", "missing client_secret parameter")
    issued = request.app.state.services.orgs.issue_token(client_id, secret)
    if issued is None:
        return _oauth_error(400, "invalid_client", "invalid client_id or client_secret parameter")
    tok, expires_in = issued
    return {"access_token": tok, "token_type": "bearer", "expires_in": expires_in}
