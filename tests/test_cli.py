"""The README walk-through with the real commands: `userlens serve` in a subprocess on a free
loopback port, `userlens call` to create a Feature from the sample data and poll it; keys; config."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from userlens.config import Settings
from userlens.understanding.model_registry import DEFAULT_MODEL

CLI = [sys.executable, "-m", "userlens.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(backend, tmp_path):
    """`userlens serve` on the backend under test; yields (env, base_url, first-start output)."""
    port = free_port()
    env = {**os.environ, **backend.settings_env(), "USERLENS_PORT": str(port), "USERLENS_LOG_LEVEL": "WARNING", "USERLENS_INTERNAL_BUCKET": "userlens-internal"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([*CLI, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        else:
            raise AssertionError("userlens serve did not answer")
        yield env, base, (tmp_path / "serve.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def call(env, *args, check=True) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, "call", *args], env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def test_readme_walkthrough(served):
    env, base, first_output = served
    assert "First start: an access key was created" in first_output and "secret key:" in first_output
    assert "Sample data written to bucket 'sample'" in first_output
    creds = json.loads((Settings(data_dir=env["USERLENS_DATA_DIR"]).data_dir / "credentials.json").read_text())
    assert creds["secret_key"] in first_output
    assert oct(os.stat(os.path.join(env["USERLENS_DATA_DIR"], "credentials.json")).st_mode & 0o777) == "0o600"

    env = {**env, "USERLENS_URL": base}
    assert json.loads(call(env, "GET", "/api/v1/features").stdout)["total"] == 0
    out = call(env, "POST", "/api/v1/features", "-d", json.dumps({"name": "my-first-feature", "source_bucket": "sample", "source_file_path": "sequences/users.csv"}), "--wait").stdout
    first, final = [json.loads(x) for x in out.replace("}\n{", "}\x00{").split("\x00")]
    assert set(first) == {"feature_id", "feature_name", "created_at"}
    assert final["status"] == "completed" and final["user_count"] == 3000 and final["token_count"] > 0
    page = json.loads(call(env, "GET", "/api/v1/features?index=0&limit=1").stdout)
    assert page["total"] == 1 and page["features"][0]["feature_id"] == first["feature_id"]
    # The README's next steps: a Task on the sample's answers, then a Run, each with --wait.
    out = call(env, "POST", "/api/v1/tasks", "--wait", "-d", json.dumps({"name": "runners", "train_feature_id": first["feature_id"], "train_bucket": "sample", "train_file_path": "answers/running.csv"})).stdout
    task, task_final = [json.loads(x) for x in out.replace("}\n{", "}\x00{").split("\x00")]
    assert task_final["task_id"] == task["task_id"] and task_final["status"] == "completed" and task_final["performance"]["auc"] > 0.9
    out = call(env, "POST", "/api/v1/task-runs", "--wait", "-d", json.dumps({"name": "score-all", "task_id": task["task_id"], "feature_id": first["feature_id"], "result_bucket": "sample", "result_file_path": "results/"})).stdout
    run_final = json.loads(out.replace("}\n{", "}\x00{").split("\x00")[1])
    assert run_final["status"] == "completed" and run_final["line_count"] == 3000
    dup = call(env, "POST", "/api/v1/features", "-d", json.dumps({"name": "my-first-feature", "source_bucket": "sample", "source_file_path": "sequences/users.csv"}), check=False)
    assert dup.returncode == 1 and json.loads(dup.stderr)["code"] == 10102
    assert httpx.get(f"{base}/docs").status_code == 200
    spec = httpx.get(f"{base}/openapi.json").json()
    assert {"/api/v1/features", "/api/v1/features/{feature_id}"} <= set(spec["paths"])
    # The secret is printed once at first start, and never again (no log line repeats it).
    log = open(os.path.join(os.path.dirname(env["USERLENS_DATA_DIR"]), "serve.log")).read()
    assert log.count(creds["secret_key"]) == 1


def test_keys_create_list_revoke(backend, tmp_path):
    env = {**os.environ, **backend.settings_env()}
    out = subprocess.run([*CLI, "keys", "create", "--account", "team-a"], env=env, capture_output=True, text=True, check=True).stdout
    key = json.loads(out)
    assert key["account"] == "team-a" and len(key["access_key"]) == 20 and key["secret_key"]
    listing = subprocess.run([*CLI, "keys", "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert f"{key['access_key']}\tteam-a\tactive" in listing and key["secret_key"] not in listing
    subprocess.run([*CLI, "keys", "revoke", key["access_key"]], env=env, capture_output=True, text=True, check=True)
    listing = subprocess.run([*CLI, "keys", "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert f"{key['access_key']}\tteam-a\trevoked" in listing


def test_revoked_key_is_refused(nclue):
    from userlens.client import NclueClient

    creds = nclue.svc.accounts.create_key("temp")
    c = NclueClient("http://testserver", creds.access_key, creds.secret_key, http=nclue.http)
    assert c.raw("GET", "/api/v1/features").status_code == 200
    nclue.svc.accounts.revoke(creds.access_key)
    assert c.raw("GET", "/api/v1/features").json()["code"] == 10100


def test_secrets_are_not_stored_in_the_database(nclue):
    from sqlalchemy import text

    creds = nclue.svc.accounts.create_key("stored")
    with nclue.svc.db.session() as s:
        dump = " ".join(str(v) for row in s.execute(text("SELECT * FROM access_keys")).all() for v in row)
    assert creds.access_key in dump and creds.secret_key not in dump


def test_config_file_and_environment(tmp_path, monkeypatch):
    cfg = tmp_path / "userlens.toml"
    cfg.write_text('port = 9123\nworkers = 5\nlog_format = "json"\n')
    monkeypatch.setenv("USERLENS_CONFIG", str(cfg))
    monkeypatch.setenv("USERLENS_WORKERS", "7")
    monkeypatch.setenv("USERLENS_DATA_DIR", str(tmp_path / "d"))
    s = Settings()
    assert (s.port, s.workers, s.log_format) == (9123, 7, "json")  # the environment wins over the file
    assert s.database_url == f"sqlite:///{(tmp_path / 'd' / 'userlens.db').as_posix()}"
    assert s.storage_root == tmp_path / "d" / "buckets"
    assert "**" in str(Settings(s3_secret_key="hunter2").safe_dict()["s3_secret_key"])


def test_panel_import_list_delete(backend):
    """`userlens panel import|list|delete` against the backend's database and object store."""
    from userlens.samples import panel as synthetic

    env = {**os.environ, **backend.settings_env(), "USERLENS_LOG_LEVEL": "WARNING"}
    seq, attrs = synthetic.generate(300)
    backend.store.create_bucket("panel-files")
    backend.store.write_bytes("panel-files", "p/seq.csv", seq.encode())
    backend.store.write_bytes("panel-files", "p/attrs.tsv", attrs.encode())
    backend.store.write_bytes("panel-files", "p/bad.tsv", b"user_id\tgender\n")

    def panel(*args):
        return subprocess.run([*CLI, "panel", *args], env=env, capture_output=True, text=True, timeout=120)

    files = ["--bucket", "panel-files", "--sequences", "p/seq.csv", "--attributes"]
    res = panel("import", "--name", "cli-panel", *files, "p/attrs.tsv")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["name"], out["model"], out["user_count"], out["builtin"]) == ("cli-panel", DEFAULT_MODEL, 300, False)
    assert out["categories"]["gender"] == 2 and out["categories"]["age_group"] == 6 and out["disk_usage"] > 0
    bad = panel("import", "--name", "bad", *files, "p/bad.tsv")
    assert bad.returncode == 1 and "the first line must be the header" in bad.stderr
    assert panel("list").stdout == f"{out['panel_id']}\tcli-panel\t{DEFAULT_MODEL}\t300 users\tin use\n"  # the bad one left nothing
    res = panel("delete", out["panel_id"])
    assert res.returncode == 0 and panel("list").stdout == ""
    assert panel("delete", out["panel_id"]).returncode == 1
