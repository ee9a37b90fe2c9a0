"""Run the test suite against every combination of metadata database and object store.

Choosing combinations
---------------------
USERLENS_TEST_BACKENDS (default ``sqlite-local,postgres-s3``) lists ``<db>-<store>`` names, with
db in {sqlite, postgres} and store in {local, s3}; ``all`` means the four combinations.

* postgres: PostgreSQL at $USERLENS_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
  Each test gets a FRESH database (CREATE DATABASE ~25 ms, DROP ~10 ms on PG 15), optionally cloned
  from a template (e.g. one migrated once per session). Why not one database truncated between
  tests: a worker thread or connection leaked by one test could write into (or lock, blocking
  TRUNCATE) the next test's data; migration tests need an empty database; sequences would not
  reset. DROP DATABASE ... WITH (FORCE) ends leaked connections, so teardown never hangs.
  USERLENS_TEST_KEEP_DBS=1 keeps the per-test databases for inspection (dropped by a later run's
  stale clean-up after 6 h).
* s3: ONE SeaweedFS server per test session (per xdist worker), started on the first test that
  needs it (≈4-9 s) and SIGKILLed at the end: its data is thrown away, and a graceful stop takes
  ≈15-20 s (weed's filer waits for its gRPC streams). USERLENS_TEST_WEED_STOP_TIMEOUT (seconds,
  default 0) gives it that long after SIGTERM before the SIGKILL. Each test sees an
  EMPTY server: every bucket is deleted before and after the test (which also frees SeaweedFS's
  per-bucket volumes), so tests can use fixed names such as the internal bucket. Writing into a
  missing bucket fails, as on AWS S3.
* sqlite / local: a file and a folder under the test's tmp_path.

CI rule: if $CI is set (and not 0/false), a missing PostgreSQL or `weed` binary FAILS the tests
that need it; otherwise they are skipped with a message saying what is missing.

Using it from tests/conftest.py
-------------------------------
Keep tests/ without an __init__.py: pytest then puts tests/ on sys.path and ``infra`` imports
(with an __init__.py, import ``tests.infra.backends`` instead)::

    import pytest
    from infra.backends import (  # noqa: F401 - fixtures are found by their names in conftest
        backend_params, backends_report_header, make_backend_env,
        postgres_databases, postgres_url_factory, seaweed_server,
    )

    def pytest_report_header(config):
        return backends_report_header()

    @pytest.fixture(params=backend_params())
    def backend(request, tmp_path):
        env = make_backend_env(request, tmp_path)      # fresh database + empty object store
        return env                                     # env.database_url, env.store, env.backend

    # e.g. for the app:  Settings(**backend.settings_kwargs(), workers=0)
    #      for a subprocess (CLI, uvicorn): env={**os.environ, **backend.settings_env()}
    #      or just:  database_url, store = backend

A migrated PostgreSQL template, to clone instead of migrating in every test::

    @pytest.fixture(scope="session")
    def pg_template(postgres_url_factory):
        url = postgres_url_factory()              # dropped at session end
        upgrade(url)                              # userlens.storage.migrate.upgrade; disposes its engine
        return url

    ... make_backend_env(request, tmp_path, pg_template=request.getfixturevalue("pg_template")
                         if request.param.db_kind == "postgres" else None)
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .postgres import PostgresDatabases, postgres_available
from .seaweed import SeaweedError, SeaweedServer, weed_available

BACKENDS_ENV = "USERLENS_TEST_BACKENDS"
DEFAULT_BACKENDS = "sqlite-local,postgres-s3"
DB_KINDS = ("sqlite", "postgres")
STORE_KINDS = ("local", "s3")


@dataclass(frozen=True)
class Backend:
    name: str  # "postgres-s3"
    db_kind: str  # "sqlite" | "postgres"
    store_kind: str  # "local" | "s3"

    @classmethod
    def parse(cls, name: str) -> "Backend":
        db, sep, store = name.strip().partition("-")
        if not sep or db not in DB_KINDS or store not in STORE_KINDS:
            raise pytest.UsageError(
                f"{BACKENDS_ENV}: unknown backend {name!r}; use <db>-<store> with db in {DB_KINDS} "
                f"and store in {STORE_KINDS}, or 'all'"
            )
        return cls(f"{db}-{store}", db, store)


def selected_backends(value: str | None = None) -> list[Backend]:
    """The combinations $USERLENS_TEST_BACKENDS asks for, in order, without duplicates."""
    raw = value if value is not None else os.environ.get(BACKENDS_ENV, "")
    raw = raw.strip() or DEFAULT_BACKENDS
    names: list[str] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if item == "all":
            names += [f"{d}-{s}" for d in DB_KINDS for s in STORE_KINDS]
        else:
            names.append(item)
    out: list[Backend] = []
    for n in names:
        b = Backend.parse(n)
        if b not in out:
            out.append(b)
    if not out:
        raise pytest.UsageError(f"{BACKENDS_ENV}={raw!r} selects no backend")
    return out


def backend_params() -> list:
    """`params=` for a parametrized fixture: one pytest.param per selected Backend, id = its name."""
    return [pytest.param(b, id=b.name) for b in selected_backends()]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def require(ok: bool, reason: str) -> None:
    """Skip (locally) or fail (under CI) when a backend's service is missing."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{reason} [CI is set: backend tests must run, not be skipped]", pytrace=False)
    pytest.skip(f"{reason} (choose other backends with {BACKENDS_ENV}, e.g. sqlite-local)")


def backends_report_header() -> list[str]:
    names = ", ".join(b.name for b in selected_backends())
    return [f"userlens backends: {names} ({BACKENDS_ENV}){'; CI: missing services fail' if in_ci() else ''}"]


# -- session-wide services ------------------------------------------------------------------------
# Kept on the pytest config object, not in module globals: if these fixtures get registered twice
# (a conftest and a test module both import them, or the module is imported under two names), the
# session still starts ONE server and one database manager.
class _SessionServices:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seaweed: SeaweedServer | None = None
        self.seaweed_users = 0
        self.pg: PostgresDatabases | None = None
        self.pg_users = 0


def _services(config) -> _SessionServices:
    svc = getattr(config, "_userlens_test_services", None)
    if svc is None:
        svc = _SessionServices()
        setattr(config, "_userlens_test_services", svc)
    return svc


def _stop_timeout() -> float:
    try:
        return float(os.environ.get("USERLENS_TEST_WEED_STOP_TIMEOUT", "0"))
    except ValueError:
        return 0.0


@pytest.fixture(scope="session")
def seaweed_server(request, tmp_path_factory) -> Iterator[SeaweedServer]:
    """The session's SeaweedFS S3 server (started on first use; skipped/failed if `weed` is missing)."""
    ok, why = weed_available()
    require(ok, why)
    svc = _services(request.config)
    with svc.lock:
        if svc.seaweed is None:
            server = SeaweedServer()
            try:
                server.start(tmp_path_factory.mktemp("seaweed"))
            except SeaweedError as exc:
                pytest.fail(f"could not start SeaweedFS: {exc}", pytrace=False)
            svc.seaweed = server
        svc.seaweed_users += 1
        server = svc.seaweed
    try:
        yield server
    finally:
        with svc.lock:
            svc.seaweed_users -= 1
            last = svc.seaweed_users == 0
            if last:
                svc.seaweed = None
        if last:
            server.stop(timeout=_stop_timeout())


@pytest.fixture(scope="session")
def postgres_databases(request) -> Iterator[PostgresDatabases]:
    """The session's database manager: create()/drop() throwaway databases; leftovers dropped at the end."""
    svc = _services(request.config)
    with svc.lock:
        if svc.pg is None:
            ok, why = postgres_available()
            require(ok, why)
            dbs = PostgresDatabases()
            dbs.drop_stale()
            svc.pg = dbs
        svc.pg_users += 1
        dbs = svc.pg
    try:
        yield dbs
    finally:
        with svc.lock:
            svc.pg_users -= 1
            last = svc.pg_users == 0
            if last:
                svc.pg = None
        if last:
            try:
                if not _keep_dbs():
                    dbs.drop_all()
            finally:
                dbs.close()


@pytest.fixture(scope="session")
def postgres_url_factory(postgres_databases) -> Callable[..., str]:
    """`factory(template=None) -> url`: a new database that lives until `postgres_databases.drop(url)`
    or the end of the session (for per-test databases use make_backend_env or fresh_database_url)."""
    return postgres_databases.create


def _keep_dbs() -> bool:
    return os.environ.get("USERLENS_TEST_KEEP_DBS", "").strip().lower() in ("1", "true", "yes")


# -- per-test environments ------------------------------------------------------------------------
@dataclass
class BackendEnv:
    """One test's backends: a fresh metadata database and an empty object store."""

    backend: Backend
    database_url: str
    store: object  # userlens.storage.objectstore.ObjectStore
    data_dir: Path  # for Settings.data_dir (master key, ...); the SQLite file and local buckets live here
    s3: SeaweedServer | None = None
    extra: dict = field(default_factory=dict)

    def __iter__(self):  # `database_url, store = env`
        yield self.database_url
        yield self.store

    def settings_kwargs(self) -> dict:
        """Keyword arguments for userlens.config.Settings pointing at these backends."""
        kw: dict = {"data_dir": self.data_dir, "database_url": self.database_url}
        if self.s3 is not None:
            kw.update(
                object_store="s3",
                s3_endpoint_url=self.s3.endpoint_url,
                s3_access_key=self.s3.access_key,
                s3_secret_key=self.s3.secret_key,
                s3_region="us-east-1",
            )
        else:
            kw.update(object_store="local", storage_root=self.data_dir / "buckets")
        return kw

    def settings_env(self) -> dict[str, str]:
        """The same as USERLENS_* environment variables (for the CLI or a server in a subprocess)."""
        return {f"USERLENS_{k.upper()}": str(v) for k, v in self.settings_kwargs().items()}


def fresh_database_url(request, db_kind: str, tmp_path: Path, pg_template: str | None = None) -> str:
    """A new, empty database for the requesting test, removed at its teardown."""
    if db_kind == "sqlite":
        path = Path(tmp_path) / "userlens" / "userlens.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path.as_posix()}"
    if db_kind != "postgres":
        raise ValueError(f"unknown database kind {db_kind!r}")
    dbs: PostgresDatabases = request.getfixturevalue("postgres_databases")
    url = dbs.create(template=pg_template)
    if not _keep_dbs():
        request.addfinalizer(lambda: dbs.drop(url))
    return url


def fresh_object_store(request, store_kind: str, tmp_path: Path):
    """An object store with no bucket in it, for the requesting test; returns (store, server|None)."""
    from userlens.storage.objectstore import LocalObjectStore, S3ObjectStore

    if store_kind == "local":
        return LocalObjectStore(Path(tmp_path) / "userlens" / "buckets"), None
    if store_kind != "s3":
        raise ValueError(f"unknown store kind {store_kind!r}")
    server: SeaweedServer = request.getfixturevalue("seaweed_server")
    if not server.is_running():
        pytest.fail(f"the session's SeaweedFS server has exited; its log ends:\n{server.log_tail(30)}", pytrace=False)
    server.delete_all_buckets()  # in case an earlier test's teardown could not

    def _empty() -> None:
        if server.is_running():
            server.delete_all_buckets()

    request.addfinalizer(_empty)
    return S3ObjectStore(server.endpoint_url, server.access_key, server.secret_key), server


def make_backend_env(request, tmp_path: Path, backend: Backend | None = None, *, pg_template: str | None = None) -> BackendEnv:
    """Everything one test needs for `backend` (default: request.param of a backend_params() fixture)."""
    backend = backend if backend is not None else request.param
    if not isinstance(backend, Backend):
        backend = Backend.parse(str(backend))
    data_dir = Path(tmp_path) / "userlens"
    data_dir.mkdir(parents=True, exist_ok=True)
    # The database first: a missing PostgreSQL skips the test before a SeaweedFS server is started
    # for nothing. Both clean-ups run after the teardown of fixtures built on this env.
    database_url = fresh_database_url(request, backend.db_kind, tmp_path, pg_template)
    store, server = fresh_object_store(request, backend.store_kind, tmp_path)
    return BackendEnv(backend=backend, database_url=database_url, store=store, data_dir=data_dir, s3=server)
