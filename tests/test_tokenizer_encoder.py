"""Tokenizer (ul-tok-1) and default NCLUE encoder: rules, determinism, truncation, shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest

from userlens.understanding.encoder import (
    DEFAULT_MODEL,
    MAX_TOKENS_PER_USER,
    SequenceEncoder,
    available_models,
    get_encoder,
    normalize_behavior,
)
from userlens.understanding.tokenizer import TOKENIZER_VERSION, tokenize_behavior

# --------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        # Korean: Hangul runs cut into 2-syllable pieces
        ("스타벅스 판교점", ["스타", "벅스", "판교", "점"]),
        ("배달의민족", ["배달", "의민", "족"]),
        ("GS25 역삼점", ["gs25", "역삼", "점"]),
        ("스타벅스DT점", ["스타", "벅스", "dt", "점"]),
        # Japanese: katakana (with ー) / kanji / hiragana runs segmented by script
        (
            "スターバックス板橋アベニューフラン店",
            ["スタ", "ーバ", "ック", "ス", "板橋", "アベ", "ニュ", "ーフ", "ラン", "店"],
        ),
        ("ユニクロ 銀座店", ["ユニ", "クロ", "銀座", "店"]),
        ("となりのトトロ", ["とな", "りの", "トト", "ロ"]),
        ("東京ディズニーランド・ホテル", ["東京", "ディ", "ズニ", "ーラ", "ンド", "ホテ", "ル"]),
        # English / Latin: lower-cased alphanumeric words, punctuation dropped
        ("Nike Air Max 90", ["nike", "air", "max", "90"]),
        ("Schindler's List (1993)", ["schindler", "s", "list", "1993"]),
        ("Coca-Cola 1.5L", ["coca", "cola", "1", "5l"]),
        ("Café Crème", ["café", "crème"]),
        # NFKC: full-width Latin and half-width katakana
        ("Ｎｉｋｅ ｴｱﾏｯｸｽ", ["nike", "エア", "マッ", "クス"]),
        # nothing left
        ("", []),
        ("  ★★★ !!! → ", []),
    ],
)
def test_tokenize_examples(text: str, tokens: list[str]) -> None:
    assert tokenize_behavior(text) == tokens


def test_tokenizer_counts_comparable_across_languages() -> None:
    ko = tokenize_behavior("스타벅스 판교점")
    ja = tokenize_behavior("スターバックス板橋店")
    en = tokenize_behavior("Starbucks Pangyo Store")
    for toks in (ko, ja, en):
        assert 2 <= len(toks) <= 6
    # no piece of a CJK run is longer than 2 characters
    for tok in ko + ja:
        assert 1 <= len(tok) <= 2


def test_tokenizer_version() -> None:
    assert TOKENIZER_VERSION == "ul-tok-1"


def test_normalize_behavior() -> None:
    assert normalize_behavior("  Star   WARS ") == "star wars"
    assert normalize_behavior("Ｓｔａｒ　Ｗａｒｓ") == "star wars"
    assert normalize_behavior(" \t ") == ""


# --------------------------------------------------------------------------- encoder API


def test_registry() -> None:
    assert DEFAULT_MODEL in available_models()
    enc = get_encoder()
    assert enc.name == DEFAULT_MODEL
    assert get_encoder(DEFAULT_MODEL) is enc
    with pytest.raises(KeyError):
        get_encoder("no-such-model")
    desc = enc.describe()
    json.dumps(desc)  # JSON-able
    assert desc["name"] == DEFAULT_MODEL
    assert desc["dim"] == enc.dim
    assert desc["tokenizer"] == TOKENIZER_VERSION
    assert desc["max_tokens_per_user"] == MAX_TOKENS_PER_USER == 2048
    for key in ("hashes", "seed", "weights"):
        assert key in desc


def test_shape_dtype_norm() -> None:
    enc = get_encoder()
    seqs = [
        "스타벅스 판교점->GS25 역삼점->배달의민족",
        "スターバックス板橋アベニューフラン店->ユニクロ 銀座店",
        "Nike Air Max 90->Star Wars->Toy Story",
        "Star Wars",
    ]
    vecs, counts = enc.encode(seqs)
    assert vecs.shape == (4, enc.dim) and vecs.dtype == np.float32
    assert counts.dtype == np.int64 and counts.shape == (4,)
    assert counts.tolist() == [4 + 3 + 3, 10 + 4, 4 + 2 + 2, 2]
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # related users are closer than unrelated ones
    assert vecs[2] @ vecs[3] > vecs[0] @ vecs[3] + 0.2


def test_empty_input_and_behaviours() -> None:
    enc = get_encoder()
    vecs, counts = enc.encode([])
    assert vecs.shape == (0, enc.dim) and counts.shape == (0,)

    vecs, counts = enc.encode(["", "", ""])
    assert counts.tolist() == [0, 0, 0]
    assert not vecs.any()

    vecs, counts = enc.encode(["", "a->->b", "a->b", "->a->  ->b->", "★★", "Star Wars"])
    assert counts.tolist() == [0, 2, 2, 2, 0, 2]
    assert not vecs[0].any()
    # empty behaviours are ignored entirely
    np.testing.assert_array_equal(vecs[1], vecs[2])
    np.testing.assert_array_equal(vecs[1], vecs[3])
    # a behaviour without tokens still has its identity feature
    assert np.linalg.norm(vecs[4]) == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(vecs).all()


def test_order_within_window_and_batching_do_not_matter() -> None:
    enc = get_encoder()
    a, _ = enc.encode(["Nike Air Max 90->Star Wars->스타벅스 판교점"])
    b, _ = enc.encode(["스타벅스 판교점->Nike Air Max 90->Star Wars"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    # a user's vector does not depend on the other users in the call (more than one block)
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "gamma", "스타벅스", "ユニクロ", "nike air", "판교점"]
    seqs = ["->".join(rng.choice(words, rng.integers(1, 9))) for _ in range(2500)]
    batch, cb = enc.encode(seqs)
    for i in (0, 511, 512, 1023, 1024, 2499):
        one, c1 = enc.encode([seqs[i]])
        np.testing.assert_array_equal(one[0], batch[i])
        assert c1[0] == cb[i]


def test_repeats_are_sublinear() -> None:
    enc = get_encoder()
    v1, _ = enc.encode(["star wars->toy story"])
    v100, c = enc.encode(["->".join(["star wars"] * 100 + ["toy story"])])
    assert c[0] == 202
    ts, _ = enc.encode(["toy story"])
    # equal weight with one visit each; sqrt(100) = 10x (not 100x) for 100 visits: cos = 1/sqrt(101)
    assert float(v1[0] @ ts[0]) == pytest.approx(2**-0.5, abs=0.05)
    assert float(v100[0] @ ts[0]) == pytest.approx(101**-0.5, abs=0.04)


# --------------------------------------------------------------------------- truncation


def test_truncation_keeps_most_recent_2048_tokens() -> None:
    enc = get_encoder()
    behaviours = [f"w{i}" for i in range(3000)]  # one token each
    full = "->".join(behaviours)
    tail = "->".join(behaviours[-MAX_TOKENS_PER_USER:])
    older = "->".join(behaviours[:-MAX_TOKENS_PER_USER])
    vecs, counts = enc.encode([full, tail, older])
    assert counts.tolist() == [2048, 2048, 3000 - 2048]
    np.testing.assert_array_equal(vecs[0], vecs[1])
    assert abs(float(vecs[0] @ vecs[2])) < 0.2


def test_truncation_cuts_inside_a_behaviour() -> None:
    spec = get_encoder().spec
    # 1000 behaviours of 3 tokens = 3000 tokens; 2048 = 682 whole behaviours + 2 tokens of one more
    behaviours = [f"a{i} b{i} c{i}" for i in range(1000)]
    full = "->".join(behaviours)
    cut = 1000 - 682 - 1  # partially kept: its last 2 tokens survive, its identity does not
    rest = "->".join(behaviours[cut + 1 :])

    default = SequenceEncoder(spec)
    v, c = default.encode([full, rest, f"{behaviours[cut]}->{rest}", f"b{cut} c{cut}->{rest}"])
    assert c.tolist() == [2048, 2046, 2048, 2048]
    # 2049 tokens: the oldest token goes, and the identity of the behaviour it belonged to
    np.testing.assert_array_equal(v[0], v[2])

    # tokens only: exactly the last 2048 tokens, i.e. "b c" of the cut behaviour + the rest
    tokens_only = SequenceEncoder(replace(spec, identity_weight=0.0))
    t, _ = tokens_only.encode([full, f"b{cut} c{cut}->{rest}"])
    np.testing.assert_allclose(t[0], t[1], atol=1e-6)
    # identities only: exactly those of the behaviours kept whole
    ids_only = SequenceEncoder(replace(spec, token_weight=0.0))
    i, _ = ids_only.encode([full, rest])
    np.testing.assert_allclose(i[0], i[1], atol=1e-6)
    # the default model mixes both: the cut piece adds its tokens but no identity
    assert 0 < float(np.linalg.norm(v[0] - v[1])) < 0.2
    assert 0 < float(np.linalg.norm(v[0] - v[3])) < 0.2


# --------------------------------------------------------------------------- encode_texts


def test_encode_texts() -> None:
    enc = get_encoder()
    kw = enc.encode_texts(["스타벅스", "Nike", "ユニクロ", "star wars -> toy story", ""])
    assert kw.shape == (5, enc.dim) and kw.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(kw[:4], axis=1), 1.0, atol=1e-5)
    assert not kw[4].any()
    users, _ = enc.encode(["스타벅스 판교점->GS25 역삼점", "Nike Air Max 90", "ユニクロ 銀座店"])
    sims = kw[:3] @ users.T
    assert (np.argmax(sims, axis=1) == [0, 1, 2]).all()


# --------------------------------------------------------------------------- determinism

_SUBPROCESS = r"""
import json, sys
from userlens.understanding.encoder import get_encoder
seqs = json.loads(sys.stdin.read())
v, c = get_encoder().encode(seqs)
sys.stdout.write(json.dumps({"v": v.tobytes().hex(), "c": c.tolist()}))
"""

_SEQS = [
    "스타벅스 판교점->GS25 역삼점->배달의민족",
    "スターバックス板橋アベニューフラン店->ユニクロ 銀座店->となりのトトロ",
    "Nike Air Max 90->Star Wars->Toy Story->Star Wars",
    "",
    "->".join(f"item {i}" for i in range(1500)),
]


def test_deterministic_across_processes() -> None:
    enc = get_encoder()
    v, c = enc.encode(_SEQS)
    outs = []
    for hashseed in ("1", "12345"):  # Python's str hash salt must not matter
        proc = subprocess.run(
            [sys.executable, "-c", _SUBPROCESS],
            input=json.dumps(_SEQS),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hashseed},
        )
        outs.append(json.loads(proc.stdout))
    for out in outs:
        assert out["c"] == c.tolist()
        assert out["v"] == v.tobytes().hex()


def test_cache_does_not_change_results() -> None:
    spec = get_encoder().spec
    cold = SequenceEncoder(spec, cache_size=3)  # cleared all the time
    warm = get_encoder()
    seqs = _SEQS * 3
    a, ca = cold.encode(seqs)
    b, cb = warm.encode(seqs)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ca, cb)


def test_thread_safety() -> None:
    enc = get_encoder()
    rng = np.random.default_rng(7)
    seqs = ["->".join(f"store {j}" for j in rng.integers(0, 5000, 40)) for _ in range(3000)]
    ref, _ = SequenceEncoder(enc.spec).encode(seqs)
    results: list[np.ndarray] = [None] * 4  # type: ignore[list-item]

    def work(k: int) -> None:
        results[k] = enc.encode(seqs)[0]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, ref)


def test_golden_vector_pins_the_model() -> None:
    """ul-hash-v1 is a versioned artifact: any change to tokenizer, hashing or weights must fail
    here (and come with a new model name)."""
    enc = get_encoder("ul-hash-v1")
    assert (enc.dim, enc.spec.hashes, enc.spec.seed) == (1024, 4, 0x5EEDC1E0)
    v, c = enc.encode(["Star Wars"])
    assert c.tolist() == [2]
    # identity (weight 1) + 2 tokens (weight 0.5), 4 positions each of ±1/2; norm^2 = 1.5
    ident, tok = 0.5 / 1.5**0.5, 0.25 / 1.5**0.5
    expected = {
        38: tok, 121: -tok, 241: ident, 280: -tok, 322: -tok, 377: -ident,
        543: -ident, 626: tok, 708: tok, 804: -tok, 965: -ident, 999: tok,
    }  # fmt: skip
    nz = np.flatnonzero(v[0])
    assert nz.tolist() == sorted(expected)
    np.testing.assert_allclose(v[0, nz], [expected[i] for i in nz], rtol=1e-6)
