"""Feature job throughput and memory, end to end, next to a bare "limit" pass in the same run.

    .venv/bin/python bench/feature_throughput.py --users 1048371 --repeat 3

Generates (and caches) a sequence dataset shaped like the seed's example (~80 tokens per user),
then for each repeat:
  - end to end: POST /api/v1/features, a separate `userlens worker` process runs the job, the
    client polls GET until `completed`; peak memory is the worker's VmHWM;
  - limit: one process reads the same file, splits lines and runs the same encoder (tokenise +
    the model's arithmetic) with no validation, storage or service; its VmHWM too.
Targets (2-core machine): >= 500,000 tokens/s end to end, within 2x of the limit pass, peak memory
under 2 GiB at full size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CACHE, Embedded, console, fmt_stats, peak_rss_mb, save, table  # noqa: E402
from synthetic import cached_dataset  # noqa: E402


def limit_pass(path: str, chunk_rows: int) -> None:
    """Run in a child process: prints JSON {seconds, users, tokens, peak_mb}."""
    import os

    from userlens.understanding.encoder import get_encoder

    enc = get_encoder()
    t0 = time.perf_counter()
    users = tokens = 0
    seqs: list[str] = []
    with open(path, "rb") as f:
        for raw in f:
            seqs.append(raw.decode("utf-8").rstrip("\n").split("\t", 1)[1])
            if len(seqs) >= chunk_rows:
                _, counts = enc.encode(seqs)
                users += len(seqs)
                tokens += int(counts.sum())
                seqs = []
    if seqs:
        _, counts = enc.encode(seqs)
        users += len(seqs)
        tokens += int(counts.sum())
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "users": users, "tokens": tokens, "peak_mb": peak_rss_mb(os.getpid())}))


def end_to_end(path: Path, users: int, database_url: str | None) -> dict:
    env = Embedded.start("feature-throughput", database_url)
    try:
        env.put_file("bench", "sequences/users.csv", path)
        worker = env.start_worker()
        time.sleep(2.0)  # let the worker import and connect before the clock starts
        t0 = time.perf_counter()
        fid = env.client.post("/api/v1/features", {"name": "throughput", "source_bucket": "bench", "source_file_path": "sequences/users.csv"})["feature_id"]
        peak = 0.0
        while True:
            f = env.client.get(f"/api/v1/features/{fid}")
            peak = max(peak, peak_rss_mb(worker.pid))
            if f["status"] in ("completed", "failed"):
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        peak = max(peak, peak_rss_mb(worker.pid))
        if f["status"] != "completed":
            raise SystemExit(f"feature failed: {f['fail_message']} {f.get('fail_detail')}")
        return {"seconds": seconds, "users": f["user_count"], "tokens": f["token_count"], "disk_usage": f["disk_usage"], "peak_mb": peak}
    finally:
        env.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--database-url", default=None, help="default: SQLite in the run's data dir")
    args = ap.parse_args()

    console.print(f"dataset: {args.users:,} users (cached in {CACHE})")
    t = time.perf_counter()
    path = cached_dataset(CACHE, args.users)
    console.print(f"  ready in {time.perf_counter() - t:.1f}s, {path.stat().st_size / 1e6:,.0f} MB")

    e2e, limit = [], []
    for i in range(args.repeat):
        out = subprocess.run([sys.executable, __file__, "--limit-pass", str(path)], capture_output=True, text=True, check=True)
        limit.append(json.loads(out.stdout.strip().splitlines()[-1]))
        e2e.append(end_to_end(path, args.users, args.database_url))
        console.print(f"  run {i + 1}: end to end {e2e[-1]['seconds']:.1f}s, limit {limit[-1]['seconds']:.1f}s")

    tokens = e2e[0]["tokens"]
    rows = []
    for name, runs in (("end to end (API + worker)", e2e), ("limit (read + tokenise + encode)", limit)):
        rows.append([
            name,
            fmt_stats([r["seconds"] for r in runs], " s"),
            fmt_stats([r["tokens"] / r["seconds"] for r in runs], "", 0),
            fmt_stats([r["peak_mb"] for r in runs], " MiB", 0),
        ])
    ratios = [a["seconds"] / b["seconds"] for a, b in zip(e2e, limit)]
    console.print(table(f"Feature job: {args.users:,} users, {tokens:,} tokens — median (min–max) of {args.repeat}", ["pass", "time", "tokens/s", "peak memory"], rows))
    console.print(
        f"end to end / limit time ratio: {fmt_stats(ratios, 'x', 2)}   "
        f"stored: {e2e[0]['disk_usage'] / e2e[0]['users']:,.0f} bytes/user ({e2e[0]['disk_usage'] / 1e6:,.1f} MB)"
    )
    console.print(f"results: {save('feature_throughput', {'users': args.users, 'e2e': e2e, 'limit': limit, 'ratios': ratios})}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--limit-pass":
        limit_pass(sys.argv[2], 65536)
    else:
        main()
