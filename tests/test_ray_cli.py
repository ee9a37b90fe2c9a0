"""`userlens worker --ray`: a worker process that starts its own local Ray (bound to loopback) runs a
Feature's chunks as Ray tasks, and stops its Ray on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from userlens.config import Settings
from userlens.samples import sequences as sample


def test_worker_ray_runs_a_feature_on_its_own_local_ray(backend, tmp_path):
    from userlens.services import build_services
    from userlens.understanding.models import Feature

    internal = f"internal-{uuid.uuid4().hex[:10]}"
    settings = Settings(**backend.settings_kwargs(), workers=0, internal_bucket=internal, master_key="test-master-key")
    svc = build_services(settings)
    svc.store.create_bucket(internal)
    svc.store.create_bucket("seq-bucket")
    text, _ = sample.generate(400, seed=3)
    svc.store.write_bytes("seq-bucket", "users.csv", text.encode())
    account = svc.accounts.create_key("acct").account_id
    svc.features.deps.chunk_rows = 100  # several chunks
    feature = svc.features.create(account, {"name": "f", "source_bucket": "seq-bucket", "source_file_path": "users.csv"})

    env = {**os.environ, **backend.settings_env(), "USERLENS_INTERNAL_BUCKET": internal, "USERLENS_MASTER_KEY": "test-master-key",
           "USERLENS_FEATURE_CHUNK_ROWS": "100", "USERLENS_RAY_NUM_CPUS": "1", "USERLENS_LOG_LEVEL": "INFO", "RAY_ADDRESS": ""}
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "userlens.cli", "worker", "--ray"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with svc.db.session() as s:
                job = s.get(Feature, feature.id).job
                status, result = job.status, job.result
            if status in ("completed", "failed", "cancelled"):
                break
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.5)
        out = (tmp_path / "worker.log").read_text()
        assert status == "completed" and result["user_count"] == 400, out[-3000:]
        assert "local Ray on 127.0.0.1 (1 CPUs)" in out and "on the ray executor" in out, out[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        svc.close()
