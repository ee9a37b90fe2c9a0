"""The Task model: a binary classifier on Feature vectors, chosen by validation.

Candidates: L2-regularised logistic regression (C from 1e-4 to 10: vectors have hundreds of
dimensions and labelled users may be few, so strong regularisation must be on the menu) and a
one-hidden-layer MLP (128 ReLU units, early stopping), all on standardised vectors. Each is scored
by validation AUC: stratified 3-fold cross-validation when there are at most CV_ROWS training rows
(a single small holdout is too noisy to choose by), otherwise one stratified 80/20 holdout of at
most SELECTION_ROWS rows. The best is refitted on every training row. Seeds are fixed (42), so the
same inputs give the same model.

The artifact is plain numbers, not a pickle: standardisation (mean, scale) and dense layers (W, b),
ReLU between layers and a sigmoid at the end; `predict_proba` is a few NumPy operations.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field

import numpy as np

SEED = 42
SELECTION_ROWS = 40_000
CV_ROWS = 20_000
LOGREG_C = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class Classifier:
    kind: str
    mean: np.ndarray
    scale: np.ndarray
    layers: list[tuple[np.ndarray, np.ndarray]]
    params: dict = field(default_factory=dict)
    _folded: list | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def folded_layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The layers with standardisation folded into the first one: ((x - m) / s) @ W + b equals
        x @ (W / s) + (b - (m / s) @ W), which saves two passes over every block of vectors."""
        if self._folded is None:
            W0, b0 = self.layers[0]
            W = (W0 / self.scale[:, None]).astype(np.float32)
            b = (b0 - (self.mean / self.scale) @ W0).astype(np.float32)
            self._folded = [(W, b)] + list(self.layers[1:])
        return self._folded

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        layers = self.folded_layers()
        z = np.asarray(X, dtype=np.float32)
        for W, b in layers[:-1]:
            z = z @ W
            z += b
            np.maximum(z, 0.0, out=z)
        W, b = layers[-1]
        logits = (z @ W + b).reshape(-1)
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))

    def to_bytes(self) -> bytes:
        arrays = {"mean": self.mean, "scale": self.scale}
        for i, (W, b) in enumerate(self.layers):
            arrays[f"W{i}"], arrays[f"b{i}"] = W, b
        meta = json.dumps({"kind": self.kind, "layers": len(self.layers), "params": self.params})
        buf = io.BytesIO()
        np.savez_compressed(buf, meta=np.frombuffer(meta.encode(), dtype=np.uint8), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Classifier":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            layers = [(z[f"W{i}"].astype(np.float32), z[f"b{i}"].astype(np.float32)) for i in range(meta["layers"])]
            return cls(meta["kind"], z["mean"].astype(np.float32), z["scale"].astype(np.float32), layers, meta["params"])


def _standardiser(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0).astype(np.float32)
    scale = X.std(axis=0).astype(np.float32)
    scale[scale < 1e-6] = 1.0
    return mean, scale


def _fit(kind: str, param: float, Z: np.ndarray, y: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if kind == "logreg":
        m = LogisticRegression(C=param, max_iter=500, tol=1e-4)
        m.fit(Z, y)
        return [(m.coef_.T.astype(np.float32), m.intercept_.astype(np.float32))]
    m = MLPClassifier(hidden_layer_sizes=(128,), alpha=param, early_stopping=True, validation_fraction=0.1, n_iter_no_change=5, max_iter=60, random_state=SEED)
    m.fit(Z, y)
    return [(W.astype(np.float32), b.astype(np.float32)) for W, b in zip(m.coefs_, m.intercepts_)]


ALL_CANDIDATES = ("logreg", "mlp")


def candidate_grid(candidates: tuple[str, ...]) -> list[tuple[str, float]]:
    """`logreg` (every C of LOGREG_C) and `mlp`; `logreg:0.01` pins one value (a cheaper search)."""
    grid: list[tuple[str, float]] = []
    for item in candidates:
        kind, _, value = item.partition(":")
        if kind == "logreg":
            grid += [("logreg", float(value))] if value else [("logreg", c) for c in LOGREG_C]
        elif kind == "mlp":
            grid.append(("mlp", float(value) if value else 1e-3))
        else:
            raise ValueError(f"unknown classifier {item!r} (logreg, logreg:C, mlp, mlp:alpha)")
    return grid


def train(X: np.ndarray, y: np.ndarray, candidates: tuple[str, ...] = ALL_CANDIDATES) -> tuple[Classifier, dict]:
    """Chooses the candidate with the best validation AUC and refits it on all rows."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, train_test_split

    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if len(y) <= CV_ROWS:
        folds = list(StratifiedKFold(3, shuffle=True, random_state=SEED).split(X, y))
        how = "stratified 3-fold cross-validation"
    else:
        idx, _ = train_test_split(np.arange(len(y)), train_size=min(SELECTION_ROWS, len(y) - 2), stratify=y, random_state=SEED)
        fit_idx, val_idx = train_test_split(idx, test_size=0.2, stratify=y[idx], random_state=SEED)
        folds = [(fit_idx, val_idx)]
        how = f"stratified 80/20 holdout of {len(idx)} rows"
    grid = candidate_grid(candidates)
    results = []
    for kind, param in grid:
        t0 = time.perf_counter()
        aucs = []
        for fit_idx, val_idx in folds:
            mean, scale = _standardiser(X[fit_idx])
            layers = _fit(kind, param, (X[fit_idx] - mean) / scale, y[fit_idx])
            clf = Classifier(kind, mean, scale, layers)
            aucs.append(float(roc_auc_score(y[val_idx], clf.predict_proba(X[val_idx]))))
        results.append({"model": kind, "param": param, "validation_auc": round(float(np.mean(aucs)), 6), "seconds": round(time.perf_counter() - t0, 3)})
    best = max(results, key=lambda r: r["validation_auc"])
    mean, scale = _standardiser(X)
    layers = _fit(best["model"], best["param"], (X - mean) / scale, y)
    params = {"C": best["param"]} if best["model"] == "logreg" else {"hidden": 128, "alpha": best["param"]}
    return Classifier(best["model"], mean, scale, layers, params), {"chosen": best, "candidates": results, "selection": how}


def evaluate(clf: Classifier, X: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict:
    """Test metrics at `threshold`, and the ROC curve (at most 101 points) for charts."""
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score, roc_curve

    p = clf.predict_proba(X)
    pred = (p >= threshold).astype(int)
    fpr, tpr, _ = roc_curve(y, p)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 101)).round().astype(int))
    return {
        "auc": round(float(roc_auc_score(y, p)), 6),
        "accuracy": round(float(accuracy_score(y, pred)), 6),
        "precision": round(float(precision_score(y, pred, zero_division=0)), 6),
        "recall": round(float(recall_score(y, pred, zero_division=0)), 6),
        "f1": round(float(f1_score(y, pred, zero_division=0)), 6),
        "threshold": threshold,
        "positive_rate": round(float(np.mean(y)), 6),
        "predicted_positive_rate": round(float(np.mean(pred)), 6),
        "roc_curve": {"fpr": [round(float(v), 4) for v in fpr[keep]], "tpr": [round(float(v), 4) for v in tpr[keep]]},
    }
