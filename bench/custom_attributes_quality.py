"""Does a Custom Attributes score mean something? MovieLens-100K genres, through the API.

    .venv/bin/python bench/custom_attributes_quality.py

For each model (ul-hash-v1, ul-sem-v1) one Feature of the 943 users is made through the API; for a
few genres a Custom Attributes profile is created with that genre's keywords (POST
/api/v1/profile/custom-attributes) and its TSV is read back. Reported: the AUC of the score for

  - "this user's most-watched genre is X" (the issue's label; Drama and Comedy dominate most users,
    so only genres that are the top genre of at least 5 users are scored), and
  - "X is a large share of this user's history" (share of X in the top 20% of users), which has
    ~190 positives for every genre.

A useful score has AUC well above 0.5.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

import movielens  # noqa: E402
from common import CACHE, Embedded, console, save, table  # noqa: E402

GENRES = {"Horror": "horror", "Children's": "children's movie", "Romance": "romance", "Sci-Fi": "science fiction", "Western": "western", "Documentary": "documentary"}


def genre_labels(sequences, users):
    items = users.attrs["items"]
    genres_of = dict(zip(items["movie_title"], items["genres"]))
    top, share = {}, {}
    for g in GENRES:
        share[g] = []
    tops = []
    for titles in sequences.values():
        counts = Counter(g.replace("Childrens", "Children's") for t in titles for g in (genres_of.get(t) or []))
        total = sum(counts.values()) or 1
        tops.append(counts.most_common(1)[0][0] if counts else "")
        for g in GENRES:
            share[g].append(counts.get(g, 0) / total)
    for g in GENRES:
        s = np.array(share[g])
        share[g] = (s >= np.quantile(s, 0.8)).astype(int) if s.max() > 0 else np.zeros(len(s), int)
        top[g] = np.array([int(t == g) for t in tops])
    return top, share


def main() -> None:
    sequences, users = movielens.load_movielens()
    ids = list(sequences)
    top, share = genre_labels(sequences, users)
    path = movielens.write_sequence_file(CACHE / "ml-100k.sequences.tsv")
    env = Embedded.start("custom-attributes-quality")
    results: dict[str, dict[str, tuple[float | None, float]]] = {}
    try:
        env.start_inline_worker()
        env.put_file("movielens", "ml-100k/sequences.csv", path)
        c = env.client
        for model in ("ul-hash-v1", "ul-sem-v1"):
            f = env.make_feature(f"ml-{model}", "movielens", "ml-100k/sequences.csv", model)
            for g, keywords in GENRES.items():
                pid = c.post("/api/v1/profile/custom-attributes", {"name": f"{model}-{g}", "feature_id": f["feature_id"], "keyword_set": keywords, "result_bucket": "movielens", "result_file_path": f"attrs/{model}/"})["profile_id"]
                p = c.wait(f"/api/v1/profile/custom-attributes/{pid}", interval=0.2)
                df = pd.read_csv(io.BytesIO(env.svc.store.read_bytes("movielens", p["result_file_path"])), sep="\t", dtype={"user_id": str})
                score = dict(zip(df.user_id, df.score))
                s = np.array([score[u] for u in ids])
                top_auc = float(roc_auc_score(top[g], s)) if top[g].sum() >= 5 else None
                results.setdefault(g, {})[model] = (top_auc, float(roc_auc_score(share[g], s)))
    finally:
        env.close()

    rows = []
    for g, res in results.items():
        row = [g, f'"{GENRES[g]}"', str(int(top[g].sum()))]
        for model in ("ul-hash-v1", "ul-sem-v1"):
            t, sh = res[model]
            row += ["—" if t is None else f"{t:.3f}", f"{sh:.3f}"]
        rows.append(row)
    console.print(table("Custom Attributes on MovieLens-100K — AUC of the keyword score",
                        ["genre", "keywords", "top-genre users", "hash: top genre", "hash: top-20% share", "sem: top genre", "sem: top-20% share"], rows))
    console.print(f"results: {save('custom_attributes_quality', results)}")


if __name__ == "__main__":
    main()
