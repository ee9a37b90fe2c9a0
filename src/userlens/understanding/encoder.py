"""The NCLUE model: a deterministic, versioned behaviour-sequence encoder.

Every user's behaviour sequence (``b1->b2->...``, oldest first) becomes ONE fixed-size, L2-normalised
vector. Vectors made by the same model name share one vector space: the model is a pure function of
the text, with nothing fitted on the input (no vocabulary, IDF or SVD), nothing downloaded, and
stable hashing (``xxhash.xxh64`` with fixed seeds, never Python's salted ``hash()``), so a
classifier trained on one Feature scores another, in any process, on any machine.

Model ``ul-hash-v1``: hashed sparse random projection
-----------------------------------------------------
Features of a behaviour:

* its **tokens** from :func:`userlens.understanding.tokenizer.tokenize_behavior` (``ul-tok-1``);
* its **identity**: the whole behaviour string, NFKC-normalised, lower-cased, whitespace collapsed
  (``"Star  Wars "`` and ``"star wars"`` are the same item). It is a feature but not a token.

Per user:

1. **Truncation**: only the ``MAX_TOKENS_PER_USER`` (2,048) most recent tokens are kept. A
   behaviour cut in the middle keeps its last tokens and loses its identity feature; behaviours
   older than the cut are dropped entirely. ``token_counts`` counts kept tokens only.
2. **Term frequency**: counts of each distinct feature within the user are damped sublinearly,
   ``tf(c) = sqrt(c)`` (a favourite store visited 100 times weighs 10x a one-off visit, not 100x).
3. **Feature weights**: token features weigh ``token_weight``, identity features
   ``identity_weight`` (see ``describe()``).
4. **Sparse JL projection**: each feature's 64-bit hash is mixed into ``hashes`` (S) signed
   positions, one in each of S equal blocks of the D-dim vector (Kane-Nelson block construction,
   so the S positions never collide), each with value ``±1/sqrt(S)``.
   The user vector is the weighted sum of its features' projections, L2-normalised
   (an empty user is the zero vector).

Inner products of these vectors approximate inner products of the sublinear-tf, weighted
bag-of-(identities + tokens) of the users, which is what a linear model on top needs.

Performance: ``encode`` is vectorised. Each distinct behaviour string is tokenised and hashed once
and cached (per thread, bounded, cleared beyond ``cache_size`` entries); a block of users is then
encoded with a handful of numpy operations (segment gather, one sort for the tf counts, one
``np.bincount`` into the ``[users, D]`` block).
"""

from __future__ import annotations

import math
import threading
import unicodedata
from dataclasses import dataclass, field
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

DEFAULT_MODEL = "ul-hash-v1"
MAX_TOKENS_PER_USER = 2048
SEPARATOR = "->"

# Layout of a 64-bit feature key inside a block of users:
#   bits 63..21: the feature's hash (43 bits of xxh64), bit 20: 1 for identity features,
#   bits 19..0: the user's index within the block. One sort of the keys counts every
#   (user, feature) pair; the hash bits alone then determine the projection.
_USER_BITS = 20
_KIND_BIT = np.uint64(1 << _USER_BITS)
_USER_MASK = np.uint64((1 << _USER_BITS) - 1)
_HASH_SHIFT = np.uint64(_USER_BITS + 1)
_HASH_CLEAR = ~((1 << (_USER_BITS + 1)) - 1) & 0xFFFFFFFFFFFFFFFF
_BLOCK_USERS = 2048  # users per internal block (bincount buffer: 2048 x D float64)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def normalize_behavior(text: str) -> str:
    """Identity form of a behaviour: NFKC, lower case, whitespace collapsed and stripped."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().split())


def _mix64(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 finaliser of ``x + salt*golden`` (uint64 arrays wrap silently)."""
    x = x + np.uint64((salt * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class ModelSpec:
    """The versioned parameters of one hashed-projection model."""

    name: str
    dim: int = 512
    hashes: int = 8
    seed: int = 0x5EED_C1E0
    token_weight: float = 1.0
    identity_weight: float = 1.0
    tf: str = "sqrt"  # "sqrt" | "log" (1 + ln c) | "raw"
    max_tokens: int = MAX_TOKENS_PER_USER
    tokenizer: str = TOKENIZER_VERSION
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, ModelSpec] = {
    "ul-hash-v1": ModelSpec(
        name="ul-hash-v1",
        dim=512,
        hashes=8,
        token_weight=1.0,
        identity_weight=1.0,
        tf="sqrt",
        notes="hashed sparse random projection of sqrt-tf bag of (behaviour identities + ul-tok-1 tokens)",
    ),
}


class _Vocab:
    """Per-thread cache: distinct behaviour string -> (token keys, identity key)."""

    __slots__ = ("index", "off", "ntok", "idkey", "pool", "n", "pool_n", "tok_hash")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.off = np.zeros(1024, dtype=np.int64)
        self.ntok = np.zeros(1024, dtype=np.int64)
        self.idkey = np.zeros(1024, dtype=np.uint64)
        self.pool = np.zeros(4096, dtype=np.uint64)
        self.n = 0
        self.pool_n = 0
        self.tok_hash: dict[str, int] = {}

    def clear(self) -> None:
        self.__init__()


class SequenceEncoder:
    """Encode behaviour sequences into L2-normalised ``float32`` vectors (see module docstring)."""

    def __init__(self, spec: ModelSpec, cache_size: int = 500_000) -> None:
        if spec.dim % spec.hashes:
            raise ValueError("dim must be a multiple of hashes")
        block = spec.dim // spec.hashes
        if block & (block - 1):
            raise ValueError("dim / hashes must be a power of two")
        if spec.tf not in ("sqrt", "log", "raw"):
            raise ValueError(f"unknown tf {spec.tf!r}")
        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self.max_tokens = spec.max_tokens
        self.cache_size = cache_size
        self._block_bits = block.bit_length() - 1
        self._seed_tok = spec.seed & 0xFFFFFFFFFFFFFFFF
        self._seed_id = (spec.seed * 0x100000001B3 + 1) & 0xFFFFFFFFFFFFFFFF
        self._local = threading.local()

    # ------------------------------------------------------------------ public API
    def encode(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``'b1->b2->...'`` sequences (oldest first).

        Returns ``(vectors float32 [n, dim], token_counts int64 [n])``; token counts are after
        truncation to the most recent ``MAX_TOKENS_PER_USER`` tokens.
        """
        n = len(sequences)
        vecs = np.empty((n, self.dim), dtype=np.float32)
        counts = np.empty(n, dtype=np.int64)
        for lo in range(0, n, _BLOCK_USERS):
            hi = min(n, lo + _BLOCK_USERS)
            vecs[lo:hi], counts[lo:hi] = self._encode_block(sequences[lo:hi])
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
            "tokenizer": s.tokenizer,
            "max_tokens_per_user": s.max_tokens,
            "weights": {"token": s.token_weight, "identity": s.identity_weight, "tf": s.tf},
            "identity_normalization": "NFKC+lower+collapse-whitespace",
            "normalization": "l2",
            "dtype": "float32",
            "notes": s.notes,
        }

    # ------------------------------------------------------------------ internals
    def _vocab(self) -> _Vocab:
        v = getattr(self._local, "vocab", None)
        if v is None:
            v = self._local.vocab = _Vocab()
        return v

    def _add(self, v: _Vocab, texts: set[str]) -> None:
        """Tokenise and hash new distinct behaviours into the cache."""
        m = len(texts)
        need = v.n + m
        if need > len(v.off):
            cap = max(need, 2 * len(v.off))
            for name in ("off", "ntok", "idkey"):
                arr = getattr(v, name)
                new = np.zeros(cap, dtype=arr.dtype)
                new[: v.n] = arr[: v.n]
                setattr(v, name, new)
        seed_tok, seed_id = self._seed_tok, self._seed_id
        tok_hash = v.tok_hash
        h64 = xxhash.xxh64_intdigest
        clear = _HASH_CLEAR
        kind = 1 << _USER_BITS
        index = v.index
        keys: list[int] = []
        ntoks: list[int] = []
        idkeys: list[int] = []
        for text in texts:
            toks = tokenize_behavior(text)
            for t in toks:
                k = tok_hash.get(t)
                if k is None:
                    k = tok_hash[t] = h64(t.encode(), seed_tok) & clear
                keys.append(k)
            ntoks.append(len(toks))
            norm = normalize_behavior(text)
            idkeys.append((h64(norm.encode(), seed_id) & clear) | kind if norm else 0)
            index[text] = len(index)
        nk = len(keys)
        if v.pool_n + nk > len(v.pool):
            new = np.zeros(max(v.pool_n + nk, 2 * len(v.pool)), dtype=np.uint64)
            new[: v.pool_n] = v.pool[: v.pool_n]
            v.pool = new
        nt = np.array(ntoks, dtype=np.int64)
        v.ntok[v.n : need] = nt
        v.off[v.n : need] = v.pool_n + np.cumsum(nt) - nt
        v.idkey[v.n : need] = np.array(idkeys, dtype=np.uint64)
        v.pool[v.pool_n : v.pool_n + nk] = np.array(keys, dtype=np.uint64)
        v.pool_n += nk
        v.n = need
        if len(tok_hash) > 4 * self.cache_size:
            tok_hash.clear()

    def _lookup(self, flat: list[str]) -> tuple[_Vocab, np.ndarray]:
        v = self._vocab()
        if v.n > self.cache_size:
            v.clear()
        ids = list(map(v.index.get, flat))
        if None in ids:
            missing = {b for b, i in zip(flat, ids) if i is None}
            self._add(v, missing)
            ids = list(map(v.index.__getitem__, flat))
        return v, np.array(ids, dtype=np.int64)

    def _encode_block(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(sequences)
        D = self.dim
        splits = [s.split(SEPARATOR) if s else [] for s in sequences]
        nb = np.fromiter(map(len, splits), dtype=np.int64, count=n)
        flat = list(chain.from_iterable(splits))
        v, ids = self._lookup(flat)

        ntok = v.ntok[ids]
        user = np.repeat(np.arange(n, dtype=np.int64), nb)
        bend = np.cumsum(nb)
        cpad = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(ntok, out=cpad[1:])
        total = cpad[bend] - cpad[bend - nb]
        token_counts = np.minimum(total, self.max_tokens)
        # tokens strictly after behaviour i within its user
        after = cpad[bend[user]] - cpad[1:]
        keep = np.clip(self.max_tokens - after, 0, ntok)
        keep_id = after + ntok <= self.max_tokens

        # token keys: the last `keep` tokens of each behaviour
        sel = keep > 0
        kn = keep[sel]
        start = v.off[ids[sel]] + ntok[sel] - kn
        k_total = int(kn.sum())
        seg = np.cumsum(kn) - kn
        gather = np.arange(k_total, dtype=np.int64) + np.repeat(start - seg, kn)
        tok_keys = v.pool[gather] | np.repeat(user[sel], kn).astype(np.uint64)
        # identity keys
        idk = v.idkey[ids[keep_id]]
        nz = idk != 0
        id_keys = idk[nz] | user[keep_id][nz].astype(np.uint64)
        keys = np.concatenate([tok_keys, id_keys])

        spec = self.spec
        if spec.tf == "raw":
            uk = keys
            w = np.ones(len(uk), dtype=np.float64)
        else:
            uk, cnt = np.unique(keys, return_counts=True)
            w = np.sqrt(cnt) if spec.tf == "sqrt" else 1.0 + np.log(cnt)
        is_id = (uk & _KIND_BIT) != 0
        w = w * np.where(is_id, spec.identity_weight, spec.token_weight) / math.sqrt(spec.hashes)
        base = (uk & _USER_MASK).astype(np.int64) * D
        h = uk >> _HASH_SHIFT

        S = spec.hashes
        bb = self._block_bits
        bmask = np.uint64((1 << bb) - 1)
        per = bb + 1
        flat_idx = np.empty((S, len(uk)), dtype=np.int64)
        flat_w = np.empty((S, len(uk)), dtype=np.float64)
        x = None
        used = 64
        salt = 0
        for s in range(S):
            if used + per > 64:
                x = _mix64(h, salt)
                salt += 1
                used = 0
            pos = ((x >> np.uint64(used)) & bmask).astype(np.int64)
            neg = ((x >> np.uint64(used + bb)) & np.uint64(1)).astype(bool)
            used += per
            np.add(base, pos + (s << bb), out=flat_idx[s])
            np.copyto(flat_w[s], w)
            np.negative(flat_w[s], out=flat_w[s], where=neg)
        out = np.bincount(flat_idx.ravel(), weights=flat_w.ravel(), minlength=n * D).reshape(n, D)
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))
        norms[norms == 0] = 1.0
        out /= norms[:, None]
        return out.astype(np.float32), token_counts


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
