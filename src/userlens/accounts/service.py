"""Accounts, access keys and the server master key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from userlens.accounts.models import AccessKey, Account
from userlens.storage.db import Database

_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def load_master_key(data_dir: Path, configured: str | None) -> bytes:
    """The configured key, else the one in {data_dir}/master.key, created (mode 0600) on first use."""
    if configured:
        return configured.encode()
    path = Path(data_dir) / "master.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


@dataclass(frozen=True)
class Credentials:
    account_id: str
    account_name: str
    access_key: str
    secret_key: str


KEY_CACHE_SECONDS = 5.0
MISS = object()  # lookup_cached(): not in the cache (ask the database)


class AccountService:
    """Accounts and NCLUE access keys.

    lookup() answers from an in-process cache for KEY_CACHE_SECONDS after reading an active key, so
    a signed request costs no database session for its authentication. A key revoked through this
    process (revoke()) is dropped from its cache at once; a key revoked by another process
    (`userlens keys revoke` while the server runs) stops working within KEY_CACHE_SECONDS. Unknown
    and revoked keys are not cached: a key created meanwhile works at once."""

    def __init__(self, db: Database, master_key: bytes):
        self.db = db
        self._master = master_key
        self._keys: dict[str, tuple[float, tuple[str, str]]] = {}  # access key -> (read at, (account id, secret))
        self._keys_lock = threading.Lock()
        self._revocations = 0  # a look-up that raced a revoke() does not cache what it read before it

    def derive_secret(self, access_key: str, salt: str) -> str:
        mac = hmac.new(self._master, f"ncp-secret:{access_key}:{salt}".encode(), hashlib.sha256).digest()
        return base64.b32encode(mac).decode().rstrip("=")[:40]

    def create_account(self, name: str) -> str:
        with self.db.session() as s:
            existing = s.execute(select(Account).where(Account.name == name)).scalar_one_or_none()
            if existing:
                return existing.id
            acc = Account(id=str(uuid.uuid4()), name=name)
            s.add(acc)
            return acc.id

    def create_key(self, account_name: str) -> Credentials:
        account_id = self.create_account(account_name)
        access_key = "".join(secrets.choice(_KEY_ALPHABET) for _ in range(20))
        salt = secrets.token_hex(16)
        with self.db.session() as s:
            s.add(AccessKey(access_key=access_key, account_id=account_id, salt=salt))
        return Credentials(account_id, account_name, access_key, self.derive_secret(access_key, salt))

    def lookup(self, access_key: str) -> tuple[str, str] | None:
        """(account_id, secret) of an active key, or None (cached: see the class)."""
        hit = self.lookup_cached(access_key)
        if hit is not MISS:
            return hit
        read_at, revocations = time.monotonic(), self._revocations
        with self.db.read_session() as s:
            row = s.get(AccessKey, access_key)
            found = None if row is None or not row.active else (row.account_id, self.derive_secret(row.access_key, row.salt))
        if found is not None:
            with self._keys_lock:
                if revocations != self._revocations:
                    return found
                if len(self._keys) >= 10_000:  # bounded (there are rarely that many active keys)
                    self._keys.clear()
                self._keys[access_key] = (read_at, found)
        return found

    def lookup_cached(self, access_key: str):
        """The cached answer of lookup(), or MISS; no database access (safe on the event loop)."""
        hit = self._keys.get(access_key)
        if hit is None or time.monotonic() - hit[0] >= KEY_CACHE_SECONDS:
            return MISS
        return hit[1]

    def _forget(self, access_key: str) -> None:
        with self._keys_lock:
            self._revocations += 1
            self._keys.pop(access_key, None)

    def verify(self, access_key: str, secret_key: str) -> str | None:
        """The account id when the secret belongs to the active access key (console sign-in)."""
        found = self.lookup(access_key)
        if found is None or not hmac.compare_digest(found[1].encode(), secret_key.encode()):
            return None
        return found[0]

    def derive_key(self, purpose: str) -> bytes:
        """A key for one purpose (e.g. signing console sessions) derived from the master key."""
        return hmac.new(self._master, f"userlens-key:{purpose}".encode(), hashlib.sha256).digest()

    def list_keys(self) -> list[tuple[str, str, str]]:
        with self.db.session() as s:
            rows = s.execute(select(AccessKey.access_key, Account.name, AccessKey.active).join(Account, Account.id == AccessKey.account_id)).all()
            return [(k, n, "active" if a else "revoked") for k, n, a in rows]

    def revoke(self, access_key: str) -> bool:
        with self.db.session() as s:
            row = s.get(AccessKey, access_key)
            if row is None:
                return False
            row.active = False
        self._forget(access_key)
        return True

    def has_any_key(self) -> bool:
        with self.db.session() as s:
            return s.execute(select(AccessKey.access_key).limit(1)).first() is not None
