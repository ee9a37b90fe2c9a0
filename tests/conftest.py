"""Fixtures shared by the suite. Every service-level test runs once per backend combination
(see tests/infra/backends.py): SQLite + local folder, and PostgreSQL + a real S3 server."""

from __future__ import annotations

import uuid
import warnings

import pytest
from infra.nclue_env import NclueEnv  # noqa: F401 - tests import it from here too
from infra.ray import ray_cluster  # noqa: F401 - one local Ray per session (Ray executor tests)
from infra.backends import (  # noqa: F401 - fixtures are found by their names
    Backend,
    backend_params,
    backends_report_header,
    fresh_database_url,
    make_backend_env,
    postgres_databases,
    postgres_url_factory,
    seaweed_server,
    selected_backends,
)

from userlens.config import Settings
from userlens.storage.db import Database
from userlens.storage.migrate import upgrade

# Parallel runs (pytest-xdist groups) and the fast process exit: see tests/infra/parallel.py.
pytest_plugins = ["infra.parallel"]


def pytest_report_header(config):
    return backends_report_header()


@pytest.fixture(scope="session")
def pg_template(postgres_url_factory):
    """A PostgreSQL database migrated once per session; each test gets a clone of it."""
    url = postgres_url_factory()
    upgrade(url)
    return url


def _db_kinds() -> list[str]:
    kinds: list[str] = []
    for b in selected_backends():
        if b.db_kind not in kinds:
            kinds.append(b.db_kind)
    return kinds


@pytest.fixture(params=_db_kinds())
def database(request, tmp_path):
    """A migrated, empty metadata database of each selected kind (SQLite, PostgreSQL)."""
    template = request.getfixturevalue("pg_template") if request.param == "postgres" else None
    url = fresh_database_url(request, request.param, tmp_path, template)
    if template is None:
        upgrade(url)
    db = Database(url)
    yield db
    db.dispose()


@pytest.fixture(params=backend_params())
def backend(request, tmp_path):
    """A fresh metadata database and an empty object store of one selected combination."""
    template = request.getfixturevalue("pg_template") if request.param.db_kind == "postgres" else None
    env = make_backend_env(request, tmp_path, pg_template=template)
    if template is None:
        upgrade(env.database_url)
    return env


@pytest.fixture
def nclue(backend, tmp_path):
    from fastapi.testclient import TestClient

    from userlens.api.app import create_app
    from userlens.client import NclueClient
    from userlens.services import build_services

    settings = Settings(
        **backend.settings_kwargs(),
        workers=0,
        internal_bucket=f"internal-{uuid.uuid4().hex[:10]}",
        lease_seconds=5,
        retry_backoff_seconds=0.01,
        master_key="test-master-key",
        task_candidates="logreg:0.001",  # fast; test_tasks_api checks the full model selection once
    )
    svc = build_services(settings)
    svc.store.create_bucket(settings.internal_bucket)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    svc.store.create_bucket(bucket)
    creds = svc.accounts.create_key(f"acct-{uuid.uuid4().hex[:8]}")
    app = create_app(settings, svc, start_workers=False)
    with TestClient(app) as http:
        client = NclueClient("http://testserver", creds.access_key, creds.secret_key, http=http)
        yield NclueEnv(svc, app, client, creds.account_id, bucket, http)
    svc.close()
