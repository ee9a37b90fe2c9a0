"""Helpers of the console tests (a module of its own: `conftest` is a name several test folders use)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Every run saves its screenshots under tests/artifacts/ (git ignores it); the README's copies in
# docs/screenshots/ are refreshed only on request (USERLENS_UPDATE_SCREENSHOTS=1), so a test run
# leaves the tree clean.
SCREENSHOTS = ROOT / "tests" / "artifacts" / "screenshots"
DOC_SCREENSHOTS = ROOT / "docs" / "screenshots"
PROFILE = "https://ns.adobe.com/xdm/context/profile"
EVENT = "https://ns.adobe.com/xdm/context/experienceevent"


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def alerts(html: str) -> list[str]:
    import html as h

    return [h.unescape(m) for m in re.findall(r'role="(?:alert|status)">([^<]*)<', html)]


def screenshot(page, name: str) -> None:
    import os
    import shutil

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    if os.environ.get("USERLENS_UPDATE_SCREENSHOTS") == "1":
        DOC_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SCREENSHOTS / f"{name}.png", DOC_SCREENSHOTS / f"{name}.png")


def aep_token(http, org) -> str:
    r = http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": org.client_id, "client_secret": org.client_secret})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def aep_headers(token: str, org) -> dict:
    return {"Authorization": f"Bearer {token}", "x-api-key": org.client_id, "x-gw-ims-org-id": org.org_id, "x-sandbox-name": "prod"}


def aep_ingest(http, org, name: str, schema: str, rows: list, wait=None) -> tuple[str, str]:
    """A Profile-enabled dataset with one batch of JSON lines through the AEP API; (dataset, batch)."""
    h = aep_headers(aep_token(http, org), org)
    r = http.post("/data/foundation/catalog/dataSets", headers={**h, "Content-Type": "application/json"}, content=json.dumps({"name": name, "schemaRef": {"id": schema, "contentType": "application/vnd.adobe.xed+json;version=1"}, "tags": {"unifiedProfile": ["enabled:true"]}}))
    assert r.status_code == 201, r.text
    ds = r.json()[0].split("/")[-1]
    r = http.post("/data/foundation/import/batches", headers={**h, "Content-Type": "application/json"}, content=json.dumps({"datasetId": ds, "inputFormat": {"format": "json"}}))
    assert r.status_code == 201, r.text
    bid = r.json()["id"]
    body = b"".join((json.dumps(x) if not isinstance(x, str) else x).encode() + b"\n" for x in rows)
    r = http.put(f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/part1.json", headers={**h, "Content-Type": "application/octet-stream"}, content=body)
    assert r.status_code in (200, 201), r.text
    r = http.post(f"/data/foundation/import/batches/{bid}", params={"action": "COMPLETE"}, headers=h)
    assert r.status_code == 200, r.text
    if wait:
        wait()
    return ds, bid


PEOPLE = [
    {"identityMap": {"email": [{"id": "ana@example.com", "primary": True}], "crmId": [{"id": "C-1"}]}, "person": {"name": {"firstName": "Ana", "lastName": "Kim"}}, "loyalty": {"tier": "gold"}},
    {"identityMap": {"email": [{"id": "bo@example.com", "primary": True}]}, "person": {"name": {"firstName": "Bo"}}},
    {"identityMap": {"email": [{"id": "cy@example.com", "primary": True}]}, "person": {"name": {"firstName": "Cy"}}, "loyalty": {"tier": "silver"}},
] + [{"identityMap": {"email": [{"id": f"p{i}@example.com", "primary": True}]}, "person": {"name": {"firstName": f"P{i}"}}} for i in range(4, 16)] + [
    "this line is not JSON",  # row 16 of 16: rejected, under the 10% that would fail the batch
]
EVENTS = [
    {"_id": f"e{i}", "timestamp": f"2026-11-0{i}T10:00:00Z", "identityMap": {"email": [{"id": "ana@example.com", "primary": True}]}, "eventType": "commerce.purchases", "commerce": {"order": {"priceTotal": 10 * i}}}
    for i in range(1, 4)
]


def aep_dataset(http, org, name: str, schema: str) -> str:
    """A dataset that is not enabled for Profile (e.g. an export destination on the union schema)."""
    h = aep_headers(aep_token(http, org), org)
    r = http.post("/data/foundation/catalog/dataSets", headers={**h, "Content-Type": "application/json"}, content=json.dumps({"name": name, "schemaRef": {"id": schema, "contentType": "application/vnd.adobe.xed+json;version=1"}}))
    assert r.status_code == 201, r.text
    return r.json()[0].split("/")[-1]


def aep_api(http, org, method: str, path: str, body=None):
    h = aep_headers(aep_token(http, org), org)
    if body is not None:
        h["Content-Type"] = "application/json"
    return http.request(method, path, headers=h, content=json.dumps(body) if body is not None else None)


UNION = "https://ns.adobe.com/xdm/context/profile__union"
