"""NCLUE Tasks, Task Runs and Custom Attributes through the HTTP API, with real files."""

from __future__ import annotations

import io
import re
import time

import numpy as np
import pytest

from userlens.samples import sequences as sample
from userlens.understanding.models import Feature

N_USERS = 900


def assert_error(resp, status, code, message):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert (body["code"], body["message"]) == (code, message), body
    return body


@pytest.fixture
def world(nclue):
    """A completed Feature of the generated sample, and 'running' answers for its users."""
    text, truth = sample.generate(N_USERS, seed=11)
    nclue.put("seq/users.csv", text)
    nclue.put("answers/running.csv", "".join(f"{u}\t{int('running' in i)}\n" for u, i in truth.items()))
    fid = nclue.client.post("/api/v1/features", {"name": "sample", "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    nclue.run_jobs()
    assert nclue.client.get(f"/api/v1/features/{fid}")["status"] == "completed"
    nclue.extra.update(feature_id=fid, truth=truth)
    return nclue


def task_body(w, **over):
    body = {"name": "runners", "train_feature_id": w.extra["feature_id"], "train_bucket": w.bucket, "train_file_path": "answers/running.csv"}
    body.update(over)
    return body


def make_task(w, **over) -> dict:
    resp = w.client.raw("POST", "/api/v1/tasks", body=task_body(w, **over))
    assert resp.status_code == 200, resp.text
    w.run_jobs()
    return w.client.get(f"/api/v1/tasks/{resp.json()['task_id']}")


def auc(scores: dict[str, float], truth: dict[str, list[str]], interest="running") -> float:
    from sklearn.metrics import roc_auc_score

    ids = sorted(scores)
    return roc_auc_score([int(interest in truth[u]) for u in ids], [scores[u] for u in ids])


# -- Tasks ---------------------------------------------------------------------------------------------
def test_task_trains_and_reports_performance(world):
    world.svc.tasks.deps.task_candidates = ("logreg", "mlp")
    t = make_task(world)
    assert t["status"] == "completed" and t["fail_message"] is None and t["completed_at"]
    assert t["train_feature_name"] == "sample" and t["test_feature_id"] is None and t["nclue_model"]
    perf = t["performance"]
    for k in ("auc", "accuracy", "precision", "recall", "f1", "positive_rate", "train_count", "test_count"):
        assert k in perf
    assert perf["auc"] > 0.85, perf  # the sample's behaviours really tell runners apart
    assert perf["train_count"] + perf["test_count"] == N_USERS
    assert abs(perf["test_count"] - 0.2 * N_USERS) <= 1 and perf["split"].startswith("automatic")
    assert len(perf["roc_curve"]["fpr"]) == len(perf["roc_curve"]["tpr"]) > 2
    assert {c["model"] for c in perf["validation"]} == {"logreg", "mlp"} and perf["model"] in perf["validation"]
    stored = world.store.usage(world.settings.internal_bucket, f"nclue/{world.account_id}/tasks/{t['task_id']}")
    assert t["disk_usage"] == stored > 0
    listing = world.client.get("/api/v1/tasks")
    assert listing["total"] == 1 and listing["tasks"][0]["task_id"] == t["task_id"]


def test_task_with_a_test_file_on_another_feature_of_the_same_model(world):
    text, truth = sample.generate(600, seed=99)
    text = text.replace("\tu", "\tv").replace("\nu", "\nv")
    lines = [("v" + line[1:]) for line in text.splitlines()]
    world.put("seq/holdout.csv", "\n".join(lines) + "\n")
    world.put("answers/holdout.csv", "".join(f"v{u[1:]}\t{int('running' in i)}\n" for u, i in truth.items()))
    test_fid = world.client.post("/api/v1/features", {"name": "holdout", "source_bucket": world.bucket, "source_file_path": "seq/holdout.csv"})["feature_id"]
    world.run_jobs()
    t = make_task(world, test_feature_id=test_fid, test_bucket=world.bucket, test_file_path="answers/holdout.csv")
    assert t["status"] == "completed", t["fail_detail"]
    assert (t["test_feature_name"], t["performance"]["split"], t["performance"]["test_count"]) == ("holdout", "test file", 600)
    assert t["performance"]["train_count"] == N_USERS and t["performance"]["auc"] > 0.85


def test_test_file_needs_both_labels(world):
    truth = world.extra["truth"]
    world.put("answers/test-pos-only.csv", "".join(f"{u}\t1\n" for u, i in truth.items() if "running" in i))
    t = make_task(world, test_feature_id=world.extra["feature_id"], test_bucket=world.bucket, test_file_path="answers/test-pos-only.csv")
    assert t["fail_message"] == "NUM_OF_LABEL_INSUFFICIENT" and "test answers" in t["fail_detail"]
    few = [u for u, i in truth.items() if "running" in i][:3] + [u for u, i in truth.items() if "running" not in i][:3]
    world.put("answers/test-small.csv", "".join(f"{u}\t{int('running' in truth[u])}\n" for u in few))
    t = make_task(world, name="small-test", test_feature_id=world.extra["feature_id"], test_bucket=world.bucket, test_file_path="answers/test-small.csv")
    assert t["status"] == "completed" and t["performance"]["test_count"] == 6


def test_users_duplicated_in_a_feature_do_not_fail_a_task(world):
    from userlens.understanding import vectors

    with world.svc.db.session() as s:
        prefix = s.get(Feature, world.extra["feature_id"]).vectors_prefix
    ids, mat = next(vectors.iter_vectors(world.store, world.settings.internal_bucket, prefix))
    vectors.write_part(world.store, world.settings.internal_bucket, f"{prefix}/part-99999.parquet", ids[:50], mat[:50])
    t = make_task(world)
    assert t["status"] == "completed" and t["performance"]["train_count"] + t["performance"]["test_count"] == N_USERS


@pytest.mark.parametrize(
    "content,code",
    [
        ("".join(f"u{100000 + i}\t{int(i < 50)}\n" for i in range(N_USERS)), "NUM_OF_LABEL_INSUFFICIENT"),
        ("u100000\t1\nu100001\t2\n", "UNEXPECTED_LABEL"),
        ("u100000\t1\nu100001\tyes\n", "UNEXPECTED_LABEL"),
        ("u100000\t1\textra\n", "UNEXPECTED_TXT_FORMAT"),
        ("u100000 1\n", "UNEXPECTED_TXT_FORMAT"),
        ("", "NOT_EXIST_FILE"),
        ("user_id\tlabel\n", "NOT_EXIST_FILE"),
        ("nobody1\t1\nnobody2\t0\n", "NUM_OF_LABEL_INSUFFICIENT"),
    ],
)
def test_bad_answer_files_fail_with_their_code(world, content, code):
    world.put("answers/bad.csv", content)
    t = make_task(world, train_file_path="answers/bad.csv")
    assert (t["status"], t["fail_message"]) == ("failed", code), t["fail_detail"]
    assert t["performance"] is None and t["disk_usage"] is None


def test_answer_header_line_is_accepted(world):
    truth = world.extra["truth"]
    world.put("answers/with-header.csv", "user_id\tlabel\n" + "".join(f"{u}\t{int('running' in i)}\n" for u, i in truth.items()))
    assert make_task(world, train_file_path="answers/with-header.csv")["status"] == "completed"


@pytest.mark.parametrize(
    "row,kind",
    [
        ("jane.doe@example.com\t1", "e-mail address"),
        ("010-1234-5678\t1", "phone number"),
        ("01012345678\t0", "phone number"),
        ("+82 10 1234 5678\t1", "phone number"),
        ("900101-1234567\t1", "resident registration number"),
        ("4111 1111 1111 1111\t0", "card number"),
        ("5500-0000-0000-0004\t1", "card number"),
        ("M12345678\t1", "passport number"),
        ("TK1234567\t0", "passport number"),
    ],
)
def test_personal_data_in_answers_is_422_10109_with_kind_and_line(world, row, kind):
    world.put("answers/pii.csv", "u100000\t1\nu100001\t0\n" + row + "\n")
    body = assert_error(world.client.raw("POST", "/api/v1/tasks", body=task_body(world, train_file_path="answers/pii.csv")), 422, 10109, "PERSONAL_DATA_NOT_ALLOWED")
    assert kind in body["details"] and "line 3" in body["details"]
    # the test file is scanned too
    world.put("answers/ok.csv", "u100000\t1\n")
    body = assert_error(world.client.raw("POST", "/api/v1/tasks", body=task_body(world, test_feature_id=world.extra["feature_id"], test_bucket=world.bucket, test_file_path="answers/pii.csv")), 422, 10109, "PERSONAL_DATA_NOT_ALLOWED")
    assert "test_file_path" in body["details"]


@pytest.mark.parametrize("value", ["u4111111111111112", "4111111111111112", "user12345678", "u100000", "a1234567", "12345678901234"])
def test_ordinary_ids_are_not_personal_data(world, value):
    world.put("answers/ids.csv", f"{value}\t1\n")
    assert world.client.raw("POST", "/api/v1/tasks", body=task_body(world, train_file_path="answers/ids.csv")).status_code == 200


def test_task_synchronous_errors(world):
    c, w = world.client, world
    assert_error(c.raw("POST", "/api/v1/tasks", body=task_body(w, name="")), 422, 10101, "NAME_TOO_LONG")
    assert_error(c.raw("POST", "/api/v1/tasks", body=task_body(w, train_file_path="answers/a&b.csv")), 422, 10104, "INVALID_CHARACTER_IN_TRAIN_PATH")
    assert_error(c.raw("POST", "/api/v1/tasks", body=task_body(w, test_feature_id=w.extra["feature_id"], test_bucket=w.bucket, test_file_path="answers/a#b.csv")), 422, 10105, "INVALID_CHARACTER_IN_TEST_PATH")
    assert_error(c.raw("POST", "/api/v1/tasks", body=task_body(w, train_file_path="answers/missing.csv")), 404, 10107, "TRAIN_PATH_NOT_FOUND")
    assert_error(c.raw("POST", "/api/v1/tasks", body=task_body(w, train_bucket="no-such-bucket")), 404, 10107, "TRAIN_PATH_NOT_FOUND")
    assert_error(c.raw("POST", "/api/v1/tasks", body=task_body(w, test_feature_id=w.extra["feature_id"], test_bucket=w.bucket, test_file_path="answers/missing.csv")), 404, 10108, "TEST_PATH_NOT_FOUND")
    assert_error(c.raw("POST", "/api/v1/tasks", body=task_body(w, test_bucket=w.bucket)), 400, 19400, "INVALID_PARAMETER")
    assert_error(c.raw("POST", "/api/v1/tasks", body=task_body(w, train_feature_id="00000000-0000-0000-0000-000000000000")), 404, 19404, "RESOURCE_NOT_FOUND")
    assert_error(c.raw("POST", "/api/v1/tasks", body=task_body(w, train_feature_id=None)), 400, 19400, "INVALID_PARAMETER")
    make_task(w)
    assert_error(c.raw("POST", "/api/v1/tasks", body=task_body(w)), 409, 10102, "DUPLICATE_NAME")
    # another account's Feature is invisible
    other = w.other_client()
    assert_error(other.raw("POST", "/api/v1/tasks", body=task_body(w, name="x")), 404, 19404, "RESOURCE_NOT_FOUND")


def test_feature_still_being_created_cannot_be_used(world):
    fid = world.client.post("/api/v1/features", {"name": "busy", "source_bucket": world.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    body = assert_error(world.client.raw("POST", "/api/v1/tasks", body=task_body(world, train_feature_id=fid)), 409, 19409, "INVALID_STATUS")
    assert "registered" in body["details"]


def test_test_feature_of_another_model_is_refused(world):
    fid = world.client.post("/api/v1/features", {"name": "other-model", "source_bucket": world.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    world.run_jobs()
    with world.svc.db.session() as s:
        s.get(Feature, fid).model_name = "some-other-model-v9"
    assert_error(world.client.raw("POST", "/api/v1/tasks", body=task_body(world, test_feature_id=fid, test_bucket=world.bucket, test_file_path="answers/running.csv")), 422, 19422, "MODEL_MISMATCH")


def test_default_2048_dimension_model_and_v1_never_mix(world):
    c = world.client
    assert c.get(f"/api/v1/features/{world.extra['feature_id']}")["nclue_model"] == "ul-hash-v2"
    fid = c.post("/api/v1/features", {"name": "narrow", "source_bucket": world.bucket, "source_file_path": "seq/users.csv", "nclue_model": "ul-hash-v1"})["feature_id"]
    world.run_jobs()
    with world.svc.db.session() as s:
        assert (s.get(Feature, world.extra["feature_id"]).dim, s.get(Feature, fid).dim) == (2048, 1024)
    t = make_task(world, name="narrow-runners", train_feature_id=fid)
    assert t["status"] == "completed" and t["nclue_model"] == "ul-hash-v1" and t["performance"]["auc"] > 0.85, t
    run = {"name": "mixed", "task_id": t["task_id"], "feature_id": world.extra["feature_id"], "result_bucket": world.bucket, "result_file_path": "runs/"}
    assert_error(c.raw("POST", "/api/v1/task-runs", body=run), 422, 19422, "MODEL_MISMATCH")


def test_tasks_of_one_account_train_one_at_a_time_first_come_first_served(world):
    q = world.svc.queue
    ids = []
    for i in range(3):
        ids.append(world.client.post("/api/v1/tasks", task_body(world, name=f"t{i}"))["task_id"])
        time.sleep(0.01)
    other_feature = world.client.post("/api/v1/features", {"name": "meanwhile", "source_bucket": world.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    job_of = {tid: world.svc.tasks.get(world.account_id, tid).job_id for tid in ids}
    first = q.claim("w1", ["nclue.task", "nclue.feature"])
    assert first.id == job_of[ids[0]]
    second = q.claim("w2", ["nclue.task", "nclue.feature"])
    assert second.id == world.svc.features.get(world.account_id, other_feature).job_id  # other kinds keep running
    assert q.claim("w3", ["nclue.task", "nclue.feature"]) is None  # t1 waits for t0
    assert world.client.get(f"/api/v1/tasks/{ids[1]}")["status"] == "pending"
    # another account's Task is not blocked by this account's queue
    other = world.other_client()
    fid2 = other.post("/api/v1/features", {"name": "f", "source_bucket": world.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    assert q.claim("w4", ["nclue.feature"]).id == world.svc.features.get(other_account(world, other), fid2).job_id
    from userlens.jobs.engine import Outcome

    q.complete(first.id, "w1", Outcome())
    assert q.claim("w3", ["nclue.task"]).id == job_of[ids[1]]


def other_account(world, client) -> str:
    return world.svc.accounts.lookup(client.access_key)[0]


def test_delete_rules_between_features_tasks_and_runs(world):
    c = world.client
    fid = world.extra["feature_id"]
    tid = c.post("/api/v1/tasks", task_body(world))["task_id"]
    assert_error(c.raw("DELETE", f"/api/v1/features/{fid}"), 409, 19410, "RESOURCE_IN_USE")  # a registered Task uses it
    world.run_jobs()
    rid = c.post("/api/v1/task-runs", {"name": "r", "task_id": tid, "feature_id": fid, "result_bucket": world.bucket, "result_file_path": "out/"})["run_id"]
    body = assert_error(c.raw("DELETE", f"/api/v1/tasks/{tid}"), 409, 19410, "RESOURCE_IN_USE")
    assert rid in body["details"]
    assert_error(c.raw("DELETE", f"/api/v1/features/{fid}"), 409, 19410, "RESOURCE_IN_USE")
    world.run_jobs()
    assert c.delete(f"/api/v1/task-runs/{rid}") == {"run_id": rid}
    artifact = f"nclue/{world.account_id}/tasks/{tid}"
    assert world.store.list(world.settings.internal_bucket, artifact)
    assert c.delete(f"/api/v1/tasks/{tid}") == {"task_id": tid}
    assert world.store.list(world.settings.internal_bucket, artifact) == []
    assert c.delete(f"/api/v1/features/{fid}") == {"feature_id": fid}


def test_delete_refused_while_task_pending_or_running(world):
    tid = world.client.post("/api/v1/tasks", task_body(world))["task_id"]
    world.svc.queue.promote()
    assert_error(world.client.raw("DELETE", f"/api/v1/tasks/{tid}"), 409, 19409, "INVALID_STATUS")


# -- Runs ------------------------------------------------------------------------------------------------
def read_tsv(world, key):
    import pandas as pd

    return pd.read_csv(io.BytesIO(world.store.read_bytes(world.bucket, key)), sep="\t", dtype={"user_id": str})


@pytest.mark.parametrize("path,pattern", [("results/", r"^results/nclue_[0-9a-f]{8}_\d{10}\.tsv$"), ("results/runners", r"^results/runners_[0-9a-f]{8}_\d{10}\.tsv$")])
def test_run_scores_every_user_into_a_named_tsv(world, path, pattern):
    tid = make_task(world)["task_id"]
    created = world.client.post("/api/v1/task-runs", {"name": "score-all", "task_id": tid, "feature_id": world.extra["feature_id"], "result_bucket": world.bucket, "result_file_path": path})
    assert set(created) == {"run_id", "run_name", "created_at"}
    world.run_jobs()
    r = world.client.get(f"/api/v1/task-runs/{created['run_id']}")
    assert r["status"] == "completed" and r["line_count"] == N_USERS
    assert re.match(pattern, r["result_file_path"]), r["result_file_path"]
    assert time.strftime("%Y%m%d", time.gmtime()) in r["result_file_path"]
    assert (r["task_id"], r["feature_name"], r["result_bucket"]) == (tid, "sample", world.bucket)
    df = read_tsv(world, r["result_file_path"])
    assert list(df.columns) == ["user_id", "score"] and len(df) == N_USERS
    assert df["score"].between(0, 1).all() and df["user_id"].is_unique
    assert auc(dict(zip(df.user_id, df.score)), world.extra["truth"]) > 0.9
    raw = world.store.read_bytes(world.bucket, r["result_file_path"]).decode()
    assert raw.startswith("user_id\tscore\n") and raw.count("\n") == N_USERS + 1
    # DuckDB reads it as well
    import duckdb

    path_on_disk = world.tmp_copy(r["result_file_path"], raw)
    assert duckdb.sql(f"select count(*), min(score) >= 0 from read_csv('{path_on_disk}', delim='\t', header=true)").fetchall()[0] == (N_USERS, True)
    assert world.client.get("/api/v1/task-runs")["runs"][0]["run_id"] == created["run_id"]


def test_run_neutralises_spreadsheet_formulas_in_user_ids(world):
    world.put("seq/formula.csv", "=HYPERLINK(1)\ta->b\n+cmd\tc\n-12\td\n@sum\te\nplain\tf\n")
    fid = world.client.post("/api/v1/features", {"name": "formula", "source_bucket": world.bucket, "source_file_path": "seq/formula.csv"})["feature_id"]
    world.run_jobs()
    tid = make_task(world)["task_id"]
    rid = world.client.post("/api/v1/task-runs", {"name": "f", "task_id": tid, "feature_id": fid, "result_bucket": world.bucket, "result_file_path": "out/"})["run_id"]
    world.run_jobs()
    r = world.client.get(f"/api/v1/task-runs/{rid}")
    ids = [line.split("\t")[0] for line in world.store.read_bytes(world.bucket, r["result_file_path"]).decode().splitlines()[1:]]
    assert ids == ["'=HYPERLINK(1)", "'+cmd", "'-12", "'@sum", "plain"]


def test_run_errors(world):
    c, w = world.client, world
    tid = make_task(w)["task_id"]
    fid = w.extra["feature_id"]
    body = {"name": "r", "task_id": tid, "feature_id": fid, "result_bucket": w.bucket, "result_file_path": "out/"}
    assert_error(c.raw("POST", "/api/v1/task-runs", body={**body, "result_bucket": "no-such-bucket"}), 404, 10106, "PATH_NOT_FOUND")
    assert_error(c.raw("POST", "/api/v1/task-runs", body={**body, "result_file_path": "out/a|b"}), 422, 10103, "INVALID_PATH_CHARACTER")
    assert_error(c.raw("POST", "/api/v1/task-runs", body={**body, "task_id": "nope"}), 404, 19404, "RESOURCE_NOT_FOUND")
    busy = c.post("/api/v1/tasks", task_body(w, name="busy"))["task_id"]
    assert_error(c.raw("POST", "/api/v1/task-runs", body={**body, "task_id": busy}), 409, 19409, "INVALID_STATUS")
    w.run_jobs()
    with w.svc.db.session() as s:
        s.get(Feature, fid).model_name = "another-model-v2"
    assert_error(c.raw("POST", "/api/v1/task-runs", body=body), 422, 19422, "MODEL_MISMATCH")


def test_run_fails_with_obs_upload_failed_when_the_bucket_is_gone(world):
    tid = make_task(world)["task_id"]
    world.store.create_bucket("doomed-results")
    rid = world.client.post("/api/v1/task-runs", {"name": "r", "task_id": tid, "feature_id": world.extra["feature_id"], "result_bucket": "doomed-results", "result_file_path": "x"})["run_id"]
    world.store.delete_bucket("doomed-results")
    world.run_jobs()
    r = world.client.get(f"/api/v1/task-runs/{rid}")
    assert (r["status"], r["fail_message"]) == ("failed", "OBS_UPLOAD_FAILED")


# -- Custom Attributes -------------------------------------------------------------------------------
def test_custom_attributes_scores_users_against_keywords(world):
    c, w = world.client, world
    created = c.post("/api/v1/profile/custom-attributes", {"name": "runners-kw", "feature_id": w.extra["feature_id"], "keyword_set": "러닝화", "result_bucket": w.bucket, "result_file_path": "attrs/"})
    assert set(created) == {"profile_id", "profile_name", "created_at"}
    w.run_jobs()
    p = c.get(f"/api/v1/profile/custom-attributes/{created['profile_id']}")
    assert p["status"] == "completed" and p["line_count"] == N_USERS and p["keyword_set"] == "러닝화"
    assert re.match(r"^attrs/nclue_[0-9a-f]{8}_\d{10}\.tsv$", p["result_file_path"])
    df = read_tsv(w, p["result_file_path"])
    assert len(df) == N_USERS and df["score"].between(-1, 1).all()
    assert auc(dict(zip(df.user_id, df.score)), w.extra["truth"]) > 0.7  # runners are closer to "러닝화"
    listing = c.get("/api/v1/profile/custom-attributes")
    assert listing["total"] == 1 and listing["profiles"][0]["profile_id"] == created["profile_id"]


def test_custom_attributes_keyword_set_rules(world):
    c, w = world.client, world
    base = {"name": "kw", "feature_id": w.extra["feature_id"], "result_bucket": w.bucket, "result_file_path": "attrs/x"}
    made = c.post("/api/v1/profile/custom-attributes", {**base, "keyword_set": "running\n marathon \n\nrun"})
    assert c.get(f"/api/v1/profile/custom-attributes/{made['profile_id']}")["keyword_set"] == "running,marathon,run"
    assert_error(c.raw("POST", "/api/v1/profile/custom-attributes", body={**base, "name": "long", "keyword_set": "k" * 1001}), 400, 19400, "INVALID_PARAMETER")
    assert_error(c.raw("POST", "/api/v1/profile/custom-attributes", body={**base, "name": "empty", "keyword_set": " \n "}), 400, 19400, "INVALID_PARAMETER")
    assert c.raw("POST", "/api/v1/profile/custom-attributes", body={**base, "name": "max", "keyword_set": "k" * 1000}).status_code == 200
    assert_error(c.raw("POST", "/api/v1/profile/custom-attributes", body={**base, "name": "x", "feature_id": "nope", "keyword_set": "a"}), 404, 19404, "RESOURCE_NOT_FOUND")
    assert_error(c.raw("DELETE", f"/api/v1/features/{w.extra['feature_id']}"), 409, 19410, "RESOURCE_IN_USE")
    w.run_jobs()
    assert c.delete(f"/api/v1/profile/custom-attributes/{made['profile_id']}") == {"profile_id": made["profile_id"]}


def test_and_combination_favours_users_close_to_all_keywords():
    from userlens.understanding.custom_attributes import and_scores

    s = 2 ** -0.5
    users = np.array([[1.0, 0.0], [s, s], [0.0, 1.0]], dtype=np.float32)
    keywords = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    scores = and_scores(users, keywords)
    assert scores.tolist() == pytest.approx([s, 1.0, s])  # the user near both keywords ranks first
    assert and_scores(users, keywords[:1]).tolist() == pytest.approx([1.0, s, 0.0])  # one keyword: its cosine


def test_semantic_model_matches_keywords_by_meaning_across_languages(world):
    """ul-sem-v1: runners score high for a Japanese keyword that shares no word with their behaviours."""
    c, w = world.client, world
    created = c.post("/api/v1/features", {"name": "semantic", "source_bucket": w.bucket, "source_file_path": "seq/users.csv", "nclue_model": "ul-sem-v1"})
    w.run_jobs()
    f = c.get(f"/api/v1/features/{created['feature_id']}")
    assert (f["status"], f["nclue_model"]) == ("completed", "ul-sem-v1"), f["fail_detail"]
    hashed = c.get(f"/api/v1/features/{w.extra['feature_id']}")
    assert f["token_count"] == hashed["token_count"]  # one tokenizer for every model
    p = c.post("/api/v1/profile/custom-attributes", {"name": "jp", "feature_id": f["feature_id"], "keyword_set": "ジョギング", "result_bucket": w.bucket, "result_file_path": "attrs/"})
    w.run_jobs()
    df = read_tsv(w, c.get(f"/api/v1/profile/custom-attributes/{p['profile_id']}")["result_file_path"])
    assert auc(dict(zip(df.user_id, df.score)), w.extra["truth"]) > 0.75
    # a Task trained on the hashed Feature cannot score the semantic one
    tid = make_task(w)["task_id"]
    assert_error(c.raw("POST", "/api/v1/task-runs", body={"name": "x", "task_id": tid, "feature_id": f["feature_id"], "result_bucket": w.bucket, "result_file_path": "o/"}), 422, 19422, "MODEL_MISMATCH")


def test_unknown_model_is_400(world):
    body = {"name": "m", "source_bucket": world.bucket, "source_file_path": "seq/users.csv", "nclue_model": "gpt-9"}
    assert_error(world.client.raw("POST", "/api/v1/features", body=body), 400, 19400, "INVALID_PARAMETER")
