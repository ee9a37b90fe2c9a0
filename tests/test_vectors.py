"""The stored vector format (int8 + per-user scale), the legacy float16 read path, row-selective
decoding, the classifier's folded standardisation and its int8 scoring of stored blocks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from userlens.storage.objectstore import LocalObjectStore
from userlens.understanding import classifier, vectors


@pytest.fixture
def store(tmp_path):
    s = LocalObjectStore(tmp_path)
    s.create_bucket("internal")
    return s


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    v[3] = 0.0  # an empty user is all zeros
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1)


def test_round_trip_keeps_every_user_and_the_direction(store):
    v = unit_rows(1000, 256)
    ids = [f"u{i}" for i in range(1000)]
    size = vectors.write_part(store, "internal", "f/part-00000.parquet", ids, v)
    assert size < 1000 * (256 + 4 + 16)  # about one byte per dimension
    blocks = list(vectors.iter_blocks(store, "internal", "f"))
    got_ids = [u for b in blocks for u in b.user_ids]
    got = np.concatenate([b.matrix() for b in blocks])
    assert got_ids == ids and got.dtype == np.float32
    assert np.all(got[3] == 0.0)
    keep = np.arange(1000) != 3
    cos = np.sum(got[keep] * v[keep], axis=1) / np.linalg.norm(got[keep], axis=1)
    assert cos.min() > 0.9999
    assert np.abs(got - v).max() <= np.abs(v).max(axis=1).max() / 127 / 2 + 1e-6


def test_selected_rows_decode_like_the_whole_block(store):
    v = unit_rows(300, 64, seed=1)
    vectors.write_part(store, "internal", "f/part-00000.parquet", [f"u{i}" for i in range(300)], v)
    block = next(vectors.iter_blocks(store, "internal", "f"))
    rows = [299, 0, 17, 17]
    assert np.array_equal(block.matrix(rows), block.matrix()[rows])


def test_parts_of_the_earlier_float16_format_are_still_read(store):
    v = unit_rows(50, 32, seed=2)
    flat = pa.array(v.astype(np.float16).reshape(-1))
    table = pa.table({"user_id": [f"u{i}" for i in range(50)], "vector": pa.FixedSizeListArray.from_arrays(flat, 32)})
    with store.open_write("internal", "old/part-00000.parquet") as f:
        pq.write_table(table, f)
    ids, mat = next(vectors.iter_vectors(store, "internal", "old"))
    assert ids[0] == "u0" and np.array_equal(mat, v.astype(np.float16).astype(np.float32))
    only_ids = next(vectors.iter_blocks(store, "internal", "old", with_vectors=False))
    assert only_ids.user_ids == ids and "vector" not in only_ids.table.column_names


def test_blocks_come_in_part_order_across_parts(store):
    for p in range(3):
        vectors.write_part(store, "internal", f"f/part-{p:05d}.parquet", [f"p{p}u{i}" for i in range(5)], unit_rows(5, 8, seed=p))
    assert [b.user_ids[0] for b in vectors.iter_blocks(store, "internal", "f")] == ["p0u0", "p1u0", "p2u0"]


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_folded_standardisation_predicts_like_the_textbook_formula(kind):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 16)).astype(np.float32) * rng.uniform(0.1, 3, 16).astype(np.float32) + 2
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 2).astype(int)
    clf, _ = classifier.train(X, y, (kind,))
    z = (X - clf.mean) / clf.scale
    for W, b in clf.layers[:-1]:
        z = np.maximum(z @ W + b, 0)
    W, b = clf.layers[-1]
    expected = 1 / (1 + np.exp(-(z @ W + b).reshape(-1)))
    assert np.allclose(clf.predict_proba(X), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_a_block_scores_with_the_int8_first_layer_of_its_textbook_formula(store, kind):
    """predict_block: int8 vectors times int8 weights (per-column step), the user's scale and the
    weights' steps applied after the product, the rounding's error on the average user taken out
    of the bias. Exact integer arithmetic, so it matches the formula to float32 rounding."""
    v = unit_rows(600, 32, seed=4)
    y = (v[:, 0] - v[:, 1] > 0).astype(int)
    clf, _ = classifier.train(v, y, (kind,))
    vectors.write_part(store, "internal", "f/part-00000.parquet", [f"u{i}" for i in range(600)], v)
    block = next(vectors.iter_blocks(store, "internal", "f"))
    q, user_scale = block.quantized()
    if clf._int8_first_layer() is None:  # a CPU whose int8 kernel saturates: the float path
        assert np.allclose(clf.predict_block(block), clf.predict_proba(block.matrix()), atol=1e-6)
        return
    W, b = clf.folded_layers()[0]
    step = np.abs(W).max(axis=0) / 127
    Wq = np.rint(W / step)
    assert np.abs(Wq).max() == 127
    z = (q.astype(np.int64) @ Wq.astype(np.int64)) * step * user_scale[:, None] + b - clf.mean @ (Wq * step - W)
    for W_next, b_next in clf.layers[1:]:
        z = np.maximum(z, 0) @ W_next + b_next
    expected = 1 / (1 + np.exp(-z.reshape(-1)))
    assert np.allclose(clf.predict_block(block), expected, atol=1e-5)


def test_the_int8_path_is_taken_exactly_where_the_cpu_kernel_is_exact():
    """Without VNNI, ONNX Runtime's u8 x s8 kernels add pairs of products in int16 with saturation
    (an AVX2 EPYC: Run scores off by 0.05). The classifier probes its kernel with the worst case
    input (every byte 255): where it is exact the int8 path scores, elsewhere the float path does."""
    import onnxruntime as ort

    v = unit_rows(400, 64, seed=5)
    clf, _ = classifier.train(v, (v[:, 0] > v[:, 1]).astype(int), ("mlp",))
    W = clf.folded_layers()[0][0]
    Wq = np.rint(W / (np.abs(W).max(axis=0) / 127)).astype(np.int8)
    session = ort.InferenceSession(classifier._matmul_integer_model(Wq), providers=["CPUExecutionProvider"])
    rows = np.full((3, W.shape[0]), 255, np.uint8)
    rows[1] = np.where(Wq[:, 0] > 0, 255, 1)  # the first column's largest sum, and its smallest
    rows[2] = np.where(Wq[:, 0] > 0, 1, 255)
    exact = np.array_equal(session.run(None, {"q": rows})[0], (rows.astype(np.int64) - 128) @ Wq.astype(np.int64))
    assert (clf._int8_first_layer() is not None) == exact


def test_the_hand_written_onnx_model_passes_the_onnx_checker():
    """classifier._matmul_integer_model writes the protobuf itself (importing onnx costs seconds);
    the onnx package's own checker and parser must read it as the intended one-node model."""
    import onnx
    from onnx import numpy_helper

    Wq = np.random.default_rng(8).integers(-127, 128, (300, 7)).astype(np.int8)
    model = onnx.load_from_string(classifier._matmul_integer_model(Wq))
    onnx.checker.check_model(model, full_check=True)
    (node,) = model.graph.node
    assert (node.op_type, list(node.input), list(node.output)) == ("MatMulInteger", ["q", "W", "zero"], ["z"])
    weights, zero = (numpy_helper.to_array(t) for t in model.graph.initializer)
    assert weights.dtype == np.int8 and np.array_equal(weights, Wq) and zero.dtype == np.uint8 and zero == 128
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [0, 7]


def behaviour_vectors(users: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of the real encoder for Zipf-distributed behaviour sequences; label 1 when the user
    did one of 300 mid-popularity behaviours (bench/task_speed.py's kind of label)."""
    from userlens.understanding.encoder import get_encoder

    rng = np.random.default_rng(seed)
    items = 1 + np.minimum(rng.zipf(1.3, size=users * 30), 20_000) - 1
    lengths = rng.integers(5, 55, size=users)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    seqs = [[f"item {i} shop {i % 97}" for i in items[a:z]] for a, z in zip(starts[:-1], starts[1:])]
    label = np.array([int(any(200 <= i < 500 for i in items[a:z])) for a, z in zip(starts[:-1], starts[1:])])
    return get_encoder("ul-hash-v2").encode(["->".join(s) for s in seqs])[0].astype(np.float32), label


@pytest.mark.parametrize("kind", ["logreg:1.0", "mlp"])  # one C (the least regularised): the grid adds nothing here
def test_int8_scores_of_stored_vectors_stay_close_to_the_float_path_and_rank_alike(store, kind):
    """On encoder vectors (2,048 dimensions) of a learnable problem, the Run's int8 path moves
    scores from the float path on the same stored vectors by no more than storing the vectors as
    int8 moved them from the encoder's own, leaves the AUC as it is, and is reproducible."""
    from sklearn.metrics import roc_auc_score

    X, y = behaviour_vectors(4_000, seed=7)
    assert 0.2 < y.mean() < 0.8
    clf, _ = classifier.train(X[:2_000], y[:2_000], (kind,))
    vectors.write_part(store, "internal", "f/part-00000.parquet", [f"u{i}" for i in range(2_000)], X[2_000:])
    block = next(vectors.iter_blocks(store, "internal", "f"))
    fast, exact = clf.predict_block(block), clf.predict_proba(block.matrix())
    diff, storage = np.abs(fast - exact), np.abs(exact - clf.predict_proba(X[2_000:]))
    assert diff.max() <= storage.max() and diff.mean() <= storage.mean() and diff.max() < 0.1
    auc_fast, auc_exact = roc_auc_score(y[2_000:], fast), roc_auc_score(y[2_000:], exact)
    assert auc_exact > 0.75 and abs(auc_fast - auc_exact) < 1e-3
    again = classifier.Classifier.from_bytes(clf.to_bytes())
    assert np.array_equal(again.predict_block(block), fast) and np.array_equal(clf.predict_block(block), fast)


def test_large_tasks_keep_the_best_mlp_epoch_and_report_the_holdout():
    """Past CV_ROWS the MLP trains once on the non-holdout rows and keeps its best epoch."""
    rng = np.random.default_rng(5)
    n = classifier.CV_ROWS + 2_000
    X = rng.standard_normal((n, 24)).astype(np.float32)
    y = ((X[:, 0] * X[:, 1] > 0) ^ (X[:, 2] > 1.5)).astype(int)  # not linearly separable
    clf, selection = classifier.train(X, y)
    mlp = next(c for c in selection["candidates"] if c["model"] == "mlp")
    logreg = [c for c in selection["candidates"] if c["model"] == "logreg"]
    assert clf.kind == "mlp" and selection["chosen"]["model"] == "mlp"
    assert mlp["validation_auc"] > max(c["validation_auc"] for c in logreg) + 0.2
    assert 1 <= mlp["epochs"] <= classifier.MLP_MAX_EPOCHS
    assert f"holdout of {classifier.VALIDATION_ROWS} rows" in selection["selection"]
    X_new = rng.standard_normal((2_000, 24)).astype(np.float32)
    y_new = ((X_new[:, 0] * X_new[:, 1] > 0) ^ (X_new[:, 2] > 1.5)).astype(int)
    assert classifier.evaluate(clf, X_new, y_new)["auc"] > 0.9


def test_a_part_is_scored_block_by_block_into_one_tsv_piece(store, monkeypatch):
    """scoring.score_part, one executor chunk: every row group of the part, in order, formatted."""
    from userlens.understanding.scoring import ScoreJob, score_part

    monkeypatch.setattr(vectors, "ROW_GROUP_ROWS", 4)  # three blocks in the part
    v = unit_rows(10, 8, seed=6)
    vectors.write_part(store, "internal", "f/part-00000.parquet", [f"u{i}" for i in range(10)], v)
    assert len(list(vectors.read_part(store, "internal", "f/part-00000.parquet"))) == 3
    job = ScoreJob(lambda block: block.matrix()[:, 0], "internal", "pieces/attempt-1")
    result = score_part(store, job, (3, "f/part-00000.parquet"))
    data = store.read_bytes("internal", "pieces/attempt-1/piece-00003.tsv")
    assert result == {"lines": 10, "key": "pieces/attempt-1/piece-00003.tsv", "bytes": len(data)}
    rows = [line.split("\t") for line in data.decode().splitlines()]
    assert [u for u, _ in rows] == [f"u{i}" for i in range(10)]
    assert np.allclose([float(x) for _, x in rows], v[:, 0], atol=0.01)
