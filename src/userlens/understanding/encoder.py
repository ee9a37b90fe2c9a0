"""The NCLUE model: a deterministic, versioned behaviour-sequence encoder.

Every user's behaviour sequence (``b1->b2->...``, oldest first) becomes ONE fixed-size, L2-normalised
vector. Vectors made by the same model name share one vector space: the model is a pure function of
the text, with nothing fitted on the input (no vocabulary, IDF or SVD), nothing downloaded, and
stable hashing (``xxhash.xxh64`` with fixed seeds, never Python's salted ``hash()``), so a
classifier trained on one Feature scores another, in any process, on any machine.

Model ``ul-hash-v1``: hashed sparse random projection
-----------------------------------------------------
D = 1024 dimensions, S = 4 hashes per feature, xxh64 seed 0x5EEDC1E0, tokenizer ``ul-tok-1``.

Features of a behaviour:

* its **tokens** from :func:`userlens.understanding.tokenizer.tokenize_behavior`;
* its **identity**: the whole behaviour string, NFKC-normalised, lower-cased, whitespace collapsed
  (``"Star  Wars "`` and ``"star wars"`` are the same item). It is a feature but not a token.

Per user:

1. **Truncation**: only the ``MAX_TOKENS_PER_USER`` (2,048) most recent tokens are kept. A
   behaviour cut in the middle keeps its last tokens and loses its identity feature; behaviours
   older than the cut are dropped entirely. ``token_counts`` counts kept tokens only. Empty
   behaviours (``a->->b``) are ignored; a behaviour without tokens (``"★★"``) still has an identity.
2. **Term frequency**: the count c of each distinct feature within the user is damped to
   ``sqrt(c)`` (a store visited 100 times weighs 10x a one-off visit, not 100x).
3. **Feature weights**: identity 1.0, token 0.5. A behaviour of ~3 tokens thus puts about 3/7 of
   its squared mass on its words (which generalise across items: "스타벅스 판교점" and
   "스타벅스 강남점" share 스타/벅스, a keyword matches the behaviours containing it) and 4/7 on
   the exact item.
4. **Sparse JL projection** (Kane-Nelson block construction): the 64-bit hash of a feature is
   mixed (splitmix64) into S 16-bit fields; field s gives a position in block s of the D/S-wide
   blocks (15 bits, multiply-shift) and a sign (top bit), value ``±1/sqrt(S)``. The user vector
   is the weighted sum of its features' projections, L2-normalised (an empty user is all zeros).

Inner products of these vectors approximate those of the users' weighted sqrt-tf
bag-of-(identities + tokens), with an error of about 1/sqrt(D) of the norms; that is what a
linear model or a cosine similarity on top needs.

How the parameters were chosen (``bench/quality.py``, MovieLens-100K, gender and age<30, logistic
regression AUC, mean of 25 folds): D is the main lever. At D=512 the projection noise costs
~0.015 AUC against a bag-of-items baseline (age<30 0.836-0.839 vs 0.852), D=768 is borderline and
seed-dependent, D=1024 matches or beats it (over 8 hash seeds: gender 0.770 (0.758-0.787) vs
0.764, age<30 0.857 (0.851-0.862) vs 0.852). S in 1..8 makes no significant difference to
quality (S sets the tail of the distortion, not its variance); S=4 keeps the projection cost low.
Token weights 0.3-0.7 are equivalent; 0.5 keeps words useful for keyword scoring. ``sqrt`` tf is
~0.01 AUC better than raw counts and equal to ``1+ln c``. Stored quantised to int8 with a per-user
scale (vectors.py), the vectors take ~1 KiB per user.

Performance: ``encode`` is vectorised. Each distinct behaviour string is tokenised and hashed once
and cached (per thread, bounded: the cache is dropped beyond ``cache_size`` = 500,000 behaviours);
a block of 512 users is then encoded with a few numpy passes: a segment gather of the cached
feature keys (with truncation), one stable sort for the per-user counts, and one ``np.bincount``
into the ``[users, D]`` block. Measured on one core of the reference 2-core machine (Zipf
vocabulary of 200k behaviours, ~3 tokens each, ~84 tokens per user): 1.5-3.7M tokens/s with a
warm cache, ~1.1-1.2M tokens/s on first sight of every behaviour (tokenising included).
"""

from __future__ import annotations

import math
import threading
import unicodedata
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import xxhash

from userlens.understanding.tokenizer import TOKENIZER_VERSION, tokenize_behavior

__all__ = [
    "DEFAULT_MODEL",
    "MAX_TOKENS_PER_USER",
    "SEPARATOR",
    "SequenceEncoder",
    "available_models",
    "get_encoder",
    "normalize_behavior",
]

DEFAULT_MODEL = "ul-hash-v2"
MAX_TOKENS_PER_USER = 2048
SEPARATOR = "->"

# Layout of a 64-bit (user, feature) key inside a block of users:
#   bits 63..44: the user's index in the block; bit 43: 1 for identity features;
#   bits 42..0: 43 bits of the feature's xxh64 hash.
# Sorting the keys groups them by user (so the final scatter is cache-local) and one pass over
# the sorted keys counts every (user, feature) pair; the low 44 bits alone determine the
# projection of a feature.
_USER_SHIFT = np.uint64(44)
_KIND_BIT_INT = 1 << 43
_KIND_BIT = np.uint64(_KIND_BIT_INT)
_FEATURE_MASK_INT = (1 << 44) - 1
_FEATURE_MASK = np.uint64(_FEATURE_MASK_INT)
_HASH_MASK_INT = (1 << 43) - 1
_BLOCK_USERS = 512  # users per internal block (bincount buffer: 512 x D float64, cache-friendly)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def normalize_behavior(text: str) -> str:
    """Identity form of a behaviour: NFKC, lower case, whitespace collapsed and stripped."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().split())


def _mix64(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 finaliser of ``x + (salt + 1) * golden`` (uint64 arithmetic wraps)."""
    x = x + np.uint64(((salt + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class ModelSpec:
    """The versioned parameters of one hashed-projection model."""

    name: str
    dim: int = 1024
    hashes: int = 4
    seed: int = 0x5EED_C1E0
    token_weight: float = 0.5
    identity_weight: float = 1.0
    tf: str = "sqrt"  # "sqrt" | "log" (1 + ln c) | "raw"
    max_tokens: int = MAX_TOKENS_PER_USER
    tokenizer: str = TOKENIZER_VERSION
    notes: str = ""


_MODELS: dict[str, ModelSpec] = {
    "ul-hash-v1": ModelSpec(
        name="ul-hash-v1",
        dim=1024,
        hashes=4,
        token_weight=0.5,
        identity_weight=1.0,
        tf="sqrt",
        notes="hashed sparse random projection of the sqrt-tf bag of (behaviour identities + 0.5 x ul-tok-1 tokens)",
    ),
    # v1 with twice the dimensions: fewer items share a dimension. On MovieLens-100K (5x5 CV, the
    # Feature benchmark's protocol) gender 0.7733 and age<30 0.8677 against v1's 0.7581 / 0.8527 and
    # bag-of-items' 0.7644 / 0.8516; it costs twice the storage (2 KiB/user) and scoring arithmetic.
    "ul-hash-v2": ModelSpec(
        name="ul-hash-v2",
        dim=2048,
        hashes=4,
        token_weight=0.5,
        identity_weight=1.0,
        tf="sqrt",
        notes="ul-hash-v1 with 2048 dimensions",
    ),
}


class _Index(dict):
    """behaviour string -> cache row; -1 when absent (no exception, no Python call on hits)."""

    def __missing__(self, key: str) -> int:
        return -1


class _Vocab:
    """Per-thread cache: distinct behaviour string -> (its token feature keys, its identity key)."""

    __slots__ = ("index", "off", "ntok", "idkey", "pool", "n", "pool_n", "tok_hash")

    def __init__(self) -> None:
        self.index = _Index()
        self.off = np.zeros(1024, dtype=np.int64)  # start of the row's tokens in `pool`
        self.ntok = np.zeros(1024, dtype=np.int64)  # number of tokens
        self.idkey = np.zeros(1024, dtype=np.uint64)  # identity feature (0: empty behaviour)
        self.pool = np.zeros(4096, dtype=np.uint64)  # token features of all rows, back to back
        self.n = 0
        self.pool_n = 0
        self.tok_hash: dict[str, int] = {}


def _grow(arr: np.ndarray, used: int, need: int) -> np.ndarray:
    if need <= len(arr):
        return arr
    new = np.zeros(max(need, 2 * len(arr)), dtype=arr.dtype)
    new[:used] = arr[:used]
    return new


class SequenceEncoder:
    """Encode behaviour sequences into L2-normalised ``float32`` vectors (see module docstring)."""

    def __init__(self, spec: ModelSpec, cache_size: int = 500_000) -> None:
        if spec.dim % spec.hashes or not 1 <= spec.dim // spec.hashes <= 1 << 15:
            raise ValueError("dim must be a multiple of hashes, with dim / hashes <= 32768")
        if spec.tf not in ("sqrt", "log", "raw"):
            raise ValueError(f"unknown tf {spec.tf!r}")
        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self.max_tokens = spec.max_tokens
        self.cache_size = cache_size
        self._seed_tok = spec.seed & 0xFFFFFFFFFFFFFFFF
        self._seed_id = (spec.seed * 0x100000001B3 + 1) & 0xFFFFFFFFFFFFFFFF
        # Each hash function uses a 16-bit field of a mixed 64-bit word: 15 bits pick the position
        # within its block (multiply-shift), the top bit the sign. Look-up tables over the 65,536
        # field values turn a field into (position within block, ±1/sqrt(S)).
        block = spec.dim // spec.hashes
        field = np.arange(1 << 16, dtype=np.int64)
        self._lut_pos = ((field & 0x7FFF) * block) >> 15
        self._lut_sign = np.where(field >= 0x8000, -1.0, 1.0) / math.sqrt(spec.hashes)
        self._block_off = np.arange(spec.hashes, dtype=np.int64) * block
        self._pos_shift = np.uint16(15 - (block.bit_length() - 1)) if block & (block - 1) == 0 else None
        self._local = threading.local()

    # ------------------------------------------------------------------ public API
    def encode(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``'b1->b2->...'`` sequences (oldest first).

        Returns ``(vectors float32 [n, dim], token_counts int64 [n])``; token counts are after
        truncation to the most recent ``MAX_TOKENS_PER_USER`` tokens.
        """
        sequences = list(sequences)
        n = len(sequences)
        vecs = np.empty((n, self.dim), dtype=np.float32)
        counts = np.empty(n, dtype=np.int64)
        for lo in range(0, n, _BLOCK_USERS):
            hi = min(n, lo + _BLOCK_USERS)
            counts[lo:hi] = self._encode_block(sequences[lo:hi], vecs[lo:hi])
        return vecs, counts

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Embed free keywords/phrases, each as a one-behaviour sequence, in the same space."""
        return self.encode([t.replace(SEPARATOR, " ") for t in texts])[0]

    def describe(self) -> dict[str, Any]:
        """JSON-able description of the versioned model artifact."""
        s = self.spec
        return {
            "name": s.name,
            "kind": "hashed-sparse-random-projection",
            "dim": s.dim,
            "hashes": s.hashes,
            "hash": "xxh64",
            "seed": s.seed,
            "token_seed": f"{self._seed_tok:#018x}",
            "identity_seed": f"{self._seed_id:#018x}",
            "tokenizer": s.tokenizer,
            "max_tokens_per_user": s.max_tokens,
            "weights": {"token": s.token_weight, "identity": s.identity_weight, "tf": s.tf},
            "identity_normalization": "NFKC+lower+collapse-whitespace",
            "projection": (
                "43-bit xxh64 feature hash (+ identity flag bit) -> splitmix64 -> S 16-bit fields; "
                "field s: block s of dim/S, position (f & 0x7fff) * (dim/S) >> 15, sign = top bit, "
                "value 1/sqrt(S)"
            ),
            "normalization": "l2",
            "dtype": "float32",
            "notes": s.notes,
        }

    # ------------------------------------------------------------------ internals
    def _vocab(self) -> _Vocab:
        v = getattr(self._local, "vocab", None)
        if v is None or v.n > self.cache_size:
            v = self._local.vocab = _Vocab()
        return v

    def _add(self, v: _Vocab, texts: list[str]) -> None:
        """Tokenise and hash new distinct behaviours into the cache (rows v.n ...)."""
        need = v.n + len(texts)
        v.off = _grow(v.off, v.n, need)
        v.ntok = _grow(v.ntok, v.n, need)
        v.idkey = _grow(v.idkey, v.n, need)
        seed_tok, seed_id = self._seed_tok, self._seed_id
        tok_hash = v.tok_hash
        h64 = xxhash.xxh64_intdigest
        hmask = _HASH_MASK_INT
        kind = _KIND_BIT_INT
        index = v.index
        keys: list[int] = []
        ntoks: list[int] = []
        idkeys: list[int] = []
        row = v.n
        for text in texts:
            toks = tokenize_behavior(text)
            for t in toks:
                k = tok_hash.get(t)
                if k is None:
                    k = tok_hash[t] = h64(t.encode(), seed_tok) & hmask
                keys.append(k)
            ntoks.append(len(toks))
            norm = normalize_behavior(text)
            idkeys.append((h64(norm.encode(), seed_id) & hmask) | kind if norm else 0)
            index[text] = row
            row += 1
        nk = len(keys)
        v.pool = _grow(v.pool, v.pool_n, v.pool_n + nk)
        nt = np.array(ntoks, dtype=np.int64)
        v.ntok[v.n : need] = nt
        v.off[v.n : need] = v.pool_n + np.cumsum(nt) - nt
        v.idkey[v.n : need] = np.array(idkeys, dtype=np.uint64)
        v.pool[v.pool_n : v.pool_n + nk] = np.array(keys, dtype=np.uint64)
        v.pool_n += nk
        v.n = need
        if len(tok_hash) > self.cache_size:
            tok_hash.clear()

    def _lookup(self, flat: list[str]) -> tuple[_Vocab, np.ndarray]:
        """Cache rows of the behaviours in ``flat``, adding the new ones."""
        v = self._vocab()
        ids = np.fromiter(map(v.index.__getitem__, flat), dtype=np.int64, count=len(flat))
        miss = np.flatnonzero(ids < 0)
        if len(miss):
            new = list(dict.fromkeys([flat[i] for i in miss]))  # distinct, in first-seen order
            self._add(v, new)
            get = v.index.__getitem__
            ids[miss] = [get(flat[i]) for i in miss]
        return v, ids

    def _encode_block(self, sequences: list[str], out: np.ndarray) -> np.ndarray:
        """Encode up to 2^20 users into ``out`` (float32 [n, dim]); returns the token counts."""
        n = len(sequences)
        D = self.dim
        spec = self.spec
        splits = [s.split(SEPARATOR) if s else [] for s in sequences]
        nb = np.fromiter(map(len, splits), dtype=np.int64, count=n)
        flat = list(chain.from_iterable(splits))
        v, ids = self._lookup(flat)

        # --- truncation to the most recent max_tokens tokens of each user
        ntok = v.ntok[ids]
        user = np.repeat(np.arange(n, dtype=np.uint64), nb)
        bend = np.cumsum(nb)
        cpad = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(ntok, out=cpad[1:])
        total = cpad[bend] - cpad[bend - nb]
        token_counts = np.minimum(total, self.max_tokens)
        after = np.repeat(cpad[bend], nb) - cpad[1:]  # tokens strictly after each behaviour
        keep = np.clip(self.max_tokens - after, 0, ntok)  # its most recent tokens that stay
        keep_id = after + ntok <= self.max_tokens  # behaviour entirely kept: identity stays

        # --- (user, feature) keys: the kept tokens of each behaviour ...
        sel = np.flatnonzero(keep)
        kn = keep[sel]
        start = v.off[ids[sel]] + ntok[sel] - kn
        seg = np.cumsum(kn) - kn
        gather = np.arange(int(seg[-1] + kn[-1]) if len(kn) else 0, dtype=np.int64)
        gather += np.repeat(start - seg, kn)
        tok_keys = v.pool[gather]
        tok_keys |= np.repeat(user[sel] << _USER_SHIFT, kn)
        # ... and the identities of the behaviours kept whole
        kid = np.flatnonzero(keep_id)
        idk = v.idkey[ids[kid]]
        nz = idk != 0
        id_keys = idk[nz] | (user[kid[nz]] << _USER_SHIFT)
        keys = np.concatenate([tok_keys, id_keys])

        # --- per-user term frequency: one (stable, run-friendly) sort of the keys
        if spec.tf == "raw" or len(keys) == 0:
            uk = keys
            w = np.ones(len(uk), dtype=np.float64)
        else:
            keys.sort(kind="stable")
            first = np.empty(len(keys), dtype=bool)
            first[0] = True
            np.not_equal(keys[1:], keys[:-1], out=first[1:])
            starts = np.flatnonzero(first)
            uk = keys[starts]
            cnt = np.diff(np.append(starts, len(keys)))
            w = np.sqrt(cnt) if spec.tf == "sqrt" else 1.0 + np.log(cnt)
        w *= np.where((uk & _KIND_BIT) != 0, spec.identity_weight, spec.token_weight)

        # --- sparse JL projection: S signed positions per feature, one per block
        S = spec.hashes
        feat = uk & _FEATURE_MASK
        words = [_mix64(feat, m).astype("<u8", copy=False).view("<u2").reshape(-1, 4) for m in range((S + 3) // 4)]
        fields = words[0] if len(words) == 1 else np.hstack(words)
        fields = fields[:, :S]
        idx = ((uk >> _USER_SHIFT).astype(np.int64) * D)[:, None] + self._block_off
        if self._pos_shift is not None:  # power-of-two blocks: same as the table, cheaper
            idx += (fields & 0x7FFF) >> self._pos_shift
        else:
            idx += np.take(self._lut_pos, fields)
        wts = np.take(self._lut_sign, fields)
        wts *= w[:, None]
        acc = np.bincount(idx.ravel(), weights=wts.ravel(), minlength=n * D).reshape(n, D)
        norms = np.sqrt(np.einsum("ij,ij->i", acc, acc))
        norms[norms == 0] = 1.0
        np.divide(acc, norms[:, None], out=out, casting="same_kind")
        return token_counts


_INSTANCES: dict[str, SequenceEncoder] = {}
_LOCK = threading.Lock()


def available_models() -> list[str]:
    """Names of the models this build can encode with."""
    return sorted(_MODELS)


def get_encoder(name: str = DEFAULT_MODEL) -> SequenceEncoder:
    """The (shared, thread-safe) encoder of a model name; ``KeyError`` for unknown names."""
    if name not in _MODELS:
        raise KeyError(f"unknown NCLUE model {name!r}; available: {', '.join(available_models())}")
    with _LOCK:
        enc = _INSTANCES.get(name)
        if enc is None:
            enc = _INSTANCES[name] = SequenceEncoder(_MODELS[name])
        return enc
