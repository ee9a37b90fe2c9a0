"""Task quality through the full API path on MovieLens-100K: Feature -> Task -> Run.

    .venv/bin/python bench/task_quality.py [--repeats 5] [--model ul-hash-v2]

One Feature of the 943 users (POST /api/v1/features). For each attribute (gender F, age < 30,
occupation "student") and each repeat r, a stratified 80/20 split with seed r: the train answers and
the test answers are written to the bucket, and a Task is created with the test fields
(POST /api/v1/tasks), so it trains on the train users and reports AUC on the test users. The
baselines are fitted on the same splits in the same run, from the same sequences: majority class,
bag-of-items and TF-IDF + SVD, each with logistic regression and C chosen by inner 3-fold CV.
For the first repeat a Run (POST /api/v1/task-runs) scores every user, and the AUC of its TSV on the
test users is checked against the Task's. Target: Task AUC at or above the best baseline.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, StratifiedShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))

import movielens  # noqa: E402
import quality  # noqa: E402
from common import CACHE, Embedded, console, save, table  # noqa: E402


def baseline_auc(X, y, train, test, seed) -> float:
    sparse = hasattr(X, "tocsr")
    model = make_pipeline(StandardScaler(with_mean=not sparse), LogisticRegression(max_iter=5000))
    search = GridSearchCV(model, {"logisticregression__C": list(quality.C_GRID)}, cv=StratifiedKFold(3, shuffle=True, random_state=seed), scoring="roc_auc")
    search.fit(X[train], y[train])
    return float(roc_auc_score(y[test], search.predict_proba(X[test])[:, 1]))


def answers(ids, y) -> str:
    return "".join(f"{u}\t{int(v)}\n" for u, v in zip(ids, y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default=None, help="nclue_model of the Feature (default: the service's default)")
    args = ap.parse_args()

    sequences, users = movielens.load_movielens()
    ids = list(sequences)
    attrs = {
        "gender (F)": users["female"].to_numpy(),
        "age < 30": users["young"].to_numpy(),
        "occupation = student": (users["occupation"] == "student").astype(int).to_numpy(),
    }
    bases = {"bag-of-items": quality.bag_of_items(sequences), "tfidf+svd": quality.tfidf_svd(sequences)}
    path = movielens.write_sequence_file(CACHE / "ml-100k.sequences.tsv")
    env = Embedded.start("task-quality")
    results: dict[str, dict[str, list[float]]] = {}
    run_check = {}
    try:
        env.start_inline_worker()
        env.put_file("movielens", "ml-100k/sequences.csv", path)
        f = env.make_feature("movielens", "movielens", "ml-100k/sequences.csv", model=args.model)
        c = env.client
        for attr, y in attrs.items():
            res = results.setdefault(attr, {"majority": [], "bag-of-items": [], "tfidf+svd": [], "userlens Task": []})
            splits = StratifiedShuffleSplit(n_splits=args.repeats, test_size=0.2, random_state=0).split(np.zeros(len(y)), y)
            for r, (train, test) in enumerate(splits):
                key = f"answers/{attr.split()[0]}-{r}"
                env.put_text("movielens", f"{key}-train.csv", answers([ids[i] for i in train], y[train]))
                env.put_text("movielens", f"{key}-test.csv", answers([ids[i] for i in test], y[test]))
                t0 = time.perf_counter()
                tid = c.post("/api/v1/tasks", {
                    "name": f"{attr}-{r}", "train_feature_id": f["feature_id"], "train_bucket": "movielens", "train_file_path": f"{key}-train.csv",
                    "test_feature_id": f["feature_id"], "test_bucket": "movielens", "test_file_path": f"{key}-test.csv",
                })["task_id"]
                task = c.wait(f"/api/v1/tasks/{tid}", interval=0.2)
                if task["status"] != "completed":
                    raise SystemExit(f"task failed: {task['fail_message']} {task.get('fail_detail')}")
                res["userlens Task"].append(task["performance"]["auc"])
                res["majority"].append(0.5)
                for name, X in bases.items():
                    res[name].append(baseline_auc(X, y, train, test, r))
                console.print(f"  {attr} split {r}: Task {task['performance']['auc']:.4f} ({task['performance']['model']['model']}, {time.perf_counter() - t0:.1f}s)  "
                              f"bag {res['bag-of-items'][-1]:.4f}  tfidf {res['tfidf+svd'][-1]:.4f}")
                if r == 0:
                    rid = c.post("/api/v1/task-runs", {"name": f"run-{attr}", "task_id": tid, "feature_id": f["feature_id"], "result_bucket": "movielens", "result_file_path": "runs/"})["run_id"]
                    run = c.wait(f"/api/v1/task-runs/{rid}", interval=0.2)
                    df = pd.read_csv(io.BytesIO(env.svc.store.read_bytes("movielens", run["result_file_path"])), sep="\t", dtype={"user_id": str})
                    score = dict(zip(df.user_id, df.score))
                    run_check[attr] = (run["line_count"], roc_auc_score(y[test], [score[ids[i]] for i in test]), task["performance"]["auc"])
    finally:
        env.close()

    rows = []
    for attr, res in results.items():
        best = max(np.mean(res["bag-of-items"]), np.mean(res["tfidf+svd"]))
        ours = np.mean(res["userlens Task"])
        rows.append([attr, *(f"{np.mean(v):.4f} ± {np.std(v):.4f}" for v in res.values()), f"{ours - best:+.4f}", "OK" if ours >= best else "BELOW"])
    console.print(table(f"Task quality on MovieLens-100K ({f['nclue_model']}) — test AUC over {args.repeats} stratified 80/20 splits (mean ± std)",
                        ["attribute", "majority", "bag-of-items", "tfidf+svd", "userlens Task (API)", "Δ vs best", "target"], rows))
    for attr, (lines, run_auc, task_auc) in run_check.items():
        console.print(f"Run check ({attr}, split 0): {lines} lines scored; AUC from the Run's TSV on the test users {run_auc:.4f} (Task reported {task_auc:.4f})")
    console.print(f"results: {save('task_quality', {'results': results, 'run_check': run_check})}")


if __name__ == "__main__":
    main()
