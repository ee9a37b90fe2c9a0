"""Synthetic sequence datasets shaped like the seed's example Feature (1,048,371 users, 83,704,912
tokens: ~80 tokens per user), at any scale, with Korean, Japanese and English behaviours whose
popularity follows a Zipf law (as store, product and app visits do). Deterministic for a seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from userlens.understanding.tokenizer import tokenize_behavior

SEED_USERS = 1_048_371
SEED_TOKENS = 83_704_912
TOKENS_PER_USER = SEED_TOKENS / SEED_USERS  # ~79.8

HANGUL = [chr(c) for c in range(0xAC00, 0xD7A4, 37)]
KATAKANA = [chr(c) for c in range(0x30A2, 0x30F3)]
KANJI = list("東京大阪板橋新宿渋谷駅前本店支店名古屋横浜神戸福岡札幌京都銀座池袋品川上野秋葉原")
EN_PARTS = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "zen", "mar", "tek", "pro", "lux", "fit", "nova", "hub", "ly", "go"]
EN_NOUNS = ["shoes", "coffee", "store", "app", "jacket", "phone", "case", "bag", "tea", "book", "game", "watch", "cream", "sale", "pizza", "hotel", "ticket", "camera"]
KO_NOUNS = ["러닝화", "커피", "판교점", "강남점", "세일", "쿠폰", "가방", "이어폰", "크림", "티셔츠", "배달", "예약"]
JA_NOUNS = ["店", "セール", "コーヒー", "シューズ", "ゲーム", "予約", "クーポン", "バッグ"]


def make_vocabulary(size: int, rng: np.random.Generator) -> list[str]:
    vocab = set()
    while len(vocab) < size:
        lang = rng.choice(3, p=[0.5, 0.3, 0.2])
        if lang == 0:  # Korean: brand + noun (+ number)
            brand = "".join(rng.choice(HANGUL, rng.integers(2, 5)))
            b = f"{brand} {rng.choice(KO_NOUNS)}"
            if rng.random() < 0.3:
                b += f" {rng.integers(1, 500)}"
        elif lang == 1:  # Japanese: katakana brand + kanji place + noun
            brand = "".join(rng.choice(KATAKANA, rng.integers(3, 7)))
            b = f"{brand}{''.join(rng.choice(KANJI, 2))}{rng.choice(JA_NOUNS)}"
        else:  # English: brand + noun (+ model number)
            brand = "".join(rng.choice(EN_PARTS, rng.integers(2, 4))).capitalize()
            b = f"{brand} {rng.choice(EN_NOUNS)}"
            if rng.random() < 0.4:
                b += f" {rng.integers(1, 99)}"
        vocab.add(b)
    return sorted(vocab)


def write_dataset(path: Path, users: int, seed: int = 1, vocab_size: int = 200_000, block: int = 50_000) -> dict:
    """Writes `users` lines; returns counts. Streams in blocks so memory stays small."""
    rng = np.random.default_rng(seed)
    vocab = np.array(make_vocabulary(min(vocab_size, max(1000, users // 2)), rng), dtype=object)
    ranks = np.arange(1, len(vocab) + 1)
    p = 1.0 / ranks**1.05
    cdf = np.cumsum(p / p.sum())
    rng.shuffle(vocab)  # popularity independent of language or shape
    tok = np.array([len(tokenize_behavior(v)) for v in vocab])
    mean_tokens = float((tok * (p / p.sum())).sum())
    mean_len = TOKENS_PER_USER / mean_tokens
    tmp = path.with_suffix(".tmp")
    n_behaviours = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, users, block):
            n = min(block, users - start)
            lengths = np.maximum(1, rng.poisson(mean_len, n))
            idx = np.searchsorted(cdf, rng.random(int(lengths.sum())))
            idx = np.minimum(idx, len(vocab) - 1)
            beh = vocab[idx]
            n_behaviours += len(beh)
            offsets = np.concatenate(([0], np.cumsum(lengths)))
            lines = [f"user{start + i:08d}\t{'->'.join(beh[offsets[i]:offsets[i + 1]])}" for i in range(n)]
            f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return {"users": users, "behaviours": n_behaviours, "bytes": path.stat().st_size}


def cached_dataset(cache: Path, users: int, seed: int = 1) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"sequences-{users}-s{seed}.csv"
    if not path.exists():
        write_dataset(path, users, seed)
    return path
