"""The metadata database's connection pool (storage/db.py): no round trip to check a connection at
checkout, yet a connection the server closed (restart, terminated backend) is never handed out."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from userlens.storage.db import connection_is_dead


def test_a_connection_the_server_closed_is_replaced_at_checkout(database):
    if database.dialect != "postgresql":
        pytest.skip("needs PostgreSQL")
    import psycopg

    assert not database.engine.pool._pre_ping  # no SELECT 1 per checkout
    with database.session() as a, database.session() as b:  # two connections in the pool
        pids = {a.execute(text("SELECT pg_backend_pid()")).scalar(), b.execute(text("SELECT pg_backend_pid()")).scalar()}
    raw = database.engine.raw_connection()
    try:
        assert not connection_is_dead(raw.dbapi_connection)  # idle and healthy
        url = database.url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as admin:  # what a server restart does to them
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 5
        while not connection_is_dead(raw.dbapi_connection) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert connection_is_dead(raw.dbapi_connection)
    finally:
        raw.close()
    for _ in range(3):  # every pooled connection was killed: each checkout must get a live one
        with database.session() as s:
            assert s.execute(text("SELECT pg_backend_pid()")).scalar() not in pids
        with database.read_session() as s:
            assert s.execute(text("SELECT 1")).scalar() == 1


def _terminate(database, pids) -> None:
    import psycopg

    url = database.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as admin:  # what a server restart does to them
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits until it is gone


def test_a_connection_that_dies_after_the_checkout_check_is_retried_once(database, monkeypatch):
    """The backend can end between the checkout's look at the socket and the first statement (a
    restart at that moment): the first statement of the transaction runs again on a new connection."""
    if database.dialect != "postgresql":
        pytest.skip("needs PostgreSQL")
    from userlens.jobs.models import Job
    from userlens.storage import db as dbmod

    with database.session() as a, database.session() as b:
        pids = {a.execute(text("SELECT pg_backend_pid()")).scalar(), b.execute(text("SELECT pg_backend_pid()")).scalar()}
    monkeypatch.setattr(dbmod, "connection_is_dead", lambda conn: False)  # the check misses the death
    _terminate(database, pids)
    with database.session() as s:  # ORM get (through Session.execute)
        assert s.get(Job, "no-such-job") is None
        assert s.execute(text("SELECT pg_backend_pid()")).scalar() not in pids
    with database.session() as a, database.session() as b:
        pids = {a.execute(text("SELECT pg_backend_pid()")).scalar(), b.execute(text("SELECT pg_backend_pid()")).scalar()}
    _terminate(database, pids)
    with database.read_session() as s:  # scalars(), autocommit
        assert list(s.scalars(select(Job.id).limit(1))) == []
    # A statement that is not the first of its transaction is not run again: the error surfaces.
    with pytest.raises(DBAPIError):
        with database.session() as s:
            pid = s.execute(text("SELECT pg_backend_pid()")).scalar()
            _terminate(database, {pid})
            s.execute(text("SELECT 1"))


def _autocommit(session) -> bool:
    import sqlite3

    raw = session.connection().connection.dbapi_connection
    return raw.isolation_level is None if isinstance(raw, sqlite3.Connection) else raw.autocommit


def test_read_sessions_run_without_a_transaction(database):
    with database.read_session() as s:
        s.execute(text("SELECT 1"))
        assert _autocommit(s)  # no BEGIN / COMMIT round trips around a read
    for _ in range(3):  # the setting does not leak to the next user of the pooled connection
        with database.session() as s:
            assert not _autocommit(s)
