"""Quality benchmark of NCLUE Features on MovieLens-100K (943 users, two labels).

Protocol, identical for every representation: 5x5 ``RepeatedStratifiedKFold``; in each outer
training fold a ``StandardScaler + LogisticRegression`` whose ``C`` is picked by an inner
stratified 3-fold grid search on ROC AUC; the outer test fold is scored by ROC AUC. Reported:
mean ± std over the 25 outer folds.

Representations:

* ``majority``: constant prior prediction (AUC 0.5 by construction).
* ``bag-of-items``: sparse counts of whole titles (one column per distinct title).
* ``tfidf+svd``: TF-IDF of word tokens (sublinear tf, ``\\w+`` tokens, min_df=2), reduced to
  256 components by TruncatedSVD. Both are unsupervised and fitted once on all 943 users
  (transductive), which can only favour this baseline.
* ``encoder``: the NCLUE model vectors (``get_encoder()``), used as is: nothing is fitted.

Labels: ``gender`` (F=1) and ``age<30``.

Usage: ``python bench/quality.py [--model NAME] [--jobs N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, RepeatedStratifiedKFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

try:  # run as `python bench/quality.py` or imported with bench/ on sys.path
    import movielens
except ImportError:  # imported as the `bench` namespace package from the repository root
    from bench import movielens  # type: ignore[no-redef]

__all__ = [
    "C_GRID",
    "evaluate_auc",
    "majority_auc",
    "bag_of_items",
    "tfidf_svd",
    "feature_vectors_local",
    "sequence_strings",
    "run_benchmark",
]

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
N_SPLITS, N_REPEATS, INNER_SPLITS = 5, 5, 3

SequencesLike = Mapping[str, Sequence[str]] | Sequence[str]


def _is_sparse(X) -> bool:
    return hasattr(X, "tocsr")


def evaluate_auc(X, y, seed: int = 0, n_jobs: int = 1, return_scores: bool = False):
    """ROC AUC ``(mean, std)`` of the shared protocol (see module docstring) on features ``X``."""
    y = np.asarray(y).astype(int)
    model = make_pipeline(
        StandardScaler(with_mean=not _is_sparse(X)),
        LogisticRegression(max_iter=5000, tol=1e-4),
    )
    search = GridSearchCV(
        model,
        {"logisticregression__C": list(C_GRID)},
        cv=StratifiedKFold(INNER_SPLITS, shuffle=True, random_state=seed),
        scoring="roc_auc",
    )
    outer = RepeatedStratifiedKFold(n_splits=N_SPLITS, n_repeats=N_REPEATS, random_state=seed)
    scores = cross_val_score(search, X, y, cv=outer, scoring="roc_auc", n_jobs=n_jobs)
    if return_scores:
        return float(scores.mean()), float(scores.std()), scores
    return float(scores.mean()), float(scores.std())


def majority_auc(y) -> tuple[float, float]:
    """Majority-class (constant) predictor: every fold's AUC is exactly 0.5."""
    return 0.5, 0.0


def _as_lists(sequences: SequencesLike) -> list[list[str]]:
    values = sequences.values() if isinstance(sequences, Mapping) else sequences
    return [v.split("->") if isinstance(v, str) else list(v) for v in values]


def sequence_strings(sequences: SequencesLike) -> list[str]:
    """The NCLUE ``b1->b2->...`` strings (after the tab) of the sequences, in order."""
    return ["->".join(seq) for seq in _as_lists(sequences)]


def bag_of_items(sequences: SequencesLike):
    """Sparse user x title count matrix (whole titles as items)."""
    vec = CountVectorizer(analyzer=lambda seq: seq, lowercase=False)
    return vec.fit_transform(_as_lists(sequences)).astype(np.float64)


def tfidf_svd(sequences: SequencesLike, n_components: int = 256, seed: int = 0) -> np.ndarray:
    """TF-IDF of word tokens reduced by TruncatedSVD (unsupervised, fitted on all users)."""
    docs = [" ".join(seq) for seq in _as_lists(sequences)]
    tfidf = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", sublinear_tf=True, min_df=2)
    T = tfidf.fit_transform(docs)
    return TruncatedSVD(n_components=min(n_components, T.shape[1] - 1), random_state=seed).fit_transform(T)


def feature_vectors_local(sequences: SequencesLike, model: str | None = None) -> np.ndarray:
    """NCLUE Feature vectors computed in-process with ``get_encoder()`` (no service involved).

    The vectors go through float16, as they are stored by the Feature job.
    """
    from userlens.understanding.encoder import DEFAULT_MODEL, get_encoder

    enc = get_encoder(model or DEFAULT_MODEL)
    X, _ = enc.encode(sequence_strings(sequences))
    return X.astype(np.float16).astype(np.float32)


def labels(users) -> dict[str, np.ndarray]:
    return {"gender": users["female"].to_numpy(), "age<30": users["young"].to_numpy()}


def run_benchmark(
    representations: Mapping[str, Callable[[SequencesLike], object]] | None = None,
    seed: int = 0,
    n_jobs: int = 2,
    baselines: bool = True,
    out=sys.stdout,
) -> dict[str, dict[str, tuple[float, float]]]:
    """Evaluate the baselines and ``representations`` (default: the default encoder) on both labels."""
    sequences, users = movielens.load_movielens()
    ys = labels(users)
    reps: dict[str, Callable[[SequencesLike], object]] = {}
    if baselines:
        reps["bag-of-items"] = bag_of_items
        reps["tfidf+svd"] = tfidf_svd
    reps.update(representations or {"encoder": feature_vectors_local})

    results: dict[str, dict[str, tuple[float, float]]] = {}
    if baselines:
        results["majority"] = {lab: majority_auc(y) for lab, y in ys.items()}
    for name, fn in reps.items():
        t0 = time.perf_counter()
        X = fn(sequences)
        results[name] = {lab: evaluate_auc(X, y, seed=seed, n_jobs=n_jobs) for lab, y in ys.items()}
        print(f"  [{name}: {time.perf_counter() - t0:.1f}s]", file=sys.stderr)

    print(f"{'representation':<24} " + " ".join(f"{lab:>17}" for lab in ys), file=out)
    for name, res in results.items():
        print(f"{name:<24} " + " ".join(f"{res[lab][0]:.4f} ± {res[lab][1]:.4f}" for lab in ys), file=out)
    if baselines:
        for lab in ys:
            best = max(results[n][lab][0] for n in ("bag-of-items", "tfidf+svd"))
            for name in reps:
                if name in ("bag-of-items", "tfidf+svd"):
                    continue
                gap = results[name][lab][0] - best
                verdict = "OK" if gap >= -0.01 else "BELOW TARGET"
                print(f"{lab}: {name} - best baseline = {gap:+.4f} ({verdict})", file=out)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="encoder model name (default: DEFAULT_MODEL)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-baselines", action="store_true")
    args = ap.parse_args(argv)
    rep = {f"encoder ({args.model or 'default'})": lambda s: feature_vectors_local(s, args.model)}
    t0 = time.perf_counter()
    run_benchmark(rep, seed=args.seed, n_jobs=args.jobs, baselines=not args.no_baselines)
    print(f"total {time.perf_counter() - t0:.0f}s", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
