"""Fuzzing both API families from the app's own OpenAPI document with schemathesis.

Every operation gets USERLENS_FUZZ_EXAMPLES generated requests (default 6; deterministic: hypothesis
derandomized, no example database), signed (NCLUE) or with valid gateway headers (AEP) so that they
reach the handlers rather than the authentication check, against an app that holds real data of the
caller. Checks: no 5xx, and a response whose status the document describes matches its schema. Every
failure is collected (operation, request, response) and reported together.

Soak: USERLENS_SOAK=1 (100 per operation), or USERLENS_FUZZ_EXAMPLES=500 .venv/bin/python -m pytest tests/security/test_fuzz.py
"""

from __future__ import annotations

import json
import os
import time
import uuid

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from aep_fixtures import AepClient, ev, ident, EVENT  # registered by tests/security/conftest.py
from infra.soak import scaled
from userlens.accounts.signature import make_signature

EXAMPLES = int(os.environ.get("USERLENS_FUZZ_EXAMPLES", scaled(6, 100)))
FAMILIES = {"nclue": ("/api/v1",), "aep": ("/data", "/ims")}


def _seed(nclue) -> AepClient:
    """Some data of the caller in both families, so that list and look-up handlers have rows to render."""
    nclue.put("seq/users.csv", "u1\ta->b->c\nu2\tc->d\nu3\te\n")
    nclue.client.post("/api/v1/features", {"name": "seed", "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"})
    nclue.run_jobs()
    creds = nclue.svc.orgs.create_org(f"fuzz-{uuid.uuid4().hex[:6]}")
    tok = nclue.http.post("/ims/token/v3", data={"grant_type": "client_credentials", "client_id": creds.client_id, "client_secret": creds.client_secret}).json()["access_token"]
    a = AepClient(nclue.http, creds.org_id, creds.client_id, tok)
    a.post("/data/core/ups/config/mergePolicies", {"name": "pdg", "schema": {"name": "_xdm.context.profile"}, "identityGraph": {"type": "pdg"}, "attributeMerge": {"type": "timestampOrdered"}, "default": True}, expect=200)
    ds, web = a.dataset("crm"), a.dataset("web", EVENT)
    for d, row in ((ds, {"identityMap": ident("crmId", "C1", True), "person": {"name": {"firstName": "Ann"}}}), (web, ev("e1", "2026-01-01T00:00:00Z", ident("crmId", "C1", True)))):
        bid = a.batch(d)
        a.upload(bid, d, "p.json", json.dumps(row).encode() + b"\n")
        a.post(f"/data/foundation/import/batches/{bid}", params={"action": "COMPLETE"}, expect=200)
    nclue.run_jobs()
    return a


def _send(nclue, aep_client, case):
    kw = case.as_transport_kwargs(base_url="http://testserver")
    headers = {k: v for k, v in (kw.get("headers") or {}).items() if k.lower() not in ("authorization", "x-api-key", "x-gw-ims-org-id", "x-sandbox-name")}
    body = {}
    if "json" in kw:
        body["content"] = json.dumps(kw["json"]).encode()
        headers.setdefault("Content-Type", "application/json")
    elif kw.get("data") is not None:
        body["data" if isinstance(kw["data"], dict) else "content"] = kw["data"]
    req = nclue.http.build_request(kw["method"], kw["url"], params=kw.get("params"), headers=headers, **body)
    path = req.url.path
    if path.startswith("/api/v1"):
        uri = req.url.raw_path.decode("latin-1")  # exactly what goes on the wire, query included
        ts = str(int(time.time() * 1000))
        c = nclue.client
        req.headers.update({"x-ncp-apigw-timestamp": ts, "x-ncp-iam-access-key": c.access_key, "x-ncp-apigw-signature-v2": make_signature(kw["method"], uri, ts, c.access_key, c.secret_key)})
    elif path.startswith("/data"):
        req.headers.update(aep_client.headers())
    return nclue.http.send(req)


FIELDS = ["name", "description", "schema", "schemaRef", "id", "contentType", "tags", "datasetId", "dataSetId", "batchId", "inputFormat", "format",
          "identityGraph", "type", "attributeMerge", "default", "ids", "expression", "value", "segmentId", "segments", "destination", "fields",
          "filter", "mergePolicy", "identities", "entityId", "entityIdNS", "code", "source_bucket", "source_file_path", "train_feature_id",
          "train_bucket", "train_file_path", "task_id", "feature_id", "keyword_set", "result_bucket", "result_file_path", "nclue_model", "emptyProfiles"]
_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=30) | st.sampled_from(["", "..", "*", "pdg", "json", "parquet", "_xdm.context.profile", "https://ns.adobe.com/xdm/context/profile", "PQL", "pql/text", "x = 1", "dataSetPrecedence", "timestampOrdered"])
JSON_BODIES = st.one_of(
    st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=6), max_leaves=20),
    st.binary(max_size=64),
)


def _send_raw(nclue, aep_client, method, path, content):
    headers = {"Content-Type": "application/json"}
    if path.startswith("/api/v1"):
        headers.update(nclue.client.signed_headers(method, path))
    elif path.startswith("/data"):
        headers.update(aep_client.headers())
    return nclue.http.request(method, path, content=content, headers=headers)


def fuzz(nclue, aep_client, prefixes: tuple[str, ...], examples: int = EXAMPLES, paths: set[str] | None = None):
    """Runs the generated requests of every operation under `prefixes` (or exactly `paths`);
    returns (failures, counts, statuses)."""
    schema = schemathesis.openapi.from_dict(nclue.app.openapi())
    failures: list[str] = []
    counts = {"operations": 0, "requests": 0}
    statuses: dict[int, int] = {}
    settings = dict(max_examples=examples, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck), verbosity=hypothesis.Verbosity.quiet)
    for result in schema.get_all_operations():
        op = result.ok()
        if not op.path.startswith(prefixes) or (paths is not None and op.path not in paths):
            continue
        counts["operations"] += 1

        @hypothesis.given(case=op.as_strategy())
        @hypothesis.settings(**settings, phases=[Phase.explicit, Phase.generate])
        def run(case):
            counts["requests"] += 1
            try:
                resp = _send(nclue, aep_client, case)
            except Exception as exc:  # the app raised through the test client: a crash
                failures.append(f"{op.method.upper()} {op.path}: {type(exc).__name__}: {exc}")
                return
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            try:
                case.validate_response(resp, checks=[not_a_server_error, response_schema_conformance])
            except Exception as exc:
                failures.append(f"{resp.request.method} {resp.request.url} -> {resp.status_code} {resp.text[:300]}\n    {str(exc)[:600]}")

        run()
        if op.method.upper() in ("POST", "PUT", "PATCH") and "{path" not in op.path:
            # Most AEP handlers read their JSON themselves (no body schema to generate from): send them
            # arbitrary JSON built from the field names the APIs use, and bytes that are not JSON.
            base = op.path
            for pname in ("batch_id", "dataset_id", "policy_id", "segment_id", "job_id", "export_id", "feature_id", "task_id", "run_id", "profile_id"):
                base = base.replace("{" + pname + "}", uuid.UUID(int=7).hex)

            @hypothesis.given(body=JSON_BODIES)
            @hypothesis.settings(**settings, phases=[Phase.generate])
            def raw_bodies(body):
                counts["requests"] += 1
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                resp = _send_raw(nclue, aep_client, op.method.upper(), base, content)
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                if resp.status_code >= 500:
                    failures.append(f"{op.method.upper()} {base} body={content[:300]!r} -> {resp.status_code} {resp.text[:300]}")

            raw_bodies()
    return failures, counts, statuses


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fuzz_no_server_errors_and_documented_shapes(nclue, family):
    aep_client = _seed(nclue)
    failures, counts, statuses = fuzz(nclue, aep_client, FAMILIES[family])
    print(f"fuzz {family}: {counts['operations']} operations, {counts['requests']} requests, {len(failures)} failures; statuses {dict(sorted(statuses.items()))}")
    assert counts["operations"] >= (20 if family == "nclue" else 35)
    assert not failures, "\n".join(failures[:30])
    assert sum(n for st, n in statuses.items() if st < 300) > 0  # some requests passed authentication and validation


def test_the_fuzzer_reports_a_server_error(nclue, monkeypatch):
    """The harness can fail: a handler that breaks is reported with its request."""
    aep_client = _seed(nclue)

    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(nclue.svc.features, "list", broken)
    failures, counts, _ = fuzz(nclue, aep_client, ("/api/v1",), examples=3, paths={"/api/v1/features"})
    # TestClient re-raises the handler's exception (else the answer is the 500 body): both are recorded.
    assert counts["requests"] > 0 and any("/api/v1/features" in f and ("boom" in f or "-> 500" in f) for f in failures), failures


def test_nul_characters_and_huge_numbers_in_ids_are_client_errors(nclue):
    """Found by the fuzzer on PostgreSQL: a NUL character in an id reached the database, which refused
    it (DataError) and the answer was a 500. Now a 400 in the family's body (SQLite stores such values,
    so there the id is simply not found). Likewise a number past 64 bits (PostgreSQL DataError, SQLite
    OverflowError)."""
    a = _seed(nclue)
    c = nclue.client
    checks = [
        (a.request("POST", "/data/core/ups/system/jobs", body={"batchId": "\x00\u00de"}), "title"),
        (a.request("POST", "/data/core/ups/system/jobs", body={"dataSetId": "a\x00b"}), "title"),
        (a.request("GET", "/data/foundation/catalog/dataSets/%00x"), "title"),
        (a.request("POST", "/data/foundation/import/batches", body={"datasetId": "\x00"}), "title"),
        (a.request("GET", "/data/core/ups/access/entities", params={"schema.name": "_xdm.context.profile", "entityId": "\x00", "entityIdNS": "crmId"}), "statusCode"),
        (a.request("GET", "/data/core/ups/export/jobs/99999999999999999999"), "title"),
        (a.request("DELETE", "/data/core/ups/export/jobs/-99999999999999999999"), "title"),
        (c.raw("GET", "/api/v1/features/%00x"), "code"),
        (c.raw("POST", "/api/v1/task-runs", body={"name": "r", "task_id": "\x00", "feature_id": "\x00", "result_bucket": nclue.bucket, "result_file_path": "x/"}), "code"),
        (c.raw("POST", "/api/v1/profile/shopping-intents", body={"name": "s", "task_id": "a\x00"}), "code"),
    ]
    for resp, key in checks:
        assert 400 <= resp.status_code < 500, (resp.request.method, resp.request.url, resp.status_code, resp.text)
        assert key in resp.json(), resp.text
