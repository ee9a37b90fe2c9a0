"""Sign-in and sign-out: an NCLUE access key and secret, or an AEP org's client credentials.

The secret is checked once (accounts/service.py or orgs/service.py) and never stored, logged or
rendered back; a failed sign-in says only that the pair is wrong."""

from __future__ import annotations

import logging
import secrets

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from userlens.console.session import COOKIE, PRE_COOKIE, csrf_ok, new_session, set_cookie
from userlens.console.web import make_router, page, read_form, services, signer

router = make_router()
log = logging.getLogger("userlens.console")


def _login_page(request: Request, error: str | None = None, mode: str = "nclue", values: dict | None = None, status_code: int = 200):
    token = secrets.token_urlsafe(24)
    resp = page(request, "login.html", None, status_code=status_code, csrf=token, error=error, mode=mode, values=values or {})
    set_cookie(request, resp, PRE_COOKIE, token, max_age=3600)
    return resp


@router.get("/login")
def login_form(request: Request):
    return _login_page(request)


@router.post("/login")
async def login(request: Request):
    form = await read_form(request)
    return await run_in_threadpool(_login, request, form)


def _login(request: Request, form: dict):
    mode = form.get("mode", "nclue")
    # Safe values to show again (never the secret).
    values = {k: form.get(k, "") for k in ("access_key", "client_id", "sandbox")}
    if not csrf_ok(request.cookies.get(PRE_COOKIE), form.get("csrf")):
        return _login_page(request, "The sign-in form expired; try again.", mode, values, 403)
    svc = services(request)
    if mode == "aep":
        client_id, secret, sandbox = form.get("client_id", "").strip(), form.get("client_secret", ""), form.get("sandbox", "").strip() or None
        org_id = svc.orgs.verify_client(client_id, secret) if client_id and secret else None
        sb = svc.orgs.sandbox(org_id, sandbox) if org_id else None
        if org_id is None:
            log.info("console sign-in refused for client %s", client_id[:64])
            return _login_page(request, "Wrong client ID or client secret.", mode, values, 401)
        if sb is None:
            return _login_page(request, f"The organisation has no sandbox named {sandbox!r}.", mode, values, 401)
        session = new_session(kind="aep", org_id=org_id, sandbox=sb.name, client_id=client_id)
        target = "/console/aep/datasets"
    else:
        access_key, secret = form.get("access_key", "").strip(), form.get("secret_key", "")
        account_id = svc.accounts.verify(access_key, secret) if access_key and secret else None
        if account_id is None:
            log.info("console sign-in refused for access key %s", access_key[:64])
            return _login_page(request, "Wrong access key or secret key.", mode, values, 401)
        session = new_session(kind="nclue", account_id=account_id, access_key=access_key)
        target = "/console/"
    resp = RedirectResponse(target, status_code=303)
    set_cookie(request, resp, COOKIE, signer(request).dumps(session))
    resp.delete_cookie(PRE_COOKIE, path="/console", httponly=True, samesite="strict")
    return resp


@router.post("/logout")
async def logout(request: Request):
    form = await read_form(request)
    sess = signer(request).loads(request.cookies.get(COOKIE))
    resp = RedirectResponse("/console/login", status_code=303)
    if sess is None or csrf_ok(sess.csrf, form.get("csrf")):
        resp.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
    return resp
