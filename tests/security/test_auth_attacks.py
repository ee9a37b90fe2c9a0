"""Attacks on authentication and on the request surface: NCP signatures (wrong secret, tampering, stale
timestamps, replays), AEP tokens (expired, forged, wrong org, revoked client), object paths (traversal in
every spelling, the internal bucket), body size limits (413), the per-key rate limit (429), and secrets
that must never show up in logs, error bodies or the console."""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import re
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from aep_fixtures import AepClient  # registered by tests/security/conftest.py
from infra.soak import scaled
from userlens.accounts.signature import make_signature
from userlens.api.app import create_app
from userlens.orgs.models import AccessToken

FEATURES = "/api/v1/features"
DS = "/data/foundation/catalog/dataSets"


def now_ms() -> int:
    return int(time.time() * 1000)


def signed(access_key, secret, method, uri, ts=None, sign_uri=None, sign_method=None):
    ts = str(ts if ts is not None else now_ms())
    return {
        "x-ncp-apigw-timestamp": ts,
        "x-ncp-iam-access-key": access_key,
        "x-ncp-apigw-signature-v2": make_signature(sign_method or method, sign_uri or uri, ts, access_key, secret),
    }


def denied(resp, *forbidden: str):
    assert resp.status_code == 401, resp.text
    body = resp.json()
    assert (body["code"], body["message"]) == (10100, "ACCESS_DENIED") and body["details"], body
    for s in forbidden:
        assert s not in resp.text
    return body


def creds_of(nclue):
    return nclue.client.access_key, nclue.client.secret_key


def feature_body(nclue, name="f"):
    nclue.put("seq/users.csv", "u1\ta->b\nu2\tc->d\n")
    return {"name": name, "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"}


# -- NCP signatures ----------------------------------------------------------------------------------
def test_signature_attacks_are_refused(nclue):
    http, (ak, sk) = nclue.http, creds_of(nclue)
    assert http.get(FEATURES, headers=signed(ak, sk, "GET", FEATURES)).status_code == 200
    wrong = "W" * len(sk)
    expected_for_wrong_secret = signed(ak, sk, "GET", FEATURES, ts=1)["x-ncp-apigw-signature-v2"]
    denied(http.get(FEATURES, headers=signed(ak, wrong, "GET", FEATURES)), sk)
    # Tampered path, query and method: the signature covers all three.
    denied(http.get("/api/v1/tasks", headers=signed(ak, sk, "GET", "/api/v1/tasks", sign_uri=FEATURES)), sk)
    denied(http.get(FEATURES + "?limit=2", headers=signed(ak, sk, "GET", FEATURES + "?limit=2", sign_uri=FEATURES + "?limit=1")), sk)
    denied(http.get(FEATURES + "?limit=1&index=0", headers=signed(ak, sk, "GET", FEATURES + "?limit=1&index=0", sign_uri=FEATURES + "?limit=1")), sk)
    denied(http.delete(f"{FEATURES}/x", headers=signed(ak, sk, "DELETE", f"{FEATURES}/x", sign_method="GET")), sk)
    # Timestamps: within 5 minutes either way is fine, past it is refused.
    for skew_s, ok in ((-290, True), (290, True), (-301, False), (301, False), (-86400, False)):
        r = http.get(FEATURES, headers=signed(ak, sk, "GET", FEATURES, ts=now_ms() + skew_s * 1000))
        assert (r.status_code == 200) == ok, (skew_s, r.text)
    for ts in ("", "abc", "1e12", "-5", " 1"):
        h = signed(ak, sk, "GET", FEATURES)
        h["x-ncp-apigw-timestamp"] = ts
        denied(http.get(FEATURES, headers=h))
    # Missing headers, an unknown key, another account's key with this account's secret.
    for drop in ("x-ncp-apigw-timestamp", "x-ncp-iam-access-key", "x-ncp-apigw-signature-v2"):
        h = signed(ak, sk, "GET", FEATURES)
        h.pop(drop)
        denied(http.get(FEATURES, headers=h))
    denied(http.get(FEATURES, headers=signed("NOSUCHKEY0000000000", sk, "GET", FEATURES)))
    other = nclue.svc.accounts.create_key("other")
    denied(http.get(FEATURES, headers=signed(other.access_key, sk, "GET", FEATURES)), sk, other.secret_key)
    # A revoked key stops working at once.
    assert http.get(FEATURES, headers=signed(other.access_key, other.secret_key, "GET", FEATURES)).status_code == 200
    nclue.svc.accounts.revoke(other.access_key)
    denied(http.get(FEATURES, headers=signed(other.access_key, other.secret_key, "GET", FEATURES)), other.secret_key)
    # No failure ever echoes the secret or a signature the server computed.
    assert expected_for_wrong_secret not in json.dumps([denied(http.get(FEATURES, headers={**signed(ak, wrong, "GET", FEATURES), "x-ncp-apigw-timestamp": "1"}))])


def test_an_exact_replay_of_a_mutating_request_is_refused(nclue):
    """Protection (README "Security"): the server remembers the signature of every accepted POST / PUT /
    PATCH / DELETE until its timestamp leaves the ±5 minute window, and refuses a second copy with 401."""
    http, (ak, sk) = nclue.http, creds_of(nclue)
    body = json.dumps(feature_body(nclue))
    h = {**signed(ak, sk, "POST", FEATURES), "content-type": "application/json"}
    first = http.post(FEATURES, content=body, headers=h)
    assert first.status_code == 200, first.text
    for _ in range(3):
        assert "replay" in denied(http.post(FEATURES, content=body, headers=h))["details"]
    assert nclue.client.get(FEATURES)["total"] == 1  # the replays created nothing
    # The same request signed again (a new timestamp) is a new request: refused only as a duplicate name.
    again = nclue.client.raw("POST", FEATURES, body=json.loads(body))
    assert again.status_code == 409 and again.json()["message"] == "DUPLICATE_NAME"
    fid = first.json()["feature_id"]
    nclue.run_jobs()
    d = signed(ak, sk, "DELETE", f"{FEATURES}/{fid}")
    assert http.delete(f"{FEATURES}/{fid}", headers=d).status_code == 200
    denied(http.delete(f"{FEATURES}/{fid}", headers=d))  # a 401, not the 404 a real second DELETE gets
    # GETs are not recorded: identical reads (same millisecond, same URI) from concurrent clients are fine.
    g = signed(ak, sk, "GET", FEATURES)
    assert [http.get(FEATURES, headers=g).status_code for _ in range(3)] == [200, 200, 200]


TAMPER_ATTEMPTS = scaled(60, 3000)  # USERLENS_SOAK=1: many more
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def test_random_tamperings_of_signed_requests_are_refused(nclue):
    """Seeded random attempts over the NCLUE routes: a correctly signed request with one thing changed
    (a character of the signed path or query, of the signature or of the access key; the method; a
    timestamp past the window; another account's secret) is refused with 401 every time, never echoes
    a secret, and changes nothing."""
    import random

    http, (ak, sk) = nclue.http, creds_of(nclue)
    other = nclue.svc.accounts.create_key("other")
    rng = random.Random(20261206)
    bases = ["/api/v1/features", "/api/v1/tasks", "/api/v1/task-runs", "/api/v1/profile/custom-attributes", "/api/v1/profile/shopping-intents"]
    tampers = collections.Counter()
    for _ in range(TAMPER_ATTEMPTS):
        method = rng.choice(["GET", "GET", "DELETE", "POST"])
        by_id = method == "DELETE" or (method == "GET" and rng.random() < 0.3)  # POST creates: no id
        uri = rng.choice(bases) + (f"/{uuid.uuid4()}" if by_id else "")
        if method == "GET" and rng.random() < 0.5:
            uri += f"?limit={rng.randint(1, 100)}&index={rng.randint(0, 9)}"
        how = rng.choice(["uri", "signature", "key", "method", "stale", "secret"])
        ts = now_ms()
        sign_uri, sign_method, key, secret = uri, method, ak, sk
        if how == "uri":
            i = rng.randrange(len(uri))
            sign_uri = uri[:i] + rng.choice([c for c in "abcdef0123456789/?&=-" if c != uri[i]]) + uri[i + 1 :]
        elif how == "method":
            sign_method = rng.choice([m for m in ("GET", "POST", "PUT", "PATCH", "DELETE") if m != method])
        elif how == "stale":
            ts += rng.choice([-1, 1]) * rng.randint(301, 86400 * 30) * 1000
        elif how == "secret":
            secret = other.secret_key
        h = signed(key, secret, method, uri, ts=ts, sign_uri=sign_uri, sign_method=sign_method)
        if how == "signature":
            sig = h["x-ncp-apigw-signature-v2"]
            i = rng.randrange(len(sig) - 1)  # not the final '=' padding
            h["x-ncp-apigw-signature-v2"] = sig[:i] + rng.choice([c for c in B64 if c != sig[i]]) + sig[i + 1 :]
        elif how == "key":
            i = rng.randrange(len(ak))
            h["x-ncp-iam-access-key"] = ak[:i] + rng.choice([c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" if c != ak[i]]) + ak[i + 1 :]
        body = json.dumps(feature_body(nclue, f"t{tampers.total()}")) if method == "POST" else None
        r = http.request(method, uri, headers={**h, "content-type": "application/json"}, content=body)
        denied(r, sk, other.secret_key)
        tampers[how] += 1
    assert min(tampers.values()) > 0 and tampers.total() == TAMPER_ATTEMPTS, tampers
    assert nclue.client.get(FEATURES)["total"] == 0  # nothing was created


def test_replay_cache_window_and_bound():
    from userlens.accounts.signature import MAX_SKEW_MS, ReplayCache

    c = ReplayCache(max_entries=4)
    t = 1_000_000
    assert c.first_use("K", "s1", t, t) and not c.first_use("K", "s1", t, t + MAX_SKEW_MS - 1)
    assert c.first_use("K2", "s1", t, t)  # per key
    assert c.first_use("K", "s1", t, t + MAX_SKEW_MS + 1)  # past the window the timestamp check refuses it anyway
    for i in range(10):  # bounded memory under a flood of valid signatures
        c.first_use("K", f"x{i}", t + i, t + i)
    assert len(c._seen) <= 4


# -- AEP tokens --------------------------------------------------------------------------------------
def test_token_attacks_are_refused(aep):
    a = aep.client
    assert aep.http.get(DS, headers=a.headers()).status_code == 200

    def status(headers):
        r = aep.http.get(DS, headers=headers)
        return r.status_code, r.json()

    invalid = (401, {"error_code": "401013", "message": "Oauth token is not valid"})
    forged = a.token[:-2] + ("AA" if not a.token.endswith("AA") else "BB")
    for token in (forged, "x" * len(a.token), "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.", "", " "):
        assert status(a.headers(Authorization=f"Bearer {token}")) == (invalid if token.strip() else (401, invalid[1])), token
    assert status(a.headers(Authorization=f"Basic {a.token}")) == invalid
    # Another org's token, key and header: fine for its own org, refused for A's.
    b = aep.new_org()
    assert status({**b.headers(), "x-gw-ims-org-id": a.org_id}) == (403, {"error_code": "403025", "message": "Profile is not valid"})
    assert status({**a.headers(), "x-api-key": b.client_id}) == (403, {"error_code": "403003", "message": "Api Key is invalid"})
    # Expired: the token row says so (the gateway cache re-checks expiry on every use).
    with aep.svc.db.session() as s:
        s.execute(update(AccessToken).values(expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
    aep.svc.orgs._gw_cache.clear()
    assert status(a.headers()) == invalid
    assert status(b.headers()) == invalid
    # A revoked client's fresh token is refused, and it cannot get a new one.
    c = aep.new_org()
    assert status(c.headers())[0] == 200
    aep.svc.orgs.revoke_client(c.client_id)
    assert status(c.headers()) == invalid
    creds = aep.svc.orgs.create_org("rev-org")
    aep.svc.orgs.revoke_client(creds.client_id)
    r = aep.http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret})
    assert r.status_code == 400 and creds.client_secret not in r.text


# -- object paths ------------------------------------------------------------------------------------
TRAVERSALS = ["../seq/users.csv", "seq/../../x", "/etc/passwd", "./seq/users.csv", "seq//users.csv", "seq\\..\\x", "%2e%2e/x", "seq%2fusers.csv", "..", "seq/..", "\x00x", "~root/x"]


def test_nclue_object_paths_cannot_leave_the_named_bucket(nclue):
    c = nclue.client
    base = feature_body(nclue)
    for i, path in enumerate(TRAVERSALS):
        r = c.raw("POST", FEATURES, body={**base, "name": f"p{i}", "source_file_path": path})
        assert r.status_code == 422 and r.json()["code"] == 10103, (path, r.text)
    for bucket in ("..", "../x", "/", nclue.settings.internal_bucket, f"{nclue.bucket}/../{nclue.settings.internal_bucket}", "%2e%2e"):
        r = c.raw("POST", FEATURES, body={**base, "name": "b", "source_bucket": bucket})
        assert r.status_code == 404 and r.json()["code"] == 10106, (bucket, r.text)
    # Another account's prefix in the internal bucket is never reachable, by path or by bucket.
    r = c.raw("POST", FEATURES, body={**base, "source_bucket": nclue.settings.internal_bucket, "source_file_path": f"accounts/{uuid.uuid4()}/"})
    assert r.status_code == 404 and r.json()["code"] == 10106
    assert c.get(FEATURES)["total"] == 0


def batch_files(svc, batch_id) -> list[str]:
    from sqlalchemy import select

    from userlens.profiles.models import BatchFile

    with svc.db.session() as s:
        return sorted(s.execute(select(BatchFile.path).where(BatchFile.batch_id == batch_id)).scalars())


def internal_keys(svc) -> list[str]:
    return sorted(o.key for o in svc.store.list(svc.settings.internal_bucket, ""))


def test_aep_upload_paths_cannot_leave_the_batch(aep):
    a = aep.client
    ds = a.dataset("d")
    bid = a.batch(ds)
    root = f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/"
    before = internal_keys(aep.svc)
    for raw in ("%2e%2e/%2e%2e/x.json", "..%2f..%2fx.json", "%2fetc%2fpasswd", "a/%2e%2e/%2e%2e/%2e%2e/x.json", ".%2fx.json", "a%5c..%5cx.json", "x.json%00", "a//b.json", "a/"):
        r = a.request("PUT", root + raw, content=b'{"a": 1}\n', headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 400, (raw, r.status_code, r.text)
        assert r.json()["title"] == "BadRequestError", r.text
    assert internal_keys(aep.svc) == before and batch_files(aep.svc, bid) == []  # nothing written anywhere
    assert a.upload(bid, ds, "ok/part.json", b'{"a": 1}\n').status_code in (200, 201)
    assert batch_files(aep.svc, bid) == ["ok/part.json"]
    assert all(k.startswith("aep/") for k in internal_keys(aep.svc))


# -- size limits -------------------------------------------------------------------------------------
@pytest.fixture
def small_limits(nclue):
    """The nclue env's services behind an app with small limits (4 KiB bodies, 64 KiB uploads)."""
    settings = nclue.svc.settings.model_copy(update={"max_request_bytes": 4096, "max_upload_bytes": 65536})
    app = create_app(settings, nclue.svc, start_workers=False)
    with TestClient(app) as http:
        yield nclue, http


def test_bodies_over_the_limit_get_413_in_the_familys_body(small_limits):
    nclue, http = small_limits
    ak, sk = creds_of(nclue)
    big = json.dumps({**feature_body(nclue), "name": "x" * 5000})
    r = http.post(FEATURES, content=big, headers={**signed(ak, sk, "POST", FEATURES), "content-type": "application/json"})
    assert r.status_code == 413 and r.json() == {"code": 19413, "message": "PAYLOAD_TOO_LARGE", "details": "the request body is larger than 4096 bytes"}

    def chunks():  # no Content-Length: counted while it streams
        for _ in range(10):
            yield b" " * 1000

    r = http.post(FEATURES, content=chunks(), headers={**signed(ak, sk, "POST", FEATURES), "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == 19413, r.text
    ok = http.post(FEATURES, content=json.dumps(feature_body(nclue)), headers={**signed(ak, sk, "POST", FEATURES), "content-type": "application/json"})
    assert ok.status_code == 200, ok.text
    # AEP: JSON bodies and uploads, in AEP's bodies.
    creds = nclue.svc.orgs.create_org("limits-org")
    tok = http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}).json()["access_token"]
    a = AepClient(http, creds.org_id, creds.client_id, tok)
    r = a.request("POST", DS, body={"name": "x" * 5000})
    assert r.status_code == 413 and r.json() == {"type": "/placeholder/type/uri", "status": 413, "title": "PayloadTooLargeError", "detail": "the request body is larger than 4096 bytes"}
    r = a.request("POST", "/data/core/ups/segment/definitions", body={"name": "x" * 5000})
    assert r.status_code == 413 and r.json()["status"] == 413 and r.json()["errors"]["413"], r.text
    ds = a.dataset("d")
    bid = a.batch(ds)
    assert a.upload(bid, ds, "small.json", b'{"a": 1}\n' * 5000).status_code in (200, 201)  # 45 KB: an upload may exceed the JSON limit
    big_file = b'{"a": 1}\n' * 8000  # 72 KB
    r = a.request("PUT", f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/big.json", content=big_file, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413 and r.json()["title"] == "PayloadTooLargeError", r.text

    def file_chunks():
        for _ in range(8):
            yield b'{"a": 1}\n' * 1000

    r = a.request("PUT", f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/streamed.json", content=file_chunks(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413, r.text
    assert batch_files(nclue.svc, bid) == ["small.json"]  # the refused uploads left no file


def test_default_limits_are_settings():
    from userlens.config import Settings

    s = Settings(_env_file=None)
    assert (s.max_request_bytes, s.max_upload_bytes, s.rate_limit_per_second) == (1 << 20, 256 << 20, 0.0)


# -- rate limit --------------------------------------------------------------------------------------
def test_rate_limit_is_off_by_default_and_answers_429_per_key_when_on(nclue):
    c, svc = nclue.client, nclue.svc
    assert all(c.raw("GET", FEATURES).status_code == 200 for _ in range(30))  # off by default
    svc.settings.rate_limit_per_second, svc.settings.rate_limit_burst = 0.5, 3
    try:
        ak = c.access_key
        # Unsigned requests naming the key do not spend its budget (the limit applies after authentication).
        for _ in range(10):
            denied(nclue.http.get(FEATURES, headers=signed(ak, "W" * 40, "GET", FEATURES)))
        codes = [c.raw("GET", FEATURES).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429], codes
        r = c.raw("GET", FEATURES)
        assert r.json()["code"] == 19429 and r.json()["message"] == "TOO_MANY_REQUESTS" and int(r.headers["retry-after"]) >= 1
        assert nclue.other_client().raw("GET", FEATURES).status_code == 200  # another key has its own budget
        # AEP: the documented 429 bodies.
        creds = svc.orgs.create_org("rate-org")
        tok = nclue.http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}).json()["access_token"]
        a = AepClient(nclue.http, creds.org_id, creds.client_id, tok)
        got = [a.request("GET", DS) for _ in range(4)]
        assert [g.status_code for g in got] == [200, 200, 200, 429]
        assert got[3].json() == {"title": "RequestRateTooLarge", "status": 429, "detail": "Request rate is large. Please try again later."}
        r = a.request("GET", "/data/core/ups/access/entities", params={"schema.name": "_xdm.context.profile", "entityId": "x", "entityIdNS": "email"})
        assert r.status_code == 429 and r.json()[0]["statusCode"] == "429" and r.json()[0]["message"] == "Too many requests"
    finally:
        svc.settings.rate_limit_per_second = 0.0
    assert c.raw("GET", FEATURES).status_code == 200


# -- secrets -----------------------------------------------------------------------------------------
def test_secrets_never_appear_in_logs_errors_or_the_console(nclue, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    svc, http = nclue.svc, nclue.http
    ak, sk = creds_of(nclue)
    org = svc.orgs.create_org("secret-org")
    token_resp = http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": org.client_id, "client_secret": org.client_secret})
    token = token_resp.json()["access_token"]
    secrets_ = {"nclue secret": sk, "aep client secret": org.client_secret, "master key": "test-master-key", "aep token": token}
    bodies = []

    def keep(r):
        bodies.append(r.text)
        return r

    a = AepClient(http, org.org_id, org.client_id, token)
    # Failures that involve each secret.
    keep(http.get(FEATURES, headers=signed(ak, sk[::-1], "GET", FEATURES)))
    keep(http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": org.client_id, "client_secret": org.client_secret + "x"}))
    keep(http.get(DS, headers={**a.headers(), "x-gw-ims-org-id": "X@AdobeOrg"}))
    keep(http.get(DS, headers=a.headers(Authorization=f"Bearer {token}x")))
    keep(nclue.client.raw("POST", FEATURES, body={"name": "n", "source_bucket": "nope", "source_file_path": "x"}))
    keep(nclue.client.raw("GET", f"{FEATURES}/nope"))
    keep(a.request("GET", f"{DS}/nope"))
    keep(a.request("POST", DS, content=b"{not json", headers={"Content-Type": "application/json"}))
    # The console: failed and successful sign-ins, and its pages.
    def csrf(html):
        return re.search(r'name="csrf" value="([^"]+)"', html).group(1)

    for mode, form in (("nclue", {"access_key": ak, "secret_key": sk + "x"}), ("aep", {"client_id": org.client_id, "client_secret": org.client_secret + "x"}), ("nclue", {"access_key": ak, "secret_key": sk})):
        keep(http.post("/console/login", data={"csrf": csrf(http.get("/console/login").text), "mode": mode, **form}, follow_redirects=True))
    for page in ("/console/", "/console/features", "/console/tasks", "/console/task-runs", "/console/shopping-intents"):
        keep(http.get(page))
    http.post("/console/logout", data={"csrf": csrf(http.get("/console/features").text)})
    keep(http.post("/console/login", data={"csrf": csrf(http.get("/console/login").text), "mode": "aep", "client_id": org.client_id, "client_secret": org.client_secret}, follow_redirects=True))
    keep(http.get("/console/"))
    # Settings as logged at start-up mask their secrets.
    logging.getLogger("userlens").info("settings %s", svc.settings.safe_dict())
    out = capsys.readouterr()
    # The server's log (the test client's own httpx lines are not the server's).
    server_log = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    assert "console sign-in refused" in server_log
    for name, value in secrets_.items():
        assert value not in server_log, f"{name} in the log"
        assert value not in out.out + out.err, f"{name} on the console output"
        for b in bodies:
            assert value not in b, f"{name} in a response: {b[:300]}"
    assert len(bodies) >= 16 and any("signature does not match" in b for b in bodies)


def test_access_keys_are_cached_for_seconds_and_revocation_through_the_server_is_immediate(nclue, monkeypatch):
    """A signed request reads its key from the database once per KEY_CACHE_SECONDS; a key revoked by
    another process keeps working until then (documented), one revoked through this process stops at once."""
    from sqlalchemy import event

    from userlens.accounts import service as accounts
    from userlens.accounts.service import AccountService

    http, svc = nclue.http, nclue.svc
    k = svc.accounts.create_key("cached")

    def status() -> int:
        return http.get(FEATURES, headers=signed(k.access_key, k.secret_key, "GET", FEATURES)).status_code

    statements: list[str] = []
    listener = lambda conn, cursor, sql, *a: statements.append(sql)  # noqa: E731
    event.listen(svc.db.engine, "before_cursor_execute", listener)
    try:
        assert status() == 200
        assert status() == 200
    finally:
        event.remove(svc.db.engine, "before_cursor_execute", listener)
    assert sum("access_keys" in sql for sql in statements) == 1, statements

    AccountService(svc.db, svc.accounts._master).revoke(k.access_key)  # `userlens keys revoke` meanwhile
    assert status() == 200  # cached: the revocation delay
    monkeypatch.setattr(accounts, "KEY_CACHE_SECONDS", 0.0)
    assert status() == 401
    monkeypatch.undo()

    k = svc.accounts.create_key("cached-2")
    assert status() == 200
    svc.accounts.revoke(k.access_key)
    assert status() == 401
