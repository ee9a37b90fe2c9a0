"""Task training time and Run throughput on a seed-sized Feature, with peak memory.

    .venv/bin/python bench/task_speed.py --users 1048371 --labelled 100000 --repeat 3 [--model ul-hash-v2]

A Feature of the synthetic seed-shaped dataset (bench/synthetic.py) is made once. Then, per repeat,
through the API with a separate `userlens worker` process (peak memory = its VmHWM):
  - Task: POST /api/v1/tasks with `--labelled` answers (label: the user's sequence holds one of a set
    of mid-popularity behaviours chosen so that ~30% are positive), timed until completed;
  - Run: POST /api/v1/task-runs scoring every user into a TSV, timed until completed;
next to a bare "limit" pass in the same run: read the stored vectors and apply the same model,
writing nothing. Targets: Run >= 200,000 users/s end to end; a 100,000-user Task in under a minute.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, Embedded, console, fmt_stats, peak_rss_mb, save, table  # noqa: E402
from synthetic import cached_dataset  # noqa: E402


def limit_pass(data_dir: str, feature_id: str, task_id: str) -> None:
    """Child process: read every vector of the Feature and score it with the Task's model."""
    import os

    os.environ["USERLENS_DATA_DIR"] = data_dir
    from userlens.config import Settings
    from userlens.services import build_services
    from userlens.understanding.models import Feature, Task
    from userlens.understanding.tasks import load_classifier
    from concurrent.futures import ThreadPoolExecutor

    from userlens.understanding.vectors import iter_blocks

    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    svc = build_services(Settings(workers=0, master_key="bench"))
    with svc.db.session() as s:
        prefix, key = s.get(Feature, feature_id).vectors_prefix, s.get(Task, task_id).artifact_key
    t0 = time.perf_counter()
    clf = load_classifier(svc.store, svc.settings.internal_bucket, key)
    n = 0
    # Every core scores blocks, one BLAS thread each, as a Run alone on a worker does.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for scores in pool.map(clf.predict_block, iter_blocks(svc.store, svc.settings.internal_bucket, prefix)):
            n += len(scores)
    print(json.dumps({"seconds": time.perf_counter() - t0, "users": n, "peak_mb": peak_rss_mb(os.getpid())}))


def timed(env: Embedded, path: str, body: dict, worker) -> tuple[float, dict, float]:
    t0 = time.perf_counter()
    rid = next(v for k, v in env.client.post(path, body).items() if k.endswith("_id"))
    peak = 0.0
    while True:
        res = env.client.get(f"{path}/{rid}")
        peak = max(peak, peak_rss_mb(worker.pid))
        if res["status"] in ("completed", "failed"):
            break
        time.sleep(0.1)
    if res["status"] != "completed":
        raise SystemExit(f"{path} failed: {res['fail_message']} {res.get('fail_detail')}")
    return time.perf_counter() - t0, res, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--labelled", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default=None, help="nclue_model of the Feature (default: the service's default)")
    args = ap.parse_args()

    path = cached_dataset(CACHE, args.users)
    env = Embedded.start("task-speed")
    try:
        env.put_file("bench", "sequences/users.csv", path)
        # Labels with signal: does the user's sequence hold one of the 50 most popular behaviours?
        counts: Counter[str] = Counter()
        lines = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= args.labelled:
                    break
                uid, seq = line.rstrip("\n").split("\t", 1)
                behaviours = seq.split("->")
                counts.update(behaviours)
                lines.append((uid, behaviours))
        # Positive: the user has one of a set of mid-popularity behaviours, grown from rank 1,000 down
        # until about 30% of the labelled users are positive (a learnable, balanced-enough label).
        ranked = [b for b, _ in counts.most_common()]
        chosen: set[str] = set()
        seqs = [set(bs) for _, bs in lines]
        rank = 1000
        while rank < len(ranked):
            chosen.update(ranked[rank : rank + 200])
            rank += 200
            rate = sum(1 for bs in seqs if bs & chosen) / len(seqs)
            if rate >= 0.3:
                break
        env.put_text("bench", "answers/labels.csv", "".join(f"{u}\t{int(bool(set(bs) & chosen))}\n" for u, bs in lines))
        console.print(f"labels: {len(chosen)} behaviours mark {rate:.0%} of {len(lines):,} users positive")
        worker = env.start_worker()
        time.sleep(2)
        t0 = time.perf_counter()
        fid = env.client.post("/api/v1/features", {"name": "speed", "source_bucket": "bench", "source_file_path": "sequences/users.csv", **({"nclue_model": args.model} if args.model else {})})["feature_id"]
        feature = env.client.wait(f"/api/v1/features/{fid}", timeout=3600, interval=0.5)
        console.print(f"Feature ({feature['nclue_model']}): {feature['user_count']:,} users in {time.perf_counter() - t0:.1f}s")

        tasks, runs, limits = [], [], []
        for r in range(args.repeat):
            secs, task, peak = timed(env, "/api/v1/tasks", {"name": f"t{r}", "train_feature_id": fid, "train_bucket": "bench", "train_file_path": "answers/labels.csv"}, worker)
            tasks.append({"seconds": secs, "auc": task["performance"]["auc"], "model": task["performance"]["model"]["model"], "peak_mb": peak})
            secs, run, peak = timed(env, "/api/v1/task-runs", {"name": f"r{r}", "task_id": task["task_id"], "feature_id": fid, "result_bucket": "bench", "result_file_path": "runs/"}, worker)
            runs.append({"seconds": secs, "users": run["line_count"], "peak_mb": peak})
            out = subprocess.run([sys.executable, __file__, "--limit-pass", str(env.data_dir), fid, task["task_id"]], capture_output=True, text=True, check=True, env={**__import__("os").environ, **env.env})
            limits.append(json.loads(out.stdout.strip().splitlines()[-1]))
            console.print(f"  repeat {r + 1}: task {tasks[-1]['seconds']:.1f}s (AUC {tasks[-1]['auc']:.3f}), run {runs[-1]['seconds']:.1f}s, limit {limits[-1]['seconds']:.1f}s")
    finally:
        env.close()

    n = runs[0]["users"]
    rows = [
        [f"Task: train on {args.labelled:,} labelled users (API + worker)", fmt_stats([t["seconds"] for t in tasks], " s"), "", fmt_stats([t["peak_mb"] for t in tasks], " MiB", 0)],
        [f"Run: score {n:,} users into a TSV (API + worker)", fmt_stats([r["seconds"] for r in runs], " s"), fmt_stats([r["users"] / r["seconds"] for r in runs], "", 0), fmt_stats([r["peak_mb"] for r in runs], " MiB", 0)],
        ["limit: read vectors + score, no output", fmt_stats([l["seconds"] for l in limits], " s"), fmt_stats([l["users"] / l["seconds"] for l in limits], "", 0), fmt_stats([l["peak_mb"] for l in limits], " MiB", 0)],
    ]
    console.print(table(f"Task and Run speed — median (min–max) of {args.repeat}", ["pass", "time", "users/s", "peak memory"], rows))
    ratios = [r["seconds"] / l["seconds"] for r, l in zip(runs, limits)]
    console.print(f"Run / limit time ratio: {fmt_stats(ratios, 'x', 2)}; chosen models: {[t['model'] for t in tasks]}; test AUC {[round(t['auc'], 3) for t in tasks]}")
    console.print(f"results: {save('task_speed', {'tasks': tasks, 'runs': runs, 'limits': limits})}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--limit-pass":
        limit_pass(*sys.argv[2:])
    else:
        main()
