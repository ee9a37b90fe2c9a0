"""Console sessions: a signed, HttpOnly, SameSite=strict cookie, and CSRF tokens for forms.

The cookie holds who signed in (an NCLUE account and its access key, or an AEP org, sandbox and
client id), a random CSRF token and an expiry, signed with HMAC-SHA256 under a key derived from the
server's master key. It never holds a secret: the secret is checked once at sign-in and dropped.
Every request re-checks that the access key or client is still active, so revoking one ends its
console sessions at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from fastapi import Request, Response

COOKIE = "userlens_console"
PRE_COOKIE = "userlens_console_pre"  # CSRF token of the sign-in form (before a session exists)
TTL_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    kind: str  # "nclue" | "aep"
    csrf: str
    expires: int
    # nclue
    account_id: str = ""
    access_key: str = ""
    # aep
    org_id: str = ""
    sandbox: str = ""
    client_id: str = ""

    @property
    def who(self) -> str:
        return f"access key {self.access_key}" if self.kind == "nclue" else f"{self.org_id} / {self.sandbox}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    def __init__(self, key: bytes):
        self._key = key

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())

    def dumps(self, session: Session) -> str:
        body = _b64(json.dumps(session.__dict__, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def loads(self, value: str | None) -> Session | None:
        if not value or "." not in value:
            return None
        body, mac = value.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            data = json.loads(_unb64(body))
            session = Session(**data)
        except (ValueError, TypeError):
            return None
        return session if session.expires > time.time() else None


def new_session(**fields) -> Session:
    return Session(csrf=secrets.token_urlsafe(24), expires=int(time.time()) + TTL_SECONDS, **fields)


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int = TTL_SECONDS) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/console", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(expected.encode(), given.encode())
