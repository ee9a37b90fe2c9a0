"""NCLUE heavy jobs on the Ray executor (issue 10): a Feature, a Task Run and a Custom Attributes
profile give the same result on Ray as on the local executor for the same input (equal vectors,
byte-identical TSVs); a bad line in a later chunk fails the job with its documented fail_message and
the file's own line number; a cancelled job stops its Ray tasks and leaves nothing behind.

Each test runs the local executor first, then points the services' executor at the session's Ray
(`ray_cluster`) for the same requests."""

from __future__ import annotations

import time

import numpy as np
import pytest

from userlens.jobs.executor import LocalExecutor, RayExecutor, StoreSpec
from userlens.samples import sequences as sample
from userlens.understanding import sequences, vectors
from userlens.understanding.models import Feature

N_USERS = 1200
CHUNK_ROWS = 250  # about 5 chunks per Feature


def use(nclue, executor: str) -> None:
    deps = nclue.svc.features.deps  # one NclueDeps for every NCLUE service
    deps.executor = RayExecutor(StoreSpec.from_settings(nclue.settings)) if executor == "ray" else LocalExecutor(nclue.store)


def feature(nclue, name: str, path: str) -> dict:
    fid = nclue.client.post("/api/v1/features", {"name": name, "source_bucket": nclue.bucket, "source_file_path": path})["feature_id"]
    nclue.run_jobs(120)
    return nclue.client.get(f"/api/v1/features/{fid}")


def stored_vectors(nclue, fid: str):
    with nclue.svc.db.session() as s:
        prefix = s.get(Feature, fid).vectors_prefix
    ids: list[str] = []
    mats = []
    for block in vectors.iter_blocks(nclue.store, nclue.settings.internal_bucket, prefix):
        ids += block.user_ids
        mats.append(block.matrix())
    return ids, np.concatenate(mats)


def scored(nclue, route: str, key: str, body: dict) -> bytes:
    rid = nclue.client.post(route, body)[key]
    nclue.run_jobs(120)
    r = nclue.client.get(f"{route}/{rid}")
    assert r["status"] == "completed", r
    return nclue.store.read_bytes(nclue.bucket, r["result_file_path"])


@pytest.fixture
def sample_input(nclue):
    text, truth = sample.generate(N_USERS, seed=5)
    nclue.put("seq/users.csv", text)
    nclue.put("answers/running.csv", "".join(f"{u}\t{int('running' in i)}\n" for u, i in truth.items()))
    nclue.settings_chunk_rows(CHUNK_ROWS)
    return nclue


def test_feature_run_and_custom_attributes_equal_on_ray_and_local(sample_input, ray_cluster):
    nclue = sample_input
    c = nclue.client
    results = {}
    for executor in ("local", "ray"):
        use(nclue, executor)
        f = feature(nclue, f"f-{executor}", "seq/users.csv")
        assert f["status"] == "completed", f
        results[executor] = {"feature": f, "vectors": stored_vectors(nclue, f["feature_id"])}
    local, ray = results["local"], results["ray"]
    assert (ray["feature"]["user_count"], ray["feature"]["token_count"]) == (local["feature"]["user_count"], local["feature"]["token_count"]) == (N_USERS, local["feature"]["token_count"])
    assert ray["vectors"][0] == local["vectors"][0]
    assert np.array_equal(ray["vectors"][1], local["vectors"][1])
    parts = vectors.part_keys(nclue.store, nclue.settings.internal_bucket, f"nclue/{nclue.account_id}/features/{ray['feature']['feature_id']}")
    assert len(parts) >= 3  # really split into chunks

    use(nclue, "local")
    fid = local["feature"]["feature_id"]
    tid = c.post("/api/v1/tasks", {"name": "runners", "train_feature_id": fid, "train_bucket": nclue.bucket, "train_file_path": "answers/running.csv"})["task_id"]
    nclue.run_jobs(120)
    assert c.get(f"/api/v1/tasks/{tid}")["status"] == "completed"
    tsv = {}
    for executor in ("local", "ray"):
        use(nclue, executor)
        run = scored(nclue, "/api/v1/task-runs", "run_id", {"name": f"run-{executor}", "task_id": tid, "feature_id": fid, "result_bucket": nclue.bucket, "result_file_path": f"runs/{executor}"})
        attrs = scored(nclue, "/api/v1/profile/custom-attributes", "profile_id", {"name": f"ca-{executor}", "feature_id": fid, "keyword_set": "running\nshoes", "result_bucket": nclue.bucket, "result_file_path": f"attrs/{executor}"})
        tsv[executor] = (run, attrs)
    for i in range(2):
        assert tsv["ray"][i] == tsv["local"][i]
        assert tsv["ray"][i].startswith(b"user_id\tscore\n") and tsv["ray"][i].count(b"\n") == N_USERS + 1
    # The pieces the chunks wrote were composed and removed; nothing else is left in storage.
    for folder in ("runs", "custom-attributes"):
        assert nclue.store.list(nclue.settings.internal_bucket, f"nclue/{nclue.account_id}/{folder}") == []


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_bad_line_in_a_later_chunk_fails_with_its_code_and_line(sample_input, executor, request):
    nclue = sample_input
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    use(nclue, executor)
    text = nclue.store.read_bytes(nclue.bucket, "seq/users.csv").decode()
    lines = text.splitlines(keepends=True)
    bad = 1000  # far past the first chunk
    nclue.put("seq/bad.csv", "".join(lines[: bad - 1]) + "no tab on this line\n" + "".join(lines[bad - 1 :]))
    f = feature(nclue, "bad", "seq/bad.csv")
    assert (f["status"], f["fail_message"]) == ("failed", "UNEXPECTED_TXT_FORMAT")
    assert f"seq/bad.csv line {bad}:" in f["fail_detail"], f["fail_detail"]
    # A user repeated across chunks is found, on every executor.
    nclue.put("seq/dup.csv", text + lines[3])
    f = feature(nclue, "dup", "seq/dup.csv")
    assert (f["fail_message"], lines[3].split("\t")[0] in f["fail_detail"]) == ("DUPLICATE_USERID", True)
    assert nclue.store.list(nclue.settings.internal_bucket, f"nclue/{nclue.account_id}/features") == []


def test_cancelling_a_feature_on_ray_cancels_its_tasks_and_publishes_nothing(sample_input, ray_cluster):
    nclue = sample_input
    use(nclue, "ray")
    deps = nclue.svc.features.deps
    deps.fault_slow_chunk_ms, deps.chunk_rows = 1500, 50  # ~24 slow chunks: more than Ray runs at once
    fid = nclue.client.post("/api/v1/features", {"name": "slow", "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    worker = nclue.svc.make_worker(1)
    worker.start()
    try:
        job_id = nclue.job_of(fid).id
        deadline = time.monotonic() + 60
        while not (nclue.job_of(fid).progress or 0) > 0:
            assert time.monotonic() < deadline, "the Feature made no progress"
            time.sleep(0.1)
        assert nclue.svc.queue.request_cancel(job_id) == "in_progress"
        while not nclue.job_of(fid).terminal:
            assert time.monotonic() < deadline + 60, "the cancel was not honoured"
            time.sleep(0.1)
    finally:
        worker.stop(30)
    job = nclue.job_of(fid)
    assert (job.status, job.fail_message) == ("cancelled", "CANCELLED")
    root = f"nclue/{nclue.account_id}/features/{fid}"
    assert nclue.store.list(nclue.settings.internal_bucket, root) == []
    time.sleep(2.0)  # a task still running would write its part by now
    assert nclue.store.list(nclue.settings.internal_bucket, root) == []
    with nclue.svc.db.session() as s:
        assert s.get(Feature, fid).vectors_prefix is None


def test_byte_ranges_read_every_line_once_with_file_line_numbers(tmp_path):
    from pathlib import Path

    from userlens.jobs.engine import JobFailure
    from userlens.storage.objectstore import LocalObjectStore

    store = LocalObjectStore(Path(tmp_path))
    store.create_bucket("bkt-1")
    body = "\ufeffa\tx->y\r\n\nbb\tz\nccc\tw->v->u\n\n\ndddd\tq\neeeee\tr"
    store.write_bytes("bkt-1", "f.csv", body.encode())
    whole = [raw for _, raw in sequences.iter_lines(store, "bkt-1", "f.csv")]
    size = store.size("bkt-1", "f.csv")
    for step in range(1, size + 1):  # every range length, so every split point
        got = []
        for lo in range(0, size, step):
            got += [raw for _, raw in sequences.iter_lines(store, "bkt-1", "f.csv", lo, min(size, lo + step))]
        assert got == whole, step
    # A failing line in a range reports the line number in the file.
    store.write_bytes("bkt-1", "g.csv", b"a\tx\nb\ty\nc\tz\nbad line\nd\tw\n")
    start = len(b"a\tx\nb")  # mid-line: the range begins with line 3
    with pytest.raises(JobFailure) as err:
        for n, raw in sequences.iter_lines(store, "bkt-1", "g.csv", start, 64):
            try:
                sequences.parse_line("g.csv", n, raw)
            except JobFailure as exc:
                raise sequences.absolute_line(store, "bkt-1", "g.csv", start, exc) from exc
    assert err.value.code == "UNEXPECTED_TXT_FORMAT" and err.value.detail.startswith("g.csv line 4:"), err.value.detail
