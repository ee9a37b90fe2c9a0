"""The Task model: a binary classifier on Feature vectors, chosen by validation.

Candidates: L2-regularised logistic regression (C from 1e-4 to 10: vectors have hundreds of
dimensions and labelled users may be few, so strong regularisation must be on the menu) and a
one-hidden-layer MLP (128 ReLU units), all on standardised vectors, each scored by validation AUC.

*Small Tasks* (at most CV_ROWS training rows): stratified 3-fold cross-validation (a single small
holdout is too noisy to choose by); the MLP uses scikit-learn's early stopping; the best candidate is
refitted on every training row.

*Large Tasks*: one stratified holdout of VALIDATION_ROWS rows. The logistic regressions follow the C
path on at most SELECTION_ROWS of the other rows, each fit warm-started from the previous C; the
winner is refitted on every row. The MLP is trained once, on every non-holdout row, one epoch at a
time, and keeps the weights of its best validation-AUC epoch (stopping after MLP_PATIENCE epochs
without a real gain): no separate selection fit on a sample and no refit. Fitting the MLP on a 32k sample
to choose it cost as much as the AUC it lost (bench/task_speed.py: 0.746 validation AUC on the
sample vs 0.834 test AUC when trained on every row), and the refit was half of a Task's time.

Seeds are fixed (42), so the same inputs give the same model. The artifact is plain numbers, not a
pickle: standardisation (mean, scale) and dense layers (W, b), ReLU between layers and a sigmoid at
the end; `predict_proba` is a few NumPy operations.

*Scoring stored vectors* (`predict_block`, what Runs use): the vectors are int8 with a per-user
scale, so the first layer is an int8 x int8 -> int32 product (ONNX Runtime's MatMulInteger, whose
MLAS kernels use AVX512-VNNI/AVX-VNNI dot products where the CPU has them) on first-layer weights
quantised per output column (symmetric, 127 steps of max|column|). On CPUs without VNNI that
kernel saturates int16 sums (found by a probe when the session is built) and Runs take the float
path instead. It is ~3x faster than the
float32 product of the decoded block (bench/task_speed.py), the first layer being most of a Run's
arithmetic. The weights' rounding moves scores about as much as storing the vectors as int8 already
did: on bench/task_speed.py's data (100k test users, the MLP) mean |diff| 0.004, max 0.09 (the
storage: 0.003, 0.06), Spearman 0.9999, 0.4% of users cross 0.5, AUC equal to 4 decimals; in
tests/test_vectors.py no more than the storage. Tasks are evaluated on the float path (`predict_proba`).
"""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np

SEED = 42
_SHIFTED = threading.local()  # per-thread uint8 buffer of predict_block
SELECTION_ROWS = 32_000
VALIDATION_ROWS = 8_000
CV_ROWS = 20_000
MLP_HIDDEN = 128
MLP_MAX_EPOCHS = 40
MLP_PATIENCE = 2  # epochs without a validation-AUC gain of at least MLP_MIN_GAIN
MLP_MIN_GAIN = 1e-3
MLP_BATCH = 500
MLP_LEARNING_RATE = 0.002
LOGREG_C = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class Classifier:
    kind: str
    mean: np.ndarray
    scale: np.ndarray
    layers: list[tuple[np.ndarray, np.ndarray]]
    params: dict = field(default_factory=dict)
    _folded: list | None = field(default=None, init=False, repr=False, compare=False)
    _int8: tuple | bool | None = field(default=None, init=False, repr=False, compare=False)

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
        W, b = layers[0]
        return self._rest(z @ W, b, layers)

    def predict_block(self, block) -> np.ndarray:
        """Scores of a `vectors.VectorBlock` (see the module's docstring). Quantised vectors
        (v = q * scale per user) go through the first layer as q, int8 x int8 -> int32, and the
        weights' and users' scales are applied to its outputs: (q * s) @ (Wq * w) = s * (q @ Wq) * w."""
        quantized = block.quantized()
        if quantized is None:
            return self.predict_proba(block.matrix())
        q, scale = quantized
        int8 = self._int8_first_layer()
        if int8 is None:  # a CPU whose int8 kernel is not exact: float32, the user's scale applied after the product
            buf = getattr(_SHIFTED, "fbuf", None)
            if buf is None or buf.shape[0] < len(q) or buf.shape[1] != q.shape[1]:
                buf = _SHIFTED.fbuf = np.empty((max(len(q), 1), q.shape[1]), dtype=np.float32)
            a = buf[: len(q)]
            np.copyto(a, q, casting="unsafe")
            layers = self.folded_layers()
            z = a @ layers[0][0]
            z *= scale[:, None]  # (q * s) @ W = s * (q @ W): 128 columns to scale instead of 2,048
            return self._rest(z, layers[0][1], layers)
        session, step, bias = int8
        # The int8 kernels take the left operand as uint8 with a zero point: q + 128 (an xor of the
        # sign bit), written into a buffer kept per thread so blocks do not page fresh memory in.
        buf = getattr(_SHIFTED, "buf", None)
        if buf is None or buf.shape[0] < len(q) or buf.shape[1] != q.shape[1]:
            buf = _SHIFTED.buf = np.empty((max(len(q), 1), q.shape[1]), dtype=np.uint8)
        a = buf[: len(q)]
        np.bitwise_xor(q.view(np.uint8), 0x80, out=a)
        z = session.run(None, {"q": a})[0].astype(np.float32)
        z *= step
        z *= scale[:, None]
        return self._rest(z, bias, self.folded_layers())

    def _int8_first_layer(self):
        """(ONNX Runtime session computing (a - 128) @ Wq as int32, step per column, bias), built
        once; W ≈ Wq * step with Wq int8 in [-127, 127]. The bias takes out the rounding's error on
        the average user, mean @ (Wq * step - W): vectors are far from centred (|mean| is about half
        of a user's norm), and this cuts the score error by 10-20%. None where this CPU's kernel is
        not exact (below): the caller takes the float path."""
        if self._int8 is False:
            return None
        if self._int8 is None:
            import onnxruntime as ort

            W = self.folded_layers()[0][0]
            peak = np.abs(W).max(axis=0)
            step = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
            Wq = np.rint(W / step).astype(np.int8)
            options = ort.SessionOptions()
            # One thread per call: a Run already scores one block per core on its own threads.
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.log_severity_level = 3
            session = ort.InferenceSession(_matmul_integer_model(Wq), options, providers=["CPUExecutionProvider"])
            # Without VNNI (AVX2, AVX-512F) the u8 x s8 kernels add pairs of products in int16 with
            # saturation: 255 * 127 * 2 overflows it, and scores go wrong (by 0.05 on an AVX2 EPYC).
            # All-255 input is every pair's worst case, so one probe row tells whether this CPU's
            # kernel is exact for these weights. Where it is not, Runs take the float path: 7-bit
            # weights (ONNX Runtime's reduce_range) moved scores twice as much as int8 storage does,
            # and the signed s8 x s8 kernel, exact there, was 4x slower than the float product.
            probe = session.run(None, {"q": np.full((1, W.shape[0]), 255, np.uint8)})[0]
            if not np.array_equal(probe[0], 127 * Wq.astype(np.int64).sum(axis=0)):
                self._int8 = False
                return None
            bias = (self.folded_layers()[0][1] - self.mean @ (Wq * step - W)).astype(np.float32)
            self._int8 = (session, step, bias)
        return self._int8

    def __getstate__(self):  # the caches (an ONNX Runtime session among them) are rebuilt where used
        return {**self.__dict__, "_folded": None, "_int8": None}

    @staticmethod
    def _rest(z: np.ndarray, b0: np.ndarray, layers: list) -> np.ndarray:
        """Adds the first layer's bias to its product `z`, then the other layers and the sigmoid."""
        z += b0
        for W, b in layers[1:]:
            np.maximum(z, 0.0, out=z)
            z = z @ W
            z += b
        logits = z.reshape(-1)
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


def _pb(field: int, value: int | str | bytes) -> bytes:
    """One protobuf field: an int as a varint, a string or bytes length-delimited."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    if isinstance(value, int):
        return varint(field << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(field << 3 | 2) + varint(len(data)) + data


def _matmul_integer_model(Wq: np.ndarray) -> bytes:
    """The ONNX model (serialised ModelProto, IR 8, opset 13) of one MatMulInteger node:
    z = (q - 128) @ Wq, q uint8 [n, dim] in, z int32 out, Wq int8 [dim, hidden] held by the model.
    Written by hand from onnx.proto's field numbers: the onnx package's helpers took 5-7 s to import
    (ml_dtypes) at the start of every worker's first Run, for these few bytes."""
    UINT8, INT8, INT32 = 2, 3, 6  # TensorProto.DataType

    def tensor(name: str, dtype: int, a: np.ndarray) -> bytes:  # dims 1, data_type 2, name 8, raw_data 9
        return b"".join(_pb(1, d) for d in a.shape) + _pb(2, dtype) + _pb(8, name) + _pb(9, np.ascontiguousarray(a).tobytes())

    def value_info(name: str, dtype: int, width: int) -> bytes:  # name 1, type 2 > tensor_type 1 > elem_type 1,
        shape = _pb(1, _pb(2, "n")) + _pb(1, _pb(1, width))  # shape 2 > dim 1 > dim_param 2 | dim_value 1
        return _pb(1, name) + _pb(2, _pb(1, _pb(1, dtype) + _pb(2, shape)))

    node = _pb(1, "q") + _pb(1, "W") + _pb(1, "zero") + _pb(2, "z") + _pb(4, "MatMulInteger")  # input 1, output 2, op_type 4
    graph = (  # node 1, name 2, initializer 5, input 11, output 12
        _pb(1, node) + _pb(2, "first_layer") + _pb(5, tensor("W", INT8, Wq)) + _pb(5, tensor("zero", UINT8, np.array(128, np.uint8)))
        + _pb(11, value_info("q", UINT8, Wq.shape[0])) + _pb(12, value_info("z", INT32, Wq.shape[1]))
    )
    return _pb(1, 8) + _pb(7, graph) + _pb(8, _pb(1, "") + _pb(2, 13))  # ir_version 1, graph 7, opset_import 8 (domain 1, version 2)


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
    m = MLPClassifier(hidden_layer_sizes=(MLP_HIDDEN,), alpha=param, early_stopping=True, validation_fraction=0.1, n_iter_no_change=5, max_iter=60, random_state=SEED)
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


def _auc(y: np.ndarray, layers, Z: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    dim = Z.shape[1]
    clf = Classifier("eval", np.zeros(dim, np.float32), np.ones(dim, np.float32), layers)
    return float(roc_auc_score(y, clf.predict_proba(Z)))


def _params(kind: str, param: float) -> dict:
    return {"C": param} if kind == "logreg" else {"hidden": MLP_HIDDEN, "alpha": param}


def train(X: np.ndarray, y: np.ndarray, candidates: tuple[str, ...] = ALL_CANDIDATES) -> tuple[Classifier, dict]:
    """Chooses the candidate with the best validation AUC (see the module's docstring)."""
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    grid = candidate_grid(candidates)
    if len(y) <= CV_ROWS:
        return _train_small(X, y, grid)
    return _train_large(X, y, grid)


def _train_small(X: np.ndarray, y: np.ndarray, grid: list[tuple[str, float]]) -> tuple[Classifier, dict]:
    from sklearn.model_selection import StratifiedKFold

    folds = list(StratifiedKFold(3, shuffle=True, random_state=SEED).split(X, y))
    results = []
    for kind, param in grid:
        t0 = time.perf_counter()
        aucs = []
        for fit_idx, val_idx in folds:
            mean, scale = _standardiser(X[fit_idx])
            layers = _fit(kind, param, (X[fit_idx] - mean) / scale, y[fit_idx])
            aucs.append(_auc(y[val_idx], layers, (X[val_idx] - mean) / scale))
        results.append({"model": kind, "param": param, "validation_auc": round(float(np.mean(aucs)), 6), "seconds": round(time.perf_counter() - t0, 3)})
    best = max(results, key=lambda r: r["validation_auc"])
    mean, scale = _standardiser(X)
    layers = _fit(best["model"], best["param"], (X - mean) / scale, y)
    clf = Classifier(best["model"], mean, scale, layers, _params(best["model"], best["param"]))
    return clf, {"chosen": best, "candidates": results, "selection": "stratified 3-fold cross-validation"}


def _train_large(X: np.ndarray, y: np.ndarray, grid: list[tuple[str, float]]) -> tuple[Classifier, dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    fit_idx, val_idx = train_test_split(np.arange(len(y)), test_size=VALIDATION_ROWS, stratify=y, random_state=SEED)
    # One standardised copy, fitting rows first, serves every candidate: the fitting and validation
    # rows are views of it, so memory is the input plus one copy (plus the logistic sample).
    order = np.concatenate([np.sort(fit_idx), np.sort(val_idx)])
    Z, y = X[order], y[order]
    n_fit = len(fit_idx)
    mean, scale = _standardiser(Z[:n_fit])
    Z -= mean
    Z /= scale
    Z_fit, y_fit, Z_val, y_val = Z[:n_fit], y[:n_fit], Z[n_fit:], y[n_fit:]
    results, fitted = [], {}

    cs = sorted(param for kind, param in grid if kind == "logreg")
    if cs:
        sample = np.arange(n_fit) if n_fit <= SELECTION_ROWS else np.sort(train_test_split(np.arange(n_fit), train_size=SELECTION_ROWS, stratify=y_fit, random_state=SEED)[0])
        Z_s, y_s = Z_fit[sample], y_fit[sample]
        m = LogisticRegression(max_iter=500, tol=1e-4, warm_start=True)
        for c in cs:  # strongest regularisation first: each fit starts from the previous solution
            t0 = time.perf_counter()
            m.set_params(C=c).fit(Z_s, y_s)
            layers = [(m.coef_.T.astype(np.float32), m.intercept_.astype(np.float32))]
            results.append({"model": "logreg", "param": c, "validation_auc": round(_auc(y_val, layers, Z_val), 6), "seconds": round(time.perf_counter() - t0, 3)})
        del Z_s
    for kind, param in grid:
        if kind == "mlp":
            t0 = time.perf_counter()
            layers, auc, epochs = _fit_mlp_epochs(param, Z_fit, y_fit, Z_val, y_val)
            fitted[("mlp", param)] = layers
            results.append({"model": "mlp", "param": param, "validation_auc": round(auc, 6), "seconds": round(time.perf_counter() - t0, 3), "epochs": epochs})
    best = max(results, key=lambda r: r["validation_auc"])
    key = (best["model"], best["param"])
    if key in fitted:
        layers = fitted[key]
        how = f"stratified holdout of {len(val_idx)} rows; the MLP was trained on the other {n_fit} rows, keeping its best epoch"
    else:  # the winning C, refitted on every row
        layers = _fit("logreg", best["param"], Z, y)
        how = f"stratified holdout of {len(val_idx)} rows; logistic regressions chosen on {min(n_fit, SELECTION_ROWS)} of the other rows, the winner refitted on all {len(y)}"
    clf = Classifier(best["model"], mean, scale, layers, _params(*key))
    return clf, {"chosen": best, "candidates": results, "selection": how}


def _fit_mlp_epochs(alpha: float, Z: np.ndarray, y: np.ndarray, Z_val: np.ndarray, y_val: np.ndarray) -> tuple[list, float, int]:
    """Trains the MLP one epoch at a time and returns the layers of its best validation-AUC epoch.

    It stops after MLP_PATIENCE epochs without a gain of MLP_MIN_GAIN. Mini-batches of 500 at a
    learning rate of 0.002 reach the AUC of scikit-learn's defaults (200, 0.001) in about the same
    number of epochs in about half the time per epoch (bench/task_speed.py's 100k users at 2,048
    dimensions: test AUC 0.8327 vs 0.8334 after 12 epochs); larger steps were noisier and plateaued
    lower (1000 at 0.004: 0.81 after 10)."""
    from sklearn.neural_network import MLPClassifier

    # A RandomState object (not an int) so that each epoch shuffles the rows differently.
    m = MLPClassifier(hidden_layer_sizes=(MLP_HIDDEN,), alpha=alpha, batch_size=MLP_BATCH, learning_rate_init=MLP_LEARNING_RATE, random_state=np.random.RandomState(SEED))
    best_auc, best_layers, best_epoch = -1.0, None, 0
    reference, reference_epoch = -1.0, 0  # the last AUC that was a real gain
    for epoch in range(1, MLP_MAX_EPOCHS + 1):
        m.partial_fit(Z, y, classes=[0, 1])
        layers = [(W.astype(np.float32), b.astype(np.float32)) for W, b in zip(m.coefs_, m.intercepts_)]
        auc = _auc(y_val, layers, Z_val)
        if auc > best_auc:
            best_auc, best_layers, best_epoch = auc, layers, epoch
        if auc >= reference + MLP_MIN_GAIN:
            reference, reference_epoch = auc, epoch
        elif epoch - reference_epoch >= MLP_PATIENCE:
            break
    return best_layers, best_auc, best_epoch


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
