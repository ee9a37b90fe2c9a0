"""Throwaway PostgreSQL databases for tests (psycopg 3, server on loopback).

    ok, reason = postgres_available()
    dbs = PostgresDatabases()                      # admin connection: $USERLENS_TEST_PG_URL or
                                                   # postgresql://postgres@127.0.0.1:5432/postgres
    url = dbs.create()                             # 'postgresql+psycopg://postgres@127.0.0.1:5432/userlens_test_...'
    url2 = dbs.create(template=url)                # a copy of `url` (which must have no open connections)
    dbs.drop(url)                                  # DROP DATABASE ... WITH (FORCE): ends leaked connections
    dbs.drop_all(); dbs.close()

Names are `userlens_test_<epoch>_<pid>_<random>_<n>`: unique across concurrent runs, and datable,
so `drop_stale()` removes what a killed run left behind more than 6 hours ago without touching a
run in progress. On PostgreSQL 15 CREATE DATABASE takes ~25 ms and DROP ~10 ms, so a fresh
database per test is affordable; cloning a migrated template avoids re-running migrations.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from contextlib import contextmanager
from typing import Iterator

ADMIN_URL_ENV = "USERLENS_TEST_PG_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
NAME_PREFIX = "userlens_test"
STALE_AFTER_SECONDS = 6 * 3600


def admin_url() -> str:
    """libpq URL of a database to connect to for CREATE/DROP DATABASE (any SQLAlchemy-style
    'postgresql+psycopg://' prefix is accepted too)."""
    return _libpq_url(os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN_URL)


def _libpq_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(name: str, base: str | None = None) -> str:
    """The SQLAlchemy URL (psycopg 3 driver) of database `name` on the admin URL's server."""
    from sqlalchemy.engine import make_url

    u = make_url(base or admin_url()).set(drivername="postgresql+psycopg", database=name)
    return u.render_as_string(hide_password=False)


def database_name(url_or_name: str) -> str:
    if "://" not in url_or_name:
        return url_or_name
    from sqlalchemy.engine import make_url

    name = make_url(url_or_name).database
    if not name:
        raise ValueError(f"no database name in {url_or_name!r}")
    return name


def _connect(url: str, timeout: int = 5):
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=timeout)


def postgres_available(url: str | None = None, timeout: int = 3) -> tuple[bool, str]:
    """(True, description) if the server answers and our role may create databases, else
    (False, why) - a message fit for a skip or failure."""
    url = _libpq_url(url) if url else admin_url()
    where = _redact(url)
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover
        return False, f"psycopg 3 is not installed: {exc}"
    try:
        with _connect(url, timeout) as conn:
            version = conn.info.server_version
            row = conn.execute(
                "SELECT rolsuper OR rolcreatedb, current_user FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
    except psycopg.Error as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, f"PostgreSQL not reachable at {where} (set {ADMIN_URL_ENV}): {msg}"
    if version < 130000:
        return False, f"PostgreSQL at {where} is version {version}; 13 or later is needed (DROP DATABASE ... WITH (FORCE))"
    if not row or not row[0]:
        return False, f"role {row[1] if row else '?'} at {where} may not create databases"
    return True, f"PostgreSQL {version // 10000}.{version % 10000} at {where}"


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class PostgresDatabases:
    """Creates uniquely named databases and drops them again. Thread-safe; one admin connection."""

    def __init__(self, admin: str | None = None, prefix: str = NAME_PREFIX):
        self.admin_url = _libpq_url(admin) if admin else admin_url()
        self.prefix = prefix
        self.created: list[str] = []  # alive databases made here, in creation order
        self.last_create_seconds: float | None = None
        self._seq = 0
        self._token = secrets.token_hex(3)
        self._lock = threading.Lock()
        self._conn = None
        self._name_re = re.compile(rf"^{re.escape(prefix)}_(\d{{10}})_(\d+)_[0-9a-f]{{6}}_(\d+)$")

    # -- connection --------------------------------------------------------------------------
    def _execute(self, query, params=None):
        import psycopg

        for attempt in (1, 2):
            if self._conn is None or self._conn.closed:
                self._conn = _connect(self.admin_url)
            try:
                return self._conn.execute(query, params)
            except psycopg.OperationalError:
                dead = self._conn.closed or self._conn.broken
                if attempt == 2 or not dead:
                    raise
                self._conn.close()
                self._conn = None  # server restarted or connection dropped: once more
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- databases ---------------------------------------------------------------------------
    def new_name(self) -> str:
        self._seq += 1
        return f"{self.prefix}_{int(time.time())}_{os.getpid()}_{self._token}_{self._seq}"

    def create(self, template: str | None = None) -> str:
        """A new empty database (or a copy of `template`, a name or URL): its SQLAlchemy URL."""
        from psycopg import errors, sql

        with self._lock:
            name = self.new_name()
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(database_name(template))
                )
            t0 = time.monotonic()
            try:
                self._execute(query)
            except errors.ObjectInUse as exc:
                raise RuntimeError(
                    f"cannot copy template database {database_name(template or '')!r}: it still has open "
                    "connections (dispose every engine on it before cloning)"
                ) from exc
            self.last_create_seconds = time.monotonic() - t0
            self.created.append(name)
        return sqlalchemy_url(name, self.admin_url)

    def drop(self, url_or_name: str) -> None:
        """Drop the database, ending any connection still open on it (tests may leak some)."""
        from psycopg import sql

        name = database_name(url_or_name)
        with self._lock:
            self._execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if name in self.created:
                self.created.remove(name)

    def drop_all(self) -> None:
        """Drop every database made here that is still alive (newest first: clones before templates)."""
        errors = []
        for name in reversed(list(self.created)):
            try:
                self.drop(name)
            except Exception as exc:  # keep going: drop as much as possible
                errors.append(f"{name}: {exc}")
        if errors:
            raise RuntimeError("could not drop test databases: " + "; ".join(errors))

    def list_test_databases(self) -> list[str]:
        with self._lock:
            rows = self._execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname",
                (self.prefix.replace("_", r"\_") + r"\_%",),
            ).fetchall()
        return [r[0] for r in rows]

    def drop_stale(self, older_than: float = STALE_AFTER_SECONDS) -> list[str]:
        """Drop test databases that killed runs left behind (by the age encoded in their names)."""
        now = time.time()
        dropped = []
        for name in self.list_test_databases():
            m = self._name_re.match(name)
            if m and now - int(m.group(1)) > older_than:
                try:
                    self.drop(name)
                    dropped.append(name)
                except Exception:
                    pass
        return dropped

    @contextmanager
    def database(self, template: str | None = None) -> Iterator[str]:
        url = self.create(template)
        try:
            yield url
        finally:
            self.drop(url)

    def __enter__(self) -> "PostgresDatabases":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.drop_all()
        finally:
            self.close()
