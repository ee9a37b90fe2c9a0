"""Does a Shopping Intent profile describe the right people? MovieLens-100K, through the API.

    .venv/bin/python bench/shopping_intent_quality.py [--repeats 3]

The 943 MovieLens users are split in two halves (stratified by gender and Horror fandom, seed r);
one half is the reference panel, the other the customer's users, then the roles swap: 2 x repeats
runs. In each run:

1. Panel files are written to a bucket and imported with `userlens panel import` (the operator's
   command): sequences = the rated movie titles in time order; gender M/F; age group 10s (under 20),
   20s, 30s, 40s, 50s, 60s+; interests = the genres the person watches much: a genre whose share of
   the person's ratings is at least 1.3x its share of all ratings, with at least 3 ratings of it.
2. Through the API: a Feature of the customer half, a Task "women" (gender F) and a Task "Horror
   fans" (the top 25% of all users by share of Horror ratings), and a Shopping Intent profile of
   each Task (the newest panel, just imported, is the one used).
3. Cross-check: a Feature of the panel's sequences and a Run of each Task over it give every panel
   user's score; the group (top 10% by score, weighted by score) is recomputed here from those
   scores and must give the profile's female share (a real, end-to-end result, not a canned one).

Baselines on the same panel in the same run, through the same report code: *random scores* (mean of
200 draws of uniform scores: what a Task that learnt nothing gets) and *true labels* (the true
label as the score: what a perfect Task gets with a 10% group; for Horror the label, a share of Horror
ratings, is not the panel's Horror interest, so a learnt score can beat it). Checks (the issue's sanity checks): the women
profile's female share is clearly above the panel's (lift >= 1.3 in every run), and Horror has the
top lift among interests in the Horror fans profile (in every run).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parent))

import movielens  # noqa: E402
from common import Embedded, console, fmt_stats, save, table  # noqa: E402

from userlens.understanding import intent_report  # noqa: E402

BUCKET = "movielens"
INTEREST_RATIO = 1.3
INTEREST_MIN_RATINGS = 3
HORROR_FAN_QUANTILE = 0.75
RANDOM_DRAWS = 200


def age_group(age: int) -> str:
    return "10s" if age < 20 else "60s+" if age >= 60 else f"{age // 10 * 10}s"


def panel_attributes(sequences: dict[str, list[str]], users: pd.DataFrame) -> tuple[dict[str, list[str]], np.ndarray]:
    """Each user's interests (genres watched much) and the Horror fan label."""
    items = users.attrs["items"]
    genres_of = dict(zip(items["movie_title"], items["genres"]))
    counts = {u: Counter(g for t in titles for g in genres_of.get(t, []) if g != "unknown") for u, titles in sequences.items()}
    overall = Counter()
    for c in counts.values():
        overall.update(c)
    total = sum(len(t) for t in sequences.values())
    interests = {}
    for u, c in counts.items():
        n = len(sequences[u])
        interests[u] = sorted(g for g, k in c.items() if k >= INTEREST_MIN_RATINGS and k / n >= INTEREST_RATIO * overall[g] / total)
    horror_share = np.array([counts[u]["Horror"] / len(sequences[u]) for u in sequences])
    horror_fan = (horror_share >= np.quantile(horror_share, HORROR_FAN_QUANTILE)).astype(int)
    return interests, horror_fan


def write_panel(env: Embedded, run: str, ids: list[str], sequences, users, interests) -> tuple[str, str]:
    seq = "".join(f"{u}\t{'->'.join(sequences[u])}\n" for u in ids)
    attrs = "user_id\tgender\tage_group\tinterests\n" + "".join(
        f"{u}\t{users.at[u, 'gender']}\t{age_group(int(users.at[u, 'age']))}\t{'|'.join(interests[u])}\n" for u in ids
    )
    env.put_text(BUCKET, f"{run}/panel/sequences.csv", seq)
    env.put_text(BUCKET, f"{run}/panel/attributes.tsv", attrs)
    return f"{run}/panel/sequences.csv", f"{run}/panel/attributes.tsv"


def import_panel(env: Embedded, run: str, seq_key: str, attr_key: str) -> dict:
    cmd = [sys.executable, "-m", "userlens.cli", "panel", "import", "--name", f"movielens-{run}", "--bucket", BUCKET, "--sequences", seq_key, "--attributes", attr_key]
    res = subprocess.run(cmd, env={**os.environ, **env.env}, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise SystemExit(f"panel import failed: {res.stderr}")
    return json.loads(res.stdout)


def run_scores(env: Embedded, task_id: str, feature_id: str, name: str) -> dict[str, float]:
    c = env.client
    rid = c.post("/api/v1/task-runs", {"name": name, "task_id": task_id, "feature_id": feature_id, "result_bucket": BUCKET, "result_file_path": "runs/"})["run_id"]
    run = c.wait(f"/api/v1/task-runs/{rid}", interval=0.2)
    df = pd.read_csv(io.BytesIO(env.svc.store.read_bytes(BUCKET, run["result_file_path"])), sep="\t", dtype={"user_id": str})
    return dict(zip(df.user_id, df.score))


def female_share_of_top(scores: np.ndarray, female: np.ndarray) -> float:
    """The group rule, written out independently: top 10% by score (stable), weighted by score."""
    k = max(1, math.ceil(0.1 * len(scores)))
    top = np.argsort(-scores, kind="stable")[:k]
    return float((scores[top] * female[top]).sum() / scores[top].sum())


def report_for(scores: np.ndarray, ids: list[str], users, interests, categories) -> dict:
    """The product's report for given scores over the panel (for the baselines)."""
    code = {s: {v: i for i, v in enumerate(vals)} for s, vals in categories.items()}
    flat = [code["interest"][g] for u in ids for g in interests[u]]
    data = intent_report.PanelScores(
        scores=scores,
        gender=np.array([code["gender"][users.at[u, "gender"]] for u in ids]),
        age_group=np.array([code["age_group"][age_group(int(users.at[u, "age"]))] for u in ids]),
        interest_counts=np.array([len(interests[u]) for u in ids]),
        interest_codes=np.array(flat, dtype=np.int64),
    )
    return intent_report.build_report(data, categories)


def figures(result: dict) -> dict:
    """The figures the checks look at, from one report."""
    female = next(r for r in result["gender"] if r["key"] == "F")
    keys = [r["key"] for r in result["interest"]]
    horror = next((r for r in result["interest"] if r["key"] == "Horror"), None)
    return {
        "female_group_share": female["group_share"], "female_panel_share": female["panel_share"], "female_lift": female["lift"],
        "horror_lift": horror["lift"] if horror else float("nan"), "horror_rank": keys.index("Horror") + 1 if horror else len(keys) + 1,
        "top_interest": keys[0] if keys else "",
    }


def measure_task(env: Embedded, name: str, label: dict, customer: list[str], panel_ids: list[str], feature: dict, panel_feature: dict,
                 panel: dict, panel_data: tuple, seed: int) -> dict:
    """Task -> Shopping Intent through the API, the Run cross-check and the two baselines."""
    c = env.client
    users, interests, categories, is_female = panel_data
    env.put_text(BUCKET, f"answers/{name}.csv", "".join(f"{u}\t{label[u]}\n" for u in customer))
    tid = c.post("/api/v1/tasks", {"name": name, "train_feature_id": feature["feature_id"], "train_bucket": BUCKET, "train_file_path": f"answers/{name}.csv"})["task_id"]
    task = c.wait(f"/api/v1/tasks/{tid}", interval=0.2)
    if task["status"] != "completed":
        raise SystemExit(f"task failed: {task['fail_message']} {task['fail_detail']}")
    pid = c.post("/api/v1/profile/shopping-intents", {"name": name, "task_id": tid})["profile_id"]
    profile = c.wait(f"/api/v1/profile/shopping-intents/{pid}", interval=0.2)
    if profile["status"] != "completed":
        raise SystemExit(f"profile failed: {profile['fail_message']} {profile['fail_detail']}")
    result = profile["result"]
    assert result["panel_id"] == panel["panel_id"] and profile["line_count"] == len(panel_ids)
    tsv = c.raw("GET", f"/api/v1/profile/shopping-intents-download/{pid}")
    assert tsv.status_code == 200 and tsv.text.startswith("section\tkey\tgroup_share\tpanel_share\tlift\n")
    # Cross-check through a Run over the same panel users: any Task's group has a female share.
    score_of = run_scores(env, tid, panel_feature["feature_id"], f"{name}-check")
    check = female_share_of_top(np.array([score_of[u] for u in panel_ids]), np.array([is_female[u] for u in panel_ids]))
    rng = np.random.default_rng(seed)
    randoms = [figures(report_for(rng.random(len(panel_ids)), panel_ids, users, interests, categories)) for _ in range(RANDOM_DRAWS)]
    truth = np.array([label[u] for u in panel_ids], dtype=float) + 1e-3 * rng.random(len(panel_ids))  # random tie-break
    return {
        "auc": task["performance"]["auc"], "ours": figures(result), "true_labels": figures(report_for(truth, panel_ids, users, interests, categories)),
        "crosscheck_female_share": check,
        "random": {k: float(np.nanmean([d[k] for d in randoms])) for k in ("female_group_share", "female_lift", "horror_lift", "horror_rank")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="splits; each gives 2 runs (the halves swap roles)")
    args = ap.parse_args()

    sequences, users = movielens.load_movielens()
    ids = np.array(list(sequences))
    interests, horror_fan = panel_attributes(sequences, users)
    female = users["female"].to_numpy()
    labels = {"women": dict(zip(ids, female)), "Horror fans": dict(zip(ids, horror_fan))}
    console.print(f"MovieLens-100K: {len(ids)} users, {female.mean():.1%} women, {horror_fan.mean():.1%} Horror fans, "
                  f"{np.mean([len(v) for v in interests.values()]):.2f} interests per user ({np.mean(['Horror' in v for v in interests.values()]):.1%} hold Horror)")

    env = Embedded.start("shopping-intent")
    env.start_inline_worker()
    runs = []
    try:
        strata = female * 2 + horror_fan
        for r in range(args.repeats):
            halves = [test for _, test in StratifiedKFold(2, shuffle=True, random_state=r).split(ids, strata)]
            for direction in range(2):
                t0 = time.perf_counter()
                run = f"r{r}d{direction}"
                customer, panel_ids = list(ids[halves[direction]]), list(ids[halves[1 - direction]])
                panel = import_panel(env, run, *write_panel(env, run, panel_ids, sequences, users, interests))
                env.put_text(BUCKET, f"{run}/customers.csv", "".join(f"{u}\t{'->'.join(sequences[u])}\n" for u in customer))
                feature = env.make_feature(f"{run}-customers", BUCKET, f"{run}/customers.csv")
                panel_feature = env.make_feature(f"{run}-panel", BUCKET, f"{run}/panel/sequences.csv")
                panel_data = (users, interests, env.svc.panels.get(panel["panel_id"]).categories, labels["women"])
                rec = {"run": run, "panel_users": len(panel_ids), "customer_users": len(customer)}
                for task_name, label in labels.items():
                    rec[task_name] = measure_task(env, f"{run}-{task_name}", label, customer, panel_ids, feature, panel_feature, panel, panel_data, seed=r * 10 + direction)
                rec["seconds"] = time.perf_counter() - t0
                w, h = rec["women"], rec["Horror fans"]
                console.print(f"  {run}: women AUC {w['auc']:.3f}, female share {w['ours']['female_group_share']:.3f} (panel {w['ours']['female_panel_share']:.3f}, "
                              f"lift {w['ours']['female_lift']:.2f}; Run cross-check {w['crosscheck_female_share']:.4f}) | Horror fans AUC {h['auc']:.3f}, "
                              f"Horror lift {h['ours']['horror_lift']:.2f} rank {h['ours']['horror_rank']} (top: {h['ours']['top_interest']})  [{rec['seconds']:.0f}s]")
                runs.append(rec)
    finally:
        env.close()

    def col(task, who, key):
        return [rec[task][who][key] for rec in runs]

    rows = []
    for task, key, label in (("women", "female_group_share", "women: group's female share"), ("women", "female_lift", "women: female lift"),
                             ("Horror fans", "horror_lift", "Horror fans: Horror lift"), ("Horror fans", "horror_rank", "Horror fans: Horror's lift rank")):
        ours, rand, true = col(task, "ours", key), col(task, "random", key), col(task, "true_labels", key)
        ratio = fmt_stats([o / x for o, x in zip(ours, rand)], "x", 2) if key != "horror_rank" else ""
        rows.append([label, fmt_stats(ours, digits=3), fmt_stats(rand, digits=3), fmt_stats(true, digits=3), ratio])
    rows.append(["women: panel's female share", fmt_stats(col("women", "ours", "female_panel_share"), digits=3), "", "", ""])
    for task in labels:
        rows.append([f"{task}: Task test AUC", fmt_stats([rec[task]["auc"] for rec in runs], digits=3), "", "", ""])
    console.print(table(f"Shopping Intent on MovieLens-100K: {len(runs)} runs, panel ≈ 471 users, group = top 10% by score; median (min–max)",
                        ["figure", "userlens", "random scores", "true labels", "userlens ÷ random"], rows))
    console.print("random scores: mean of 200 draws of uniform scores; true labels: the Task's label as the score (what a perfect Task gets).")

    crosscheck = max(abs(rec[t]["crosscheck_female_share"] - rec[t]["ours"]["female_group_share"]) for rec in runs for t in labels)
    female_ok = all(rec["women"]["ours"]["female_lift"] >= 1.3 for rec in runs)
    horror_ok = sum(rec["Horror fans"]["ours"]["horror_rank"] == 1 for rec in runs)
    console.print(f"Check 1, women: female lift >= 1.3 in every run: {'PASS' if female_ok else 'FAIL'} "
                  f"(min {min(col('women', 'ours', 'female_lift')):.2f})")
    console.print(f"Check 2, Horror fans: Horror has the top lift among interests in {horror_ok}/{len(runs)} runs: {'PASS' if horror_ok == len(runs) else 'FAIL'}")
    console.print(f"Cross-check: the profiles' female share vs recomputed from a Run over the panel (both Tasks): max |diff| {crosscheck:.2e}")
    console.print(f"results: {save('shopping_intent_quality', {'runs': runs})}")
    if not (female_ok and horror_ok == len(runs) and crosscheck < 1e-4):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
