"""Tenancy: IMS tokens, the gateway header errors of §2.1, sandboxes and isolation."""

from __future__ import annotations


def test_ims_token_and_errors(aep):
    creds = aep.svc.orgs.create_org("tok-org")
    ok = aep.http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret})
    assert ok.status_code == 200
    body = ok.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 86399 and len(body["access_token"]) > 40
    bad = aep.http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": "wrong"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_client"
    grant = aep.http.post("/ims/token/v3", data={"grant_type": "password", "client_id": creds.client_id, "client_secret": creds.client_secret})
    assert grant.json()["error"] == "unsupported_grant_type"


def test_gateway_header_errors(aep):
    c = aep.client
    full = c.headers()

    def call(**drop_or_set):
        h = dict(full)
        for k, v in drop_or_set.items():
            k = k.replace("_", "-")
            if v is None:
                h.pop(k, None)
            else:
                h[k] = v
        return aep.http.get("/data/foundation/catalog/dataSets", headers=h)

    cases = [
        ({"Authorization": None}, 403, "403010", "Oauth token is missing."),
        ({"x_api_key": None}, 403, "403000", "Api Key is required"),
        ({"Authorization": "Bearer nope"}, 401, "401013", "Oauth token is not valid"),
        ({"x_api_key": "0" * 32}, 403, "403003", "Api Key is invalid"),
        ({"x_gw_ims_org_id": None}, 400, "400003", "Missing header"),
        ({"x_gw_ims_org_id": "ABC@AdobeOrg"}, 403, "403025", "Profile is not valid"),
        ({"x_sandbox_name": "nosuch"}, 403, "403025", "Profile is not valid"),
    ]
    for change, status, code, message in cases:
        r = call(**change)
        assert r.status_code == status, (change, r.text)
        assert r.json() == {"error_code": code, "message": message}
    assert call().status_code == 200
    assert call(x_sandbox_name=None).status_code == 200  # default production sandbox


def test_content_type_is_required(aep):
    c = aep.client
    r = aep.http.post("/data/foundation/catalog/dataSets", content=b'{"name": "x"}', headers={**c.headers(), "Content-Type": "text/plain"})
    assert r.status_code == 400
    assert r.json() == {"type": "/placeholder/type/uri", "status": 400, "title": "BadRequestError", "detail": "A valid content-type must be specified"}


def test_orgs_and_sandboxes_are_isolated(aep):
    a = aep.client
    b = aep.new_org()
    ds = a.dataset("a-only")
    assert ds in a.get("/data/foundation/catalog/dataSets")
    assert b.get("/data/foundation/catalog/dataSets") == {}
    r = b.request("GET", f"/data/foundation/catalog/dataSets/{ds}")
    assert r.status_code == 404 and r.json()["title"] == "NotFoundError"
    # another sandbox of the same org sees nothing of prod
    aep.svc.orgs.create_sandbox(a.org_id, "dev1")
    dev = type(a)(a.http, a.org_id, a.client_id, a.token, "dev1")
    assert dev.get("/data/foundation/catalog/dataSets") == {}
    # a token of org B cannot be used with org A's header
    r = aep.http.get("/data/foundation/catalog/dataSets", headers={**b.headers(), "x-gw-ims-org-id": a.org_id})
    assert r.status_code == 403 and r.json()["error_code"] == "403025"
