"""NCLUE Features through the HTTP API: fields, paging, every synchronous error, every fail_message
produced by a real bad file, the dependency rules of DELETE, and isolation between accounts."""

from __future__ import annotations

import gzip
import re

import pytest

from userlens.understanding.encoder import MAX_TOKENS_PER_USER
from userlens.understanding.tokenizer import tokenize_behavior

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
FIELDS = {
    "feature_id", "feature_name", "status", "created_at", "completed_at", "source_bucket", "source_file_path",
    "user_count", "token_count", "disk_usage", "fail_message",
}

SEQ = "u1\tスターバックス板橋アベニューフラン店->モモス->ポケモン GO\nu2\t스타벅스 판교점->나이키 러닝화\nu3\tNike Air Max 90->Starbucks\n"


def create(nclue, name="f", bucket=None, path="seq/users.csv", expect=200):
    resp = nclue.client.raw("POST", "/api/v1/features", body={"name": name, "source_bucket": bucket or nclue.bucket, "source_file_path": path})
    assert resp.status_code == expect, resp.text
    return resp.json()


def make_feature(nclue, data: bytes | str, name="f", path="seq/users.csv") -> dict:
    nclue.put(path, data)
    fid = create(nclue, name, path=path)["feature_id"]
    nclue.run_jobs()
    return nclue.client.get(f"/api/v1/features/{fid}")


def assert_error(resp, status, code, message):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code and body["message"] == message and isinstance(body["details"], str) and body["details"]


# -- happy path -----------------------------------------------------------------------------------
def test_create_get_list_completed_feature(nclue):
    nclue.put("seq/users.csv", SEQ)
    created = create(nclue, "my-feature")
    assert set(created) == {"feature_id", "feature_name", "created_at"}
    assert created["feature_name"] == "my-feature" and ISO.match(created["created_at"])
    fid = created["feature_id"]
    before = nclue.client.get(f"/api/v1/features/{fid}")
    assert before["status"] == "registered" and before["completed_at"] is None and before["user_count"] is None

    nclue.run_jobs()
    f = nclue.client.get(f"/api/v1/features/{fid}")
    assert FIELDS <= set(f)
    assert f["status"] == "completed" and f["fail_message"] is None and ISO.match(f["completed_at"])
    assert f["source_bucket"] == nclue.bucket and f["source_file_path"] == "seq/users.csv"
    assert f["user_count"] == 3
    expected_tokens = sum(len(tokenize_behavior(b)) for line in SEQ.splitlines() for b in line.split("\t")[1].split("->"))
    assert f["token_count"] == expected_tokens
    stored = nclue.store.usage(nclue.settings.internal_bucket, f"nclue/{nclue.account_id}/features/{fid}")
    assert f["disk_usage"] == stored > 0
    assert f["nclue_model"]

    listing = nclue.client.get("/api/v1/features")
    assert (listing["index"], listing["limit"], listing["total"]) == (0, 20, 1)
    assert listing["features"][0] == f


def test_directory_of_part_files_skips_markers(nclue):
    nclue.put("parts/part-00000", "a\tx->y\nb\tz\n")
    nclue.put("parts/part-00001.csv", "c\tw\n")
    nclue.put("parts/_SUCCESS", "")
    nclue.put("parts/.hidden", "garbage without tab\n")
    fid = create(nclue, "dir", path="parts/")["feature_id"]
    fid2 = create(nclue, "dir-no-slash", path="parts")["feature_id"]
    nclue.run_jobs()
    for i in (fid, fid2):
        f = nclue.client.get(f"/api/v1/features/{i}")
        assert (f["status"], f["user_count"]) == ("completed", 3)


def test_crlf_bom_and_blank_lines_are_accepted(nclue):
    f = make_feature(nclue, "\ufeffa\tx->y\r\n\r\nb\tz\r\n\n")
    assert (f["status"], f["user_count"]) == ("completed", 2)


def test_tokens_are_truncated_to_the_most_recent_2048(nclue):
    long_seq = "->".join(f"item{i} thing" for i in range(1500))  # 3,000 tokens
    f = make_feature(nclue, f"long\t{long_seq}\nshort\ta b c\n")
    assert f["status"] == "completed"
    assert f["token_count"] == MAX_TOKENS_PER_USER + 3


def test_list_paging_newest_first_and_total(nclue):
    nclue.put("seq/users.csv", SEQ)
    ids = [create(nclue, f"f{i}")["feature_id"] for i in range(5)]
    page = nclue.client.get("/api/v1/features", {"index": 1, "limit": 2})
    assert (page["index"], page["limit"], page["total"]) == (1, 2, 5)
    assert [f["feature_id"] for f in page["features"]] == [ids[3], ids[2]]
    past = nclue.client.get("/api/v1/features", {"index": 5})  # no row to carry the total: counted apart
    assert (past["features"], past["total"]) == ([], 5)
    assert len(nclue.client.get("/api/v1/features", {"limit": 100})["features"]) == 5


@pytest.mark.parametrize("params", [{"index": -1}, {"limit": 0}, {"limit": 101}, {"index": "x"}, {"limit": "1.5"}])
def test_invalid_index_or_limit_is_400(nclue, params):
    assert_error(nclue.client.raw("GET", "/api/v1/features", params), 400, 19400, "INVALID_PARAMETER")


# -- synchronous errors ----------------------------------------------------------------------------
def test_unsigned_or_badly_signed_requests_get_401(nclue):
    c = nclue.client
    assert_error(c.http.get("/api/v1/features"), 401, 10100, "ACCESS_DENIED")
    uri = "/api/v1/features"
    h = c.signed_headers("GET", uri)
    sig = h["x-ncp-apigw-signature-v2"]
    h["x-ncp-apigw-signature-v2"] = ("B" if sig[0] == "A" else "A") + sig[1:]  # always a different signature
    assert_error(c.http.get(uri, headers=h), 401, 10100, "ACCESS_DENIED")
    h = c.signed_headers("GET", uri + "?index=0")  # signed one query, sent another
    assert_error(c.http.get(uri + "?index=1", headers=h), 401, 10100, "ACCESS_DENIED")
    old = c.signed_headers("GET", uri, timestamp=str(int(__import__("time").time() * 1000) - 6 * 60 * 1000))
    assert_error(c.http.get(uri, headers=old), 401, 10100, "ACCESS_DENIED")
    h = c.signed_headers("GET", uri)
    h["x-ncp-iam-access-key"] = "NOSUCHKEY"
    assert_error(c.http.get(uri, headers=h), 401, 10100, "ACCESS_DENIED")
    # Header names are case-insensitive (the older docs write them in upper case).
    h = {k.upper(): v for k, v in c.signed_headers("GET", uri).items()}
    assert c.http.get(uri, headers=h).status_code == 200


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_name_empty_or_too_long_is_422_10101(nclue, name):
    nclue.put("seq/users.csv", SEQ)
    assert_error(nclue.client.raw("POST", "/api/v1/features", body={"name": name, "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"}), 422, 10101, "NAME_TOO_LONG")


def test_name_of_100_characters_is_fine_and_duplicates_are_409_10102(nclue):
    nclue.put("seq/users.csv", SEQ)
    create(nclue, "가" * 100)
    resp = nclue.client.raw("POST", "/api/v1/features", body={"name": "가" * 100, "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"})
    assert_error(resp, 409, 10102, "DUPLICATE_NAME")


@pytest.mark.parametrize("path", ["seq/a&b.csv", "seq/a b$.csv", "seq/x@y", "seq;x", "a:b", "a+b", "a,b", "a?b", "a*b", "a\\b", "a{b}", "a^b", "a%2e", "a`b", "a[b]", "a<b>", "a~b", "a#b", "a|b", 'a"b', "a'b", "seq/\x01x", "seq/\x7f", "seq/사용자.csv", "seq/é.csv", "../etc/passwd", "/abs/path", "seq/../../x", "seq//x"])
def test_forbidden_path_characters_are_422_10103(nclue, path):
    nclue.put("seq/users.csv", SEQ)
    resp = nclue.client.raw("POST", "/api/v1/features", body={"name": "p", "source_bucket": nclue.bucket, "source_file_path": path})
    assert_error(resp, 422, 10103, "INVALID_PATH_CHARACTER")


def test_equals_sign_is_allowed_for_partition_folders(nclue):
    nclue.put("dt=20250101/part-0.csv", SEQ)
    create(nclue, "partitioned", path="dt=20250101/")


@pytest.mark.parametrize("bucket,path", [("no-such-bucket", "seq/users.csv"), (None, "seq/missing.csv"), (None, "nothing-here/"), ("userlens-internal", "nclue"), ("Bad_Bucket!", "x")])
def test_missing_bucket_or_path_is_404_10106(nclue, bucket, path):
    nclue.put("seq/users.csv", SEQ)
    bucket = bucket or nclue.bucket
    if bucket == "userlens-internal":
        bucket = nclue.settings.internal_bucket
    resp = nclue.client.raw("POST", "/api/v1/features", body={"name": "m", "source_bucket": bucket, "source_file_path": path})
    assert_error(resp, 404, 10106, "PATH_NOT_FOUND")


@pytest.mark.parametrize("body", [{}, {"name": "x"}, {"name": "x", "source_bucket": "b"}, {"name": 5, "source_bucket": "b", "source_file_path": "p"}])
def test_missing_or_mistyped_fields_are_400(nclue, body):
    assert_error(nclue.client.raw("POST", "/api/v1/features", body=body), 400, 19400, "INVALID_PARAMETER")


def test_malformed_json_is_400(nclue):
    uri = "/api/v1/features"
    h = nclue.client.signed_headers("POST", uri)
    h["content-type"] = "application/json"
    assert_error(nclue.client.http.post(uri, headers=h, content=b"{not json"), 400, 19400, "INVALID_PARAMETER")


def test_unknown_feature_is_404(nclue):
    assert_error(nclue.client.raw("GET", "/api/v1/features/00000000-0000-0000-0000-000000000000"), 404, 19404, "RESOURCE_NOT_FOUND")
    assert_error(nclue.client.raw("DELETE", "/api/v1/features/nope"), 404, 19404, "RESOURCE_NOT_FOUND")


# -- fail_message from real bad files --------------------------------------------------------------
BAD_FILES = {
    "DUPLICATE_USERID": "a\tx\nb\ty\na\tz\n",
    "LIMIT_ERROR_MID_LENGTH": "u" * 101 + "\tx->y\n",
    "NOT_EXIST_FILE": "",
    "UNEXPECTED_TXT_FORMAT": "a\tx\nthis line has no tab\n",
}


@pytest.mark.parametrize("code", sorted(BAD_FILES))
def test_bad_text_files_fail_with_their_code(nclue, code):
    f = make_feature(nclue, BAD_FILES[code])
    assert (f["status"], f["fail_message"]) == ("failed", code)
    assert f["user_count"] is None and f["completed_at"] is not None and f["fail_detail"]


@pytest.mark.parametrize(
    "data,code",
    [
        ("a\tx\tthird column\n".encode(), "UNEXPECTED_TXT_FORMAT"),
        ("\tno user id\n".encode(), "UNEXPECTED_TXT_FORMAT"),
        ("a\t->->\n".encode(), "UNEXPECTED_TXT_FORMAT"),
        ("u1\t스타벅스 판교점\n".encode("euc-kr"), "UNEXPECTED_TXT_FORMAT"),
        ("u1\tスターバックス\n".encode("shift_jis"), "UNEXPECTED_TXT_FORMAT"),
        (gzip.compress(b"a\tx\n", mtime=0), "UNEXPECTED_FILE_TYPE"),  # mtime=0: the same test id in every xdist worker
        (b"PK\x03\x04" + b"\x00" * 60, "UNEXPECTED_FILE_TYPE"),
        (b"a\tx\n" + bytes(range(256)) * 4, "UNEXPECTED_FILE_TYPE"),
        (b"\n\n\n", "NOT_EXIST_FILE"),
    ],
)
def test_bad_binary_and_encoding_files(nclue, data, code):
    f = make_feature(nclue, data)
    assert (f["status"], f["fail_message"]) == ("failed", code), f["fail_detail"]


def test_duplicate_user_across_chunks_is_found(nclue):
    nclue.settings_chunk_rows(2)
    f = make_feature(nclue, "a\tx\nb\ty\nc\tz\nd\tw\na\tagain\n")
    assert (f["fail_message"], "'a'" in f["fail_detail"]) == ("DUPLICATE_USERID", True)
    # and nothing of the failed attempt stays in storage
    assert nclue.store.list(nclue.settings.internal_bucket, f"nclue/{nclue.account_id}/features/{f['feature_id']}") == []


def test_file_removed_after_request_is_not_exist_file(nclue):
    nclue.put("seq/users.csv", SEQ)
    fid = create(nclue)["feature_id"]
    nclue.store.delete(nclue.bucket, "seq/users.csv")
    nclue.run_jobs()
    assert nclue.client.get(f"/api/v1/features/{fid}")["fail_message"] == "NOT_EXIST_FILE"


def test_object_store_read_failure_is_obs_download_failed(nclue, monkeypatch):
    from userlens.storage.objectstore import ObjectStoreError

    nclue.put("seq/users.csv", SEQ)
    fid = create(nclue)["feature_id"]

    def unreachable(*a, **k):
        raise ObjectStoreError("connection refused")

    monkeypatch.setattr(nclue.store, "open_read", unreachable)
    nclue.run_jobs()
    f = nclue.client.get(f"/api/v1/features/{fid}")
    assert (f["status"], f["fail_message"]) == ("failed", "OBS_DOWNLOAD_FAILED")
    assert nclue.job_of(fid).attempts == nclue.settings.max_attempts  # retried before failing


def test_quota_exceeded_is_disk_space_shortage(nclue):
    nclue.svc.features.deps.quota_bytes = 1000
    f = make_feature(nclue, SEQ)
    assert f["fail_message"] == "DISK_SPACE_SHORTAGE"
    assert nclue.store.list(nclue.settings.internal_bucket, f"nclue/{nclue.account_id}/features/{f['feature_id']}") == []


def test_unexpected_error_is_common_error(nclue, monkeypatch):
    from userlens.understanding import features as features_module

    class Broken:
        dim = 4

        def encode(self, seqs):
            raise RuntimeError("model exploded")

    monkeypatch.setattr(features_module, "get_model", lambda name: Broken())
    f = make_feature(nclue, SEQ)
    assert f["fail_message"] == "COMMON_ERROR" and "model exploded" in f["fail_detail"]


# -- delete ------------------------------------------------------------------------------------------
def test_delete_completed_feature_removes_vectors(nclue):
    f = make_feature(nclue, SEQ)
    prefix = f"nclue/{nclue.account_id}/features/{f['feature_id']}"
    assert nclue.store.list(nclue.settings.internal_bucket, prefix)
    assert nclue.client.delete(f"/api/v1/features/{f['feature_id']}") == {"feature_id": f["feature_id"]}
    assert_error(nclue.client.raw("GET", f"/api/v1/features/{f['feature_id']}"), 404, 19404, "RESOURCE_NOT_FOUND")
    assert nclue.store.list(nclue.settings.internal_bucket, prefix) == []
    create(nclue, f["feature_name"])  # the name is free again


def test_delete_failed_feature(nclue):
    f = make_feature(nclue, "no tab here\n")
    assert nclue.client.delete(f"/api/v1/features/{f['feature_id']}") == {"feature_id": f["feature_id"]}


def test_delete_registered_feature_cancels_its_job(nclue):
    nclue.put("seq/users.csv", SEQ)
    fid = create(nclue)["feature_id"]
    job_id = nclue.job_of(fid).id
    assert nclue.client.delete(f"/api/v1/features/{fid}") == {"feature_id": fid}
    assert nclue.svc.queue.get(job_id).status == "cancelled"
    nclue.run_jobs()
    assert nclue.svc.queue.get(job_id).status == "cancelled"


@pytest.mark.parametrize("state", ["pending", "in_progress"])
def test_delete_refused_while_pending_or_in_progress(nclue, state):
    nclue.put("seq/users.csv", SEQ)
    fid = create(nclue)["feature_id"]
    nclue.svc.queue.promote()
    if state == "in_progress":
        assert nclue.svc.queue.claim("test-worker", ["nclue.feature"]) is not None
    assert nclue.client.get(f"/api/v1/features/{fid}")["status"] == state
    assert_error(nclue.client.raw("DELETE", f"/api/v1/features/{fid}"), 409, 19409, "INVALID_STATUS")


# -- tenancy ------------------------------------------------------------------------------------------
def test_other_accounts_feature_is_invisible(nclue):
    f = make_feature(nclue, SEQ)
    other = nclue.other_client()
    assert_error(other.raw("GET", f"/api/v1/features/{f['feature_id']}"), 404, 19404, "RESOURCE_NOT_FOUND")
    assert_error(other.raw("DELETE", f"/api/v1/features/{f['feature_id']}"), 404, 19404, "RESOURCE_NOT_FOUND")
    assert other.get("/api/v1/features")["total"] == 0
    # names are unique per account, not globally
    assert other.post("/api/v1/features", {"name": f["feature_name"], "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"})["feature_name"] == f["feature_name"]
    assert nclue.client.get(f"/api/v1/features/{f['feature_id']}")["status"] == "completed"


def test_healthz(nclue):
    body = nclue.client.http.get("/healthz").json()
    assert body["status"] == "ok" and body["checks"] == {"database": "ok", "object_store": "ok"}
