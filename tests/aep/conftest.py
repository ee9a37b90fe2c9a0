"""AEP fixtures: an app on the `backend` under test, an org with a token, and a client that sends
the gateway headers."""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from typing import Iterator

import pytest

from userlens.config import Settings
from infra.jobs import drain_jobs

PROFILE = "https://ns.adobe.com/xdm/context/profile"
EVENT = "https://ns.adobe.com/xdm/context/experienceevent"


@dataclass
class AepClient:
    http: object
    org_id: str
    client_id: str
    token: str
    sandbox: str | None = "prod"

    def headers(self, **extra) -> dict:
        h = {"Authorization": f"Bearer {self.token}", "x-api-key": self.client_id, "x-gw-ims-org-id": self.org_id}
        if self.sandbox:
            h["x-sandbox-name"] = self.sandbox
        h.update(extra)
        return h

    def request(self, method: str, path: str, body=None, params=None, content=None, headers=None):
        h = self.headers(**(headers or {}))
        if body is not None:
            h.setdefault("Content-Type", "application/json")
            content = json.dumps(body)
        return self.http.request(method, path, content=content, params=params, headers=h)

    def get(self, path, params=None, expect=200):
        r = self.request("GET", path, params=params)
        assert r.status_code == expect, r.text
        return r.json()

    def post(self, path, body=None, params=None, expect=(200, 201)):
        r = self.request("POST", path, body=body, params=params)
        assert r.status_code in ((expect,) if isinstance(expect, int) else expect), r.text
        return r.json() if r.content else None

    # -- conveniences ----------------------------------------------------------------------------
    def dataset(self, name="ds", schema=PROFILE, profile=True, upsert=False) -> str:
        tags = {"unifiedProfile": ["enabled:true"] + (["isUpsert:true"] if upsert else [])} if profile else {}
        out = self.post("/data/foundation/catalog/dataSets", {"name": name, "schemaRef": {"id": schema, "contentType": "application/vnd.adobe.xed+json;version=1"}, "tags": tags}, expect=201)
        return out[0].split("/")[-1]

    def batch(self, dataset_id: str, fmt="json", **extra) -> str:
        return self.post("/data/foundation/import/batches", {"datasetId": dataset_id, "inputFormat": {"format": fmt}, **extra}, expect=201)["id"]

    def upload(self, batch_id, dataset_id, path, data: bytes, expect=(200, 201)):
        r = self.request("PUT", f"/data/foundation/import/batches/{batch_id}/datasets/{dataset_id}/files/{path}", content=data, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code in expect, r.text
        return r

    def get_batch(self, batch_id) -> dict:
        return self.get(f"/data/foundation/catalog/batches/{batch_id}")[batch_id]


@dataclass
class AepEnv:
    svc: object
    app: object
    http: object
    client: AepClient

    def run_jobs(self, timeout: float = 60.0) -> int:
        return drain_jobs(self.svc, timeout)

    def new_org(self, name=None) -> AepClient:
        creds = self.svc.orgs.create_org(name or f"org-{uuid.uuid4().hex[:8]}")
        r = self.http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret, "scope": "openid,AdobeID"})
        assert r.status_code == 200, r.text
        return AepClient(self.http, creds.org_id, creds.client_id, r.json()["access_token"])

    def ingest(self, dataset_id: str, rows: list, fmt="json", client=None, run=True, **extra) -> dict:
        c = client or self.client
        bid = c.batch(dataset_id, fmt, **extra)
        data = b"".join((json.dumps(r) if not isinstance(r, str) else r).encode() + b"\n" for r in rows) if fmt == "json" else rows
        c.upload(bid, dataset_id, "part1.json" if fmt == "json" else f"part1.{fmt}", data)
        c.post(f"/data/foundation/import/batches/{bid}", params={"action": "COMPLETE"}, expect=200)
        if run:
            self.run_jobs()
        return c.get_batch(bid) | {"id": bid}


@contextlib.contextmanager
def aep_env(backend, org: str = "main-org", **settings_extra) -> Iterator[AepEnv]:
    """An app on `backend` with its own internal bucket and an org named `org`; `settings_extra`
    (e.g. executor="ray") go to its Settings."""
    from fastapi.testclient import TestClient

    from userlens.api.app import create_app
    from userlens.services import build_services

    settings = Settings(**backend.settings_kwargs(), workers=0, internal_bucket=f"internal-{uuid.uuid4().hex[:10]}", lease_seconds=5, retry_backoff_seconds=0.01, master_key="test-master-key", **settings_extra)
    svc = build_services(settings)
    svc.store.create_bucket(settings.internal_bucket)
    app = create_app(settings, svc, start_workers=False)
    try:
        with TestClient(app) as http:
            env = AepEnv(svc, app, http, None)
            env.client = env.new_org(org)
            yield env
    finally:
        svc.close()


@pytest.fixture
def aep(backend):
    with aep_env(backend) as env:
        yield env


def ident(ns, value, primary=False):
    return {ns: [{"id": value, "primary": primary}]}


def ev(eid, ts, ids: dict, **fields):
    return {"_id": eid, "timestamp": ts, "identityMap": ids, **fields}
