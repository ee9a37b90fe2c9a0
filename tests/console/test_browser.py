"""The console in Debian's Chromium (Playwright), against one live userlens with in-process workers.

The tests run in order on one page, as a user would: sign in, create a Feature from the sample data
and watch it complete, a Task (ROC curve), a Shopping Intent (both tabs, TSV download), the
dashboard, then the AEP side (datasets, a batch's rejected rows, a profile look-up). They save
screenshots into tests/artifacts/screenshots/, and with USERLENS_UPDATE_SCREENSHOTS=1 also the
README's copies in docs/screenshots/."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from console_support import EVENT, EVENTS, PEOPLE, PROFILE, UNION, aep_dataset, aep_ingest, screenshot

pytestmark = pytest.mark.timeout(180)

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect


def badge_of(page, name: str):
    return page.locator("tr", has=page.get_by_text(name, exact=True)).locator(".badge")


def create(page, live, slug: str, fill: dict, selects: dict | None = None):
    page.goto(f"{live.url}/console/{slug}")
    page.get_by_role("button", name=re.compile("^Create ")).first.click()
    dialog = page.locator("dialog#create-dialog")
    expect(dialog).to_be_visible()
    for name, value in (selects or {}).items():
        dialog.locator(f"select[name={name}]").select_option(label=value)
    for name, value in fill.items():
        dialog.locator(f"[name={name}]").fill(value)
    dialog.get_by_role("button", name="Create").click()


def test_sign_in(page, live):
    page.goto(f"{live.url}/console/")
    expect(page).to_have_url(re.compile(r"/console/login$"))
    page.get_by_label("Access key").fill(live.creds.access_key)
    page.get_by_label("Secret key").fill("not-the-secret")
    page.locator("#login-nclue").get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("Wrong access key or secret key.")
    page.get_by_label("Secret key").fill(live.creds.secret_key)
    page.locator("#login-nclue").get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "userlens_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert live.creds.secret_key not in cookie["value"] and live.creds.secret_key not in page.content()


def test_feature_validation_and_completion(page, live):
    # A typo in the path: the dialog stays open with the API's error (code, name, details).
    create(page, live, "features", {"name": "sample-users", "source_bucket": "sample", "source_file_path": "sequences/user.csv"})
    dialog = page.locator("dialog#create-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("alert")).to_have_text("10106 PATH_NOT_FOUND: source_file_path 'sequences/user.csv' does not exist in bucket 'sample'")
    dialog.locator("[name=source_file_path]").fill("sequences/users.csv")
    dialog.get_by_role("button", name="Create").click()
    # The badge follows the job (polled) until the Feature is available, with its counts.
    expect(badge_of(page, "sample-users")).to_have_text("Available", timeout=60_000)
    row = page.locator("tr", has=page.get_by_text("sample-users", exact=True))
    expect(row.locator("td.c-user_count")).to_have_text("3,000")


def test_task_with_roc_curve(page, live):
    create(page, live, "tasks", {"name": "runners", "train_bucket": "sample", "train_file_path": "answers/running.csv"}, {"train_feature_id": "sample-users (ul-hash-v2)"})
    expect(badge_of(page, "runners")).to_have_text("Available", timeout=60_000)
    page.locator("tr", has=page.get_by_text("runners", exact=True)).locator("td.c-task_id a").click()
    expect(page.get_by_role("heading", name=re.compile("runners"))).to_be_visible()
    auc = float(page.locator("table.perf tr", has_text="AUC").locator("td").inner_text())
    assert 0.9 < auc <= 1.0
    roc = page.locator("svg.chart polyline.roc")
    expect(roc).to_have_count(1)
    assert len(roc.get_attribute("points").split()) > 10
    expect(page.locator("svg.chart")).to_contain_text("False positive rate")
    screenshot(page, "task-roc")


def test_shopping_intent_tabs_and_download(page, live):
    create(page, live, "shopping-intents", {"name": "runners-intent"}, {"task_id": "runners (ul-hash-v2)"})
    expect(badge_of(page, "runners-intent")).to_have_text("Available", timeout=60_000)
    page.locator("tr", has=page.get_by_text("runners-intent", exact=True)).get_by_role("link", name="View results").click()
    expect(page.get_by_role("tab", name="Demographics")).to_have_attribute("aria-selected", "true")
    charts = page.locator("#panel-demographics svg.chart")
    expect(charts).to_have_count(2)
    expect(charts.first).to_contain_text("Gender distribution")
    expect(charts.nth(1)).to_contain_text("Age group distribution")
    screenshot(page, "shopping-intent-demographics")
    page.get_by_role("tab", name="Shopping interests").click()
    interests = page.locator("#panel-interests svg.chart")
    expect(interests).to_have_count(1)
    expect(interests).to_contain_text("Sports>Running")
    screenshot(page, "shopping-intent-interests")
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download TSV").click()
    text = open(dl.value.path(), encoding="utf-8").read()
    assert text.startswith("section\tkey\tgroup_share\tpanel_share\tlift\n") and "interest\tSports>Running\t" in text


def test_dashboard(page, live):
    page.goto(f"{live.url}/console/")
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(2)
    expect(charts.first).to_contain_text("Shopping Intent Profile")
    expect(charts.nth(1)).to_contain_text("Usage status per function")
    rows = page.locator("table.compact").nth(1).locator("tbody tr")
    expect(rows.first.locator("td").last).to_have_text("1")  # one Feature this month
    screenshot(page, "dashboard")


def test_delete_refused_while_in_use_then_allowed(page, live):
    # A Shopping Intent that has not finished reads the Task: deleting the Task is refused with
    # the API's RESOURCE_IN_USE message and the rules; once it is done the Task can go.
    create(page, live, "shopping-intents", {"name": "second-intent"}, {"task_id": "runners (ul-hash-v2)"})
    page.goto(f"{live.url}/console/tasks")
    page.get_by_role("radio", name="Select runners", exact=True).check()  # waits for the Tasks page
    page.get_by_role("button", name="Delete").click()
    alert = page.get_by_role("alert")
    expect(alert.or_(page.get_by_role("status"))).to_be_visible()  # the answer, whichever it is (count() does not wait)
    if alert.count():  # the profile may already be done on a fast machine
        expect(alert).to_contain_text("19410 RESOURCE_IN_USE")
        expect(alert).to_contain_text("Delete rules")
        page.goto(f"{live.url}/console/shopping-intents")
        expect(badge_of(page, "second-intent")).to_have_text("Available", timeout=60_000)
        page.goto(f"{live.url}/console/tasks")
        page.get_by_role("radio", name="Select runners", exact=True).check()  # waits for the Tasks page
        page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text("deleted")
    expect(page.get_by_text("runners", exact=True)).to_have_count(0)
    assert page.outside_requests == []


def test_aep_datasets_batches_and_profile(page, live):
    def wait_batches():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with live.svc.db.session() as s:
                from userlens.profiles.models import Batch

                if all(b.status not in ("loading", "staging", "processing") for b in s.query(Batch).all()):
                    return
            time.sleep(0.1)
        raise AssertionError("batches did not finish")

    with httpx.Client(base_url=live.url) as http:
        crm, crm_batch = aep_ingest(http, live.org, "crm", PROFILE, PEOPLE, wait=wait_batches)
        web, _ = aep_ingest(http, live.org, "web", EVENT, EVENTS, wait=wait_batches)
    live.extra.update(crm=crm, web=web)
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("tab", name="AEP client credentials").click()
    page.get_by_label("Client ID").fill(live.org.client_id)
    page.get_by_label("Client secret").fill(live.org.client_secret)
    page.locator("#login-aep").get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Datasets")).to_be_visible()
    page.get_by_role("link", name="crm", exact=True).click()
    row = page.locator("tr", has=page.get_by_text(crm_batch))
    expect(row.locator(".badge")).to_have_text("success")
    expect(row.locator("td").nth(2)).to_have_text("15")
    expect(row.locator("td").nth(3)).to_have_text("1")
    expect(row.locator("ul.errors")).to_contain_text("rows 16")  # the rejected row, with its reason
    page.get_by_role("link", name="Profiles").click()
    page.get_by_label("Identity namespace").fill("email")
    page.get_by_label("Identity value").fill("ana@example.com")
    page.get_by_role("button", name="Look up").click()
    attrs = page.locator("table.attrs")
    expect(attrs).to_contain_text("person.name.firstName")
    expect(attrs).to_contain_text("Ana")
    expect(page.locator("table.identities")).to_contain_text("C-1")
    expect(page.locator("table.events tbody tr")).to_have_count(3)
    page.get_by_label("Identity value").fill("nobody@example.com")
    page.get_by_role("button", name="Look up").click()
    expect(page.get_by_role("alert")).to_contain_text("No profile holds the identity email:nobody@example.com")


def test_aep_segment_export_cancel_and_delete_request(page, live):
    # A segment made in the console, evaluated there; the profile shows its membership.
    page.get_by_role("link", name="Segments").click()
    page.get_by_role("button", name="Create segment").click()
    dialog = page.locator("dialog#create-dialog")
    dialog.get_by_label("Name").fill("gold members")
    dialog.get_by_label("PQL expression").fill('loyalty.tier = "gold"')
    dialog.get_by_role("button", name="Create").click()
    row = page.locator("table.segments tr", has=page.get_by_text("gold members", exact=True))
    row.get_by_role("button", name="Evaluate").click()
    expect(page.get_by_role("status")).to_contain_text("Segment job")
    expect(page.locator("table[data-poll] .badge").first).to_have_text("SUCCEEDED", timeout=30_000)  # polled, then reloaded
    expect(page.locator("table.segments tr", has=page.get_by_text("gold members", exact=True)).locator("td.c-qualified")).to_have_text("1")
    page.goto(f"{live.url}/console/aep/profiles?namespace=email&identity=ana%40example.com")
    expect(page.locator("table.membership")).to_contain_text("gold members")
    screenshot(page, "aep-profile")

    # An export that waits for a worker (both are busy with slow Features of the NCLUE account) is
    # cancelled from the console: it ends FAILED with the CANCELLED error and publishes nothing.
    with httpx.Client(base_url=live.url) as http:
        dest = aep_dataset(http, live.org, "profile-exports", UNION)
    deps = live.svc.features.deps
    deps.fault_slow_chunk_ms, deps.chunk_rows = 400, 200
    busy = [live.svc.features.create(live.creds.account_id, {"name": f"busy-{i}", "source_bucket": "sample", "source_file_path": "sequences/users.csv"}) for i in range(2)]
    try:
        deadline = time.monotonic() + 20
        while sum(live.svc.features.get(live.creds.account_id, f.id).job.status == "in_progress" for f in busy) < 2:
            assert time.monotonic() < deadline, "the busy Features did not start"
            time.sleep(0.05)
        page.get_by_role("link", name="Export jobs").click()
        page.get_by_role("button", name="Start export").click()
        dialog = page.locator("dialog#create-dialog")
        dialog.get_by_label("Destination dataset").select_option(label=f"profile-exports ({dest})")
        dialog.get_by_role("button", name="Start").click()
        row = page.locator("table.exports tbody tr").first
        expect(row.locator(".badge")).to_have_text("NEW")
        row.get_by_role("button", name="Cancel").click()
        expect(page.get_by_role("status")).to_contain_text("cancel requested (now FAILED)")
        expect(page.locator("table.exports tbody tr").first).to_contain_text("was cancelled by request")
    finally:
        deps.fault_slow_chunk_ms, deps.chunk_rows = 0, 16384
    # A second export runs to the end; the badge follows it and the batch is linked.
    page.get_by_role("button", name="Start export").click()
    dialog = page.locator("dialog#create-dialog")
    dialog.get_by_label("Destination dataset").select_option(label=f"profile-exports ({dest})")
    dialog.get_by_role("button", name="Start").click()
    expect(page.locator("table.exports tbody tr").first.locator(".badge")).to_have_text("SUCCEEDED", timeout=60_000)
    expect(page.locator("table.exports tbody tr").first).to_contain_text("batch")
    screenshot(page, "aep-exports")

    # A delete request for the web events: created, polled to COMPLETED with its metrics.
    page.get_by_role("link", name="Delete requests").click()
    page.get_by_role("button", name="Create delete request").click()
    dialog = page.locator("dialog#create-dialog")
    dialog.locator("select[name=dataset_id]").select_option(value=live.extra["web"])
    dialog.get_by_role("button", name="Create").click()
    row = page.locator("table.deletes tbody tr").first
    expect(row.locator(".badge")).to_have_text("COMPLETED", timeout=60_000)
    expect(page.locator("table.deletes tbody tr").first.locator("td").nth(3)).to_have_text("3")
    assert page.outside_requests == []
