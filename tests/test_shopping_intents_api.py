"""NCLUE Shopping Intent profiles through the HTTP API (Feature -> Task -> profile, jobs drained in
process): every field, the status path, every error, the download, delete rules, reference panels
(the built-in synthetic one and operator imports) and the sanity of the result."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest

from userlens.errors import Conflict
from userlens.samples import panel as synthetic
from userlens.samples import sequences as sample
from userlens.understanding import intent_report
from userlens.understanding.model_registry import DEFAULT_MODEL
from userlens.understanding.models import ReferencePanel, ShoppingIntent, Task
from userlens.understanding.panels import PanelImportError
from userlens.understanding.shopping_intents import JOB_KIND

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
BASE = "/api/v1/profile/shopping-intents"
DOWNLOAD = "/api/v1/profile/shopping-intents-download"
FIELDS = {"profile_id", "profile_name", "task_id", "task_name", "status", "created_at", "completed_at", "line_count", "disk_usage", "fail_message"}
N_USERS = 600


def assert_error(resp, status, code, message):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert (body["code"], body["message"]) == (code, message), body
    assert isinstance(body["details"], str) and body["details"]
    return body


@pytest.fixture
def world(nclue):
    """A completed Feature of the generated sample (a customer's users) and a completed Task that
    finds its beauty shoppers."""
    text, truth = sample.generate(N_USERS, seed=11)
    nclue.put("seq/users.csv", text)
    fid = nclue.client.post("/api/v1/features", {"name": "sample", "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    nclue.run_jobs()
    nclue.extra.update(feature_id=fid, truth=truth)
    nclue.extra["task_id"] = make_task(nclue, "beauty")["task_id"]
    return nclue


def make_task(w, persona: str, name: str | None = None) -> dict:
    w.put(f"answers/{persona}.csv", "".join(f"{u}\t{int(persona in i)}\n" for u, i in w.extra["truth"].items()))
    tid = w.client.post("/api/v1/tasks", {"name": name or persona, "train_feature_id": w.extra["feature_id"], "train_bucket": w.bucket, "train_file_path": f"answers/{persona}.csv"})["task_id"]
    w.run_jobs()
    task = w.client.get(f"/api/v1/tasks/{tid}")
    assert task["status"] == "completed", task
    return task


def create(w, name="intent", task_id=None) -> dict:
    resp = w.client.raw("POST", BASE, body={"name": name, "task_id": task_id or w.extra["task_id"]})
    assert resp.status_code == 200, resp.text
    return resp.json()


def completed(w, name="intent", task_id=None) -> dict:
    pid = create(w, name, task_id)["profile_id"]
    w.run_jobs()
    p = w.client.get(f"{BASE}/{pid}")
    assert p["status"] == "completed", p
    return p


def parse_tsv(raw: bytes) -> list[dict]:
    lines = raw.decode("utf-8").splitlines()
    assert lines[0] == "section\tkey\tgroup_share\tpanel_share\tlift"
    rows = []
    for line in lines[1:]:
        section, key, g, p, lift = line.split("\t")
        rows.append({"section": section, "key": key, "group_share": float(g), "panel_share": float(p), "lift": float(lift)})
    return rows


def by_key(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in rows}


# -- the whole path --------------------------------------------------------------------------------
def test_profile_fields_status_path_result_and_download(world):
    c, w = world.client, world
    task = c.get(f"/api/v1/tasks/{w.extra['task_id']}")
    created = create(w, "beauty-intent")
    assert set(created) == {"profile_id", "profile_name", "task_id", "task_name", "created_at"}  # exactly the seed's example
    assert (created["profile_name"], created["task_id"], created["task_name"]) == ("beauty-intent", task["task_id"], "beauty")
    assert ISO.match(created["created_at"])
    pid = created["profile_id"]

    before = c.get(f"{BASE}/{pid}")
    assert FIELDS <= set(before)
    assert (before["status"], before["completed_at"], before["line_count"], before["disk_usage"], before["fail_message"], before["result"]) == ("registered", None, None, None, None, None)
    assert before["created_at"] == created["created_at"] and before["nclue_model"] == task["nclue_model"]
    assert_error(c.raw("GET", f"{DOWNLOAD}/{pid}"), 409, 19409, "INVALID_STATUS")  # not completed yet

    w.svc.queue.promote()
    assert c.get(f"{BASE}/{pid}")["status"] == "pending"
    # What a client polling during the run sees: in_progress, and no result yet.
    seen = []
    kind = w.svc.registry.kinds[JOB_KIND]
    original = kind.handler

    def watched(ctx):
        seen.append(c.get(f"{BASE}/{pid}"))
        return original(ctx)

    kind.handler = watched
    try:
        w.run_jobs()
    finally:
        kind.handler = original
    assert [(s["status"], s["result"], s["completed_at"]) for s in seen] == [("in_progress", None, None)]

    p = c.get(f"{BASE}/{pid}")
    assert FIELDS <= set(p)
    assert p["status"] == "completed" and p["fail_message"] is None and p["fail_detail"] is None and p["progress"] == 1.0
    assert ISO.match(p["completed_at"]) and p["completed_at"] >= p["created_at"]
    assert p["line_count"] == synthetic.SIZE  # every user of the built-in panel was scored
    with w.svc.db.session() as s:
        key = s.get(ShoppingIntent, pid).result_key
    assert key.startswith(f"nclue/{w.account_id}/shopping-intents/{pid}/")
    assert p["disk_usage"] == w.store.usage(w.settings.internal_bucket, f"nclue/{w.account_id}/shopping-intents/{pid}") > 0

    result = p["result"]
    assert (result["panel_name"], result["panel_size"], result["group_size"]) == (synthetic.NAME, synthetic.SIZE, math.ceil(0.1 * synthetic.SIZE))
    assert "top 10%" in result["group_rule"] and 0 < result["group_min_score"] <= result["group_mean_score"] <= 1
    assert [r["key"] for r in result["gender"]] == ["F", "M"]
    assert [r["key"] for r in result["age_group"]] == list(synthetic.AGE_GROUPS)
    for section in ("gender", "age_group"):
        assert sum(r["group_share"] for r in result[section]) == pytest.approx(1, abs=1e-5)
        assert sum(r["panel_share"] for r in result[section]) == pytest.approx(1, abs=1e-5)
    lifts = [r["lift"] for r in result["interest"]]
    assert lifts == sorted(lifts, reverse=True) and 0 < len(lifts) <= intent_report.TOP_INTERESTS
    for section in ("gender", "age_group", "interest"):
        for r in result[section]:
            assert r["lift"] == pytest.approx(r["group_share"] / r["panel_share"], rel=1e-3, abs=1e-4)

    # The download: {profile_id}.tsv with the same rows as the JSON form.
    resp = c.raw("GET", f"{DOWNLOAD}/{pid}")
    assert resp.status_code == 200
    assert resp.headers["content-disposition"] == f'attachment; filename="{pid}.tsv"'
    assert resp.headers["content-type"].startswith("text/tab-separated-values")
    assert len(resp.content) == p["disk_usage"]
    rows = parse_tsv(resp.content)
    expected = [{"section": s, **r} for s in ("gender", "age_group", "interest") for r in result[s]]
    assert rows == [{**r, "group_share": pytest.approx(r["group_share"], abs=1e-6), "panel_share": pytest.approx(r["panel_share"], abs=1e-6), "lift": pytest.approx(r["lift"], abs=1e-4)} for r in expected]
    import pandas as pd

    df = pd.read_csv(io.BytesIO(resp.content), sep="\t")
    assert list(df.columns) == list(intent_report.COLUMNS) and len(df) == len(rows)

    listing = c.get(BASE)
    assert (listing["index"], listing["limit"], listing["total"]) == (0, 20, 1)
    assert listing["profiles"] == [p]


@pytest.mark.parametrize("persona,gender,interest", [("beauty", "F", "Beauty>Skincare & makeup"), ("gaming", "M", "Digital>Video games")])
def test_sanity_a_persona_task_finds_that_personas_people_in_the_panel(world, persona, gender, interest):
    """A Task trained on the customer's own users finds the persona in the synthetic panel: the
    persona's typical gender and its shopping interest are over-represented, the interest most."""
    task_id = world.extra["task_id"] if persona == "beauty" else make_task(world, persona)["task_id"]
    result = completed(world, persona, task_id)["result"]
    genders = by_key(result["gender"])
    assert genders[gender]["lift"] > 1.2 and genders[gender]["group_share"] > 0.65, genders
    assert result["interest"][0]["key"] == interest and result["interest"][0]["lift"] > 2.5, result["interest"]
    other = "M" if gender == "F" else "F"
    assert genders[other]["lift"] < 1


def test_report_math_on_a_small_panel():
    """Shares, weights and lifts by hand: 10 users, the top 10% is one person unless ties... none here."""
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.05, 0.4, 0.6, 0.7, 0.5])
    data = intent_report.PanelScores(
        scores=np.tile(scores, 2),  # 20 users: the group is the top 2 (0.9 and the other 0.9)
        gender=np.array([0, 1] * 10), age_group=np.zeros(20, dtype=np.int64),
        interest_counts=np.array([2] + [0] * 19), interest_codes=np.array([0, 1]),
    )
    w = intent_report.group_weights(data.scores)
    assert np.flatnonzero(w).tolist() == [0, 10] and w[0] == w[10] == 0.9
    report = intent_report.build_report(data, {"gender": ["F", "M"], "age_group": ["30s"], "interest": ["a", "b"]})
    assert (report["group_size"], report["panel_size"]) == (2, 20)
    f, m = report["gender"]
    assert (f["key"], f["group_share"], f["panel_share"], f["lift"]) == ("F", 1.0, 0.5, 2.0)
    assert (m["group_share"], m["lift"]) == (0.0, 0.0)
    assert report["interest"] == []  # each interest has 1 holder: below the 5-user support
    # Zero scores everywhere: the group still has its members, counted equally.
    assert intent_report.group_weights(np.zeros(30)).tolist() == [1.0] * 3 + [0.0] * 27
    tsv = intent_report.render_tsv({"gender": [{"key": "=cmd", "group_share": 0.5, "panel_share": 0.25, "lift": 2.0}], "age_group": [], "interest": []})
    assert tsv.decode() == "section\tkey\tgroup_share\tpanel_share\tlift\ngender\t'=cmd\t0.500000\t0.250000\t2.0000\n"


def test_report_from_chunks_equals_the_report_of_the_whole_panel():
    """The job merges per-part summaries (executor chunks, in panel order); whatever the cut points,
    the report equals the whole panel's, exactly: ties at the group's cut keep panel order across
    chunks, and every float is summed over the same members in the same order."""
    rng = np.random.default_rng(3)
    n = 997
    scores = rng.choice([0.2, 0.5, 0.7, 0.9, 0.95], size=n) + np.where(rng.random(n) < 0.5, 0.0, rng.random(n) * 1e-3)
    counts = rng.integers(0, 4, size=n)
    data = intent_report.PanelScores(
        scores=scores, gender=rng.integers(0, 2, size=n), age_group=rng.integers(0, 6, size=n),
        interest_counts=counts, interest_codes=rng.integers(0, 30, size=int(counts.sum())),
    )
    categories = {"gender": ["F", "M"], "age_group": [f"{10 * i}s" for i in range(1, 7)], "interest": [f"i{c:02d}" for c in range(30)]}
    sizes = {s: len(v) for s, v in categories.items()}
    whole = intent_report.build_report(data, categories)
    assert whole["group_size"] == 100 and whole["interest"]
    ends = np.cumsum(counts)
    k = intent_report.group_size(n)
    for cuts in ([0, n], [0, 1, 2, 500, 500, n], [0, 99, 100, 101, 996, n], sorted({0, n, *rng.integers(0, n, size=12).tolist()})):
        summary = None
        for lo, hi in zip(cuts, cuts[1:]):
            a, b = (ends[lo - 1] if lo else 0), (ends[hi - 1] if hi else 0)
            part = intent_report.PanelScores(scores[lo:hi], data.gender[lo:hi], data.age_group[lo:hi], counts[lo:hi], data.interest_codes[a:b])
            s = intent_report.summarize(part, sizes, k)
            summary = s if summary is None else intent_report.merge(summary, s)
        assert intent_report.report_from_summary(summary, categories) == whole, cuts
        assert np.array_equal(summary.candidates.scores, scores[np.flatnonzero(intent_report.group_weights(scores))])


# -- failures ----------------------------------------------------------------------------------------
def corrupt_panel(w, pid):
    with w.svc.db.session() as s:
        prefix = s.get(ReferencePanel, s.get(ShoppingIntent, pid).panel_id).prefix
    w.store.delete(w.settings.internal_bucket, f"{prefix}/attributes/00000.parquet")


def exhaust_quota(w, pid):
    from userlens.understanding.resources import account_storage_used

    with w.svc.db.session() as s:
        w.svc.shopping_intents.deps.quota_bytes = account_storage_used(s, w.account_id) + 10


@pytest.mark.parametrize("break_it,code,detail", [(corrupt_panel, "COMMON_ERROR", "attributes of part 0"), (exhaust_quota, "DISK_SPACE_SHORTAGE", "quota")])
def test_failed_profile_reports_why_and_cannot_be_downloaded(world, break_it, code, detail):
    pid = create(world)["profile_id"]
    break_it(world, pid)
    world.run_jobs()
    p = world.client.get(f"{BASE}/{pid}")
    assert (p["status"], p["fail_message"]) == ("failed", code) and detail in p["fail_detail"]
    assert ISO.match(p["completed_at"]) and (p["line_count"], p["disk_usage"], p["result"]) == (None, None, None)
    assert world.store.list(world.settings.internal_bucket, f"nclue/{world.account_id}/shopping-intents/{pid}") == []
    body = assert_error(world.client.raw("GET", f"{DOWNLOAD}/{pid}"), 409, 19409, "INVALID_STATUS")
    assert "failed" in body["details"]
    assert world.client.delete(f"{BASE}/{pid}") == {"profile_id": pid}


# -- synchronous errors ------------------------------------------------------------------------------
def test_create_errors(world):
    c, w = world.client, world
    tid = w.extra["task_id"]
    for name in ("", "   ", "x" * 101):
        assert_error(c.raw("POST", BASE, body={"name": name, "task_id": tid}), 422, 10101, "NAME_TOO_LONG")
    assert_error(c.raw("POST", BASE, body={"task_id": tid}), 400, 19400, "INVALID_PARAMETER")
    assert_error(c.raw("POST", BASE, body={"name": 5, "task_id": tid}), 400, 19400, "INVALID_PARAMETER")
    assert_error(c.raw("POST", BASE, body={"name": "n"}), 400, 19400, "INVALID_PARAMETER")
    assert_error(c.raw("POST", BASE, body={"name": "n", "task_id": ""}), 400, 19400, "INVALID_PARAMETER")
    assert_error(c.raw("POST", BASE, body={"name": "n", "task_id": "00000000-0000-0000-0000-000000000000"}), 404, 19404, "RESOURCE_NOT_FOUND")
    # another account's Task is invisible
    assert_error(w.other_client().raw("POST", BASE, body={"name": "n", "task_id": tid}), 404, 19404, "RESOURCE_NOT_FOUND")
    create(w, "x" * 100)
    assert_error(c.raw("POST", BASE, body={"name": "x" * 100, "task_id": tid}), 409, 10102, "DUPLICATE_NAME")
    # unsigned
    assert_error(c.http.post(BASE, json={"name": "n", "task_id": tid}), 401, 10100, "ACCESS_DENIED")
    assert_error(c.http.get(f"{DOWNLOAD}/{tid}"), 401, 10100, "ACCESS_DENIED")


def test_a_task_that_is_not_completed_cannot_be_used(world):
    c, w = world.client, world
    w.put("answers/busy.csv", "u100000\t1\n")
    tid = c.post("/api/v1/tasks", {"name": "busy", "train_feature_id": w.extra["feature_id"], "train_bucket": w.bucket, "train_file_path": "answers/busy.csv"})["task_id"]
    body = assert_error(c.raw("POST", BASE, body={"name": "n", "task_id": tid}), 409, 19409, "INVALID_STATUS")
    assert "registered" in body["details"]
    w.run_jobs()
    assert c.get(f"/api/v1/tasks/{tid}")["status"] == "failed"  # too few labels
    body = assert_error(c.raw("POST", BASE, body={"name": "n", "task_id": tid}), 409, 19409, "INVALID_STATUS")
    assert "failed" in body["details"]
    assert c.get(BASE)["total"] == 0


def test_no_reference_panel_for_the_tasks_model_is_422(world):
    with world.svc.db.session() as s:
        s.get(Task, world.extra["task_id"]).model_name = "some-other-model-v9"
    body = assert_error(world.client.raw("POST", BASE, body={"name": "n", "task_id": world.extra["task_id"]}), 422, 19422, "MODEL_MISMATCH")
    assert "some-other-model-v9" in body["details"] and "userlens panel import" in body["details"]


def test_unknown_or_foreign_profile_is_404(world):
    c = world.client
    pid = completed(world)["profile_id"]
    missing = "00000000-0000-0000-0000-000000000000"
    for method, path in (("GET", f"{BASE}/{missing}"), ("DELETE", f"{BASE}/{missing}"), ("GET", f"{DOWNLOAD}/{missing}")):
        assert_error(c.raw(method, path), 404, 19404, "RESOURCE_NOT_FOUND")
    other = world.other_client()
    for method, path in (("GET", f"{BASE}/{pid}"), ("DELETE", f"{BASE}/{pid}"), ("GET", f"{DOWNLOAD}/{pid}")):
        assert_error(other.raw(method, path), 404, 19404, "RESOURCE_NOT_FOUND")
    assert other.get(BASE)["total"] == 0 and c.get(BASE)["total"] == 1


def test_list_paging_newest_first(world):
    ids = [create(world, f"p{i}")["profile_id"] for i in range(3)]
    page = world.client.get(BASE, {"index": 1, "limit": 1})
    assert (page["index"], page["limit"], page["total"]) == (1, 1, 3)
    assert [p["profile_id"] for p in page["profiles"]] == [ids[1]]
    assert [p["profile_id"] for p in world.client.get(BASE)["profiles"]] == ids[::-1]
    for params in ({"limit": 0}, {"limit": 101}, {"index": -1}, {"index": "x"}):
        assert_error(world.client.raw("GET", BASE, params), 400, 19400, "INVALID_PARAMETER")


# -- delete ------------------------------------------------------------------------------------------
def test_delete_registered_profile_cancels_its_job(world):
    pid = create(world)["profile_id"]
    with world.svc.db.session() as s:
        job_id = s.get(ShoppingIntent, pid).job_id
    assert world.client.delete(f"{BASE}/{pid}") == {"profile_id": pid}
    assert world.svc.queue.get(job_id).status == "cancelled"
    assert world.run_jobs() == 0
    assert_error(world.client.raw("GET", f"{BASE}/{pid}"), 404, 19404, "RESOURCE_NOT_FOUND")


@pytest.mark.parametrize("state", ["pending", "in_progress"])
def test_delete_refused_while_pending_or_in_progress(world, state):
    pid = create(world)["profile_id"]
    world.svc.queue.promote()
    if state == "in_progress":
        assert world.svc.queue.claim("test-worker", [JOB_KIND]) is not None
    assert world.client.get(f"{BASE}/{pid}")["status"] == state
    assert_error(world.client.raw("DELETE", f"{BASE}/{pid}"), 409, 19409, "INVALID_STATUS")
    # and the Task it reads cannot go either
    body = assert_error(world.client.raw("DELETE", f"/api/v1/tasks/{world.extra['task_id']}"), 409, 19410, "RESOURCE_IN_USE")
    assert pid in body["details"]


def test_delete_completed_profile_removes_its_result_then_the_task_can_go(world):
    c, w = world.client, world
    tid = w.extra["task_id"]
    pid = create(w)["profile_id"]
    body = assert_error(c.raw("DELETE", f"/api/v1/tasks/{tid}"), 409, 19410, "RESOURCE_IN_USE")  # a registered profile reads it
    assert pid in body["details"]
    w.run_jobs()
    root = f"nclue/{w.account_id}/shopping-intents/{pid}"
    assert w.store.list(w.settings.internal_bucket, root)
    assert c.delete(f"{BASE}/{pid}") == {"profile_id": pid}
    assert w.store.list(w.settings.internal_bucket, root) == []
    assert_error(c.raw("GET", f"{DOWNLOAD}/{pid}"), 404, 19404, "RESOURCE_NOT_FOUND")
    assert_error(c.raw("DELETE", f"{BASE}/{pid}"), 404, 19404, "RESOURCE_NOT_FOUND")
    # a completed profile does not hold its Task: the profile keeps reporting the Task's name
    pid2 = completed(w, "kept")["profile_id"]
    assert c.delete(f"/api/v1/tasks/{tid}") == {"task_id": tid}
    assert c.get(f"{BASE}/{pid2}")["task_name"] == "beauty"
    assert c.raw("GET", f"{DOWNLOAD}/{pid2}").status_code == 200


# -- reference panels --------------------------------------------------------------------------------
def small_panel(n=200, seed=3, extra_interest="") -> tuple[str, str]:
    """A panel whose interests are the personas themselves (plus one shared by everybody)."""
    text, truth = sample.generate(n, seed=seed)
    text = "".join(f"q{line[1:]}\n" for line in text.splitlines())  # ids q1000xx, unlike the customer's
    lines = ["user_id\tgender\tage_group\tinterests"]
    for i, (u, interests) in enumerate(truth.items()):
        lines.append(f"q{u[1:]}\t{'F' if i % 2 else 'M'}\t{'20s' if i % 3 else '40s'}\t{'|'.join(interests + ([extra_interest] if extra_interest else []))}")
    return text, "\n".join(lines) + "\n"


def test_imported_panel_becomes_the_models_panel_and_profiles_keep_theirs(world):
    c, w = world.client, world
    first = completed(w, "before")
    seq, attrs = small_panel(extra_interest="=formula")
    w.put("panel/seq.csv", seq)
    w.put("panel/attrs.tsv", attrs)
    panel = w.svc.panels.import_panel("my-panel", w.bucket, "panel/seq.csv", "panel/attrs.tsv")
    assert (panel.user_count, panel.part_count, panel.model_name, panel.builtin) == (200, 1, DEFAULT_MODEL, False)
    assert panel.disk_usage == w.store.usage(w.settings.internal_bucket, panel.prefix) > 0
    assert set(panel.categories["interest"]) == set(sample.INTERESTS) | {"=formula"}
    assert [p.name for p in w.svc.panels.list()] == ["my-panel", synthetic.NAME]

    second = completed(w, "after")
    assert (second["result"]["panel_name"], second["line_count"], second["result"]["group_size"]) == ("my-panel", 200, 20)
    top = second["result"]["interest"]
    assert top[0]["key"] == "beauty" and top[0]["lift"] > 2
    formula = by_key(top)["=formula"]
    assert (formula["group_share"], formula["panel_share"], formula["lift"]) == (1.0, 1.0, 1.0)
    assert "\t'=formula\t" in c.raw("GET", f"{DOWNLOAD}/{second['profile_id']}").text  # spreadsheet-safe
    # the earlier profile is unchanged
    assert c.get(f"{BASE}/{first['profile_id']}")["result"] == first["result"]
    # a panel is split into parts like a Feature; the result does not depend on the split
    w.svc.panels.deps.chunk_rows = 64
    split = w.svc.panels.import_panel("my-panel-split", w.bucket, "panel/seq.csv", "panel/attrs.tsv")
    assert split.part_count == 4
    third = completed(w, "split")
    assert third["result"]["panel_name"] == "my-panel-split"
    assert {k: v for k, v in third["result"].items() if k not in ("panel_id", "panel_name")} == {k: v for k, v in second["result"].items() if k not in ("panel_id", "panel_name")}


def test_panel_delete_is_refused_while_a_profile_reads_it(world):
    pid = create(world)["profile_id"]
    panel_id = world.svc.panels.active(DEFAULT_MODEL).id
    with pytest.raises(Conflict) as err:
        world.svc.panels.delete(panel_id)
    assert err.value.name == "RESOURCE_IN_USE" and pid in err.value.details
    world.run_jobs()
    prefix = world.svc.panels.get(panel_id).prefix
    assert world.svc.panels.delete(panel_id) == panel_id
    assert world.store.list(world.settings.internal_bucket, prefix) == []
    assert world.svc.panels.active(DEFAULT_MODEL) is None
    assert completed(world, "again")["result"]["panel_name"] == synthetic.NAME  # the built-in one comes back


HEADER = "user_id\tgender\tage_group\tinterests\n"


@pytest.mark.parametrize(
    "seq,attrs,message",
    [
        ("a\tx->y\n", "a\tF\t20s\tshoes\n", "the first line must be the header"),
        ("a\tx->y\n", HEADER + "a\tF\t20s\n", "expected 4 tab-separated columns"),
        ("a\tx->y\n", HEADER + "a\t\t20s\tshoes\n", "gender must be 1-32 characters"),
        ("a\tx->y\n", HEADER + "a\tF\t" + "y" * 33 + "\tshoes\n", "age_group must be 1-32 characters"),
        ("a\tx->y\n", HEADER + "a\tF\t20s\t" + "z" * 101 + "\n", "interest of 101 characters"),
        ("a\tx->y\n", HEADER + "a\tF\t20s\tshoes\na\tM\t30s\t\n", "DUPLICATE_USERID"),
        ("a\tx->y\nb\tz\n", HEADER + "a\tF\t20s\tshoes\n", "'b' has a sequence but no line in the attribute file"),
        ("a\tx->y\n", HEADER + "a\tF\t20s\tshoes\nc\tM\t30s\t\n", "users of the attribute file without a sequence: 1, e.g. 'c'"),
        ("a\tx->y\na\tz\n", HEADER + "a\tF\t20s\tshoes\n", "DUPLICATE_USERID"),
        ("a x y\n", HEADER + "a\tF\t20s\tshoes\n", "UNEXPECTED_TXT_FORMAT"),
        ("a\tx->y\n", HEADER, "NOT_EXIST_FILE"),
    ],
)
def test_panel_import_rejects_bad_files_and_leaves_nothing(nclue, seq, attrs, message):
    nclue.put("p/seq.csv", seq)
    nclue.put("p/attrs.tsv", attrs)
    with pytest.raises(PanelImportError) as err:
        nclue.svc.panels.import_panel("bad", nclue.bucket, "p/seq.csv", "p/attrs.tsv")
    assert message in err.value.details
    assert nclue.svc.panels.list() == [] and nclue.store.list(nclue.settings.internal_bucket, "panels") == []


def test_panel_import_checks_its_arguments(nclue):
    from userlens.errors import DomainError

    nclue.put("p/seq.csv", "a\tx\n")
    nclue.put("p/attrs.tsv", HEADER + "a\tF\t20s\t\n")
    nclue.put("p/dir/attrs.tsv", HEADER + "a\tF\t20s\t\n")
    cases = [
        (("bad", nclue.bucket, "p/missing.csv", "p/attrs.tsv", None), "PATH_NOT_FOUND"),
        (("bad", "no-such-bucket", "p/seq.csv", "p/attrs.tsv", None), "PATH_NOT_FOUND"),
        (("bad", nclue.bucket, "p/seq.csv", "p/a|b.tsv", None), "INVALID_PATH_CHARACTER"),
        (("bad", nclue.bucket, "p/seq.csv", "p/dir/", None), "INVALID_PARAMETER"),
        (("bad", nclue.bucket, "p/seq.csv", "p/attrs.tsv", "gpt-9"), "INVALID_PARAMETER"),
        (("", nclue.bucket, "p/seq.csv", "p/attrs.tsv", None), "NAME_TOO_LONG"),
        (("bad", nclue.settings.internal_bucket, "p/seq.csv", "p/attrs.tsv", None), "PATH_NOT_FOUND"),
    ]
    for args, name in cases:
        with pytest.raises(DomainError) as err:
            nclue.svc.panels.import_panel(*args)
        assert err.value.name == name, (args, err.value.details)
    panel = nclue.svc.panels.import_panel("one", nclue.bucket, "p/seq.csv", "p/attrs.tsv")
    assert (panel.user_count, panel.categories) == (1, {"gender": ["F"], "age_group": ["20s"], "interest": []})
