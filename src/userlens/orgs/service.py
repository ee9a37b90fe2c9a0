"""Organisations, sandboxes, client credentials and token issue/verification.

Tokens are opaque random strings (not JWTs): verification is one indexed look-up of their SHA-256,
so revoking a client revokes its tokens at once. They expire after 24 h, like IMS access tokens.
Client secrets are random 256-bit values, so a plain SHA-256 (no slow KDF) cannot be brute-forced.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, select

from userlens.orgs.models import AccessToken, ApiClient, Org, Sandbox
from userlens.storage.db import Database, utcnow

TOKEN_TTL = dt.timedelta(hours=24)
DEFAULT_SANDBOX = "prod"


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Tenant:
    """Who is calling and where: the scope of every AEP request."""

    org_id: str
    sandbox_id: str
    sandbox_name: str
    sandbox_type: str
    client_id: str


@dataclass(frozen=True)
class GatewayInfo:
    client_id: str
    org_id: str
    client_valid: bool
    sandbox: tuple[str, str, str] | None  # (id, name, type)


@dataclass(frozen=True)
class OrgCredentials:
    org_id: str
    sandbox: str
    client_id: str
    client_secret: str


GATEWAY_CACHE_SECONDS = 5.0
MISS = object()  # successful gateway checks are reused this long (revocation here clears them)


class OrgService:
    def __init__(self, db: Database):
        self.db = db
        self._gw_cache: dict[tuple, tuple[float, dt.datetime, "GatewayInfo"]] = {}

    # -- administration (CLI) ------------------------------------------------------------------
    def create_org(self, name: str, sandbox: str = DEFAULT_SANDBOX) -> OrgCredentials:
        """An org with its default production sandbox and one client credential."""
        org_id = f"{secrets.token_hex(12).upper()}@AdobeOrg"
        with self.db.session() as s:
            if s.execute(select(Org.id).where(Org.name == name)).first():
                raise ValueError(f"an org named {name!r} already exists")
            s.add(Org(id=org_id, name=name))
            s.flush()
            s.add(Sandbox(id=str(uuid.uuid4()), org_id=org_id, name=sandbox, type="production", is_default=True))
        client_id, secret = self.create_client(org_id)
        return OrgCredentials(org_id, sandbox, client_id, secret)

    def create_sandbox(self, org_id: str, name: str, type: str = "development") -> str:
        sid = str(uuid.uuid4())
        with self.db.session() as s:
            s.add(Sandbox(id=sid, org_id=org_id, name=name.lower(), type=type, is_default=False))
        return sid

    def create_client(self, org_id: str) -> tuple[str, str]:
        client_id = secrets.token_hex(16)
        secret = f"p8e-{secrets.token_urlsafe(32)}"
        with self.db.session() as s:
            s.add(ApiClient(client_id=client_id, org_id=org_id, secret_hash=_sha(secret)))
        return client_id, secret

    def revoke_client(self, client_id: str) -> bool:
        with self.db.session() as s:
            c = s.get(ApiClient, client_id)
            if c is None:
                return False
            c.revoked = True
            s.execute(delete(AccessToken).where(AccessToken.client_id == client_id))
        self._gw_cache.clear()
        return True

    def list_orgs(self) -> list[tuple[str, str, list[str]]]:
        with self.db.session() as s:
            orgs = s.execute(select(Org).order_by(Org.created_at)).scalars().all()
            return [(o.id, o.name, list(s.execute(select(Sandbox.name).where(Sandbox.org_id == o.id).order_by(Sandbox.name)).scalars())) for o in orgs]

    # -- IMS -----------------------------------------------------------------------------------
    def issue_token(self, client_id: str, client_secret: str) -> tuple[str, int] | None:
        """(token, expires_in seconds) for valid client credentials, else None."""
        with self.db.session() as s:
            c = s.get(ApiClient, client_id)
            if c is None or c.revoked or not hmac.compare_digest(c.secret_hash, _sha(client_secret)):
                return None
            token = secrets.token_urlsafe(48)
            now = utcnow()
            s.add(AccessToken(token_hash=_sha(token), client_id=client_id, org_id=c.org_id, expires_at=now + TOKEN_TTL))
            # Expired tokens are dropped as new ones are issued (bounded table, no sweeper needed).
            s.execute(delete(AccessToken).where(AccessToken.expires_at < now))
            return token, int(TOKEN_TTL.total_seconds()) - 1

    def token_info(self, token: str) -> AccessToken | None:
        with self.db.session() as s:
            t = s.get(AccessToken, _sha(token))
            if t is None or t.expires_at <= utcnow():
                return None
            return t

    def gateway(self, token: str, org_id: str | None, sandbox_name: str | None) -> "GatewayInfo | None":
        """What the gateway checks need of one request, in one session: the token's client and org
        (None if the token is unknown or expired), whether that client is still valid, and the
        requested sandbox when the org header names the token's org.

        A successful answer is cached for GATEWAY_CACHE_SECONDS (the token's expiry is still checked
        at every use; revoking a client through this service clears the cache at once): profile
        look-ups must not spend three queries on authentication."""
        hit = self.gateway_cached(token, org_id, sandbox_name)
        if hit is not MISS:
            return hit
        key = (_sha(token), org_id, sandbox_name)
        now_mono = time.monotonic()
        info = self._gateway(token, org_id, sandbox_name)
        if info is not None and info[1].client_valid and info[1].sandbox is not None:
            if len(self._gw_cache) > 10000:
                self._gw_cache.clear()
            self._gw_cache[key] = (now_mono, info[0], info[1])
        return info[1] if info else None

    def gateway_cached(self, token: str, org_id: str | None, sandbox_name: str | None):
        """The cached gateway answer, or MISS (no database access: safe on the event loop)."""
        hit = self._gw_cache.get((_sha(token), org_id, sandbox_name))
        if hit is None or time.monotonic() - hit[0] >= GATEWAY_CACHE_SECONDS:
            return MISS
        return hit[2] if hit[1] > utcnow() else None

    def _gateway(self, token: str, org_id: str | None, sandbox_name: str | None) -> "tuple[dt.datetime, GatewayInfo] | None":
        with self.db.session() as s:
            row = s.execute(
                select(AccessToken.client_id, AccessToken.org_id, AccessToken.expires_at, ApiClient.revoked)
                .join(ApiClient, ApiClient.client_id == AccessToken.client_id, isouter=True)
                .where(AccessToken.token_hash == _sha(token))
            ).first()
            if row is None or row.expires_at <= utcnow():
                return None
            sb = None
            if org_id and org_id == row.org_id:
                q = select(Sandbox.id, Sandbox.name, Sandbox.type).where(Sandbox.org_id == org_id)
                q = q.where(Sandbox.name == sandbox_name.lower()) if sandbox_name else q.where(Sandbox.is_default.is_(True))
                sb = s.execute(q).first()
            return row.expires_at, GatewayInfo(row.client_id, row.org_id, row.revoked is not None and not row.revoked, tuple(sb) if sb else None)

    def verify_client(self, client_id: str, client_secret: str) -> str | None:
        """The org id of valid, unrevoked client credentials (console sign-in; issues no token)."""
        with self.db.session() as s:
            c = s.get(ApiClient, client_id)
            if c is None or c.revoked or not hmac.compare_digest(c.secret_hash, _sha(client_secret)):
                return None
            return c.org_id

    def client_exists(self, client_id: str) -> bool:
        with self.db.session() as s:
            c = s.get(ApiClient, client_id)
            return c is not None and not c.revoked

    def sandbox(self, org_id: str, name: str | None) -> Sandbox | None:
        """The named sandbox of the org, or its default one when no name is given."""
        with self.db.session() as s:
            q = select(Sandbox).where(Sandbox.org_id == org_id)
            q = q.where(Sandbox.name == name.lower()) if name else q.where(Sandbox.is_default.is_(True))
            return s.execute(q).scalar_one_or_none()
