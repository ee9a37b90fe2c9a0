"""Language-aware behaviour tokenizer (version ``ul-tok-1``).

A *behaviour* is one free-text element of a user's sequence: a store name, a product name, an
app name, a movie title ... in Korean, Japanese or English (or a mix). The tokenizer turns it into
a short list of string tokens that the encoder hashes. It is a pure function of the text: no
dictionary, no model, nothing fitted; the same text gives the same tokens in every process and on
every machine, which the versioned NCLUE model relies on. Any change to these rules must change
``TOKENIZER_VERSION`` (and therefore the encoder's model name).

Rules
-----
1. Unicode NFKC normalisation (full-width Latin ``Ｎｉｋｅ`` -> ``Nike``, half-width katakana
   ``ｽﾀｰ`` -> ``スター``, circled/compatibility digits -> ASCII digits), then ``str.lower()``.
2. The text is cut into maximal runs of one script class:

   * **Latin/other words**: letters and digits of any script other than the four CJK classes
     below (ASCII, accented Latin, Cyrillic, Greek, Thai ...). Letters and digits stay together
     (``iphone15`` is one token); anything that is not a letter or digit separates words, so
     ``"Coca-Cola 1.5L"`` -> ``['coca', 'cola', '1', '5l']``.
   * **Hangul** syllables and jamo.
   * **Hiragana**.
   * **Katakana**, including the long-vowel mark ``ー`` (U+30FC) and the iteration marks
     ``ヽヾ``; the middle dot ``・`` is punctuation and separates runs.
   * **Han** (kanji / hanzi, CJK extensions and compatibility ideographs) with ``々`` and ``〇``.

   A change of script class always starts a new run (``"스타벅스DT점"`` -> ``스타벅스 | dt | 점``).
3. A Hangul/Hiragana/Katakana/Han run of more than 2 characters is split into consecutive,
   non-overlapping 2-character pieces from its start; the last piece may have 1 character.
   Runs of 1 or 2 characters are kept whole. (Korean and Japanese are written without spaces
   or with spaces between long compounds; character bigrams are the classic dictionary-free
   unit for them and give Korean, Japanese and English comparable token counts per behaviour.)
4. Everything else -- whitespace, punctuation, symbols, emoji, ``_`` -- is dropped.

Examples
--------
>>> tokenize_behavior("스타벅스 판교점")
['스타', '벅스', '판교', '점']
>>> tokenize_behavior("배달의민족")
['배달', '의민', '족']
>>> tokenize_behavior("スターバックス板橋アベニューフラン店")
['スタ', 'ーバ', 'ック', 'ス', '板橋', 'アベ', 'ニュ', 'ーフ', 'ラン', '店']
>>> tokenize_behavior("ユニクロ 銀座店")
['ユニ', 'クロ', '銀座', '店']
>>> tokenize_behavior("となりのトトロ")
['とな', 'りの', 'トト', 'ロ']
>>> tokenize_behavior("Nike Air Max 90")
['nike', 'air', 'max', '90']
>>> tokenize_behavior("Schindler's List (1993)")
['schindler', 's', 'list', '1993']
>>> tokenize_behavior("★★★!!")
[]
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["TOKENIZER_VERSION", "tokenize_behavior"]

TOKENIZER_VERSION = "ul-tok-1"

# Character classes (after NFKC: half-width katakana and Hangul compatibility forms are folded).
_HANGUL = "\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff"
_HIRAGANA = "\u3041-\u309f"  # includes ゝゞゟ and the (combining) voiced marks
_KATAKANA = "\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff"  # ァ..ヺ, ー ヽ ヾ ヿ, small ㇰ..ㇿ (not ・)
_HAN = "\u3005\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003ffff"
_CJK = _HANGUL + _HIRAGANA + _KATAKANA + _HAN

# One alternation, first match wins at each position; the word class excludes the CJK classes so
# a word never swallows a following CJK run (and vice versa).
_RUN_RE = re.compile(
    rf"[{_HANGUL}]+|[{_HIRAGANA}]+|[{_KATAKANA}]+|[{_HAN}]+|[^\W_{_CJK}]+"
)
_IS_CJK_RE = re.compile(rf"[{_CJK}]")
_ASCII_WORD_RE = re.compile(r"[a-z0-9]+")


def tokenize_behavior(text: str) -> list[str]:
    """Tokens of one behaviour string (see the module docstring for the rules)."""
    if text.isascii():
        # NFKC is the identity on ASCII; the common English case skips the Unicode machinery.
        return _ASCII_WORD_RE.findall(text.lower())
    text = unicodedata.normalize("NFKC", text).lower()
    runs = _RUN_RE.findall(text)
    out: list[str] = []
    is_cjk = _IS_CJK_RE.match
    for run in runs:
        n = len(run)
        if n > 2 and is_cjk(run):
            out.extend([run[i : i + 2] for i in range(0, n, 2)])
        else:
            out.append(run)
    return out
