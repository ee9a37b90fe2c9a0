"""What every console page shares: the router (its routes render errors as HTML pages), templates,
the signed-in session, CSRF checks, form parsing and how a domain error reads on a page.

The console calls the domain services in process (`request.app.state.services`), so its
validation messages are the services' own, word for word the `details` of the API's error bodies.
"""

from __future__ import annotations

import datetime as dt
from importlib.resources import files
from typing import Callable
from urllib.parse import parse_qs

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute, APIRouter
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from userlens.api.errors import nclue_error
from userlens.console.session import COOKIE, Session, SessionSigner, csrf_ok
from userlens.errors import DomainError

TEMPLATES = Jinja2Templates(directory=str(files("userlens.console") / "templates"))

STATUS_LABELS = {"registered": "Registered", "pending": "Pending", "in_progress": "In progress", "completed": "Available", "failed": "Failed", "cancelled": "Cancelled"}
ACTIVE = ("registered", "pending", "in_progress")


# The browser may load nothing from elsewhere, nor frame the console; inline style attributes only
# (bar widths), no inline script.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    pass


class Forbidden(Exception):
    """A CSRF failure, or a page of the other kind of sign-in."""


class ConsoleRoute(APIRoute):
    """Renders what console handlers raise as pages: sign-in redirects, and domain errors (the same
    name, code and details the API would answer) on an error page."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired:
                response = RedirectResponse("/console/login", status_code=303)
            except Forbidden as exc:
                response = page(request, "error.html", None, status_code=403, title="Forbidden", message=str(exc))
            except DomainError as exc:
                status, message = error_message(exc, "aep" if request.url.path.startswith("/console/aep") else "nclue")
                response = page(request, "error.html", getattr(request.state, "console_session", None), status_code=status, title="Error", message=message)
            response.headers.update(SECURITY_HEADERS)
            return response

        return route


def make_router() -> APIRouter:
    return APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


def services(request: Request):
    return request.app.state.services


def signer(request: Request) -> SessionSigner:
    s = getattr(request.app.state, "console_signer", None)
    if s is None:
        s = request.app.state.console_signer = SessionSigner(services(request).accounts.derive_key("console-session"))
    return s


def current(request: Request, kind: str | None = None) -> Session:
    """The signed-in session (re-checked against the key or client, which may have been revoked)."""
    sess = signer(request).loads(request.cookies.get(COOKIE))
    if sess is None:
        raise LoginRequired()
    svc = services(request)
    if sess.kind == "nclue":
        found = svc.accounts.lookup(sess.access_key)
        if found is None or found[0] != sess.account_id:
            raise LoginRequired()
    elif sess.kind == "aep":
        if not svc.orgs.client_exists(sess.client_id):
            raise LoginRequired()
    else:
        raise LoginRequired()
    if kind and sess.kind != kind:
        raise Forbidden("this page belongs to the other kind of sign-in: " + ("NCLUE access keys" if kind == "nclue" else "AEP client credentials"))
    request.state.console_session = sess
    return sess


async def read_form(request: Request) -> dict[str, str]:
    """An url-encoded form (last value of each field); the CSRF token is checked by `check_csrf`."""
    raw = await request.body()
    return {k: v[-1] for k, v in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items()}


def check_csrf(sess: Session, form: dict) -> None:
    if not csrf_ok(sess.csrf, form.get("csrf")):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page and try again")


def error_message(exc: DomainError, family: str = "nclue") -> tuple[int, str]:
    """The API's answer to this error as one line: for NCLUE the status, code, name and details;
    for AEP the status and the details (AEP bodies carry no NCLUE code)."""
    if family == "aep":
        from userlens.api.aep.common import STATUS_OF

        return STATUS_OF.get(exc.name, 500), exc.details
    err = nclue_error(exc.name, exc.details)
    body = err.body
    return err.status, f"{body['code']} {body['message']}: {body['details']}"


def page(request: Request, template: str, sess: Session | None, status_code: int = 200, **ctx) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, template, {"session": sess, **ctx}, status_code=status_code)


# -- template filters ----------------------------------------------------------------------------
def fmt_time(value) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, (int, float)):  # AEP epoch milliseconds
        value = dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_bytes(n) -> str:
    from userlens.console.charts import human_bytes

    return "—" if n is None else human_bytes(n)


def fmt_num(n) -> str:
    return "—" if n is None else f"{n:,}"


def badge(status: str | None, progress: float | None = None) -> Markup:
    status = status or "unknown"
    label = STATUS_LABELS.get(status, status)
    prog = f' <span class="progress">{progress * 100:.0f}%</span>' if status == "in_progress" and progress is not None else ""
    return Markup('<span class="badge badge-{s}" data-status="{s}">{l}{p}</span>').format(s=status, l=label, p=Markup(prog))


TEMPLATES.env.filters.update(time=fmt_time, bytes=fmt_bytes, num=fmt_num)
TEMPLATES.env.globals.update(badge=badge, ACTIVE=ACTIVE)
