"""The console over plain HTTP, on every backend: sign-in and the session cookie, CSRF, tenant
isolation, the same validation messages as the API, delete rules, status polling, the Task and
Shopping Intent details (charts are real SVG with axes), the TSV download and the AEP pages."""

from __future__ import annotations

import html
import re
import time
import xml.etree.ElementTree as ET

import pytest
from console_support import EVENT, EVENTS, PEOPLE, PROFILE, aep_ingest, alerts, csrf_of

from userlens.client import NclueClient
from userlens.console import charts
from userlens.console.nclue_pages import dashboard_data, last_months


def signed_in(console):
    r = console.sign_in()
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    return console


def api(console) -> NclueClient:
    return NclueClient("http://testserver", console.creds.access_key, console.creds.secret_key, http=console.http)


def feature(console, name="f") -> str:
    tok = console.csrf()
    r = console.http.post("/console/features", data={"csrf": tok, "name": name, "source_bucket": "sample", "source_file_path": "sequences/users.csv"}, follow_redirects=False)
    assert r.status_code == 303, alerts(r.text)
    fid = r.headers["location"].split("created=")[1]
    console.run_jobs()
    return fid


def task(console, fid, name="runners") -> str:
    tok = console.csrf("/console/tasks")
    r = console.http.post("/console/tasks", data={"csrf": tok, "name": name, "train_feature_id": fid, "train_bucket": "sample", "train_file_path": "answers/running.csv"}, follow_redirects=False)
    assert r.status_code == 303, alerts(r.text)
    return r.headers["location"].split("created=")[1]


def test_sign_in_session_cookie_and_sign_out(console):
    r = console.http.get("/console/features", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    r = console.sign_in(secret="wrong")
    assert r.status_code == 401 and "Wrong access key or secret key." in r.text
    # No sign-in without the form's CSRF token.
    r = console.http.post("/console/login", data={"mode": "nclue", "access_key": console.creds.access_key, "secret_key": console.creds.secret_key})
    assert r.status_code == 403 and "userlens_console=" not in r.headers.get("set-cookie", "")
    r = console.sign_in()
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert console.creds.secret_key not in cookie
    page = console.http.get("/console/").text
    assert console.creds.secret_key not in page and console.creds.access_key in page
    # A forged cookie is no session.
    value = console.http.cookies.get("userlens_console")
    console.http.cookies.set("userlens_console", value[:-3] + "AAA", path="/console")
    assert console.http.get("/console/", follow_redirects=False).status_code == 303
    console.http.cookies.set("userlens_console", value, path="/console")
    tok = csrf_of(page)
    r = console.http.post("/console/logout", data={"csrf": tok}, follow_redirects=False)
    assert r.status_code == 303 and 'userlens_console=""' in r.headers["set-cookie"]


def test_revoked_key_ends_the_session(console):
    signed_in(console)
    assert console.http.get("/console/", follow_redirects=False).status_code == 200
    console.svc.accounts.revoke(console.creds.access_key)
    assert console.http.get("/console/", follow_redirects=False).status_code == 303


def test_forms_need_the_csrf_token(console):
    signed_in(console)
    r = console.http.post("/console/features", data={"name": "x", "source_bucket": "sample", "source_file_path": "sequences/users.csv"})
    assert r.status_code == 403
    r = console.http.post("/console/features", data={"csrf": "forged", "name": "x", "source_bucket": "sample", "source_file_path": "sequences/users.csv"})
    assert r.status_code == 403
    assert console.svc.features.list(console.creds.account_id, 0, 10)[0] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "source_bucket": "sample", "source_file_path": "sequences/users.csv"},
        {"name": "x" * 101, "source_bucket": "sample", "source_file_path": "sequences/users.csv"},
        {"name": "ok", "source_bucket": "sample", "source_file_path": "sequences/user.csv"},
        {"name": "ok", "source_bucket": "sample", "source_file_path": "seq#uences"},
        {"name": "ok", "source_bucket": "nope", "source_file_path": "sequences/users.csv"},
    ],
)
def test_create_errors_are_the_apis(console, body):
    signed_in(console)
    r = console.http.post("/console/features", data={"csrf": console.csrf(), **body})
    want = api(console).raw("POST", "/api/v1/features", body={k: (v or None) for k, v in body.items()})
    assert r.status_code == want.status_code
    w = want.json()
    assert alerts(r.text) == [f"{w['code']} {w['message']}: {w['details']}"]
    assert 'data-open-now' in r.text  # the dialog opens again, with the values kept
    assert f'value="{html.escape(body["source_file_path"], quote=True)}"' in r.text


def test_lists_status_polling_and_tenant_isolation(console):
    signed_in(console)
    fid = feature(console)
    page = console.http.get("/console/features").text
    assert fid in page and "Available" in page and "600" in page
    assert console.http.get(f"/console/status/features?id={fid}").json() == {fid: {"status": "completed", "progress": 1.0}}
    # Another account sees none of it, and its ids answer 404 as the API does.
    other = console.svc.accounts.create_key("someone-else")
    r = console.sign_in(other.access_key, other.secret_key)
    assert r.status_code == 303
    assert fid not in console.http.get("/console/features").text
    assert console.http.get(f"/console/status/features?id={fid}").json()[fid]["status"] == "deleted"
    r = console.http.post("/console/features/delete", data={"csrf": console.csrf(), "id": fid})
    assert r.status_code == 404 and alerts(r.text)[0].startswith(f"19404 RESOURCE_NOT_FOUND: feature {fid} not found")
    assert console.svc.features.get(console.creds.account_id, fid).id == fid


def test_task_detail_roc_delete_rules_and_intent(console):
    signed_in(console)
    fid = feature(console)
    tid = task(console, fid)
    # The Feature is read by a Task that has not run yet: refused, with the rules.
    r = console.http.post("/console/features/delete", data={"csrf": console.csrf(), "id": fid})
    assert r.status_code == 409
    msg = alerts(r.text)[0]
    assert msg.startswith(f"19410 RESOURCE_IN_USE: feature {fid} is used by jobs that have not finished: Task {tid}") and "Delete rules" in msg
    console.run_jobs()
    page = console.http.get(f"/console/tasks/{tid}").text
    t = api(console).get(f"/api/v1/tasks/{tid}")
    assert f'{t["performance"]["auc"]:.4f}' in page
    svg = re.search(r"<svg class=\"chart\".*?</svg>", page, re.S).group(0)
    root = ET.fromstring(svg)
    ns = {"s": "http://www.w3.org/2000/svg"}
    texts = [e.text for e in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "False positive rate" in texts and "True positive rate" in texts and "0.0" in texts and "1.0" in texts
    points = root.find(".//s:polyline[@class='roc']", ns).get("points").split()
    assert len(points) == len(t["performance"]["roc_curve"]["fpr"])
    # Shopping Intent: both tabs have their charts, and the download is the API's.
    r = console.http.post("/console/shopping-intents", data={"csrf": console.csrf("/console/shopping-intents"), "name": "intent", "task_id": tid}, follow_redirects=False)
    pid = r.headers["location"].split("created=")[1]
    console.run_jobs()
    demo = console.http.get(f"/console/shopping-intents/{pid}?tab=demographics").text
    assert demo.count('<svg class="chart"') == 2 and "Gender distribution" in demo and "Age group distribution" in demo
    interests = console.http.get(f"/console/shopping-intents/{pid}?tab=interests").text
    assert interests.count('<svg class="chart"') == 1 and "Sports&gt;Running" in interests and "lift ×" in interests
    mine = console.http.get(f"/console/shopping-intents/{pid}/download")
    theirs = api(console).raw("GET", f"/api/v1/profile/shopping-intents-download/{pid}")
    assert mine.status_code == 200 and mine.content == theirs.content and mine.headers["content-disposition"] == theirs.headers["content-disposition"]
    # The dashboard counts what was made this month and the stored bytes.
    data = dashboard_data(console.svc, console.creds.account_id)
    assert [c[-1] for c in data["counts"].values()] == [1, 1, 0, 1, 0]
    assert all(b > 0 for _, b in data["storage"])
    assert console.http.get("/console/").status_code == 200


def test_run_and_custom_attributes_dialogs(console):
    signed_in(console)
    fid = feature(console)
    tid = task(console, fid)
    console.run_jobs()
    r = console.http.post("/console/task-runs", data={"csrf": console.csrf("/console/task-runs"), "name": "score", "task_id": tid, "feature_id": fid, "result_bucket": "sample", "result_file_path": "out/"}, follow_redirects=False)
    assert r.status_code == 303
    r = console.http.post("/console/custom-attributes", data={"csrf": console.csrf("/console/custom-attributes"), "name": "kw", "feature_id": fid, "keyword_set": "x" * 1001, "result_bucket": "sample", "result_file_path": "out/"})
    want = api(console).raw("POST", "/api/v1/profile/custom-attributes", body={"name": "kw", "feature_id": fid, "keyword_set": "x" * 1001, "result_bucket": "sample", "result_file_path": "out/"}).json()
    assert alerts(r.text) == [f"{want['code']} {want['message']}: {want['details']}"]
    r = console.http.post("/console/custom-attributes", data={"csrf": console.csrf("/console/custom-attributes"), "name": "kw", "feature_id": fid, "keyword_set": "running\r\nshoes", "result_bucket": "sample", "result_file_path": "out/"}, follow_redirects=False)
    assert r.status_code == 303
    console.run_jobs()
    runs = console.http.get("/console/task-runs").text
    assert "score" in runs and "Available" in runs and "out/nclue_" in runs
    attrs = console.http.get("/console/custom-attributes").text
    assert "running,shoes" in attrs and "ul-hash-v2" in attrs


def test_aep_pages_are_the_orgs_own(console):
    org = console.svc.orgs.create_org("acme")
    r = console.sign_in_aep(org.client_id, "wrong")
    assert r.status_code == 401 and "Wrong client ID or client secret." in r.text
    r = console.sign_in_aep(org.client_id, org.client_secret, sandbox="nope")
    assert r.status_code == 401
    r = console.sign_in_aep(org.client_id, org.client_secret)
    assert r.status_code == 303 and r.headers["location"] == "/console/aep/datasets"
    assert org.client_secret not in r.headers["set-cookie"]
    # NCLUE pages belong to the other kind of sign-in.
    assert console.http.get("/console/features").status_code == 403

    ds, bid = aep_ingest(console.http, org, "crm", PROFILE, PEOPLE, wait=console.run_jobs)
    aep_ingest(console.http, org, "web", EVENT, EVENTS, wait=console.run_jobs)
    page = console.http.get("/console/aep/datasets").text
    assert "crm" in page and "web" in page and ds in page
    page = console.http.get(f"/console/aep/datasets/{ds}").text
    assert bid in page and "rows 16" in page
    assert console.http.get(f"/console/aep/status/batches?id={bid}").json() == {bid: {"status": "success", "progress": None}}
    page = console.http.get("/console/aep/profiles", params={"namespace": "email", "identity": "ana@example.com"}).text
    assert "person.name.firstName" in page and "Ana" in page and "C-1" in page and page.count("commerce.purchases") == 3
    # Another org sees neither the dataset nor the profile.
    other = console.svc.orgs.create_org("other")
    console.sign_in_aep(other.client_id, other.client_secret)
    assert ds not in console.http.get("/console/aep/datasets").text
    r = console.http.get(f"/console/aep/datasets/{ds}")
    assert r.status_code == 404 and "DataSet not found." in r.text
    page = console.http.get("/console/aep/profiles", params={"namespace": "email", "identity": "ana@example.com"}).text
    assert "No profile holds the identity email:ana@example.com" in page
    # Revoking the client ends its console session.
    console.svc.orgs.revoke_client(other.client_id)
    assert console.http.get("/console/aep/datasets", follow_redirects=False).status_code == 303


def test_static_assets_are_served_from_the_package(console):
    css = console.http.get("/console/static/console.css")
    js = console.http.get("/console/static/console.js")
    assert css.status_code == js.status_code == 200
    page = console.http.get("/console/login").text
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing from elsewhere


def test_chart_helpers():
    assert charts.nice_max(0.37) == 0.5 and charts.nice_max(7) == 10 and charts.nice_max(120) == 200 and charts.nice_max(0) == 1.0
    svg = charts.column_chart(["F", "M"], [("group", [0.4, 0.6]), ("panel", [0.5, 0.5])], title="G <&>", y_label="share", share=True)
    root = ET.fromstring(str(svg))  # well-formed, labels escaped
    assert root.find("{http://www.w3.org/2000/svg}title").text == "G <&>"
    assert len(root.findall("{http://www.w3.org/2000/svg}rect")) == 2 + 4  # legend + bars
    assert last_months(__import__("datetime").date(2026, 2, 10)) == [(2025, 10), (2025, 11), (2025, 12), (2026, 1), (2026, 2)]


def test_feature_progress_is_polled(console):
    """While a Feature runs, the status endpoint reports in_progress with the job's progress."""
    signed_in(console)
    console.svc.features.deps.fault_slow_chunk_ms = 300
    console.svc.features.deps.chunk_rows = 100
    tok = console.csrf()
    r = console.http.post("/console/features", data={"csrf": tok, "name": "slow", "source_bucket": "sample", "source_file_path": "sequences/users.csv"}, follow_redirects=False)
    fid = r.headers["location"].split("created=")[1]
    worker = console.svc.make_worker(1)
    worker.start()
    try:
        seen = set()
        deadline = time.monotonic() + 120  # ~10 slowed chunks; generous for a loaded CI machine
        while time.monotonic() < deadline:
            s = console.http.get(f"/console/status/features?id={fid}").json()[fid]
            seen.add((s["status"], s["progress"] is not None and 0 < s["progress"] < 1))
            if s["status"] == "completed":
                break
            time.sleep(0.05)
        assert ("in_progress", True) in seen and s["status"] == "completed"
        page = console.http.get("/console/features").text
        assert 'data-status="completed"' in page
    finally:
        worker.stop()


def test_pages_escape_user_input_and_send_security_headers(console):
    signed_in(console)
    evil = '<script>alert(1)</script>'
    r = console.http.post("/console/features", data={"csrf": console.csrf(), "name": evil, "source_bucket": "sample", "source_file_path": "sequences/users.csv"})
    assert r.status_code == 200 and evil not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"] and r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"
    # /console answers with the console (a redirect to /console/).
    assert console.http.get("/console", follow_redirects=False).status_code in (307, 308)
    # The console is not part of the API reference.
    assert not [p for p in console.http.get("/openapi.json").json()["paths"] if p.startswith("/console")]
