"""Console fixtures: an app per backend driven through TestClient (plain HTTP tests), and for the
browser tests one live userlens on a loopback port with in-process workers, plus Debian's
Chromium driven by Playwright (`/usr/bin/chromium`; `make test` installs it when missing)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest

from console_support import csrf_of

from userlens.config import Settings

CHROMIUM = "/usr/bin/chromium"


@dataclass
class ConsoleEnv:
    svc: object
    http: object  # TestClient
    creds: object  # NCLUE credentials
    extra: dict = field(default_factory=dict)

    def sign_in(self, access_key=None, secret=None, http=None):
        http = http or self.http
        tok = csrf_of(http.get("/console/login").text)
        return http.post("/console/login", data={"csrf": tok, "mode": "nclue", "access_key": access_key or self.creds.access_key, "secret_key": secret or self.creds.secret_key}, follow_redirects=False)

    def sign_in_aep(self, client_id, secret, sandbox="", http=None):
        http = http or self.http
        tok = csrf_of(http.get("/console/login").text)
        return http.post("/console/login", data={"csrf": tok, "mode": "aep", "client_id": client_id, "client_secret": secret, "sandbox": sandbox}, follow_redirects=False)

    def csrf(self, path="/console/features") -> str:
        return csrf_of(self.http.get(path).text)

    def run_jobs(self, timeout: float = 60.0) -> int:
        from infra.jobs import drain_jobs

        return drain_jobs(self.svc, timeout)


def settings_for(backend, **kw) -> Settings:
    return Settings(
        **backend.settings_kwargs(), internal_bucket=f"internal-{uuid.uuid4().hex[:10]}", lease_seconds=5, retry_backoff_seconds=0.01,
        master_key="test-master-key", task_candidates="logreg:0.001", **kw,
    )


@pytest.fixture
def console(backend):
    """userlens on the backend under test, jobs drained by the test, the sample bucket installed."""
    from fastapi.testclient import TestClient

    from userlens.api.app import create_app
    from userlens.samples import panel, sequences
    from userlens.services import build_services

    settings = settings_for(backend, workers=0)
    svc = build_services(settings)
    svc.store.create_bucket(settings.internal_bucket)
    sequences.install(svc.store, n_users=600)
    panel.install(svc.store, sequences.SAMPLE_BUCKET)
    creds = svc.accounts.create_key(f"acct-{uuid.uuid4().hex[:8]}")
    app = create_app(settings, svc, start_workers=False)
    with TestClient(app) as http:
        yield ConsoleEnv(svc, http, creds)
    svc.close()


# -- browser tests -------------------------------------------------------------------------------
@dataclass
class Live:
    url: str
    svc: object
    creds: object
    org: object = None
    extra: dict = field(default_factory=dict)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One live userlens (SQLite + local folder; the browser tests exercise the UI, the backends are
    covered by the HTTP tests) served by uvicorn on a free loopback port, with two in-process workers."""
    import uvicorn

    from userlens.api.app import create_app
    from userlens.samples import panel, sequences
    from userlens.services import build_services
    from userlens.storage.migrate import upgrade

    data = tmp_path_factory.mktemp("console-live")
    settings = Settings(data_dir=data, workers=2, poll_interval=0.05, master_key="test-master-key", task_candidates="logreg:0.001", lease_seconds=10)
    upgrade(f"sqlite:///{data}/userlens.db")
    svc = build_services(settings)
    svc.store.create_bucket(settings.internal_bucket)
    sequences.install(svc.store)
    panel.install(svc.store, sequences.SAMPLE_BUCKET)
    creds = svc.accounts.create_key("default")
    org = svc.orgs.create_org("acme")
    app = create_app(settings, svc, start_workers=True)
    sock = _free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the console test server did not start")
        time.sleep(0.05)
    try:
        yield Live(f"http://127.0.0.1:{port}", svc, creds, org)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
        svc.close()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y --no-install-recommends chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    # --no-sandbox: CI and the development machines run as root, where Chromium's sandbox refuses to start.
    b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
    try:
        yield b
    finally:
        b.close()
        pw.stop()


@pytest.fixture(scope="module")
def page(browser, live):
    """One browser page for the module's tests, which run in order (sign in, Feature, Task, ...).
    Nothing it loads may come from outside the live server."""
    context = browser.new_context(viewport={"width": 1600, "height": 900}, accept_downloads=True)
    outside: list[str] = []

    def guard(route):
        if route.request.url.startswith(live.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    p = context.new_page()
    p.set_default_timeout(30_000)
    p.outside_requests = outside
    yield p
    context.close()


