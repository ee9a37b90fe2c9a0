"""Metadata database: one SQLAlchemy engine per URL, SQLite (embedded) or PostgreSQL (production)."""

from __future__ import annotations

import datetime as dt
import select as _select
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import DateTime, Engine, create_engine, event, exc
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL lets readers run beside the one writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # No pool_pre_ping: it costs a round trip (SELECT 1) at every checkout, i.e. on every request.
    # Instead a checkout looks at the connection's socket without talking to the server (a server that
    # restarted or terminated the backend has sent its FATAL message and closed the socket, so the
    # socket reads as ready; an idle healthy one never does) and the pool swaps in a fresh
    # connection; pool_recycle bounds the age of connections a silent network path could have cut.
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800)

    @event.listens_for(engine, "checkout")
    def _drop_dead(dbapi_conn, _record, _proxy):
        if connection_is_dead(dbapi_conn):
            raise exc.DisconnectionError("the server closed the connection")  # the pool retries with a new one

    return engine


def connection_is_dead(dbapi_conn) -> bool:
    """True when an idle pooled DB-API connection is closed, or its socket has something to read (the
    server's goodbye, or EOF): a check with no round trip. Psycopg connections only; others: False."""
    if getattr(dbapi_conn, "closed", False):
        return True
    fileno = getattr(dbapi_conn, "fileno", None)
    if fileno is None:
        return False
    try:
        fd = fileno()
        if fd < 0:
            return True
        poller = _select.poll()
        poller.register(fd, _select.POLLIN | _select.POLLERR | _select.POLLHUP)
        return bool(poller.poll(0))
    except Exception:  # OSError, or psycopg's own error on a closed connection
        return True


class RetryingSession(Session):
    """A session that runs the first statement of a transaction again, once, on a new connection when
    the pooled one turns out dead (the server restarted or ended the backend after the checkout
    looked at it): nothing ran in that transaction yet, so running it again is safe."""

    def _execute_internal(self, *args, **kw):
        if self.in_transaction():
            return super()._execute_internal(*args, **kw)
        try:
            return super()._execute_internal(*args, **kw)
        except exc.DBAPIError as e:
            if not e.connection_invalidated:
                raise
            self.rollback()  # drops the dead connection; the pool has invalidated its others too
            return super()._execute_internal(*args, **kw)


class Database:
    """The engine plus a session factory; passed to every service that touches metadata."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, class_=RetryingSession, expire_on_commit=False)
        self.read_sessions = sessionmaker(self.engine.execution_options(isolation_level="AUTOCOMMIT"), class_=RetryingSession, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self.sessions() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reads only, in autocommit: no BEGIN and COMMIT round trips. Each statement
        sees the data committed when it starts, as in a READ COMMITTED transaction (the default);
        use session() for anything that writes or must read one snapshot."""
        with self.read_sessions() as s:
            yield s

    def dispose(self) -> None:
        self.engine.dispose()
