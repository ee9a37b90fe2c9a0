"""Shopping Intent profiles on the Ray executor (issue 10): the panel's parts are scored by Ray tasks
and the report equals the local executor's (byte-identical TSV, equal JSON form), which equals the
report built from the whole panel at once; a chunk that cannot read its part fails the job with its
reason; a Ray worker that dies in a chunk is retried and the result is unchanged.

The built-in panel (3,000 users) is imported with small parts, so a profile is several chunks."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from userlens.jobs.executor import LocalExecutor, RayExecutor, StoreSpec
from userlens.samples import sequences as sample
from userlens.understanding import intent_report, shopping_intents
from userlens.understanding.models import ReferencePanel, ShoppingIntent, Task
from userlens.understanding.panels import iter_blocks
from userlens.understanding.tasks import load_classifier

BASE = "/api/v1/profile/shopping-intents"
N_USERS = 600
PANEL_ROWS = 700  # the built-in panel in 5 parts: 5 chunks


def use(nclue, executor: str) -> None:
    deps = nclue.svc.features.deps  # one NclueDeps for every NCLUE service
    deps.executor = RayExecutor(StoreSpec.from_settings(nclue.settings)) if executor == "ray" else LocalExecutor(nclue.store)


@pytest.fixture
def world(nclue):
    """A completed Feature and a Task that finds beauty shoppers (local executor)."""
    text, truth = sample.generate(N_USERS, seed=11)
    nclue.put("seq/users.csv", text)
    nclue.put("answers/beauty.csv", "".join(f"{u}\t{int('beauty' in i)}\n" for u, i in truth.items()))
    c = nclue.client
    fid = c.post("/api/v1/features", {"name": "sample", "source_bucket": nclue.bucket, "source_file_path": "seq/users.csv"})["feature_id"]
    nclue.run_jobs(120)
    tid = c.post("/api/v1/tasks", {"name": "beauty", "train_feature_id": fid, "train_bucket": nclue.bucket, "train_file_path": "answers/beauty.csv"})["task_id"]
    nclue.run_jobs(120)
    assert c.get(f"/api/v1/tasks/{tid}")["status"] == "completed"
    nclue.extra["task_id"] = tid
    nclue.settings_chunk_rows(PANEL_ROWS)  # the first profile imports the built-in panel with these parts
    return nclue


def create(w, name: str) -> str:
    return w.client.post(BASE, {"name": name, "task_id": w.extra["task_id"]})["profile_id"]


def finished(w, pid: str) -> dict:
    w.run_jobs(180)
    return w.client.get(f"{BASE}/{pid}")


def panel_of(w, pid: str) -> ReferencePanel:
    with w.svc.db.session() as s:
        return s.get(ReferencePanel, s.get(ShoppingIntent, pid).panel_id)


def download(w, pid: str) -> bytes:
    resp = w.client.raw("GET", f"/api/v1/profile/shopping-intents-download/{pid}")
    assert resp.status_code == 200, resp.text
    return resp.content


def whole_panel_report(w, pid: str) -> dict:
    """The report from every panel user at once, in this process (no executor, no chunks)."""
    with w.svc.db.session() as s:
        key = s.get(Task, s.get(ShoppingIntent, pid).task_id).artifact_key
    panel = panel_of(w, pid)
    clf = load_classifier(w.store, w.settings.internal_bucket, key)
    fields = ("gender", "age_group", "interest_counts", "interest_codes")
    parts: dict[str, list] = {k: [] for k in ("scores", *fields)}
    for block in iter_blocks(w.store, w.settings.internal_bucket, panel):
        parts["scores"].append(np.asarray(clf.predict_proba(block.vectors), dtype=np.float64))
        for k in fields:
            parts[k].append(getattr(block, k).astype(np.int64))
    data = intent_report.PanelScores(**{k: np.concatenate(v) for k, v in parts.items()})
    return {"panel_id": panel.id, "panel_name": panel.name, **intent_report.build_report(data, panel.categories)}


def spy_on_chunks(w) -> list:
    """(chunk function, number of chunks) of every executor.map the jobs make from now on."""
    executor, calls = w.svc.features.deps.executor, []
    real = executor.map

    def map(ctx, fn, items, **kw):
        calls.append((fn.__name__, len(items)))
        return real(ctx, fn, items, **kw)

    executor.map = map
    return calls


def test_shopping_intent_equal_on_ray_and_local(world, ray_cluster):
    w = world
    out = {}
    for executor in ("local", "ray"):
        use(w, executor)
        chunks = spy_on_chunks(w)
        pid = create(w, f"intent-{executor}")
        p = finished(w, pid)
        assert p["status"] == "completed", p
        out[executor] = (p, download(w, pid))
        assert chunks == [("score_panel_part", panel_of(w, pid).part_count)]  # one chunk per panel part
        # Only the published TSV is under the profile's folder.
        assert [o.key.rsplit("/", 1)[-1] for o in w.store.list(w.settings.internal_bucket, f"nclue/{w.account_id}/shopping-intents/{pid}")] == [f"{pid}.tsv"]
    (local, local_tsv), (ray, ray_tsv) = out["local"], out["ray"]
    assert panel_of(w, local["profile_id"]).part_count >= 3  # really split into chunks
    assert ray_tsv == local_tsv and ray_tsv.count(b"\n") > 10
    assert ray["result"] == local["result"]
    assert (ray["line_count"], ray["disk_usage"]) == (local["line_count"], local["disk_usage"]) == (3000, len(local_tsv))
    # Chunked or not, the report is the one of the whole panel at once.
    assert local["result"] == whole_panel_report(w, local["profile_id"])


@pytest.mark.parametrize("executor", ["local", "ray"])
@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_a_chunk_that_cannot_read_its_part_fails_the_job_with_the_reason(world, executor, damage, request):
    w = world
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    use(w, executor)
    pid = create(w, "broken")
    panel = panel_of(w, pid)
    last = panel.part_count - 1
    key = f"{panel.prefix}/attributes/{last:05d}.parquet"  # the last chunk: the others have run
    if damage == "missing":
        w.store.delete(w.settings.internal_bucket, key)
    else:
        w.store.write_bytes(w.settings.internal_bucket, key, b"not a parquet file")
    p = finished(w, pid)
    assert (p["status"], p["fail_message"]) == ("failed", "COMMON_ERROR"), p
    assert f"reference panel {panel.name!r}: attributes of part {last} unreadable" in p["fail_detail"], p["fail_detail"]
    assert (p["result"], p["line_count"]) == (None, None)
    assert w.store.list(w.settings.internal_bucket, f"nclue/{w.account_id}/shopping-intents/{pid}") == []


class CrashOnce:
    """A Task model whose first prediction, anywhere, kills the process that runs it (a Ray worker
    dying mid-chunk); later ones score as the real model does."""

    def __init__(self, clf, marker: str):
        self.clf, self.marker, self.dim = clf, marker, clf.dim
        self.job_pid = os.getpid()

    def predict_proba(self, X):
        assert os.getpid() != self.job_pid, "the panel was scored in the job's process, not in Ray tasks"
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return self.clf.predict_proba(X)
        os.close(fd)
        os._exit(1)


def test_a_ray_worker_that_dies_in_a_chunk_is_retried(world, ray_cluster, monkeypatch, tmp_path):
    import ray.cloudpickle

    w = world
    use(w, "local")
    pid = create(w, "local")
    expected = finished(w, pid)
    assert expected["status"] == "completed"

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module
    marker = str(tmp_path / "crashed")
    real = shopping_intents.load_classifier
    monkeypatch.setattr(shopping_intents, "load_classifier", lambda *a: CrashOnce(real(*a), marker))
    use(w, "ray")
    pid = create(w, "ray")
    p = finished(w, pid)
    assert os.path.exists(marker)  # a worker did die
    assert (p["status"], p["result"]) == ("completed", expected["result"]), p
    assert download(w, pid) == download(w, expected["profile_id"])
